"""Annotation: serve stored items one at a time, record the label a person picks, undo it, count one's labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from annotation_db import DuplicateJudgmentError, Repository, SampleInfo, ValidationError
from poclip.app.compare import Comparisons
from poclip.app.visitors import Visitors
from poclip.errors import UserError
from poclip.world.attacks import TextAttack, render
from poclip.world.images import open_image


@dataclass(frozen=True)
class Item:
    """An item to annotate: the picture as shown, its candidate labels, and the sample behind it."""

    sample: SampleInfo
    picture: Image.Image
    labels: list[str]


def picture_of(sample: SampleInfo) -> Image.Image:
    """The sample's picture as annotators and the trainer see it (attack re-rendered from its JSON)."""
    image = open_image(Path(sample.image_path))
    return render(image, TextAttack.from_dict(sample.attack)) if sample.attack else image


class Annotation:
    """Items, answers and undo for annotators.

    Args:
        repo: the store (which item comes next, the judgments).
        visitors: who answers, and the per-address limits.
        comparisons: the base model's answer, when the rejected label is not the written word.
    """

    def __init__(self, repo: Repository, visitors: Visitors, comparisons: Comparisons) -> None:
        self.repo = repo
        self.visitors = visitors
        self.comparisons = comparisons

    def next_item(self, annotator: str) -> Item | None:
        """The next item ``annotator`` should label, or None when they have labelled everything."""
        annotator = self.visitors.who(annotator)
        with self.visitors.admitted(annotator, judgment=False):
            self.repo.ensure_annotator(annotator)
        sample = self.repo.next_sample(annotator)
        if sample is None:
            return None
        return Item(sample, picture_of(sample), list(sample.labels))

    def item(self, sample_id: int) -> Item:
        """Item ``sample_id`` as annotators see it (e.g. again after an undo)."""
        sample = self.repo.get_sample(int(sample_id))
        return Item(sample, picture_of(sample), list(sample.labels))

    def answer_item(self, annotator: str, sample_id: int, chosen: str) -> dict[str, Any]:
        """Record that on ``sample_id`` the right label is ``chosen``.

        The rejected label is the word written on the picture when it is a candidate label, else the base
        model's most likely wrong label (what the person implicitly corrected).

        Returns:
            judgment_id, sample_id, chosen and rejected.
        """
        annotator = self.visitors.who(annotator)
        sample = self.repo.get_sample(int(sample_id))
        if chosen not in sample.labels:
            raise UserError(f"{chosen!r} is not one of this item's labels.")
        rejected = self._rejected_for(sample, chosen)
        try:
            with self.visitors.admitted(annotator, judgment=True):
                judgment = self.repo.record_judgment(sample.id, annotator, chosen, rejected, require_served=True)
        except DuplicateJudgmentError as exc:
            raise UserError("You have already labelled this item (press U to undo your last label).") from exc
        return {"judgment_id": judgment.id, "sample_id": sample.id, "chosen": chosen, "rejected": rejected}

    def _rejected_for(self, sample: SampleInfo, chosen: str) -> str:
        written = (sample.attack or {}).get("text", "").strip()
        if written in sample.labels and written != chosen:
            return written
        comparison = self.comparisons.compare(picture_of(sample), list(sample.labels), None, sample.prompt_template,
                                              0.0, normalize=False)
        ranked = sorted(comparison.base.probs.items(), key=lambda kv: -kv[1])
        return next(label for label, _ in ranked if label != chosen)

    def undo(self, annotator: str) -> dict[str, Any] | None:
        """Undo ``annotator``'s last label (within the store's undo window); its judgment and sample ids, or None
        when there is nothing recent to undo."""
        undone = self.repo.undo_last_judgment(self.visitors.who(annotator))
        return None if undone is None else {"judgment_id": undone.id, "sample_id": undone.sample_id}

    def labelled_by(self, annotator: str) -> int:
        """How many labels ``annotator`` has given and not undone (0 for someone new)."""
        try:
            return len(self.repo.judgments_of(self.visitors.who(annotator)))
        except ValidationError:  # not an annotator yet
            return 0
