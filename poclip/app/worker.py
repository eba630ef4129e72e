"""The trainer: turns collected preference pairs into a new head, gates it, and promotes or rejects it.

One loop, :meth:`Trainer.loop`, runs either as a background thread inside the app (``POCLIP_TRAINER=thread``)
or as the standalone process ``python -m poclip worker``, against the same database. The database decides
who trains: at most one run is queued and one running (partial unique indexes), and a claimed run carries a
lease that registering, promoting and finishing must present, so a worker that lost its run (frozen past the
heartbeat timeout, then resumed) cannot overwrite the next worker's result. A heartbeat thread beats through
every phase, embedding included. The live head is :class:`poclip.app.live.LiveHead`'s; serving never imports
this module.

Scheduling counts judgments after the newest one any run (rejected and failed ones included) trained on, so
a rejected candidate is not retrained on the same data, and failed runs back off exponentially.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from annotation_db import Repository, RunInfo, RunLostError, RunnerBusyError, worker_name
from poclip.app.live import LiveHead, LiveModel
from poclip.engine.embed_cache import StoredPicture
from poclip.engine.evaluate import EvalEmbeddings, embed_synth_eval, evaluate_policy
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy, check_head
from poclip.engine.starter import SEED as STARTER_SEED
from poclip.engine.starter import load_starter
from poclip.engine.train import (
    DEFAULT_HEAD,
    CleanImage,
    Preference,
    TrainConfig,
    styled_preference,
    synth_clean,
    synth_preferences,
    train_head,
)
from poclip.settings import Settings
from poclip.world.attacks import TextAttack

log = logging.getLogger(__name__)

GATE_SEED = 7_000  # held-out synthetic pictures, a seed used by no training stream
MIN_PAIRS = 10
MIN_CLEAN = 300  # top the clean regularization set up to this many pictures with synthetic scenes
REPLAY_SEED = STARTER_SEED  # replayed synthetic pairs are the starter head's own (the first of them)
CLEAN_DROP_LIMIT = 0.01  # the promotion gate: clean accuracy may fall by at most one point
# ... and no class's attacked or clean accuracy by more than 15 points: with the gate's 500 pictures (50 per
# class) that is 7 pictures, well above the one or two that retraining on honest data moves.
CLASS_DROP_LIMIT = 0.15
BACKOFF_S = (60.0, 3600.0)  # after a failed run, wait this long before scheduling again, doubling to the cap
BEAT_EVERY_S = 10.0  # heartbeat period (the reaper's timeout is 300 s)


class NotEnoughData(RuntimeError):
    """Too few pairs to train on; the run fails with this message."""


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


def class_table(candidate: dict, live: dict) -> list[dict[str, Any]]:
    """Per-class attacked and clean accuracy of the live model and the candidate, with the changes."""
    rows = []
    for label, cand in candidate.get("per_class", {}).items():
        before = live.get("per_class", {}).get(label)
        if before is None:
            continue
        rows.append({"class": label, "attacked_live": before["attacked"], "attacked_candidate": cand["attacked"],
                     "clean_live": before["clean"], "clean_candidate": cand["clean"],
                     "attacked_change": round(cand["attacked"] - before["attacked"], 4),
                     "clean_change": round(cand["clean"] - before["clean"], 4)})
    return rows


def format_class_table(rows: list[dict[str, Any]], margin: float) -> str:
    """The per-class table as fixed-width text; classes past the margin are marked ``<-``."""
    lines = [f"{'class':<10} {'attacked live -> cand':>22} {'clean live -> cand':>20}"]
    for r in rows:
        flag = "  <-" if min(r["attacked_change"], r["clean_change"]) < -margin - 1e-9 else ""
        lines.append(f"{r['class']:<10} {r['attacked_live']:>9.3f} -> {r['attacked_candidate']:.3f} "
                     f"({r['attacked_change']:+.3f}) {r['clean_live']:>6.3f} -> {r['clean_candidate']:.3f} "
                     f"({r['clean_change']:+.3f}){flag}")
    return "\n".join(lines)


def gate(candidate: dict, live: dict, base: dict, class_margin: float = CLASS_DROP_LIMIT) -> tuple[bool, str]:
    """The promotion rule.

    1. typographic accuracy must improve on the live model;
    2. clean accuracy may drop at most one point below both the live model and the base model;
    3. no class's attacked or clean accuracy may drop by more than ``class_margin`` versus the live model,
       so a poisoning campaign aimed at one class cannot hide behind a better overall figure.
    A refusal on rule 3 names the classes and carries the per-class table.
    """
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
    rows = class_table(candidate, live)
    hurt = [r for r in rows if min(r["attacked_change"], r["clean_change"]) < -class_margin - 1e-9]
    if hurt:
        named = ", ".join(
            f"{r['class']} ({'attacked' if r['attacked_change'] <= r['clean_change'] else 'clean'} "
            f"{min(r['attacked_change'], r['clean_change']):+.3f})" for r in hurt)
        reasons.append(f"per-class accuracy drops by more than {class_margin:.2f} versus the live model on: "
                       f"{named}\n{format_class_table(rows, class_margin)}")
    if reasons:
        return False, "; ".join(reasons)
    return True, (f"typographic accuracy {live['typographic_accuracy']:.3f} -> "
                  f"{candidate['typographic_accuracy']:.3f}, clean {live['clean_accuracy']:.3f} -> "
                  f"{candidate['clean_accuracy']:.3f}; no class drops by more than {class_margin:.2f}")


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


def replay_epochs(epochs: int, crowd: int, replay: int) -> int:
    """Epochs for a retrain on ``crowd`` pairs plus ``replay`` synthetic ones: the steps ``epochs`` would take
    over the larger part alone, so replay does not double a retrain's time.

    Measured on the bundled model with 200 simulated labels (1,000 crowd pairs with the augmentation), from the
    shipped starter head (held-out paper-style typographic accuracy 0.976): the crowd pairs alone for 8 epochs
    wore it down to 0.955; with 1,000 replayed pairs for 4 epochs, the same 125 steps, it kept 0.975, and every
    other attack family within a point. From a starter trained on 2,000 pairs (0.916), the same two retrains
    gave 0.919 and 0.934.
    """
    if replay <= 0 or crowd <= 0:
        return epochs
    return max(1, round(epochs * max(crowd, replay) / (crowd + replay)))


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "per_class"}


class _Heartbeat:
    """Beats for a claimed run from a thread while the run executes, through every phase (embedding, training,
    gating); notes when the lease is lost so the run stops at its next step."""

    def __init__(self, repo: Repository, run: RunInfo, every_s: float, progress: Callable[[], dict]) -> None:
        self.repo, self.run, self.every_s, self.progress = repo, run, every_s, progress
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"poclip-heartbeat-{run.id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.repo.heartbeat(self.run.id, self.progress(), lease=self.run.lease)
            except RunLostError as exc:
                self.lost = str(exc)
                return
            except Exception:  # a database hiccup: try again next period; the reaper allows 30 periods
                log.exception("heartbeat for run %s failed", self.run.id)

    def check(self) -> None:
        if self.lost is not None:
            raise RunLostError(self.lost)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Trainer:
    """Runs queued training runs one at a time and keeps its live head in step with the database."""

    def __init__(self, settings: Settings, repo: Repository, encoder: ClipEncoder, live: LiveHead | None = None,
                 *, clock: Callable[[], float] | None = None, beat_every_s: float = BEAT_EVERY_S) -> None:
        self.settings = settings
        self.head = check_head(encoder, settings.head or DEFAULT_HEAD)  # fails at start, not at the first run
        self.repo = repo
        self.encoder = encoder
        self.live_head = live or LiveHead(repo, encoder, load_starter(encoder) if settings.starter_head else None)
        self.worker_id = worker_name(f"{id(self):x}")
        self.progress = Progress()
        self.clock = clock or (lambda: time.time())  # looked up per call, so tests can move the module's time
        self.beat_every_s = beat_every_s
        self._gate_data: EvalEmbeddings | None = None
        self._base_metrics: dict | None = None
        self._gate_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_schedule = self.clock()
        self._last_backup = self.clock()
        self._not_before = 0.0  # no scheduling before this time (backoff after failures)
        self._backoff = BACKOFF_S[0]
        self.heads_dir = settings.data_dir / "heads"
        self.cache_dir = settings.data_dir / "embeddings"

    # ----- the live head ------------------------------------------------------------------------------------

    @property
    def live(self) -> LiveModel:
        return self.live_head.current

    def sync_live(self) -> LiveModel:
        """Load the database's active version if it is not the one serving; returns the live model."""
        return self.live_head.sync()

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
        """Gate metrics (clean / typographic accuracy, attack success, KL drift, per class) of a policy."""
        data = self.gate_data()
        return self.base_metrics() if policy is None else evaluate_policy(policy, data, encoder=self.encoder)

    # ----- runs ------------------------------------------------------------------------------------------------

    def request(self, config: dict[str, Any] | None = None, reason: str = "manual") -> RunInfo:
        """Queue a run, unless one is already queued (the database keeps at most one); returns the queued run.

        Dead runs (stale heartbeat, or a worker process on this host that is gone) are failed first, so a crash
        does not leave "run N is running" behind.
        """
        self.repo.reap_stale_runs()
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
            with _Heartbeat(self.repo, run, self.beat_every_s, self._beat_metrics) as beat:
                done = self._execute(run, beat)
            self._backoff = BACKOFF_S[0]
            return done
        except RunLostError as exc:
            # Someone else owns the run now: write nothing more about it.
            log.warning("training run %s was lost: %s", run.id, exc)
            self.progress = Progress(run.id, "lost", message=str(exc))
            return self.repo.get_run(run.id)
        except Exception as exc:  # any other failure ends the run as failed, with the reason kept
            log.exception("training run %s failed", run.id)
            self.progress = Progress(run.id, "failed", message=str(exc))
            self._not_before = self.clock() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_S[1])
            try:
                return self.repo.fail_run(run.id, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
            except Exception:
                log.exception("could not mark run %s failed", run.id)
                return self.repo.get_run(run.id)

    def _beat_metrics(self) -> dict:
        p = self.progress
        return {"phase": p.phase, "step": p.step, "total": p.total}

    def _preferences(self, run: RunInfo) -> tuple[list[Preference], list[CleanImage], int, int | None]:
        """The crowd's pairs (with the augmentation) and ``POCLIP_REPLAY_PAIRS`` synthetic ones, the clean
        pictures, how many pairs came from the crowd, and the judgment watermark."""
        batch = self.repo.training_pairs(None)
        if batch.watermark:
            # Recorded before anything can fail: the scheduler counts only judgments after it.
            self.repo.heartbeat(run.id, self._beat_metrics(), lease=run.lease, judgment_watermark=batch.watermark)
        if len(batch.pairs) < MIN_PAIRS:
            raise NotEnoughData(f"only {len(batch.pairs)} training pairs; at least {MIN_PAIRS} are needed")
        # Pictures are named by their stored hash: the trainer's cache opens a file only for what it has not seen.
        pictures: dict[str, StoredPicture] = {}
        prefs, clean = [], []
        for pair in batch.pairs:
            if pair.image_sha256 not in pictures:
                pictures[pair.image_sha256] = StoredPicture(pair.image_sha256, Path(pair.image_path))
                clean.append(CleanImage(pictures[pair.image_sha256], tuple(pair.labels), pair.prompt_template))
            attack = TextAttack.from_dict(pair.attack) if pair.attack else None
            prefs.append(Preference(pictures[pair.image_sha256], pair.chosen, pair.rejected, tuple(pair.labels),
                                    pair.prompt_template, attack))
            prefs += text_invariance_pairs(prefs[-1], pair.sample_id, self.settings.augment_attacks)
        crowd = len(prefs)
        if self.settings.replay_pairs:
            prefs += synth_preferences(self.settings.replay_pairs, REPLAY_SEED)
            clean += synth_clean(self.settings.replay_pairs, REPLAY_SEED)
        if len(clean) < MIN_CLEAN:
            clean += synth_clean(MIN_CLEAN - len(clean), seed=1)
        return prefs, clean, crowd, batch.watermark

    def _execute(self, run: RunInfo, beat: _Heartbeat) -> RunInfo:
        self.progress = Progress(run.id, "loading pairs")
        prefs, clean, crowd, watermark = self._preferences(run)
        config = TrainConfig(head=self.head, loss=str(run.config.get("loss", "dpo")),
                             seed=int(run.config.get("seed", 0)))
        config = replace(config, epochs=replay_epochs(config.resolved_epochs, crowd, len(prefs) - crowd))

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            self.progress.phase, self.progress.step, self.progress.total = "training", step, total
            self.progress.history.append({"step": step, **metrics})
            self.progress.updated = time.time()
            beat.check()
            if self._stop.is_set():
                raise RuntimeError("trainer stopped")

        self.progress.phase = "embedding"
        path = self.heads_dir / f"run{run.id}.safetensors"
        # Crowd pairs refine what serves (the starter head at first) rather than start over; the reference,
        # and so the KL anchor, stays the base model.
        start = self.sync_live().policy
        result = train_head(self.encoder, prefs, clean, path, config, cache_dir=self.cache_dir, progress=on_step,
                            start=start)
        beat.check()
        self.progress.phase = "evaluating"
        live = self.sync_live()
        candidate = self.evaluate(result.policy)
        live_metrics = self.evaluate(live.policy)
        base = self.base_metrics()
        ok, reason = gate(candidate, live_metrics, base)
        beat.check()
        metrics = {
            "candidate": _summary(candidate), "live_before": _summary(live_metrics), "base": _summary(base),
            "per_class": class_table(candidate, live_metrics),
            "train": result.metrics, "pairs": len(prefs), "crowd_pairs": crowd, "replay_pairs": len(prefs) - crowd,
            "clean": len(clean), "epochs": config.epochs, "loss": config.loss,
            "train_seconds": round(result.train_seconds, 2), "embed_seconds": round(result.embed_seconds, 2),
            "gate": reason,
        }
        lease = {"run_id": run.id, "lease": run.lease}
        version = self.repo.register_version(
            self.encoder.spec, str(path), metrics,
            parent_id=live.version.id if live.version else None, judgment_watermark=watermark, **lease,
        )
        if ok:
            version = self.repo.promote_version(version.id, **lease)
            self.sync_live()
        else:
            version = self.repo.reject_version(version.id, reason, **lease)
        self.progress = Progress(run.id, "promoted" if ok else "rejected", config.epochs, config.epochs,
                                 self.progress.history, reason)
        return self.repo.finish_run(run.id, metrics=metrics, version_id=version.id, lease=run.lease,
                                    judgment_watermark=watermark)

    # ----- the schedule ---------------------------------------------------------------------------------------

    def new_pairs(self) -> int:
        """Judgments that can make pairs, recorded after the newest one any run or the active version used
        (counted up to the scheduling threshold: the count's cost stays bounded)."""
        return self.repo.new_since_last_run(limit=max(self.settings.retrain_every_pairs, MIN_PAIRS))[1]

    def maybe_schedule(self) -> RunInfo | None:
        """Queue a run when enough judgments arrived since the last run, or when the timer is due and at least
        ``MIN_PAIRS`` arrived. Never while a run is queued or running, never during a failure backoff."""
        every_pairs, every_min = self.settings.retrain_every_pairs, self.settings.retrain_every_minutes
        if not every_pairs and not every_min:
            return None
        now = self.clock()
        if now < self._not_before:
            return None
        if any(r.status in ("queued", "running") for r in self.repo.list_runs(limit=2)):
            return None
        fresh = self.new_pairs()
        due = every_min and now - self._last_schedule >= every_min * 60
        if (every_pairs and fresh >= every_pairs) or (due and fresh >= MIN_PAIRS):
            self._last_schedule = now
            return self.request(reason=f"scheduled: {fresh} new judgments since the last run")
        return None

    def maybe_backup(self) -> None:
        every = self.settings.backup_every_minutes
        if every and self.clock() - self._last_backup >= every * 60 and self.repo.db.dialect == "sqlite" \
                and self.settings.storage == "snapshots":
            from annotation_db import take_snapshot

            self._last_backup = self.clock()
            take_snapshot(self.settings, keep=self.settings.backup_keep)

    def tick(self, train: bool = True) -> RunInfo | None:
        """One pass of the loop: follow promotions elsewhere, schedule, train, back up. Returns a finished run."""
        self.sync_live()
        run = None
        if train:
            self.repo.reap_stale_runs()  # a crashed worker's run must not hold up the schedule
            self.maybe_schedule()
            run = self.run_pending()
        self.maybe_backup()
        return run

    def loop(self, train: bool = True, interval_s: float = 2.0, once: bool = False,
             on_run: Callable[[RunInfo], None] | None = None) -> None:
        """The trainer loop, for the app's thread and for ``python -m poclip worker`` alike: :meth:`tick`
        every ``interval_s`` seconds until :meth:`stop` (or after one pass with ``once``)."""
        while not self._stop.is_set():
            try:
                run = self.tick(train)
                if run is not None and on_run is not None:
                    on_run(run)
            except Exception:  # the loop must outlive one bad tick (a DB hiccup, a bad file)
                log.exception("trainer tick failed")
            if once:
                return
            self._stop.wait(interval_s)

    def start(self, train: bool = True, interval_s: float = 2.0) -> None:
        """Run :meth:`loop` in a daemon thread until :meth:`stop`."""
        if self._thread and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self.loop, args=(train, interval_s), name="poclip-trainer",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
