"""Recording judgments and undoing them (what an annotator sees next: :mod:`annotation_db.serving`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from annotation_db.annotators import pseudonym_for
from annotation_db.catalog import MAX_ATTACK_BYTES, CatalogMixin, SampleInfo
from annotation_db.counters import bump
from annotation_db.errors import DuplicateJudgmentError, NotFoundError, RateLimitedError, ValidationError
from annotation_db.models import (
    HANDLE_MAX,
    LABEL_MAX,
    LABEL_SET_NAME_MAX,
    MODEL_NAME_MAX,
    Annotator,
    ArenaModel,
    ArenaVerdict,
    Battle,
    Image,
    ImageSource,
    Judgment,
    JudgmentKind,
    LabelSet,
    Sample,
    ServedItem,
)
from annotation_db.trust import move_trust
from annotation_db.validation import (
    check_choice,
    check_id,
    check_json_object,
    check_optional_choice,
    check_optional_text,
    check_text,
    check_time,
    json_key,
)


@dataclass(frozen=True)
class JudgmentInfo:
    id: int
    sample_id: int
    annotator: str
    chosen: str
    rejected: str
    kind: str
    shown_left: str | None
    said_right: str | None
    created_at: datetime
    undone_at: datetime | None


# record_judgment is the hot path (every click of every annotator): its statements are built once, so each
# call skips statement construction and cache-key generation, which cost as much as SQLite itself.
_ANNOTATOR_ID = select(Annotator.id).where(Annotator.handle == bindparam("handle"))
_SAMPLE_LABELS = (
    select(LabelSet.name, LabelSet.labels)
    .join(Sample, Sample.label_set_id == LabelSet.id)
    .where(Sample.id == bindparam("sample_id"))
)
_RECENT_COUNT = (
    select(func.count())
    .select_from(Judgment)
    .where(Judgment.annotator_id == bindparam("annotator_id"), Judgment.created_at > bindparam("since"))
)
_OTHER_GOLD = select(Judgment.id).where(
    Judgment.sample_id == bindparam("sample_id"),
    Judgment.kind == JudgmentKind.GOLD,
    Judgment.undone_at.is_(None),
    Judgment.annotator_id != bindparam("annotator_id"),
)
_SERVED = select(ServedItem.sample_id).where(
    ServedItem.annotator_id == bindparam("annotator_id"), ServedItem.sample_id == bindparam("sample_id")
)
_PREVIOUS = select(Judgment.id, Judgment.undone_at).where(
    Judgment.sample_id == bindparam("sample_id"), Judgment.annotator_id == bindparam("annotator_id")
)
_DELETE = delete(Judgment).where(Judgment.id == bindparam("judgment_id"))
_INSERT = insert(Judgment).returning(Judgment.id)


def _info(row: Judgment, annotator: str) -> JudgmentInfo:
    return JudgmentInfo(
        row.id,
        row.sample_id,
        annotator,
        row.chosen,
        row.rejected,
        row.kind.value,
        None if row.shown_left is None else row.shown_left.value,
        None if row.said_right is None else row.said_right.value,
        row.created_at,
        row.undone_at,
    )


def _clear_undone(conn, sample_id: int, annotator_id: int, annotator: str):
    """One judgment per (sample, annotator): refuse a second live one; a redo after undo deletes the undone row,
    so the new judgment gets a fresh id and "pairs since a version" sees it. Returns the deleted row, if any."""
    previous = conn.execute(_PREVIOUS, {"sample_id": sample_id, "annotator_id": annotator_id}).one_or_none()
    if previous is not None:
        if previous.undone_at is None:
            raise DuplicateJudgmentError(f"{annotator!r} has already judged sample {sample_id}")
        conn.execute(_DELETE, {"judgment_id": previous.id})
    return previous


class JudgmentsMixin(CatalogMixin):
    """Judgments: record (validated, rate limited) and undo."""

    def record_judgment(
        self,
        sample_id: int,
        annotator: str,
        chosen: str,
        rejected: str,
        *,
        kind: str = "human",
        shown_left: str | None = None,
        said_right: str | None = None,
        created_at: datetime | None = None,
        enforce_rate_limit: bool = True,
        require_served: bool = False,
    ) -> JudgmentInfo:
        """Store one preference: on ``sample_id``, ``annotator`` prefers ``chosen`` over ``rejected``.

        Checked before anything is written: types, both labels in the sample's label set and different,
        the sample and annotator exist, one judgment per sample and annotator (an undone one may be redone),
        at most one gold answer per sample, and the per-annotator rate limit for human judgments.

        Args:
            sample_id: a sample from :meth:`add_sample` or :meth:`next_sample`.
            annotator: handle from :meth:`ensure_annotator`.
            chosen, rejected: labels of the sample's label set.
            kind: ``human``, ``gold`` (the reference answer of a gold item) or ``synthetic``.
            shown_left: arena only: which model was shown on the left, ``base`` or ``aligned``.
            said_right: arena only: which side the person said was right: ``left``, ``right``, ``both``,
                ``neither``.
            created_at: when it was made, for imports; default now.
            enforce_rate_limit: False only for imports and trusted bulk writers.
            require_served: refuse a human judgment on a sample :meth:`next_sample` never served to this
                annotator (the annotation queue; pictures people upload themselves are not served).
        Returns:
            The stored judgment.
        Raises:
            ValidationError: bad input (its subclasses: NotFoundError, DuplicateJudgmentError,
                RateLimitedError); nothing was written.
        """
        sample_id = check_id(sample_id, "sample id")
        annotator = check_text(annotator, "annotator", HANDLE_MAX)
        chosen = check_text(chosen, "chosen label", LABEL_MAX)
        rejected = check_text(rejected, "rejected label", LABEL_MAX)
        kind_value = check_choice(kind, JudgmentKind, "judgment kind")
        left = check_optional_choice(shown_left, ArenaModel, "model shown left")
        verdict = check_optional_choice(said_right, ArenaVerdict, "arena verdict")
        if chosen == rejected:
            raise ValidationError(f"chosen and rejected must differ (both are {chosen!r})")
        now = self.now()
        created = now if created_at is None else check_time(created_at, "created_at")

        try:
            with self.db.write_connection() as conn:
                annotator_id = conn.scalar(_ANNOTATOR_ID, {"handle": annotator})
                if annotator_id is None:
                    raise NotFoundError(f"unknown annotator {annotator!r}: sign in first")
                found = conn.execute(_SAMPLE_LABELS, {"sample_id": sample_id}).one_or_none()
                if found is None:
                    raise NotFoundError(f"unknown sample {sample_id}")
                set_name, labels = found
                for role, label in (("chosen", chosen), ("rejected", rejected)):
                    if label not in labels:
                        raise ValidationError(f"{role} label {label!r} is not in label set {set_name!r}")

                if enforce_rate_limit and kind_value is JudgmentKind.HUMAN:
                    self._check_rate_conn(conn, annotator_id, now)

                if kind_value is JudgmentKind.GOLD and conn.scalar(
                    _OTHER_GOLD, {"sample_id": sample_id, "annotator_id": annotator_id}
                ):
                    raise ValidationError(f"sample {sample_id} already has a gold answer")
                if (
                    require_served
                    and kind_value is JudgmentKind.HUMAN
                    and conn.scalar(_SERVED, {"annotator_id": annotator_id, "sample_id": sample_id}) is None
                ):
                    raise ValidationError(f"sample {sample_id} was not served to you: ask for the next item")

                previous = _clear_undone(conn, sample_id, annotator_id, annotator)

                judgment_id = conn.scalar(
                    _INSERT,
                    {
                        "sample_id": sample_id,
                        "annotator_id": annotator_id,
                        "chosen": chosen,
                        "rejected": rejected,
                        "kind": kind_value,
                        "shown_left": left,
                        "said_right": verdict,
                        "created_at": created,
                    },
                )
                move_trust(conn, self.config, sample_id, annotator_id, kind_value, chosen, +1)
                bump(conn, judgments=1, undone=-int(previous is not None))  # counters last: the lock order
        except IntegrityError as exc:
            # Only a concurrent duplicate from the same annotator gets past the checks above.
            raise DuplicateJudgmentError(f"{annotator!r} has already judged sample {sample_id}") from exc
        assert judgment_id is not None
        return JudgmentInfo(
            judgment_id,
            sample_id,
            annotator,
            chosen,
            rejected,
            kind_value.value,
            None if left is None else left.value,
            None if verdict is None else verdict.value,
            created,
            None,
        )

    def record_upload_judgment(
        self,
        image: bytes,
        label_set: str,
        attack: dict | None,
        annotator: str,
        chosen: str,
        rejected: str,
        *,
        shown_left: str | None = None,
        said_right: str | None = None,
        hf_username: str | None = None,
        source: str = "upload",
        models: tuple[str, str] | None = None,
        blind: bool = False,
    ) -> tuple[JudgmentInfo, SampleInfo]:
        """A person's judgment on a picture they brought (``source`` ``upload``) or picked from the app's examples
        or synthetic objects: the image, its sample, the annotator (on first sight) and the judgment are stored
        together, or nothing is. Only an upload names its uploader.

        Every check (types, labels, PNG, rate limit, one judgment per sample) comes before any write. The image
        file is written before the transaction that inserts the row naming it, and removed again when that
        transaction fails and no row names it. So a refused vote leaves no image row, sample, annotator or file.

        ``models``: the models shown left and right (``base``, ``aligned`` or a peer defense), stored as the vote's
        battle with ``blind`` (arena mode) and the verdict ``said_right``, which is then required.

        Returns:
            The stored judgment and its sample.
        Raises:
            ValidationError (and subclasses, e.g. RateLimitedError, DuplicateJudgmentError): nothing was written.
        """
        data = self._png_bytes(image)
        image_source = check_optional_choice(source, ImageSource, "image source")
        label_set = check_text(label_set, "label set name", LABEL_SET_NAME_MAX)
        annotator = check_text(annotator, "annotator", HANDLE_MAX)
        hf_username = check_optional_text(hf_username, "Hugging Face username", 96)
        chosen = check_text(chosen, "chosen label", LABEL_MAX)
        rejected = check_text(rejected, "rejected label", LABEL_MAX)
        left = check_optional_choice(shown_left, ArenaModel, "model shown left")
        verdict = check_optional_choice(said_right, ArenaVerdict, "arena verdict")
        if chosen == rejected:
            raise ValidationError(f"chosen and rejected must differ (both are {chosen!r})")
        if models is not None:
            models = (check_text(models[0], "model shown left", MODEL_NAME_MAX),
                      check_text(models[1], "model shown right", MODEL_NAME_MAX))
            if verdict is None:
                raise ValidationError("a battle needs the verdict (said_right)")
        if attack is not None:
            attack = check_json_object(attack, "attack parameters", MAX_ATTACK_BYTES)
        width, height = self._probe_png(data)
        labels_row = self.get_label_set(label_set)
        for role, label in (("chosen", chosen), ("rejected", rejected)):
            if label not in labels_row.labels:
                raise ValidationError(f"{role} label {label!r} is not in label set {label_set!r}")
        now = self.now()
        self._check_rate(annotator, now)  # before the file: a refused vote writes nothing at all

        sha = hashlib.sha256(data).hexdigest()
        relative = Path("images") / sha[:2] / f"{sha}.png"
        created_file = self._write_atomically(self.data_dir / relative, data)
        key = json_key(attack)
        dialect_insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        try:
            with self.db.write_connection() as conn:
                annotator_id = conn.scalar(_ANNOTATOR_ID, {"handle": annotator})
                new_annotator = annotator_id is None
                if new_annotator:
                    annotator_id = conn.scalar(
                        insert(Annotator).returning(Annotator.id),
                        {"handle": annotator, "hf_username": hf_username,
                         "pseudonym": pseudonym_for(annotator, self.config.pseudonym_secret),
                         "trust": self._prior_trust(), "gold_seen": 0, "gold_correct": 0, "created_at": now},
                    )
                else:  # authoritative rate check, under the write lock
                    self._check_rate_conn(conn, annotator_id, now)
                added_image = conn.scalar(
                    dialect_insert(Image)
                    .values(sha256=sha, path=relative.as_posix(), width=width, height=height, n_bytes=len(data),
                            source=image_source,
                            uploader_id=annotator_id if image_source is ImageSource.UPLOAD else None, created_at=now)
                    .on_conflict_do_nothing(index_elements=["sha256"])
                    .returning(Image.sha256)
                ) is not None
                sample_id = conn.scalar(
                    select(Sample.id).where(Sample.image_sha256 == sha, Sample.label_set_id == labels_row.id,
                                            Sample.attack_key == key)
                )
                new_sample = sample_id is None
                if new_sample:
                    sample_id = conn.scalar(
                        insert(Sample).returning(Sample.id),
                        {"image_sha256": sha, "label_set_id": labels_row.id, "attack": attack,
                         "attack_key": key, "created_at": now},
                    )
                previous = _clear_undone(conn, sample_id, annotator_id, annotator)
                judgment_id = conn.scalar(
                    _INSERT,
                    {"sample_id": sample_id, "annotator_id": annotator_id, "chosen": chosen, "rejected": rejected,
                     "kind": JudgmentKind.HUMAN, "shown_left": left, "said_right": verdict, "created_at": now},
                )
                if models is not None:
                    conn.execute(insert(Battle), {"judgment_id": judgment_id, "left_model": models[0],
                                                  "right_model": models[1], "blind": bool(blind)})
                move_trust(conn, self.config, sample_id, annotator_id, JudgmentKind.HUMAN, chosen, +1)
                bump(conn, annotators=int(new_annotator), images=int(added_image), judgments=1,
                     samples=int(new_sample), undone=-int(previous is not None))
        except BaseException as exc:
            if created_file:
                self._remove_unreferenced(sha, self.data_dir / relative)
            if isinstance(exc, IntegrityError):
                raise DuplicateJudgmentError(f"{annotator!r} has already judged this picture") from exc
            raise
        info = JudgmentInfo(judgment_id, sample_id, annotator, chosen, rejected, "human",
                            None if left is None else left.value, None if verdict is None else verdict.value,
                            now, None)
        return info, self.get_sample(sample_id)

    def _remove_unreferenced(self, sha: str, path: Path) -> None:
        # Under the write lock, so no concurrent vote can commit a row naming the file between check and unlink
        # (on PostgreSQL a concurrent first upload of the very same picture remains possible, and harmless: the
        # file is written again by that vote before its row).
        with self.db.write_connection() as conn:
            if conn.scalar(select(Image.sha256).where(Image.sha256 == sha)) is None:
                path.unlink(missing_ok=True)

    def _check_rate(self, annotator: str, now: datetime) -> None:
        with self.db.reading() as s:
            annotator_id = s.scalar(_ANNOTATOR_ID, {"handle": annotator})
            if annotator_id is not None:
                self._check_rate_conn(s, annotator_id, now)

    def _check_rate_conn(self, conn: Any, annotator_id: int, now: datetime) -> None:
        limit = self.config.rate_limit_count
        if limit is None:
            return
        since = now - timedelta(seconds=self.config.rate_limit_window_s)
        if conn.scalar(_RECENT_COUNT, {"annotator_id": annotator_id, "since": since}) >= limit:
            raise RateLimitedError(f"slow down: at most {limit} judgments per {self.config.rate_limit_window_s:g} s")

    def undo_last_judgment(self, annotator: str) -> JudgmentInfo | None:
        """Undo ``annotator``'s latest human judgment if it is younger than the undo window.

        The row stays (marked undone, with the time) and no longer counts anywhere; the annotator may judge
        the sample again. Trust and the counters move in the same transaction.

        Returns:
            The judgment that was undone, or None when there is nothing recent enough to undo.
        """
        annotator = check_text(annotator, "annotator", HANDLE_MAX)
        now = self.now()
        with self.db.writing() as s:
            annotator_id = self._annotator(s, annotator).id
            row = s.scalars(
                select(Judgment)
                .where(
                    Judgment.annotator_id == annotator_id,
                    Judgment.kind == JudgmentKind.HUMAN,
                    Judgment.undone_at.is_(None),
                    Judgment.created_at >= now - timedelta(seconds=self.config.undo_window_s),
                )
                .order_by(Judgment.created_at.desc(), Judgment.id.desc())
                .limit(1)
            ).one_or_none()
            if row is None:
                return None
            row.undone_at = now
            s.flush()
            conn = s.connection()
            move_trust(conn, self.config, row.sample_id, annotator_id, JudgmentKind.HUMAN, row.chosen, -1)
            bump(conn, judgments=-1, undone=1)
            return _info(row, annotator)

    def judgments_of(self, annotator: str, *, include_undone: bool = False) -> list[JudgmentInfo]:
        """All judgments of one annotator, oldest first (for their history page and for tests)."""
        annotator = check_text(annotator, "annotator", HANDLE_MAX)
        with self.db.reading() as s:
            annotator_id = self._annotator(s, annotator).id
            query = select(Judgment).where(Judgment.annotator_id == annotator_id).order_by(Judgment.id)
            if not include_undone:
                query = query.where(Judgment.undone_at.is_(None))
            return [_info(row, annotator) for row in s.scalars(query)]

    def recent_judgments(self, limit: int = 20) -> list[JudgmentInfo]:
        """Everyone's latest judgments, newest first (undone ones included, with their undo time)."""
        limit = max(1, min(int(limit), 500))
        with self.db.reading() as s:
            rows = s.execute(
                select(Judgment, Annotator.handle)
                .join(Annotator, Annotator.id == Judgment.annotator_id)
                .order_by(Judgment.id.desc())
                .limit(limit)
            ).all()
            return [_info(row, handle) for row, handle in rows]
