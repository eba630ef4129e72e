"""Label sets and samples: what judgments are about (annotators and images have their own modules)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_db.annotators import AnnotatorsMixin
from annotation_db.counters import bump
from annotation_db.errors import NotFoundError, ValidationError
from annotation_db.images import ImagesMixin
from annotation_db.models import (
    LABEL_MAX,
    LABEL_SET_NAME_MAX,
    TEMPLATE_MAX,
    Image,
    Judgment,
    JudgmentKind,
    LabelSet,
    Sample,
)
from annotation_db.validation import (
    check_id,
    check_json_object,
    check_labels,
    check_sha256,
    check_template,
    check_text,
    json_key,
)

DEFAULT_TEMPLATE = "a photo of a {}."
MAX_ATTACK_BYTES = 16 * 1024


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


class CatalogMixin(AnnotatorsMixin, ImagesMixin):
    """Label sets and samples, over annotators and images."""

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
