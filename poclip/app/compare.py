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
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from annotation_db import DuplicateJudgmentError, Repository
from poclip import zerogpu
from poclip.app.batching import ImageBatcher
from poclip.app.comparisons import SIDES, SOURCES, Answer, Comparison, ComparisonStore
from poclip.app.comparisons import new_id as new_comparison_id
from poclip.app.leaderboard import Rating, bradley_terry
from poclip.app.live import LiveHead
from poclip.app.peers import TITLES as PEER_TITLES
from poclip.app.peers import PeerDefenses
from poclip.app.seeding import Seeding
from poclip.app.visitors import Visitors
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy
from poclip.errors import UserError
from poclip.world import heap
from poclip.world.attacks import TextAttack, render
from poclip.world.images import normalize_image
from poclip.world.labels import DEFAULT_TEMPLATE, check_template, parse_labels

VERDICTS = ("left", "right", "both", "neither")
LEADERBOARD_TTL_S = 10.0
MODEL_TITLES = {"base": "Base CLIP", "aligned": "PO-CLIP", **PEER_TITLES}


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
        peers: the defenses a side may show instead of base or aligned (default: none).
    """

    def __init__(self, encoder: ClipEncoder, live_head: LiveHead, repo: Repository, visitors: Visitors,
                 seeding: Seeding, records: ComparisonStore | None = None, peers: PeerDefenses | None = None
                 ) -> None:
        self.encoder = encoder
        self.live_head = live_head
        self.repo = repo
        self.visitors = visitors
        self.seeding = seeding
        self.records = records or ComparisonStore()
        self.peers = peers or PeerDefenses(encoder)
        # Concurrent Compare requests share image-tower passes (see poclip.app.batching). On ZeroGPU each request's
        # model work is a GPU call of its own instead: the GPU exists only inside such calls, in a worker process,
        # so a shared thread of this process could not use it.
        self.batcher = ImageBatcher(encoder.encode_pixels)
        self._gpu_pass = zerogpu.gpu_task(self._model_pass, zerogpu.PREDICT_S) if zerogpu.detected() else None
        self._trunk_batchers: dict[int, ImageBatcher] = {}  # tower heads: the trunk's pass, per cut depth
        self._batchers_lock = threading.Lock()
        self._burst = heap.Burst()
        self._board: tuple[float, list[Rating]] | None = None  # (when computed, ranking): see leaderboard()
        self._board_lock = threading.Lock()

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
        if self._gpu_pass is not None:
            base, aligned = self._gpu_pass(pixels, tuple(label_list), template, float(t), live.ref)
        else:
            base, aligned = self._answers(live.policy, self.batcher_for(live.policy).encode(pixels)[None],
                                          label_list, template, float(t))
        as_dict = lambda lp: {lab: round(float(p), 6) for lab, p in zip(label_list, lp[0].exp(), strict=True)}  # noqa: E731
        return Comparison(new_comparison_id(), picture, seen, attack, tuple(label_list), template,
                          Answer("base", as_dict(base)), Answer("aligned", as_dict(aligned)), "base", live.label,
                          float(t))

    def _answers(self, policy: Policy | None, x: torch.Tensor, labels: Sequence[str], template: str,
                 t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Base and aligned ``log pi(y|x)`` ``[1, L]`` from the head's inputs ``x`` (the base model's answer twice
        when no head serves)."""
        if policy is None:
            base = self.encoder.log_probs(x, self.encoder.classifier(list(labels), (template,)))
            return base, base
        return policy.compare_inputs(x, labels, template, t)

    def _model_pass(self, pixels: torch.Tensor, labels: tuple[str, ...], template: str, t: float,
                    ref: tuple[str, str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """One request's model work without the shared batch (a ZeroGPU call: CPU tensors in and out, the serving
        head named by ``ref``, since the worker running it may hold an older copy of this process)."""
        policy = self.live_head.policy_for(ref)
        x = self.encoder.encode_pixels(pixels[None]) if policy is None or policy.linear is not None \
            else self.encoder.trunk_activations(pixels[None], policy.spec.blocks)
        return self._answers(policy, x, labels, template, t)

    def batcher_for(self, policy: Policy | None) -> ImageBatcher:
        """The batcher of a head's inputs: embeddings, or (tower heads) the frozen trunk's activations at the cut."""
        if policy is None or policy.linear is not None:
            return self.batcher
        with self._batchers_lock:
            if policy.spec.blocks not in self._trunk_batchers:
                self._trunk_batchers[policy.spec.blocks] = ImageBatcher(
                    functools.partial(self.encoder.trunk_activations, blocks=policy.spec.blocks))
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
        left: str = "base",
        right: str = "aligned",
        source: str = "upload",
        shared: bool = False,
        rng: random.Random | None = None,
    ) -> Comparison:
        """:meth:`compare`, then keep the comparison (with the models shown on each side) for :meth:`vote`.

        Args:
            image: an already normalised picture (:func:`poclip.world.images.open_image`).
            left, right: the models to show: ``base``, ``aligned`` (PO-CLIP) or a ready peer defense
                (:meth:`models`); ignored in arena mode.
            arena: PO-CLIP against an opponent drawn at random (``rng``) from the base model and the ready peers,
                on random sides, named only after the vote.
            source: ``upload``, ``synthetic`` or ``example``: where the picture came from.
            shared: for uploads, the person agreed that the picture is stored with their vote and shown to
                other annotators; without it a vote on an upload is refused.
        Returns:
            The kept comparison, with the picture as the models saw it (``seen``; the record kept for the vote
            leaves it out); its ``id`` is what a vote names. It is kept under the request's network address,
            which holds a bounded share of the records (:class:`~poclip.app.comparisons.ComparisonStore`).
        Raises:
            ClientLimited: the address is over its prediction rate (nothing is computed or kept).
            UserError: an unknown model, the same model on both sides, or a peer not built yet.
        """
        if source not in SOURCES:
            raise UserError(f"source must be one of {', '.join(SOURCES)}.")
        rng = rng or random
        if arena:
            sides = ["aligned", rng.choice(("base", *self.peers.ready()))]
            if rng.random() < 0.5:
                sides.reverse()
        else:
            sides = [self.check_model(left), self.check_model(right)]
            if sides[0] == sides[1]:
                raise UserError(f"Both sides show {MODEL_TITLES.get(sides[0], sides[0])}: pick another model for "
                                "one of them.")
        self.visitors.admit_prediction()
        with self._burst.running():  # the last prediction of a burst returns what they all freed to the system
            result = self.compare(image, labels, attack, template, t, normalize=False)
            peers = tuple(Answer(name, self.peers.probs(name, result.seen, result.labels, template))
                          for name in sides if name not in SIDES)
        # Kept without the picture as shown (half the memory): a vote needs the picture and the text, and the
        # page got what the models saw with this answer.
        kept = self.records.put(replace(result, seen=None, shown_left=sides[0], shown_right=sides[1], peers=peers,
                                        blind=bool(arena), source=source, shared=bool(shared)),
                                self.visitors.client())
        return replace(kept, seen=result.seen)

    def models(self) -> list[str]:
        """The models a Compare side may show now: base, aligned, then the ready peers."""
        return [*SIDES, *self.peers.ready()]

    def check_model(self, name: str) -> str:
        """``name`` if a side may show it now; else a UserError saying what may be shown (or when a peer is still
        being built)."""
        if name in SIDES or name in self.peers.ready():
            return name
        if name in self.peers.names:
            self.peers.require(name)  # says why it is not ready
        raise UserError(f"{name!r} is not a model this app shows; choose from {', '.join(self.models())}.")

    def leaderboard(self) -> list[Rating]:
        """The defenses ranked by blind (arena) votes alone (:func:`~poclip.app.leaderboard.bradley_terry`).

        Counting the battles reads every blind vote, and every open Data tab asks every few seconds: the ranking
        is computed at most once per :data:`LEADERBOARD_TTL_S` and shared."""
        with self._board_lock:
            now = time.monotonic()
            if self._board is None or now - self._board[0] > LEADERBOARD_TTL_S:
                self._board = (now, bradley_terry(self.repo.battle_counts(blind=True)))
            return self._board[1]

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
            judgment_id, sample_id, comparison_id, chosen, rejected, verdict, shown_left, shown_right, blind,
            version and t.
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
                    shown_left=record.shown_left if {record.shown_left, record.right_model} == set(SIDES) else None,
                    said_right=verdict, source=record.source, models=(record.shown_left, record.right_model),
                    blind=record.blind)
        except DuplicateJudgmentError as exc:
            raise UserError("You have already judged this picture with this text and these labels; change "
                            "something and press Predict again.") from exc
        return {"judgment_id": judgment.id, "sample_id": sample.id, "comparison_id": record.id, "chosen": chosen,
                "rejected": rejected, "verdict": verdict, "shown_left": record.shown_left,
                "shown_right": record.right_model, "blind": record.blind,
                "version": record.version, "t": record.t}
