"""The trainer: turns collected preference pairs into a new head, gates it, and promotes or rejects it.

:class:`Trainer` executes runs in the process that holds it: the standalone ``python -m poclip worker``, or the
child process the app's trainer thread starts for each run (:mod:`poclip.app.child_trainer`;
``POCLIP_TRAINER=thread``), so the serving process never trains. The database decides
who trains: at most one run is queued and one running (partial unique indexes), and a claimed run carries a
lease that registering, promoting and finishing must present, so a worker that lost its run (frozen past the
heartbeat timeout, then resumed) cannot overwrite the next worker's result. A heartbeat thread beats through
every phase, embedding included, carrying the run's progress. The live head is
:class:`poclip.app.live.LiveHead`'s; serving never imports this module.

Each step of a run has its own module in :mod:`poclip.app.retrain` (data, training, evaluation, gate,
registration, schedule, heartbeat); this module runs them in order. Their public names used elsewhere are
importable from here too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter  # durations: the real clock even where tests move the module's time
from typing import Any

import torch

from annotation_db import InvalidTransitionError, Repository, RunInfo, RunLostError, RunnerBusyError, worker_name
from poclip.app.child_trainer import process_info
from poclip.app.identity import server_secret
from poclip.app.live import LiveHead
from poclip.app.retrain.crowd import Agreement, HeldOutSplit, crowd_agreement
from poclip.app.retrain.data import (
    MIN_CLEAN,
    MIN_PAIRS,
    REPLAY_SEED,
    NotEnoughData,
    TrainingData,
    collect,
    synthetic,
    text_invariance_pairs,
)
from poclip.app.retrain.evaluation import GATE_SEED, GateEvaluation
from poclip.app.retrain.gate import (
    CLASS_DROP_LIMIT,
    CLEAN_DROP_LIMIT,
    MIN_HELD_OUT,
    class_table,
    format_class_table,
    gate,
    gate_table,
)
from poclip.app.retrain.heartbeat import BEAT_EVERY_S, PHASE_NAMES, Heartbeat, Progress, beat_metrics, clocks
from poclip.app.retrain.loop import TrainerLoop
from poclip.app.retrain.registration import finish, head_file, register, run_record
from poclip.app.retrain.schedule import BACKOFF_S
from poclip.app.retrain.training import replay_epochs, run_config, train_candidate
from poclip.engine.config import TrainConfig, default_head
from poclip.engine.evaluate import EvalEmbeddings
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy, check_head, save_head
from poclip.engine.prepare import head_inputs
from poclip.engine.starter import load_starter
from poclip.engine.train import TrainResult, checkpoint_metadata
from poclip.settings import Settings

__all__ = [
    "BACKOFF_S", "BEAT_EVERY_S", "CLASS_DROP_LIMIT", "CLEAN_DROP_LIMIT", "GATE_SEED", "MIN_CLEAN", "MIN_HELD_OUT",
    "MIN_PAIRS",
    "REPLAY_SEED", "NotEnoughData", "Progress", "Trainer", "class_table", "format_class_table", "gate",
    "replay_epochs", "text_invariance_pairs",
]

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """What a run's model work produced (:meth:`Trainer.compute`), in a form that can cross from another process
    (a ZeroGPU call): the trained head's tensors on the CPU, its checkpoint metadata, the training result without
    its policy, and the gate's figures for the candidate, the head it started from and the base model."""

    head_state: dict[str, torch.Tensor]
    metadata: dict[str, object]
    result: TrainResult
    candidate: dict
    live: dict
    base: dict
    crowd: dict[str, Agreement]


def prepare_retrain(policy: Policy, gate: GateEvaluation, replay_pairs: int, cache_dir: Path,
                    live: Policy | None = None) -> dict[str, float]:
    """:meth:`Trainer.prepare`'s work for ``policy``'s head: the gate's pictures in each of its families and the
    ``live`` head's figures on them (kept on disk), then the ``replay_pairs`` replayed pairs and the clean pictures,
    into ``cache_dir``; seconds per part."""
    started = perf_counter()
    for family in gate.families().values():  # the paper style's and every other family's
        family.inputs(policy)
    if live is not None:
        gate.evaluate(live)
    gate_s = perf_counter() - started
    prefs, clean = synthetic(replay_pairs)
    cache = policy.make_cache(cache_dir)
    if prefs:  # exactly the inputs a run looks up (their reference log-probs are the run's)
        head_inputs(prefs, clean, cache)
    elif clean:  # the top-up alone: the pictures and their invariance rows
        cache.embed([c.image for c in clean], [c.attack for c in clean])
        cache.embed([c.image for c in clean])
    return {"gate": round(gate_s, 2), "replay": round(perf_counter() - started - gate_s, 2)}


class Trainer(TrainerLoop):
    """Executes queued training runs in this process, one at a time, and keeps its live head in step with the
    database (the loop, the schedule and the backups are :class:`~poclip.app.retrain.loop.TrainerLoop`'s).

    Args:
        settings, repo: as for the loop; encoder: the backbone the heads are trained on.
        live: the live head to share (the app's, in tests); default a new one on ``encoder``.
        clock: the schedule's time; beat_every_s: the heartbeat's period.
        startup_s: (wall, CPU) seconds this process took to start (``start``: spawn and imports, ``model_load``),
            added to the first run's ``phases_s`` and ``phases_cpu_s``: what a run in a fresh process pays before
            its data is read.
    """

    def __init__(self, settings: Settings, repo: Repository, encoder: ClipEncoder, live: LiveHead | None = None,
                 *, clock: Callable[[], float] | None = None, beat_every_s: float = BEAT_EVERY_S,
                 startup_s: dict[str, tuple[float, float]] | None = None) -> None:
        self.head = check_head(encoder, settings.head or default_head(encoder))  # fails at start, not at the first run
        live = live or LiveHead(repo, encoder, load_starter(encoder) if settings.starter_head else None)
        # The clock looks up this module's time per call, so tests can move it.
        super().__init__(settings, repo, live, clock or (lambda: time.time()))
        self.encoder = encoder
        self.worker_id = worker_name(f"{id(self):x}")
        self.progress = Progress()
        self.beat_every_s = beat_every_s
        self.startup_s = dict(startup_s or {})
        self.heads_dir = settings.data_dir / "heads"
        self.cache_dir = settings.data_dir / "embeddings"
        self.gate_evaluation = GateEvaluation(encoder, settings.gate_eval_n, self.cache_dir, settings.gate_families)
        # Keyed by the deployment secret, like gold placement: every replica holds out the same items.
        self.held_out = HeldOutSplit(server_secret(settings.data_dir), settings.held_out_share)

    # ----- evaluation for the gate ----------------------------------------------------------------------------

    def gate_data(self) -> EvalEmbeddings:
        """The gate's held-out pictures (embedded on first use)."""
        return self.gate_evaluation.data()

    def base_metrics(self) -> dict:
        """The base model's gate metrics."""
        return self.gate_evaluation.base_metrics()

    def evaluate(self, policy: Policy | None) -> dict:
        """Gate metrics (clean / typographic accuracy, attack success, KL drift, per class) of a policy."""
        return self.gate_evaluation.evaluate(policy)

    def prepare(self) -> dict[str, float]:
        """Put what the next retrain will look up into the on-disk cache, so that a run embeds only the crowd's
        pictures judged since: the gate's pictures (their embeddings, and for a tower head the activations at its
        cut) with the live head's figures on them, the replayed synthetic pairs and clean pictures (the head's
        inputs), then the crowd's pairs so far (:meth:`prepare_crowd`). Returns the seconds each part took
        (``gate``, ``replay``, ``crowd``) and ``crowd_pairs``; a second call finds everything cached."""
        policy = Policy(self.encoder, self.head)
        prepared = prepare_retrain(policy, self.gate_evaluation, self.settings.replay_pairs, self.cache_dir,
                                   self.sync_live().policy)
        started = perf_counter()
        prepared["crowd_pairs"] = self.prepare_crowd(policy)
        prepared["crowd"] = round(perf_counter() - started, 2)
        return prepared

    def prepare_crowd(self, policy: Policy) -> int:
        """The crowd's pairs as a run would read them now: each judged picture with its writing, its text variants
        and bare, through the trunk into the cache, and the held-out ones the gate scores. Returns the crowd pairs
        covered (0 while there are too few to train on)."""
        try:
            data = collect(self.repo, lambda watermark: None, augment_attacks=self.settings.augment_attacks,
                           replay_pairs=self.settings.replay_pairs, held_out=self.held_out)
        except NotEnoughData:
            return 0
        head_inputs(data.prefs[:data.judged_pairs], data.clean, policy.make_cache(self.cache_dir))
        crowd_agreement(policy, self.encoder, data.held_out, self.cache_dir)
        return data.crowd_pairs

    # ----- runs ------------------------------------------------------------------------------------------------

    def run_pending(self, run_id: int | None = None) -> RunInfo | None:
        """Claim and execute the oldest queued run (or run ``run_id``, if it is queued), if no other process is
        running one; returns the run once it is over, None when there was nothing to claim."""
        self.repo.reap_stale_runs()
        try:
            run = self.repo.claim_run(self.worker_id, run_id)
        except (RunnerBusyError, InvalidTransitionError):  # busy elsewhere, or the run was taken or failed since
            return None
        if run is None:
            return None
        try:
            with Heartbeat(self.repo, run, self.beat_every_s, lambda: beat_metrics(self.progress)) as beat:
                done = self._execute(run, beat)
            self.schedule.succeeded()
            return done
        except RunLostError as exc:
            # Someone else owns the run now: write nothing more about it, and leave no head file behind.
            log.warning("training run %s was lost: %s", run.id, exc)
            self.repo.discard_head(head_file(self.heads_dir, run))
            self.progress = Progress(run.id, "lost", message=str(exc))
            return self.repo.get_run(run.id)
        except Exception as exc:  # any other failure ends the run as failed, with the reason kept
            log.exception("training run %s failed", run.id)
            self.progress = Progress(run.id, "failed", message=str(exc))
            self.schedule.failed(self.clock())
            try:
                return self.repo.fail_run(run.id, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
            except Exception:
                log.exception("could not mark run %s failed", run.id)
                return self.repo.get_run(run.id)

    def compute(self, data: TrainingData, config: TrainConfig, start: tuple[str, str | None],
                on_step: Callable[[int, int, dict[str, float]], None] | None = None,
                on_phase: Callable[[str], None] | None = None) -> Candidate:
        """The model work of a run, where a GPU helps: train the candidate from the head ``start`` names
        (:attr:`poclip.app.live.LiveModel.ref`), then measure it, that head and the base model for the gate.
        Returns CPU tensors and plain figures only (:class:`Candidate`)."""
        live = self.live_head.policy_for(start)
        result = train_candidate(self.encoder, data, config, None, self.cache_dir, live, on_step)
        if on_phase is not None:
            on_phase("evaluating")
        crowd = {name: crowd_agreement(policy, self.encoder, data.held_out, self.cache_dir)
                 for name, policy in (("candidate", result.policy), ("live", live), ("base", None))}
        return Candidate(result.policy.head_state(),
                         checkpoint_metadata(config, result, len(data.prefs), len(data.clean)),
                         replace(result, policy=None), self.evaluate(result.policy), self.evaluate(live),
                         self.base_metrics(), crowd)

    def compute_run(self, data: TrainingData, config: TrainConfig, start: tuple[str, str | None],
                    beat: Heartbeat) -> Candidate:
        """:meth:`compute` for a run, its steps and phases reported through ``beat`` (a subclass may run it
        elsewhere)."""
        return self.compute(data, config, start, self._on_step(beat), lambda phase: self._phase(phase, beat))

    def _execute(self, run: RunInfo, beat: Heartbeat) -> RunInfo:
        """One run: data, training, evaluation, the gate, registration (each step in :mod:`poclip.app.retrain`)."""
        self.progress = Progress(run.id, "loading pairs")
        data = collect(self.repo, lambda watermark: beat.write(judgment_watermark=watermark),
                       augment_attacks=self.settings.augment_attacks, replay_pairs=self.settings.replay_pairs,
                       held_out=self.held_out)
        live = self.sync_live()
        config = run_config(self.head, run.config, data,
                            refines=live.policy is not None and live.policy.spec == self.head)
        path = head_file(self.heads_dir, run)
        self._phase("embedding", beat)
        made = self.compute_run(data, config, live.ref, beat)
        beat.check()
        self._check_stop()
        trained = Policy(self.encoder, config.head)
        trained.load_head_state(made.head_state)
        save_head(trained, path, made.metadata)
        candidate, live_metrics, base, crowd = made.candidate, made.live, made.base, made.crowd
        ok, reason = gate(candidate, live_metrics, base, crowd=crowd)
        phases, registering = self._phases_so_far(run), clocks()
        record = run_record(candidate, live_metrics, base, made.result, data, config, reason, crowd=crowd,
                            table=gate_table(candidate, live_metrics, base, crowd))
        version = register(self.repo, run, self.encoder.spec, path, record, promote=ok, reason=reason,
                           parent_id=live.version.id if live.version else None, watermark=data.watermark)
        if ok:
            self.sync_live()
        done = self.progress  # the steps it took, not the epochs
        phases["registration"] = tuple(now - then for now, then in zip(clocks(), registering, strict=True))
        self.progress = Progress(run.id, "promoted" if ok else "rejected", done.step, done.total, done.history, reason)
        # The run's row keeps the curve and the steps too, so the Train tab still shows them once the run is over.
        kept = {"history": beat_metrics(self.progress)["history"], "step": done.step, "total": done.total,
                "phases_s": {name: round(wall, 2) for name, (wall, _) in phases.items()},
                "phases_cpu_s": {name: round(cpu, 2) for name, (_, cpu) in phases.items()},
                "process": process_info(self.worker_id)}
        return finish(self.repo, run, {**record, **kept}, version, data.watermark)

    def _phase(self, phase: str, beat: Heartbeat) -> None:
        # Readers elsewhere follow the phase through the run's row: beat now rather than at the next period.
        self.progress.enter(phase)
        beat.nudge()
        self._check_stop()

    def _check_stop(self) -> None:
        """End the run (it fails with the reason) when this trainer was asked to stop."""
        if self.stopping:
            raise RuntimeError(self.stop_reason)

    def _phases_so_far(self, run: RunInfo) -> dict[str, tuple[float, float]]:
        """(wall, CPU) seconds of the run so far, by phase: this process's start-up when this is its first run
        (``start``, ``model_load``), the wait in the queue after it (``queue_wait``; no CPU of this process),
        then ``data``, ``embedding``, ``training`` and ``evaluation``."""
        startup, self.startup_s = self.startup_s, {}
        waited = (run.started_at - run.created_at).total_seconds() if run.started_at and run.created_at else 0.0
        timings = self.progress.timings()
        return {**startup, "queue_wait": (max(0.0, waited - sum(wall for wall, _ in startup.values())), 0.0),
                **{name: timings.get(phase, (0.0, 0.0)) for phase, name in PHASE_NAMES.items()}}

    def _on_step(self, beat: Heartbeat) -> Callable[[int, int, dict[str, float]], None]:
        """The training progress callback: records the step, stops the run if the lease is lost or on stop."""

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            if self.progress.phase != "training":
                self._phase("training", beat)
            self.progress.step, self.progress.total = step, total
            self.progress.history.append({"step": step, **metrics})
            self.progress.updated = time.time()
            beat.check()
            self._check_stop()

        return on_step


def run_worker(settings: Settings, repo: Repository, *, interval_s: float = 2.0, once: bool = False,
               run_id: int | None = None, prepare: bool = False, parent: int | None = None,
               started: float | None = None) -> dict:
    """The body of ``python -m poclip worker``: load the model, then train, as the command's flags say.

    Args:
        settings: ``POCLIP_TRAIN_THREADS`` bounds torch's threads; repo: the store (closed on return).
        interval_s, once: the loop's period, and one pass only.
        run_id: execute this queued run and return (what the app's child is started for); its record then
            carries this process's start-up (``start`` from ``started``, a ``perf_counter()`` value taken
            when the command began, and ``model_load``) among its ``phases_s``.
        prepare: put what every retrain reuses into the cache (:meth:`Trainer.prepare`) and return; the loop
            (neither ``run_id`` nor ``once``) does this first too.
        parent: the app that started this process: when it exits, the run stops (:func:`watch_parent`).
    Returns:
        ``{"runs": [{run, status, version, error}, ...]}``, with ``prepared`` (seconds per part) when it prepared.
    """
    import signal

    import torch

    from poclip.app.child_trainer import watch_parent
    from poclip.engine.models import load_model

    imported = clocks()  # the CPU clock counts from this process's start: its imports
    torch.set_num_threads(settings.train_threads)
    encoder = load_model(settings.model_spec, settings)
    loaded = clocks()
    startup = {"start": (imported[0] - started, imported[1]),
               "model_load": (loaded[0] - imported[0], loaded[1] - imported[1])} \
        if run_id is not None and started is not None else None
    trainer = Trainer(settings, repo, encoder, startup_s=startup)
    # SIGTERM (a supervisor stopping us) ends the loop between ticks, or aborts the run at its next step.
    signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop("the training process was stopped (SIGTERM)"))
    if parent is not None:
        watch_parent(parent, trainer.request_stop)
    result: dict[str, Any] = {"runs": []}

    def report(run: RunInfo) -> None:
        result["runs"].append({"run": run.id, "status": run.status, "version": run.version_id, "error": run.error})
        print(json.dumps(result["runs"][-1]), file=sys.stderr, flush=True)

    try:
        if prepare or (run_id is None and not once):
            result["prepared"] = trainer.prepare()
        if run_id is not None:
            run = trainer.run_pending(run_id)
            if run is not None:
                report(run)
        elif not prepare:
            trainer.loop(train=True, interval_s=interval_s, once=once, on_run=report)
    except KeyboardInterrupt:
        pass
    finally:
        repo.close()
    return result
