"""A command's result (a JSON-like dict) as a few aligned lines for people to read.

Nested mappings become dotted keys (``base.clean_accuracy: 0.96``); a list of rows (a sweep) becomes a small
table after the key lines. The command line prints this unless ``--json`` asks for the object itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return "-" if value is None else str(value)


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, Mapping) for row in value)


def _lines(result: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in result.items():
        if isinstance(value, Mapping):
            yield from _lines(value, f"{prefix}{key}.")
        elif not _is_rows(value):
            yield f"{prefix}{key}", value


def table(rows: list[Mapping[str, Any]]) -> list[str]:
    """``rows`` as aligned columns, a header line first (columns: every key, in order of first appearance)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[k]) for line in cells) for k in range(len(columns))]
    return ["  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip() for line in cells]


def summary(result: Mapping[str, Any]) -> str:
    """``result`` as ``key: value`` lines, values aligned, then one table per list of rows.

    Args:
        result: what a command returns (strings, numbers, lists, nested dicts, lists of dicts).
    Returns:
        The text, without a trailing newline.
    """
    pairs = list(_lines(result))
    width = max((len(key) for key, _ in pairs), default=0) + 1
    out = [f"{key + ':':<{width}} {_cell(value)}" for key, value in pairs]
    for key, value in result.items():
        if _is_rows(value):
            out += ["", f"{key}:", *table(value)]
    return "\n".join(out)
