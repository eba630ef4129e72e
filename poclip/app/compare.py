"""Comparing base and aligned CLIP on one picture, keeping what was shown, and storing a person's vote on it.

A Predict makes a comparison record (:mod:`poclip.app.comparisons`); a vote names its id, and the judgment
stored is derived from that record alone (:func:`judgment_for`), never from what the page sends back.
"""

from __future__ import annotations

import functools
import io
import math
import random
import threading
from dataclasses import replace
from typing import Any

from PIL import Image

from annotation_db import DuplicateJudgmentError, Repository
from poclip.app.batching import ImageBatcher
from poclip.app.comparisons import SIDES, SOURCES, Answer, Comparison, ComparisonStore
from poclip.app.comparisons import new_id as new_comparison_id
from poclip.app.live import LiveHead
from poclip.app.seeding import Seeding
from poclip.app.visitors import Visitors
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy, trunk_inputs
from poclip.errors import UserError
from poclip.world import heap
from poclip.world.attacks import TextAttack, render
from poclip.world.images import normalize_image
from poclip.world.labels import DEFAULT_TEMPLATE, check_template, parse_labels

VERDICTS = ("left", "right", "both", "neither")


def check_finite(value: Any, name: str) -> float:
    """A float input from the UI or raw JSON: a real, finite number, or UserError (NaN and inf are refused)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{name} must be a number, got {value!r}.") from exc
    if not math.isfinite(number):
        raise UserError(f"{name} must be a finite number, got {value!r}.")
    return number


def runner_up(answer: Answer, chosen: str) -> str:
    """The answer's most likely label other than ``chosen``."""
    return next(label for label, _ in sorted(answer.probs.items(), key=lambda kv: -kv[1]) if label != chosen)


def judgment_for(record: Comparison, verdict: str, correct_label: str | None) -> tuple[str, str]:
    """(chosen, rejected) for ``verdict`` on the comparison as shown; :class:`UserError` when it cannot stand.

    left/right: the winner's answer over the loser's (its runner-up when both said the same); both: the shared
    answer over the written word (or the runner-up); neither: ``correct_label`` over the wrong answer shown.
    """
    if verdict not in VERDICTS:
        raise UserError(f"The vote must be one of {', '.join(VERDICTS)}.")
    left, right = record.left, record.right
    if verdict == "neither":
        if not correct_label:
            raise UserError("Neither side was right? Pick the right label from the list first.")
        if correct_label not in record.labels:
            raise UserError(f"{correct_label!r} is not one of this comparison's labels ({', '.join(record.labels)}).")
        wrong = [a.label for a in (left, right) if a.label != correct_label]
        if not wrong:
            raise UserError(f"Both sides answered {correct_label!r}: vote 'Both' if that is right.")
        return correct_label, wrong[0]
    if verdict in ("left", "right"):
        winner, loser = (left, right) if verdict == "left" else (right, left)
        rejected = loser.label if loser.label != winner.label else runner_up(loser, winner.label)
        return winner.label, rejected
    if left.label != right.label:
        raise UserError("The two sides give different answers, so they cannot both be right.")
    written = record.attack.text.strip() if record.attack else ""
    rejected = written if written in record.labels and written != left.label else runner_up(left, left.label)
    return left.label, rejected


class Comparisons:
    """Predict and vote: base and aligned answers on a picture, kept for the vote that names them.

    Args:
        encoder: the backbone; its image tower's passes are shared by concurrent requests.
        live_head: the aligned version serving (read once per comparison).
        repo: where a vote's picture, sample and judgment are written together.
        visitors: who predicts and votes, and the per-address limits.
        seeding: the stored label sets a vote's labels belong to.
        records: where predictions are kept for their votes (default: a store with its default bounds).
    """

    def __init__(self, encoder: ClipEncoder, live_head: LiveHead, repo: Repository, visitors: Visitors,
                 seeding: Seeding, records: ComparisonStore | None = None) -> None:
        self.encoder = encoder
        self.live_head = live_head
        self.repo = repo
        self.visitors = visitors
        self.seeding = seeding
        self.records = records or ComparisonStore()
        # Concurrent Compare requests share image-tower passes (see poclip.app.batching).
        self.batcher = ImageBatcher(encoder.encode_pixels)
        self._trunk_batchers: dict[int, ImageBatcher] = {}  # tower heads: the trunk's pass, per cut depth
        self._batchers_lock = threading.Lock()
        self._burst = heap.Burst()

    def close(self) -> None:
        self.batcher.close()
        for batcher in list(self._trunk_batchers.values()):
            batcher.close()

    def compare(
        self,
        image: Image.Image,
        labels: str | list[str] | tuple[str, ...],
        attack: TextAttack | None = None,
        template: str = DEFAULT_TEMPLATE,
        t: float = 1.0,
        normalize: bool = True,
    ) -> Comparison:
        """Base and aligned predictions for ``image`` (with ``attack`` written on it) over ``labels``.

        One image-tower pass; the aligned answer uses the live head at strength ``t`` (the base model when
        no version is live). The live head is read once, so a swap during the call does not mix versions.
        The result is not kept: :meth:`predict` keeps it for a vote.
        """
        label_list = parse_labels(list(labels) if isinstance(labels, tuple) else labels)
        template = check_template(template)
        t = check_finite(t, "The strength t")
        picture = normalize_image(image) if normalize else image
        seen = render(picture, attack) if attack is not None else picture
        live = self.live_head.current
        # Preprocessing runs here, in the request's thread; the tower (or a tower head's trunk) pass is shared
        # with concurrent requests. A tower head then runs its tail at base and at aligned weights.
        pixels = self.encoder.pixels([seen])[0]
        if live.policy is None:
            emb = self.batcher.encode(pixels)[None]
            base = self.encoder.log_probs(emb, self.encoder.classifier(label_list, (template,)))
            aligned = base
        else:
            x = self.batcher_for(live.policy).encode(pixels)[None]
            base, aligned = live.policy.compare_inputs(x, label_list, template, float(t))
        as_dict = lambda lp: {lab: round(float(p), 6) for lab, p in zip(label_list, lp[0].exp(), strict=True)}  # noqa: E731
        return Comparison(new_comparison_id(), picture, seen, attack, tuple(label_list), template,
                          Answer("base", as_dict(base)), Answer("aligned", as_dict(aligned)), "base", live.label,
                          float(t))

    def batcher_for(self, policy: Policy) -> ImageBatcher:
        """The batcher of a head's inputs: embeddings, or (tower heads) the frozen trunk's activations at the cut."""
        if policy.linear is not None:
            return self.batcher
        with self._batchers_lock:
            if policy.spec.blocks not in self._trunk_batchers:
                self._trunk_batchers[policy.spec.blocks] = ImageBatcher(
                    functools.partial(trunk_inputs, self.encoder, policy.spec.blocks))
            return self._trunk_batchers[policy.spec.blocks]

    def predict(
        self,
        image: Image.Image,
        labels: str | list[str],
        attack: TextAttack | None = None,
        *,
        template: str = DEFAULT_TEMPLATE,
        t: float = 1.0,
        arena: bool = False,
        source: str = "upload",
        shared: bool = False,
        rng: random.Random | None = None,
    ) -> Comparison:
        """:meth:`compare`, then keep the comparison (with which model is shown left) for :meth:`vote`.

        Args:
            image: an already normalised picture (:func:`poclip.world.images.open_image`).
            arena: show the models in random order (``rng``), named only after the vote.
            source: ``upload``, ``synthetic`` or ``example``: where the picture came from.
            shared: for uploads, the person agreed that the picture is stored with their vote and shown to
                other annotators; without it a vote on an upload is refused.
        Returns:
            The kept comparison, with the picture as the models saw it (``seen``; the record kept for the vote
            leaves it out); its ``id`` is what a vote names. It is kept under the request's network address,
            which holds a bounded share of the records (:class:`~poclip.app.comparisons.ComparisonStore`).
        Raises:
            ClientLimited: the address is over its prediction rate (nothing is computed or kept).
        """
        if source not in SOURCES:
            raise UserError(f"source must be one of {', '.join(SOURCES)}.")
        self.visitors.admit_prediction()
        with self._burst.running():  # the last prediction of a burst returns what they all freed to the system
            result = self.compare(image, labels, attack, template, t, normalize=False)
        shown_left = (rng or random).choice(SIDES) if arena else "base"
        # Kept without the picture as shown (half the memory): a vote needs the picture and the text, and the
        # page got what the models saw with this answer.
        kept = self.records.put(replace(result, seen=None, shown_left=shown_left, source=source,
                                        shared=bool(shared)), self.visitors.client())
        return replace(kept, seen=result.seen)

    def comparison(self, comparison_id: str) -> Comparison:
        """The kept comparison with this id (:class:`~poclip.app.comparisons.ComparisonExpired`, a UserError,
        when it is gone)."""
        return self.records.get(comparison_id)

    def vote(self, annotator: str, comparison_id: str, verdict: str, correct_label: str | None = None) -> dict:
        """Store the person's verdict on comparison ``comparison_id``, exactly as it was shown.

        ``verdict`` says which side was right: ``left``, ``right``, ``both`` or ``neither`` (then
        ``correct_label``, one of the comparison's labels, names the object). The chosen label is the right
        answer; the rejected one is the wrong answer shown (or, when both were right, the written word or the
        runner-up).

        Everything is checked before anything is written (the comparison, the verdict, the label, the
        handle, consent for uploads, the per-address and per-annotator rate limits); then the picture, its
        sample and the judgment are stored. A refused vote leaves no image row, file, sample or annotator behind.

        Returns:
            judgment_id, sample_id, comparison_id, chosen, rejected, verdict, shown_left, version and t.
        """
        record = self.comparison(comparison_id)
        chosen, rejected = judgment_for(record, verdict, correct_label)
        annotator = self.visitors.who(annotator)
        if record.source == "upload" and not record.shared:
            raise UserError("A vote stores your picture and shows it to other annotators: tick 'Others may see and "
                            "label my picture' and press Predict again (or vote on an example or a synthetic "
                            "object).")
        png = io.BytesIO()
        record.picture.save(png, format="PNG")
        try:  # picture, sample, annotator and judgment in one unit: a refused vote writes none of them
            with self.visitors.admitted(annotator, judgment=True):
                judgment, sample = self.repo.record_upload_judgment(
                    png.getvalue(), self.seeding.label_set_for(list(record.labels), record.template),
                    record.attack.to_dict() if record.attack else None, annotator, chosen, rejected,
                    shown_left=record.shown_left, said_right=verdict, source=record.source)
        except DuplicateJudgmentError as exc:
            raise UserError("You have already judged this picture with this text and these labels; change "
                            "something and press Predict again.") from exc
        return {"judgment_id": judgment.id, "sample_id": sample.id, "comparison_id": record.id, "chosen": chosen,
                "rejected": rejected, "verdict": verdict, "shown_left": record.shown_left,
                "version": record.version, "t": record.t}
