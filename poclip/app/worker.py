"""The trainer: turns collected preference pairs into a new head, gates it, and promotes or rejects it.

It runs as a background thread inside the app (``POCLIP_TRAINER=thread``) or as a standalone process,
``python -m poclip worker``, against the same database. The database's single-runner lock means at most
one run trains at a time across all processes; every process polls the active version and swaps its live
head when another process promotes one.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from annotation_db import Repository, RunInfo, RunnerBusyError, VersionInfo
from poclip.engine.evaluate import EvalEmbeddings, embed_synth_eval, evaluate_policy
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import HeadError, Policy, load_head
from poclip.engine.starter import load_starter
from poclip.engine.train import CleanImage, Preference, TrainConfig, styled_preference, synth_clean, train_head
from poclip.settings import Settings
from poclip.world.attacks import TextAttack
from poclip.world.images import open_image

log = logging.getLogger(__name__)

GATE_SEED = 7_000  # held-out synthetic pictures, a seed used by no training stream
MIN_PAIRS = 10
MIN_CLEAN = 300  # top the clean regularization set up to this many pictures with synthetic scenes
CLEAN_DROP_LIMIT = 0.01  # the promotion gate: clean accuracy may fall by at most one point
STARTER_LABEL = "starter head (trained on synthetic pairs; no version trained here yet)"


class NotEnoughData(RuntimeError):
    """Too few pairs to train on; the run fails with this message."""


@dataclass(frozen=True)
class LiveModel:
    """The head serving predictions; replaced as a whole, so a request that took it keeps using it."""

    version: VersionInfo | None
    policy: Policy | None

    @property
    def label(self) -> str:
        if self.version is None:
            return "base model (no aligned version yet)" if self.policy is None else STARTER_LABEL
        return f"version {self.version.id}"


@dataclass
class Progress:
    """What the UI shows while a run trains."""

    run_id: int | None = None
    phase: str = "idle"
    step: int = 0
    total: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    message: str = ""
    updated: float = field(default_factory=time.time)


def gate(candidate: dict, live: dict, base: dict) -> tuple[bool, str]:
    """The promotion rule: typographic accuracy must improve on the live model, and clean accuracy may
    drop at most one point below both the live model and the base model."""
    reasons = []
    if candidate["typographic_accuracy"] <= live["typographic_accuracy"]:
        reasons.append(
            f"typographic accuracy {candidate['typographic_accuracy']:.3f} does not improve on the live "
            f"model's {live['typographic_accuracy']:.3f}"
        )
    floor = max(live["clean_accuracy"], base["clean_accuracy"]) - CLEAN_DROP_LIMIT
    if candidate["clean_accuracy"] < floor - 1e-9:
        reasons.append(f"clean accuracy {candidate['clean_accuracy']:.3f} is more than 1 point below "
                       f"{floor + CLEAN_DROP_LIMIT:.3f}")
    if reasons:
        return False, "; ".join(reasons)
    return True, (f"typographic accuracy {live['typographic_accuracy']:.3f} -> "
                  f"{candidate['typographic_accuracy']:.3f}, clean {live['clean_accuracy']:.3f} -> "
                  f"{candidate['clean_accuracy']:.3f}")


def text_invariance_pairs(pref: Preference, sample_id: int, k: int) -> list[Preference]:
    """``k`` more pairs from one typographic judgment: the same picture with other text written on it.

    A person who says the object is ``chosen`` despite the word on the picture has said so for any writing:
    the object does not change with it. Each extra pair draws its text from the text-style family
    (:mod:`poclip.world.styles`: other wrong words, the true word, neutral words, several words, other looks;
    seeded by the sample), so "the written class is never the answer" cannot fit the data. Judgments on
    pictures without writing are not expanded.
    """
    if pref.attack is None or k <= 0 or len(pref.labels) < 2:
        return []
    return [styled_preference(pref.image, pref.chosen, pref.labels, random.Random(f"invariance:{sample_id}:{j}"),
                              template=pref.template) for j in range(k)]


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "per_class"}


class Trainer:
    """Runs queued training runs one at a time and keeps the live head in step with the database."""

    def __init__(self, settings: Settings, repo: Repository, encoder: ClipEncoder) -> None:
        self.settings = settings
        self.repo = repo
        self.encoder = encoder
        self.worker_id = f"{socket.gethostname()}:{id(self):x}"
        self.progress = Progress()
        # Until a version is promoted, the shipped starter head serves (None: none for this backbone).
        self._starter = load_starter(encoder) if settings.starter_head else None
        self._live = LiveModel(None, self._starter)
        self._unloadable: dict[int, str] = {}  # active versions this process cannot load, with the reason
        self._gate_data: EvalEmbeddings | None = None
        self._base_metrics: dict | None = None
        self._gate_lock = threading.Lock()
        self._request_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_schedule = time.time()
        self._last_backup = time.time()
        self.heads_dir = settings.data_dir / "heads"
        self.cache_dir = settings.data_dir / "embeddings"

    # ----- the live head ------------------------------------------------------------------------------------

    @property
    def live(self) -> LiveModel:
        return self._live

    def sync_live(self) -> LiveModel:
        """Load the database's active version if it is not the one serving; returns the live model."""
        active = self.repo.active_version()
        current = self._live
        if (active is None and current.version is None) or (
            active is not None and current.version is not None and active.id == current.version.id
        ):
            return current
        if active is None:
            self._live = LiveModel(None, self._starter)
            return self._live
        if active.id in self._unloadable:
            return current
        try:
            policy = load_head(active.head_path, self.encoder)
        except HeadError as exc:
            # e.g. the version was trained on another backbone (auto fell back to bundled on an earlier start):
            # serve the base model rather than fail, and say why.
            log.warning("cannot serve version %s: %s", active.id, exc)
            self._unloadable[active.id] = str(exc)
            self._live = LiveModel(None, None)
            return self._live
        self._live = LiveModel(active, policy)  # one assignment: in-flight requests keep the old one
        log.info("live head is now version %s", active.id)
        return self._live

    # ----- evaluation for the gate ----------------------------------------------------------------------------

    def gate_data(self) -> EvalEmbeddings:
        with self._gate_lock:
            if self._gate_data is None:
                from poclip.engine.embed_cache import EmbeddingCache

                cache = EmbeddingCache(self.encoder, self.cache_dir)
                self._gate_data = embed_synth_eval(self.encoder, self.settings.gate_eval_n, GATE_SEED, cache)
                self._base_metrics = evaluate_policy(None, self._gate_data, encoder=self.encoder)
            return self._gate_data

    def base_metrics(self) -> dict:
        self.gate_data()
        assert self._base_metrics is not None
        return self._base_metrics

    def evaluate(self, policy: Policy | None) -> dict:
        """Gate metrics (clean / typographic accuracy, attack success, KL drift) of a policy, None = base."""
        data = self.gate_data()
        return self.base_metrics() if policy is None else evaluate_policy(policy, data, encoder=self.encoder)

    # ----- runs ------------------------------------------------------------------------------------------------

    def request(self, config: dict[str, Any] | None = None, reason: str = "manual") -> RunInfo:
        """Queue a run (unless one is already queued); the loop or :meth:`run_pending` picks it up."""
        # Check and enqueue under one lock, so two clicks (or a click and the scheduler) queue one run.
        with self._request_lock:
            queued = [r for r in self.repo.list_runs(limit=20) if r.status in ("queued", "running")]
            if queued:
                return queued[0]
            return self.repo.enqueue_run({"loss": "dpo", **(config or {}), "reason": reason})

    def run_pending(self) -> RunInfo | None:
        """Claim and execute the oldest queued run, if no other process is running one."""
        self.repo.reap_stale_runs()
        try:
            run = self.repo.claim_run(self.worker_id)
        except RunnerBusyError:
            return None
        if run is None:
            return None
        try:
            return self._execute(run)
        except Exception as exc:  # any failure ends the run as failed, with the reason kept
            log.exception("training run %s failed", run.id)
            self.progress = Progress(run.id, "failed", message=str(exc))
            return self.repo.fail_run(run.id, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")

    def _preferences(self) -> tuple[list[Preference], list[CleanImage], int | None]:
        batch = self.repo.training_pairs(None)
        if len(batch.pairs) < MIN_PAIRS:
            raise NotEnoughData(f"only {len(batch.pairs)} training pairs; at least {MIN_PAIRS} are needed")
        images: dict[str, Image.Image] = {}
        prefs, clean = [], []
        for pair in batch.pairs:
            if pair.image_sha256 not in images:
                images[pair.image_sha256] = open_image(Path(pair.image_path))
                clean.append(CleanImage(images[pair.image_sha256], tuple(pair.labels), pair.prompt_template))
            attack = TextAttack.from_dict(pair.attack) if pair.attack else None
            prefs.append(Preference(images[pair.image_sha256], pair.chosen, pair.rejected, tuple(pair.labels),
                                    pair.prompt_template, attack))
            prefs += text_invariance_pairs(prefs[-1], pair.sample_id, self.settings.augment_attacks)
        if len(clean) < MIN_CLEAN:
            clean += synth_clean(MIN_CLEAN - len(clean), seed=1)
        return prefs, clean, batch.watermark

    def _execute(self, run: RunInfo) -> RunInfo:
        self.progress = Progress(run.id, "loading pairs")
        prefs, clean, watermark = self._preferences()
        # The default head and recipe (TrainConfig's), continuing from the live head when it is of that kind.
        config = TrainConfig(loss=str(run.config.get("loss", "dpo")), seed=int(run.config.get("seed", 0)))
        start = self.live.policy
        last_beat = [0.0]

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            self.progress.phase, self.progress.step, self.progress.total = "training", step, total
            self.progress.history.append({"step": step, **metrics})
            self.progress.updated = time.time()
            if time.time() - last_beat[0] > 2.0:
                self.repo.heartbeat(run.id, {"step": step, "total": total})
                last_beat[0] = time.time()
            if self._stop.is_set():
                raise RuntimeError("trainer stopped")

        self.progress.phase = "embedding"
        path = self.heads_dir / f"run{run.id}.safetensors"
        result = train_head(self.encoder, prefs, clean, path, config, cache_dir=self.cache_dir, progress=on_step,
                            start=start)
        self.progress.phase = "evaluating"
        self.repo.heartbeat(run.id)
        live = self.sync_live()
        candidate = self.evaluate(result.policy)
        live_metrics = self.evaluate(live.policy)
        base = self.base_metrics()
        ok, reason = gate(candidate, live_metrics, base)
        metrics = {
            "candidate": _summary(candidate), "live_before": _summary(live_metrics), "base": _summary(base),
            "train": result.metrics, "pairs": len(prefs), "clean": len(clean), "loss": config.loss,
            "train_seconds": round(result.train_seconds, 2), "embed_seconds": round(result.embed_seconds, 2),
            "gate": reason,
        }
        version = self.repo.register_version(
            self.encoder.spec, str(path), metrics,
            parent_id=live.version.id if live.version else None, judgment_watermark=watermark,
        )
        if ok:
            version = self.repo.promote_version(version.id)
            self.sync_live()
        else:
            version = self.repo.reject_version(version.id, reason)
        self.progress = Progress(run.id, "promoted" if ok else "rejected", config.epochs, config.epochs,
                                 self.progress.history, reason)
        return self.repo.finish_run(run.id, metrics=metrics, version_id=version.id)

    # ----- the schedule ---------------------------------------------------------------------------------------

    def new_pairs(self) -> int:
        """Pairs whose judgments came after the active version's training data."""
        active = self.repo.active_version()
        return len(self.repo.training_pairs(active.id if active else None).pairs)

    def maybe_schedule(self) -> RunInfo | None:
        """Queue a run when enough new pairs exist, or when the timer is due and anything is new."""
        every_pairs, every_min = self.settings.retrain_every_pairs, self.settings.retrain_every_minutes
        if not every_pairs and not every_min:
            return None
        fresh = self.new_pairs()
        due = every_min and time.time() - self._last_schedule >= every_min * 60
        if (every_pairs and fresh >= every_pairs) or (due and fresh >= MIN_PAIRS):
            self._last_schedule = time.time()
            return self.request(reason=f"scheduled: {fresh} new pairs")
        return None

    def maybe_backup(self) -> None:
        every = self.settings.backup_every_minutes
        if every and time.time() - self._last_backup >= every * 60 and self.repo.db.dialect == "sqlite":
            from annotation_db import take_snapshot

            self._last_backup = time.time()
            take_snapshot(self.settings, keep=self.settings.backup_keep)

    def tick(self, train: bool = True) -> None:
        """One pass of the loop: follow promotions elsewhere, schedule, train, back up."""
        self.sync_live()
        if train:
            self.maybe_schedule()
            self.run_pending()
        self.maybe_backup()

    def start(self, train: bool = True, interval_s: float = 2.0) -> None:
        """Run :meth:`tick` every ``interval_s`` seconds in a daemon thread until :meth:`stop`."""
        if self._thread and self._thread.is_alive():
            return

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.tick(train)
                except Exception:  # the loop must outlive one bad tick (a DB hiccup, a bad file)
                    log.exception("trainer tick failed")
                self._stop.wait(interval_s)

        self._thread = threading.Thread(target=loop, name="poclip-trainer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
