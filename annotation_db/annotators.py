"""Annotators: who judges, their pseudonym for exports, and their trust."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_db.counters import bump
from annotation_db.errors import NotFoundError, ValidationError
from annotation_db.models import DISPLAY_KEY_MAX, HANDLE_MAX, HF_USERNAME_MAX, Annotator
from annotation_db.store import StoreBase
from annotation_db.validation import check_optional_text, check_text


def pseudonym_for(handle: str, secret: str = "") -> str:
    """The stable pseudonym exported instead of a handle: 32 hex digits of HMAC-SHA256(secret, handle).

    With the deployment's secret (``RepositoryConfig.pseudonym_secret``) nobody can test a guessed handle
    against a published pseudonym; without one (tests, old rows) a fixed public salt is used.
    """
    if secret:
        return hmac.new(secret.encode(), b"poclip-annotator\0" + handle.encode(), hashlib.sha256).hexdigest()[:32]
    return hashlib.sha256(b"poclip-annotator\0" + handle.encode()).hexdigest()[:32]


def _name_taken() -> ValidationError:
    return ValidationError("that name (or one that looks like it) is already someone else's: choose another "
                           "name, or leave the box empty to annotate anonymously")


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    handle: str
    hf_username: str | None
    display_name: str | None  # what they typed, shown only; None when they never typed one
    pseudonym: str
    trust: float
    gold_seen: int
    gold_correct: int

    @classmethod
    def of(cls, row: Annotator) -> AnnotatorInfo:
        return cls(
            row.id, row.handle, row.hf_username, row.display_name, row.pseudonym, row.trust, row.gold_seen,
            row.gold_correct,
        )


class AnnotatorsMixin(StoreBase):
    """Annotators: created on first sight, looked up by handle."""

    def ensure_annotator(
        self, handle: str, hf_username: str | None = None, *, pseudonym: str | None = None
    ) -> AnnotatorInfo:
        """Return the annotator with ``handle``, creating it on first sight. Idempotent and race-safe.

        Args:
            handle: the name the app knows the person by (1..64 characters, stored verbatim).
            hf_username: their Hugging Face username when they logged in with it; updated when it changes.
            pseudonym: only for imports: reuse the pseudonym of an exported dataset instead of deriving one.
        """
        handle = check_text(handle, "handle", HANDLE_MAX)
        hf_username = check_optional_text(hf_username, "Hugging Face username", HF_USERNAME_MAX)
        if pseudonym is not None:
            pseudonym = check_text(pseudonym, "pseudonym", 32)
        for attempt in range(2):
            try:
                with self.db.writing() as s:
                    row = s.scalar(select(Annotator).where(Annotator.handle == handle))
                    if row is None and pseudonym is not None:
                        row = s.scalar(select(Annotator).where(Annotator.pseudonym == pseudonym))
                    if row is None:
                        row = Annotator(
                            handle=handle,
                            hf_username=hf_username,
                            pseudonym=pseudonym or pseudonym_for(handle, self.config.pseudonym_secret),
                            trust=self._prior_trust(),
                            gold_seen=0,
                            gold_correct=0,
                            created_at=self.now(),
                        )
                        s.add(row)
                        s.flush()
                        bump(s, annotators=1)
                    elif hf_username is not None and row.hf_username != hf_username:
                        row.hf_username = hf_username
                    return AnnotatorInfo.of(row)
            except IntegrityError:
                # Another replica created the same handle between our select and insert: read theirs.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def check_display_name_free(self, handle: str, key: str) -> None:
        """ValidationError when the display-name skeleton ``key`` is shown by an annotator other than ``handle``
        (who may not exist yet); writes nothing. One indexed look-up."""
        handle = check_text(handle, "handle", HANDLE_MAX)
        key = check_text(key, "display name key", DISPLAY_KEY_MAX)
        with self.db.reading() as s:
            owner = s.scalar(select(Annotator.handle).where(Annotator.display_key == key))
        if owner is not None and owner != handle:
            raise _name_taken()

    def set_display_name(self, handle: str, name: str, key: str) -> AnnotatorInfo:
        """Show ``name`` for the annotator ``handle`` (which must exist). The name is display only: it never
        changes which annotator acts.

        Args:
            handle: the acting identity (a signed anonymous id or ``hf:<user>``).
            name: the cleaned display name (1..64 characters).
            key: its confusable skeleton; unique across annotators.
        Returns:
            The annotator, with its display name.
        Raises:
            ValidationError: ``key`` is already another annotator's name (nothing changes), or bad input.
        """
        handle = check_text(handle, "handle", HANDLE_MAX)
        name = check_text(name, "display name", HANDLE_MAX)
        key = check_text(key, "display name key", DISPLAY_KEY_MAX)
        taken = _name_taken()
        try:
            with self.db.writing() as s:
                row = self._annotator(s, handle)
                if row.display_key == key and row.display_name == name:
                    return AnnotatorInfo.of(row)  # the usual case: the same name on every request, no write
                owner = s.scalar(select(Annotator.id).where(Annotator.display_key == key))
                if owner is not None and owner != row.id:
                    raise taken
                row.display_name, row.display_key = name, key
                s.flush()
                return AnnotatorInfo.of(row)
        except IntegrityError as exc:  # another identity took the key between our check and write
            raise taken from exc

    def get_annotator(self, handle: str) -> AnnotatorInfo:
        """The annotator with ``handle``; :class:`NotFoundError` if there is none."""
        handle = check_text(handle, "handle", HANDLE_MAX)
        with self.db.reading() as s:
            return AnnotatorInfo.of(self._annotator(s, handle))

    def _annotator(self, s: Session, handle: str) -> Annotator:
        row = s.scalar(select(Annotator).where(Annotator.handle == handle))
        if row is None:
            raise NotFoundError(f"unknown annotator {handle!r}: sign in first")
        return row

    def _prior_trust(self) -> float:
        return self.config.trust_prior_correct / self.config.trust_prior_seen
