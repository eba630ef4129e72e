"""Annotators, images, label sets and samples: what judgments are about and who makes them."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
from sqlalchemy import exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_db.counters import bump
from annotation_db.errors import NotFoundError, ValidationError
from annotation_db.models import (
    HANDLE_MAX,
    HF_USERNAME_MAX,
    LABEL_MAX,
    LABEL_SET_NAME_MAX,
    TEMPLATE_MAX,
    Annotator,
    Image,
    ImageSource,
    Judgment,
    JudgmentKind,
    LabelSet,
    Sample,
)
from annotation_db.store import StoreBase
from annotation_db.validation import (
    check_choice,
    check_id,
    check_json_object,
    check_labels,
    check_optional_text,
    check_sha256,
    check_template,
    check_text,
    json_key,
)

DEFAULT_TEMPLATE = "a photo of a {}."
MAX_ATTACK_BYTES = 16 * 1024


def pseudonym_for(handle: str, secret: str = "") -> str:
    """The stable pseudonym exported instead of a handle: 32 hex digits of HMAC-SHA256(secret, handle).

    With the deployment's secret (``RepositoryConfig.pseudonym_secret``) nobody can test a guessed handle
    against a published pseudonym; without one (tests, old rows) a fixed public salt is used.
    """
    if secret:
        return hmac.new(secret.encode(), b"poclip-annotator\0" + handle.encode(), hashlib.sha256).hexdigest()[:32]
    return hashlib.sha256(b"poclip-annotator\0" + handle.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    handle: str
    hf_username: str | None
    pseudonym: str
    trust: float
    gold_seen: int
    gold_correct: int

    @classmethod
    def of(cls, row: Annotator) -> AnnotatorInfo:
        return cls(
            row.id, row.handle, row.hf_username, row.pseudonym, row.trust, row.gold_seen, row.gold_correct
        )


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    path: Path  # absolute
    width: int
    height: int
    n_bytes: int
    source: str


@dataclass(frozen=True)
class LabelSetInfo:
    id: int
    name: str
    labels: tuple[str, ...]
    prompt_template: str

    def prompts(self) -> list[str]:
        """The template filled with each label, in label order."""
        return [self.prompt_template.format(label) for label in self.labels]


@dataclass(frozen=True)
class SampleInfo:
    """Everything needed to show a sample or re-render its attacked image."""

    id: int
    image_sha256: str
    image_path: Path  # absolute
    width: int
    height: int
    attack: dict[str, Any] | None
    label_set: str
    labels: tuple[str, ...]
    prompt_template: str
    is_gold: bool


def _is_gold(sample_id: Any) -> Any:
    return exists().where(
        Judgment.sample_id == sample_id, Judgment.kind == JudgmentKind.GOLD, Judgment.undone_at.is_(None)
    )


class CatalogMixin(StoreBase):
    """Annotators, images, label sets and samples."""

    # -- annotators -------------------------------------------------------------------------------------

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

    # -- images -----------------------------------------------------------------------------------------

    def store_image(
        self, image: bytes | PIL.Image.Image, source: str = "upload", uploader: str | None = None
    ) -> ImageInfo:
        """Store a normalised PNG once, by content hash, and record it.

        The file goes to ``data_dir/images/<first two hex>/<sha256>.png`` through a temporary file and a
        rename, so a crash never leaves a truncated image behind; the row is inserted only after the file
        is in place, and storing the same bytes again returns the existing row.

        Args:
            image: PNG bytes (already normalised by the caller), or a PIL image that is encoded to PNG here.
            source: ``upload``, ``synthetic`` or ``example``.
            uploader: handle of the annotator who uploaded it, if any.
        Returns:
            The stored image; ``sha256`` is its identity everywhere else in the API.
        """
        data = self._png_bytes(image)
        source_value = check_choice(source, ImageSource, "image source")
        uploader = check_optional_text(uploader, "uploader", HANDLE_MAX)
        width, height = self._probe_png(data)

        uploader_id = None
        if uploader is not None:
            with self.db.reading() as s:
                uploader_id = self._annotator(s, uploader).id

        sha = hashlib.sha256(data).hexdigest()
        relative = Path("images") / sha[:2] / f"{sha}.png"
        self._write_atomically(self.data_dir / relative, data)

        values = dict(
            sha256=sha,
            path=relative.as_posix(),
            width=width,
            height=height,
            n_bytes=len(data),
            source=source_value,
            uploader_id=uploader_id,
            created_at=self.now(),
        )
        with self.db.writing() as s:
            insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
            added = s.scalar(
                insert(Image).values(**values).on_conflict_do_nothing(index_elements=["sha256"]).returning(Image.sha256)
            )
            if added is not None:  # RETURNING, not rowcount: drivers disagree on rowcount for upserts
                bump(s, images=1)
            row = s.get_one(Image, sha)
            return self._image_info(row)

    @staticmethod
    def _probe_png(data: bytes) -> tuple[int, int]:
        """(width, height) of PNG bytes; ValidationError when they are not a readable PNG."""
        try:
            with PIL.Image.open(io.BytesIO(data)) as probe:
                if probe.format != "PNG":
                    raise ValidationError(f"image must be PNG bytes, got {probe.format}")
                width, height = probe.size
                probe.verify()
        except ValidationError:
            raise
        except Exception as exc:  # PIL raises many types for corrupt data; all mean the same to the user
            raise ValidationError(f"not a readable PNG image: {exc}") from exc
        return width, height

    def get_image(self, sha256: str) -> ImageInfo:
        """The stored image with this hash; :class:`NotFoundError` if unknown."""
        sha256 = check_sha256(sha256)
        with self.db.reading() as s:
            row = s.get(Image, sha256)
            if row is None:
                raise NotFoundError(f"unknown image {sha256[:12]}...")
            return self._image_info(row)

    def _image_info(self, row: Image) -> ImageInfo:
        return ImageInfo(
            row.sha256, self.data_dir / row.path, row.width, row.height, row.n_bytes, row.source.value
        )

    def _png_bytes(self, image: Any) -> bytes:
        if isinstance(image, PIL.Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
        if isinstance(image, bytearray | memoryview):
            image = bytes(image)
        if not isinstance(image, bytes):
            raise ValidationError(f"image must be PNG bytes or a PIL image, got {type(image).__name__}")
        if not image:
            raise ValidationError("image is empty")
        if len(image) > self.config.max_image_bytes:
            raise ValidationError(
                f"image is too large: {len(image):,} bytes, at most {self.config.max_image_bytes:,}"
            )
        return image

    @staticmethod
    def _write_atomically(path: Path, data: bytes) -> bool:
        """Write ``data`` to ``path`` through a temporary file and a rename; False when it was already there."""
        if path.exists() and path.stat().st_size == len(data):
            return False  # content-addressed: same name, same bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    # -- label sets -------------------------------------------------------------------------------------

    def ensure_label_set(
        self, name: str, labels: list[str], prompt_template: str = DEFAULT_TEMPLATE
    ) -> LabelSetInfo:
        """Return the label set ``name``, creating it on first use.

        A label set is immutable once created (samples and judgments refer to its labels), so asking for an
        existing name with other labels or another template raises :class:`ValidationError`.

        Args:
            name: 1..64 characters.
            labels: 2..1000 distinct labels, in the order the model scores them.
            prompt_template: text with one ``{}`` for the label.
        """
        name = check_text(name, "label set name", LABEL_SET_NAME_MAX)
        labels = check_labels(labels, LABEL_MAX)
        prompt_template = check_template(prompt_template, TEMPLATE_MAX)
        for attempt in range(2):
            try:
                with self.db.writing() as s:
                    row = s.scalar(select(LabelSet).where(LabelSet.name == name))
                    if row is None:
                        row = LabelSet(
                            name=name, labels=labels, prompt_template=prompt_template, created_at=self.now()
                        )
                        s.add(row)
                        s.flush()
                    elif list(row.labels) != labels or row.prompt_template != prompt_template:
                        raise ValidationError(
                            f"label set {name!r} already exists with other labels or template; use a new name"
                        )
                    return self._label_set_info(row)
            except IntegrityError:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def get_label_set(self, name: str) -> LabelSetInfo:
        """The label set called ``name``; :class:`NotFoundError` if unknown."""
        name = check_text(name, "label set name", LABEL_SET_NAME_MAX)
        with self.db.reading() as s:
            return self._label_set_info(self._label_set(s, name))

    @staticmethod
    def _label_set(s: Session, name: str) -> LabelSet:
        row = s.scalar(select(LabelSet).where(LabelSet.name == name))
        if row is None:
            raise NotFoundError(f"unknown label set {name!r}")
        return row

    @staticmethod
    def _label_set_info(row: LabelSet) -> LabelSetInfo:
        return LabelSetInfo(row.id, row.name, tuple(row.labels), row.prompt_template)

    # -- samples ----------------------------------------------------------------------------------------

    def add_sample(
        self, image_sha256: str, label_set: str, attack: dict[str, Any] | None = None
    ) -> SampleInfo:
        """Return the sample (image, attack, label set), creating it on first use.

        Args:
            image_sha256: a hash returned by :meth:`store_image`.
            label_set: name of a label set from :meth:`ensure_label_set`.
            attack: the typographic attack's parameters (text, font, position, ...) as a JSON dict; None for
                the clean image. Two samples with equal attacks (as JSON) are the same sample.
        """
        image_sha256 = check_sha256(image_sha256)
        label_set = check_text(label_set, "label set name", LABEL_SET_NAME_MAX)
        if attack is not None:
            attack = check_json_object(attack, "attack parameters", MAX_ATTACK_BYTES)
        key = json_key(attack)
        for attempt in range(2):
            try:
                with self.db.writing() as s:
                    label_row = self._label_set(s, label_set)
                    if s.get(Image, image_sha256) is None:
                        raise NotFoundError(f"unknown image {image_sha256[:12]}...: store it first")
                    sample_id = s.scalar(
                        select(Sample.id).where(
                            Sample.image_sha256 == image_sha256,
                            Sample.label_set_id == label_row.id,
                            Sample.attack_key == key,
                        )
                    )
                    if sample_id is None:
                        row = Sample(
                            image_sha256=image_sha256,
                            label_set_id=label_row.id,
                            attack=attack,
                            attack_key=key,
                            created_at=self.now(),
                        )
                        s.add(row)
                        s.flush()
                        sample_id = row.id
                        bump(s, samples=1)
                    return self._sample_info(s, sample_id)
            except IntegrityError:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def find_sample(
        self, image_sha256: str, label_set: str, attack: dict[str, Any] | None = None
    ) -> SampleInfo | None:
        """The sample :meth:`add_sample` would return for these arguments, or None; writes nothing.

        One indexed look-up (image, label set, attack key).
        """
        image_sha256 = check_sha256(image_sha256)
        label_set = check_text(label_set, "label set name", LABEL_SET_NAME_MAX)
        key = json_key(None if attack is None else check_json_object(attack, "attack parameters", MAX_ATTACK_BYTES))
        with self.db.reading() as s:
            sample_id = s.scalar(
                select(Sample.id)
                .join(LabelSet, LabelSet.id == Sample.label_set_id)
                .where(Sample.image_sha256 == image_sha256, LabelSet.name == label_set, Sample.attack_key == key)
            )
            return None if sample_id is None else self._sample_info(s, sample_id)

    def get_sample(self, sample_id: int) -> SampleInfo:
        """The sample with this id; :class:`NotFoundError` if unknown."""
        sample_id = check_id(sample_id, "sample id")
        with self.db.reading() as s:
            return self._sample_info(s, sample_id)

    def _sample_info(self, s: Session, sample_id: int) -> SampleInfo:
        row = s.execute(
            select(Sample, Image, LabelSet, _is_gold(Sample.id).label("is_gold"))
            .join(Image, Image.sha256 == Sample.image_sha256)
            .join(LabelSet, LabelSet.id == Sample.label_set_id)
            .where(Sample.id == sample_id)
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"unknown sample {sample_id}")
        sample, image, label_set, is_gold = row
        return SampleInfo(
            id=sample.id,
            image_sha256=image.sha256,
            image_path=self.data_dir / image.path,
            width=image.width,
            height=image.height,
            attack=sample.attack,
            label_set=label_set.name,
            labels=tuple(label_set.labels),
            prompt_template=label_set.prompt_template,
            is_gold=bool(is_gold),
        )
