"""Input checks shared by the repository: types, lengths and choices, each failing with a message for people.

Everything is checked before a unit of work opens, so bad input never leaves a partial row behind.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from annotation_db.errors import ValidationError

E = TypeVar("E", bound=enum.StrEnum)

MAX_JSON_BYTES = 64 * 1024
MAX_LABELS = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _show(value: Any) -> str:
    # Echo bad input back without flooding the message (a 10 MB string must not become a 10 MB error).
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Explicit directional formatting characters (UAX #9): embeddings, overrides, isolates and marks.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_text(value: Any, field: str, max_len: int) -> str:
    """A non-blank string of at most ``max_len`` characters, returned verbatim (not trimmed or normalised)."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be text, got {type(value).__name__} {_show(value)}")
    if not value.strip():
        raise ValidationError(f"{field} must not be empty")
    if len(value) > max_len:
        raise ValidationError(f"{field} is too long: {len(value):,} characters, at most {max_len:,} allowed")
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; refuse it on SQLite too so both databases behave the same.
        raise ValidationError(f"{field} must not contain the NUL character")
    if not BIDI_CONTROLS.isdisjoint(value):
        # A right-to-left override makes a name or label display as another one.
        raise ValidationError(f"{field} must not contain bidirectional control characters (e.g. U+202E)")
    return value


def check_optional_text(value: Any, field: str, max_len: int) -> str | None:
    """Like :func:`check_text`, but None passes through."""
    return None if value is None else check_text(value, field, max_len)


def free_text(value: Any, field: str) -> str:
    """Free text (errors, reasons): any length, kept as given except NUL, which PostgreSQL refuses."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be text, got {type(value).__name__} {_show(value)}")
    return value.replace("\x00", "\ufffd")


def check_id(value: Any, field: str) -> int:
    """A positive integer id (``True`` is not an id, nor is ``"3"``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be an integer id, got {type(value).__name__} {_show(value)}")
    if value <= 0:
        raise ValidationError(f"{field} must be a positive id, got {value}")
    return value


def check_choice(value: Any, choices: type[E], field: str) -> E:
    """One of an enum's values, given as the enum member or its string."""
    if isinstance(value, choices):
        return value
    if isinstance(value, str):
        try:
            return choices(value)
        except ValueError:
            pass
    allowed = ", ".join(m.value for m in choices)
    raise ValidationError(f"{field} must be one of {allowed}; got {_show(value)}")


def check_optional_choice(value: Any, choices: type[E], field: str) -> E | None:
    return None if value is None else check_choice(value, choices, field)


def check_sha256(value: Any, field: str = "image hash") -> str:
    """A lowercase sha256 hex digest."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValidationError(f"{field} must be 64 lowercase hex characters, got {_show(value)}")
    return value


def check_json_object(value: Any, field: str, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON-serialisable dict with string keys, at most ``max_bytes`` once encoded."""
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a dict, got {type(value).__name__} {_show(value)}")
    try:
        encoded = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"{field} must be plain JSON (str, int, float, bool, None, list, dict): {exc}"
        ) from exc
    if "\\u0000" in encoded:
        raise ValidationError(f"{field} must not contain the NUL character")
    if len(encoded.encode()) > max_bytes:
        raise ValidationError(f"{field} is too large: {len(encoded.encode()):,} bytes, at most {max_bytes:,}")
    return value


def canonical_json(value: Any) -> str:
    """Key-sorted compact JSON without NaN: equal dicts give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_key(value: dict[str, Any] | None) -> str:
    """sha256 of the canonical JSON, or ``clean`` for None: what makes two attacks the same attack."""
    return "clean" if value is None else hashlib.sha256(canonical_json(value).encode()).hexdigest()


def check_labels(labels: Any, max_len: int) -> list[str]:
    """An ordered list of 2..1000 distinct labels, each a short non-blank string."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValidationError(
            f"labels must be a list of strings, got {type(labels).__name__} {_show(labels)}"
        )
    checked = [check_text(label, "label", max_len) for label in labels]
    if not 2 <= len(checked) <= MAX_LABELS:
        raise ValidationError(f"a label set needs 2 to {MAX_LABELS} labels, got {len(checked)}")
    if len(set(checked)) != len(checked):
        dupes = sorted({label for label in checked if checked.count(label) > 1})
        raise ValidationError(f"labels must be distinct; repeated: {', '.join(dupes[:5])}")
    return checked


def check_template(template: Any, max_len: int) -> str:
    """A prompt template with exactly one ``{}`` where the label goes, e.g. ``a photo of a {}.``."""
    template = check_text(template, "prompt template", max_len)
    try:
        rendered = template.format("\x01")
    except (IndexError, KeyError, ValueError) as exc:
        raise ValidationError(f"prompt template must contain one '{{}}' and no other braces: {exc}") from exc
    if rendered.count("\x01") != 1:
        raise ValidationError("prompt template must contain exactly one '{}' where the label goes")
    return template


def check_time(value: Any, field: str) -> datetime:
    """A timezone-aware datetime."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValidationError(f"{field} must be a timezone-aware datetime, got {_show(value)}")
    return value
