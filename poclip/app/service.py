"""The app's back end, free of Gradio: compare base and aligned CLIP, collect judgments, retrain, administer.

Every method either does its whole job or raises a :class:`UserError` subclass (or an annotation_db
``ValidationError``) with a message meant for the person, before anything is written.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import logging
import math
import random
import secrets
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from PIL import Image

from annotation_db import (
    DuplicateJudgmentError,
    NotFoundError,
    Repository,
    RepositoryConfig,
    SampleInfo,
    ValidationError,
    open_repository,
)
from poclip.app.batching import ImageBatcher
from poclip.app.comparisons import SIDES, SOURCES, Answer, Comparison, ComparisonExpired, ComparisonStore
from poclip.app.comparisons import new_id as new_comparison_id
from poclip.app.identity import Identity, IdentityError, server_secret
from poclip.app.limits import ClientLimited, ClientLimits, Rate, current_origin
from poclip.app.live import LiveHead, LiveModel
from poclip.engine.losses import PREFERENCE_LOSSES
from poclip.engine.models import ClipEncoder, load_model
from poclip.engine.policy import check_head, trunk_inputs
from poclip.engine.starter import load_starter
from poclip.errors import UserError
from poclip.settings import Settings
from poclip.world import synth
from poclip.world.attacks import TextAttack, random_attack, render
from poclip.world.decode_budget import DECODE_BUDGET
from poclip.world.images import normalize_image, open_image
from poclip.world.labels import DEFAULT_TEMPLATE, PRESETS, check_template, parse_labels

if TYPE_CHECKING:
    from poclip.app.worker import Trainer

log = logging.getLogger(__name__)

SYNTH_LABEL_SET = "Synthetic shapes"
GOLD_SHARE = 0.1
GOLD_HANDLE = "poclip-gold"  # the pseudo-annotator that holds gold answers; not a person
VERDICTS = ("left", "right", "both", "neither")


class AdminRequired(UserError):
    """An admin action attempted without admin rights."""


@dataclass(frozen=True)
class Item:
    """An item to annotate: the picture as shown, its candidate labels, and the sample behind it."""

    sample: SampleInfo
    picture: Image.Image
    labels: list[str]


def annotation_item(index: int) -> tuple[synth.Scene, TextAttack]:
    """Item ``index`` of the synthetic annotation stream: a scene and the paper-style attack written on it."""
    rng = random.Random(f"annotate:{index}")
    scene = synth.sample_scene(rng)
    return scene, random_attack(synth.SHAPES, scene.shape, rng)


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


def repository_config(settings: Settings) -> RepositoryConfig:
    """The store's policies from the app's settings (rate limit; pseudonyms salted with the server secret)."""
    rate = Rate.parse(settings.rate_limit, "POCLIP_RATE_LIMIT")  # COUNT/SECONDS, as the per-address limits
    count, window = (rate.count, rate.window_s) if rate is not None else (None, 60.0)
    secret = server_secret(settings.data_dir)
    pseudonym_secret = hmac.new(secret, b"poclip-pseudonym", hashlib.sha256).hexdigest()
    return RepositoryConfig(rate_limit_count=count, rate_limit_window_s=window, pseudonym_secret=pseudonym_secret,
                            min_gold_seen=settings.min_gold_seen, max_annotator_share=settings.max_annotator_share)


def client_limits(settings: Settings) -> ClientLimits:
    """The per-address limits from the app's settings (see :mod:`poclip.app.limits`)."""
    return ClientLimits(Rate.parse(settings.client_rate_limit, "POCLIP_CLIENT_RATE_LIMIT"),
                        Rate.parse(settings.client_new_annotators, "POCLIP_CLIENT_NEW_ANNOTATORS"),
                        settings.proxy_hops)


def check_finite(value: Any, name: str) -> float:
    """A float input from the UI or raw JSON: a real, finite number, or UserError (NaN and inf are refused)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{name} must be a number, got {value!r}.") from exc
    if not math.isfinite(number):
        raise UserError(f"{name} must be a finite number, got {value!r}.")
    return number


class AppService:
    """Everything the UI and the API do, as plain methods.

    The service owns the live head (:class:`~poclip.app.live.LiveHead`); the trainer
    (:mod:`poclip.app.worker`) is built only when this process trains or someone asks for it, so serving
    never imports it.
    """

    def __init__(self, settings: Settings, encoder: ClipEncoder, repo: Repository) -> None:
        self.settings = settings
        self.encoder = encoder
        self.repo = repo
        # Until a version is promoted, the shipped starter head serves (None: none for this backbone).
        self.live_head = LiveHead(repo, encoder, load_starter(encoder) if settings.starter_head else None)
        self.comparisons = ComparisonStore()
        self._secret = server_secret(settings.data_dir)
        self.identity = Identity(self._secret)
        self.client_limits = client_limits(settings)
        self._trainer: Trainer | None = None
        self._follow_stop = threading.Event()
        self._follow: threading.Thread | None = None
        # Concurrent Compare requests share image-tower passes (see poclip.app.batching).
        self.batcher = ImageBatcher(encoder.encode_pixels)
        self._trunk_batchers: dict[int, ImageBatcher] = {}  # tower heads: the trunk's pass, per cut depth
        self._batchers_lock = threading.Lock()
        self._seed_lock = threading.Lock()
        self._gold_items = 0  # gold reference answers seeded (see seed_items)

    @classmethod
    def create(cls, settings: Settings, encoder: ClipEncoder | None = None) -> AppService:
        """Open (restore, migrate) the database, load the model, seed annotation items, load the live head."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        DECODE_BUDGET.configure(settings.decode_budget_mp, settings.decode_wait_s)  # the process's uploads
        encoder = encoder or load_model(settings.model_spec, settings)
        if settings.head:  # POCLIP_HEAD: refused before anything is opened, whichever process trains
            check_head(encoder, settings.head)
        repo = open_repository(settings, repository_config(settings))
        service = cls(settings, encoder, repo)
        service.ensure_label_sets()
        service.seed_items()
        service.live_head.sync()
        return service

    @property
    def trainer(self) -> Trainer:
        """The in-process trainer, sharing this service's live head (built on first use)."""
        if self._trainer is None:
            from poclip.app.worker import Trainer

            self._trainer = Trainer(self.settings, self.repo, self.encoder, self.live_head)
        return self._trainer

    def start_background(self, interval_s: float = 2.0) -> None:
        """``POCLIP_TRAINER=thread``: the trainer loop in a thread. Otherwise only follow the active version
        (a ``python -m poclip worker`` process trains, promotes and backs up)."""
        if self.settings.trainer == "thread":
            self.trainer.start(train=True, interval_s=interval_s)
            return

        def follow() -> None:
            while not self._follow_stop.wait(interval_s):
                try:
                    self.live_head.sync()
                except Exception:
                    log.exception("following the active version failed")

        self._follow = threading.Thread(target=follow, name="poclip-live-follow", daemon=True)
        self._follow.start()

    def close(self) -> None:
        self._follow_stop.set()
        if self._trainer is not None:
            self._trainer.stop()
        self.batcher.close()
        for batcher in list(self._trunk_batchers.values()):
            batcher.close()
        self.repo.close()

    # ----- identity -----------------------------------------------------------------------------------------

    def new_annotator_id(self) -> str:
        """A fresh anonymous annotator token, signed by the server (the browser keeps it; the public never
        sees it)."""
        return self.identity.issue()

    def annotator_token(self, stored: str | None) -> str:
        """The browser's stored anonymous token if this server signed it, else a new one (page load)."""
        try:
            self.identity.verify(stored or "")
            return stored  # type: ignore[return-value]
        except IdentityError:
            return self.identity.issue()

    def who(self, annotator: str, hf_username: str | None = None) -> str:
        """The handle acting: ``hf:<user>`` when logged in, the id of a valid anonymous token, or a checked
        display name; a bare or forged ``anon-`` id, a typed ``hf:`` or reserved name is refused."""
        try:
            return self.identity.resolve(annotator, hf_username)
        except IdentityError as exc:
            raise UserError(str(exc)) from exc

    def admit_client(self, annotator: str, *, judgment: bool) -> None:
        """The per-address limits for the request in flight (:mod:`poclip.app.limits`): a handle this database
        has not seen yet counts as a new annotator, and ``judgment`` counts one label. UserError when over.

        O(1): one indexed lookup of the handle and one in-memory entry per address. Requests without an
        origin (direct calls from Python) are not limited per address.
        """
        origin = current_origin()
        if origin is None:
            return
        try:
            if self.client_limits.new_annotators is not None:
                try:
                    self.repo.get_annotator(annotator)
                except NotFoundError:
                    self.client_limits.admit_new_annotator(origin)
            if judgment:
                self.client_limits.admit_judgment(origin)
        except ClientLimited as exc:
            raise UserError(str(exc)) from exc

    # ----- status -------------------------------------------------------------------------------------------

    @property
    def live(self) -> LiveModel:
        return self.live_head.current

    def model_info(self) -> str:
        return f"{self.encoder.description} (`{self.encoder.spec}`, {self.encoder.device.type}); aligned head: " \
               f"{self.live.label}"

    def status(self) -> dict[str, Any]:
        """Live model, data counts and the trainer's state, as one JSON-friendly dict.

        Cheap whatever the database size: maintained counters (five primary-key rows), the newest run
        (primary-key order, one row), and a primary-key range count of the judgments since the last run.
        ``judgments`` and ``annotators`` count people only (the gold pseudo-annotator's reference answers are
        ``gold_items``); ``pairs`` is the number of pairs the newest finished run trained on; ``new_pairs`` is
        counted up to the retrain threshold (at least 10).
        """
        counts = self.people_counts()
        runs = self.repo.list_runs(limit=1)
        last = runs[0] if runs else None
        finished = next((r for r in self.repo.list_runs(limit=3) if r.status == "succeeded" and r.metrics), None)
        every = self.settings.retrain_every_pairs
        _, fresh = self.repo.new_since_last_run(limit=max(every, 10))
        if self._trainer is not None and self._trainer.progress.run_id is not None:
            p = self._trainer.progress
            trainer = {"run": p.run_id, "phase": p.phase, "step": p.step, "total": p.total, "message": p.message}
        elif last is not None:
            beat = last.metrics or {}
            trainer = {"run": last.id, "phase": beat.get("phase", last.status) if last.status == "running"
                       else last.status, "step": beat.get("step", 0), "total": beat.get("total", 0),
                       "message": (last.error or "").splitlines()[0] if last.error else str(beat.get("gate", ""))}
        else:
            trainer = {"run": None, "phase": "idle", "step": 0, "total": 0, "message": ""}
        return {
            "backbone": self.encoder.spec,
            "live_version": self.live.version.id if self.live.version else None,
            "judgments": counts["judgments"],
            "gold_items": counts["gold_items"],
            "pairs": int(finished.metrics.get("pairs", 0)) if finished else 0,
            "annotators": counts["annotators"],
            "new_pairs": fresh,
            "next_retrain_at": (every - fresh) if every and fresh < every else (0 if every else None),
            "trainer": trainer,
            "image_batches": {"batches": self.batcher.stats.batches, "pictures": self.batcher.stats.items,
                              "largest": self.batcher.stats.largest},
        }

    def training_progress(self):
        """The in-process trainer's progress (phase, steps, metric history), or None when this process does not
        train: then the newest run's heartbeat from :meth:`status`, without a metric history."""
        if self._trainer is not None:
            return self._trainer.progress
        beat = self.status()["trainer"]
        return SimpleNamespace(run_id=beat["run"], phase=beat["phase"], step=beat["step"], total=beat["total"],
                               message=beat["message"], history=[])

    def latest_evaluation(self) -> dict | None:
        """The newest finished run's held-out evaluation (candidate, live before, base), if any."""
        runs = self.repo.list_runs(limit=1)
        return runs[0].metrics if runs and runs[0].metrics and "candidate" in runs[0].metrics else None

    def versions(self, limit: int = 50) -> list:
        """The newest model versions (id, status, metrics, reason), newest first."""
        return self.repo.list_versions(limit=limit)

    def people_counts(self) -> dict[str, int]:
        """The maintained totals with the gold pseudo-annotator taken out; O(1) in the database size.

        Gold reference answers are recorded once per gold item when the items are seeded, so their number is
        known without a query.
        """
        counts = self.repo.counts()
        gold = self._gold_items
        return {**counts, "gold_items": gold, "judgments": counts["judgments"] - gold,
                "annotators": counts["annotators"] - (1 if gold else 0)}

    def data_summary(self, *, admin: bool = False) -> dict[str, Any]:
        """Counts for everyone; per-annotator figures and the latest judgments only for ``admin``.

        Handles, anonymous ids and trust scores identify people, so the public sees aggregates only.
        """
        counts = self.people_counts()
        summary: dict[str, Any] = {
            "images": counts["images"], "items": counts["samples"], "gold_items": counts["gold_items"],
            "judgments": counts["judgments"], "undone": counts["undone"], "annotators": counts["annotators"],
        }
        if admin:  # the maintainer's dashboard reads everything: O(judgments), on demand only
            s = self.repo.stats()
            summary.update(pairs=s.pairs, alpha=s.alpha,
                           per_annotator=[a for a in s.per_annotator if a.handle != GOLD_HANDLE],
                           recent=self.repo.recent_judgments(20))
        return summary

    # ----- label sets and annotation items ------------------------------------------------------------------

    def ensure_label_sets(self) -> None:
        for name, labels in PRESETS.items():
            self.repo.ensure_label_set(name, list(labels), DEFAULT_TEMPLATE)

    def label_set_for(self, labels: list[str], template: str) -> str:
        """The stored label set with exactly these labels and template (created on first use)."""
        for name, preset in PRESETS.items():
            if list(preset) == labels and template == DEFAULT_TEMPLATE:
                return name
        digest = hashlib.sha256("\x00".join([template, *labels]).encode()).hexdigest()[:12]
        name = f"custom-{digest}"
        self.repo.ensure_label_set(name, labels, template)
        return name

    def seed_items(self, n: int | None = None) -> int:
        """Offer synthetic attacked pictures for annotation (bundled model), a share of them gold items; any
        other backbone gets the real photos instead (:meth:`seed_photo_items`, when ``n`` > 0).

        Idempotent: the pictures and attacks are a fixed stream, and samples are unique by image and attack.
        """
        n = self.settings.seed_items if n is None else n
        if n <= 0:
            return 0
        if self.encoder.model_spec.name != "bundled":
            return self.seed_photo_items()
        self._gold_items = sum(self._is_gold_item(i) for i in range(n))
        with self._seed_lock:
            if self.repo.counts()["samples"] >= n:
                return 0
            gold = self.repo.ensure_annotator(GOLD_HANDLE)
            for i in range(n):
                scene, attack = annotation_item(i)
                image = self.repo.store_image(synth.draw_scene(scene, 224), source="synthetic")
                sample = self.repo.add_sample(image.sha256, SYNTH_LABEL_SET, attack.to_dict())
                if self._is_gold_item(i):
                    try:
                        self.repo.record_judgment(sample.id, gold.handle, scene.shape, attack.text, kind="gold",
                                                  enforce_rate_limit=False)
                    except ValidationError:
                        pass  # already recorded on an earlier start
            return n

    def seed_photo_items(self) -> int:
        """Offer the real photos (:mod:`poclip.world.photos`) for annotation; returns how many were added.

        Each blank-note and attack-note photo is an item with its object's label set and the note's word as a
        ``physical`` attack, so the usual rejected label is the written word. Photos whose note names the object
        itself are left out (their written word is a right answer). Gold items are a keyed share
        (:data:`GOLD_SHARE`) of the attack photos of objects that exactly one label names (a gold answer is one
        label; "Granny Smith" and "apple" would both be right for the apple), answered with the object's class
        over the written word.

        Idempotent and cheap on a restart: items are stored in order, so when the last one exists all do (one
        read; the last item is stored again only when it is gold, in case its gold answer did not make it).
        """
        from poclip.world import photos

        items = [p for p in photos.photos() if p.kind != "own"]
        self._gold_items = sum(self._is_gold_photo(p) for p in items)
        with self._seed_lock:
            last, attack = items[-1], photos.note_attack(items[-1])
            done = self.repo.find_sample(hashlib.sha256(self._photo_png(last)).hexdigest(),
                                         photos.label_set_name(last), attack.to_dict() if attack else None)
            if done is not None:
                if self._is_gold_photo(last):
                    self._seed_photo(last)
                return 0
            for photo in items:
                self._seed_photo(photo)
            return len(items)

    def _is_gold_photo(self, photo) -> bool:
        return (photo.kind == "attack" and len(photo.right) == 1 and photo.word in photo.labels
                and self._is_gold_item(f"photo:{photo.object_key}/{photo.note}"))

    def _seed_photo(self, photo) -> None:
        """Store one photo item (and its gold answer when it is gold); idempotent."""
        from poclip.world import photos

        name, attack = photos.label_set_name(photo), photos.note_attack(photo)
        self.repo.ensure_label_set(name, list(photos.app_labels(photo)), DEFAULT_TEMPLATE)
        image = self.repo.store_image(self._photo_png(photo), source="example")
        sample = self.repo.add_sample(image.sha256, name, attack.to_dict() if attack else None)
        if self._is_gold_photo(photo):
            gold = self.repo.ensure_annotator(GOLD_HANDLE)
            try:
                self.repo.record_judgment(sample.id, gold.handle, photo.right[0], photo.word, kind="gold",
                                          enforce_rate_limit=False)
            except ValidationError:
                pass  # already recorded on an earlier start

    @staticmethod
    def _photo_png(photo) -> bytes:
        """The photo as stored: normalised by the app's validator, as PNG bytes (deterministic)."""
        png = io.BytesIO()
        open_image(photo.path).save(png, format="PNG")
        return png.getvalue()

    def _is_gold_item(self, index: int | str) -> bool:
        """Which seeded items are gold: a keyed hash of the index (or a photo's name; server secret), so a share
        of GOLD_SHARE that nobody outside the server can predict from ids."""
        digest = hmac.new(self._secret, f"gold:{index}".encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") < GOLD_SHARE * 2**64

    def picture_of(self, sample: SampleInfo) -> Image.Image:
        """The sample's picture as annotators and the trainer see it (attack re-rendered from its JSON)."""
        image = open_image(Path(sample.image_path))
        return render(image, TextAttack.from_dict(sample.attack)) if sample.attack else image

    def next_item(self, annotator: str) -> Item | None:
        """The next item ``annotator`` should label, or None when they have labelled everything."""
        annotator = self.who(annotator)
        self.admit_client(annotator, judgment=False)
        self.repo.ensure_annotator(annotator)
        sample = self.repo.next_sample(annotator)
        if sample is None:
            return None
        return Item(sample, self.picture_of(sample), list(sample.labels))

    def item(self, sample_id: int) -> Item:
        """Item ``sample_id`` as annotators see it (e.g. again after an undo)."""
        sample = self.repo.get_sample(int(sample_id))
        return Item(sample, self.picture_of(sample), list(sample.labels))

    def answer_item(self, annotator: str, sample_id: int, chosen: str) -> dict[str, Any]:
        """Record that on ``sample_id`` the right label is ``chosen``.

        The rejected label is the word written on the picture when it is a candidate label, else the base
        model's most likely wrong label (what the person implicitly corrected).
        """
        annotator = self.who(annotator)
        sample = self.repo.get_sample(int(sample_id))
        if chosen not in sample.labels:
            raise UserError(f"{chosen!r} is not one of this item's labels.")
        rejected = self._rejected_for(sample, chosen)
        self.admit_client(annotator, judgment=True)
        try:
            judgment = self.repo.record_judgment(sample.id, annotator, chosen, rejected, require_served=True)
        except DuplicateJudgmentError as exc:
            raise UserError("You have already labelled this item (press U to undo your last label).") from exc
        return {"judgment_id": judgment.id, "sample_id": sample.id, "chosen": chosen, "rejected": rejected}

    def _rejected_for(self, sample: SampleInfo, chosen: str) -> str:
        written = (sample.attack or {}).get("text", "").strip()
        if written in sample.labels and written != chosen:
            return written
        comparison = self.compare(self.picture_of(sample), list(sample.labels), None, sample.prompt_template, 0.0,
                                  normalize=False)
        ranked = sorted(comparison.base.probs.items(), key=lambda kv: -kv[1])
        return next(label for label, _ in ranked if label != chosen)

    def undo(self, annotator: str) -> dict[str, Any] | None:
        undone = self.repo.undo_last_judgment(self.who(annotator))
        return None if undone is None else {"judgment_id": undone.id, "sample_id": undone.sample_id}

    def labelled_by(self, annotator: str) -> int:
        """How many labels ``annotator`` has given and not undone (0 for someone new)."""
        try:
            return len(self.repo.judgments_of(self.who(annotator)))
        except ValidationError:  # not an annotator yet
            return 0

    # ----- compare and vote ------------------------------------------------------------------------------------

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
        live = self.live
        # Preprocessing runs here, in the request's thread; the tower (or a tower head's trunk) pass is shared
        # with concurrent requests. A tower head then runs its tail at base and at aligned weights.
        pixels = self.encoder.pixels([seen])[0]
        if live.policy is None:
            emb = self.batcher.encode(pixels)[None]
            base = self.encoder.log_probs(emb, self.encoder.classifier(label_list, (template,)))
            aligned = base
        else:
            x = self._batcher_for(live.policy).encode(pixels)[None]
            base, aligned = live.policy.compare_inputs(x, label_list, template, float(t))
        as_dict = lambda lp: {lab: round(float(p), 6) for lab, p in zip(label_list, lp[0].exp(), strict=True)}  # noqa: E731
        return Comparison(new_comparison_id(), picture, seen, attack, tuple(label_list), template,
                          Answer("base", as_dict(base)), Answer("aligned", as_dict(aligned)), "base", live.label,
                          float(t))

    def _batcher_for(self, policy) -> ImageBatcher:
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
            The kept comparison; its ``id`` is what a vote names.
        """
        if source not in SOURCES:
            raise UserError(f"source must be one of {', '.join(SOURCES)}.")
        result = self.compare(image, labels, attack, template, t, normalize=False)
        shown_left = (rng or random).choice(SIDES) if arena else "base"
        return self.comparisons.put(replace(result, shown_left=shown_left, source=source, shared=bool(shared)))

    def comparison(self, comparison_id: str) -> Comparison:
        """The kept comparison with this id (:class:`ComparisonExpired` when it is gone)."""
        try:
            return self.comparisons.get(comparison_id)
        except ComparisonExpired as exc:
            raise UserError(str(exc)) from exc

    def vote(self, annotator: str, comparison_id: str, verdict: str, correct_label: str | None = None) -> dict:
        """Store the person's verdict on comparison ``comparison_id``, exactly as it was shown.

        ``verdict`` says which side was right: ``left``, ``right``, ``both`` or ``neither`` (then
        ``correct_label``, one of the comparison's labels, names the object). The chosen label is the right
        answer; the rejected one is the wrong answer shown (or, when both were right, the written word or the
        runner-up).

        Everything is checked before anything is written (the comparison, the verdict, the label, the
        handle, consent for uploads, the per-address and per-annotator rate limits); then the picture, its
        sample and the judgment are stored. A refused vote leaves no image row, file, sample or annotator behind.
        """
        record = self.comparison(comparison_id)
        chosen, rejected = judgment_for(record, verdict, correct_label)
        annotator = self.who(annotator)
        if record.source == "upload" and not record.shared:
            raise UserError("A vote stores your picture and shows it to other annotators: tick 'Others may see and "
                            "label my picture' and press Predict again (or vote on an example or a synthetic "
                            "object).")
        self.admit_client(annotator, judgment=True)
        png = io.BytesIO()
        record.picture.save(png, format="PNG")
        try:  # picture, sample, annotator and judgment in one unit: a refused vote writes none of them
            judgment, sample = self.repo.record_upload_judgment(
                png.getvalue(), self.label_set_for(list(record.labels), record.template),
                record.attack.to_dict() if record.attack else None, annotator, chosen, rejected,
                shown_left=record.shown_left, said_right=verdict, source=record.source)
        except DuplicateJudgmentError as exc:
            raise UserError("You have already judged this picture with this text and these labels; change "
                            "something and press Predict again.") from exc
        return {"judgment_id": judgment.id, "sample_id": sample.id, "comparison_id": record.id, "chosen": chosen,
                "rejected": rejected, "verdict": verdict, "shown_left": record.shown_left,
                "version": record.version, "t": record.t}

    # ----- admin -------------------------------------------------------------------------------------------------

    def is_admin(self, token: str | None = None, hf_orgs: list[str] | None = None) -> bool:
        """Admin = the configured ``POCLIP_ADMIN_TOKEN`` (constant-time compare) or membership of
        ``POCLIP_ADMIN_ORG`` for a logged-in Hugging Face user."""
        expected = self.settings.admin_token
        if expected and token and hmac.compare_digest(token.encode(), expected.encode()):
            return True
        return bool(self.settings.admin_org and hf_orgs and self.settings.admin_org in hf_orgs)

    def require_admin(self, token: str | None = None, hf_orgs: list[str] | None = None) -> None:
        if self.is_admin(token, hf_orgs):
            return
        if not self.settings.admin_token and not self.settings.admin_org:
            raise AdminRequired("Admin actions are switched off on this server: set POCLIP_ADMIN_TOKEN (or "
                                "POCLIP_ADMIN_ORG for Hugging Face logins) and restart the app.")
        ways = []
        if self.settings.admin_token:
            ways.append("sign in with the admin token (POCLIP_ADMIN_TOKEN)")
        if self.settings.admin_org:
            ways.append(f"log in with Hugging Face as a member of {self.settings.admin_org}")
        raise AdminRequired(f"This action needs admin rights: {' or '.join(ways)}.")

    def retrain(self, loss: str = "dpo", *, token: str | None = None, hf_orgs: list[str] | None = None) -> dict:
        """Queue a retrain (admin). The background trainer picks it up; returns the queued run."""
        self.require_admin(token, hf_orgs)
        if loss not in PREFERENCE_LOSSES:
            raise UserError(f"Unknown loss {loss!r}; choose one of {', '.join(PREFERENCE_LOSSES)}.")
        run = self.trainer.request({"loss": loss}, reason="manual retrain")
        return {"run_id": run.id, "status": run.status}

    def promote(self, version_id: int, *, token: str | None = None, hf_orgs: list[str] | None = None) -> dict:
        self.require_admin(token, hf_orgs)
        version = self.repo.promote_version(int(version_id))
        self.trainer.sync_live()
        return {"active_version": version.id}

    def rollback(self, version_id: int | None = None, *, token: str | None = None,
                 hf_orgs: list[str] | None = None) -> dict:
        self.require_admin(token, hf_orgs)
        version = self.repo.rollback_version(int(version_id) if version_id else None)
        self.trainer.sync_live()
        return {"active_version": version.id}

    def backup(self, *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        self.require_admin(token, hf_orgs)
        from annotation_db import take_snapshot

        return str(take_snapshot(self.settings, keep=self.settings.backup_keep))

    def export_parquet(self, *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        """Export all pairs as a Hugging Face dataset, saved as one parquet file; returns its path."""
        self.require_admin(token, hf_orgs)
        from annotation_db.export import export_dataset, save_dataset

        dataset = export_dataset(self.repo)
        out = self.settings.data_dir / "exports" / f"poclip-pairs-{secrets.token_hex(4)}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_dataset(dataset, out, parquet=True)
        return str(out)

    def push_to_hub(self, repo_id: str = "", *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        self.require_admin(token, hf_orgs)
        from annotation_db.export import export_dataset, push_dataset

        target = repo_id or self.settings.export_repo
        if not target:
            raise UserError("Name the Hub dataset repository (user/name) or set POCLIP_EXPORT_REPO.")
        push_dataset(export_dataset(self.repo), target, token=self.settings.hf_token or None)
        return target
