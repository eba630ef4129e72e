"""The app's trainer thread, training in child processes: the serving process schedules and supervises runs, and
a child process (``python -m poclip worker --run ID``) executes each one and hands back the head file.

Training inside the serving process held gigabytes of cached activations that stayed after the run and slowed
``/predict`` for its whole length. Here each run's child
- runs at :data:`TRAIN_NICENESS` steps lower CPU priority than the app, with ``POCLIP_TRAIN_THREADS`` torch threads;
- reads the app's settings from its environment (:meth:`poclip.settings.Settings.to_env`);
- writes its progress to the run's row (the Train tab reads it there), and its output to ``logs/run<ID>.log`` in
  the data dir;
- ends itself when the app is gone (:func:`watch_parent`), so no orphan trains on;
- returns all its memory to the machine when it exits.

The serving process only loads the head file a run promotes (:meth:`poclip.app.live.LiveHead.sync`). A child that
dies (a crash, the kernel's out-of-memory killer) fails its run with how it ended and the end of its output, and
the schedule backs off as after any failed run. At start, while idle, one child puts what every retrain reuses into
the on-disk cache (:meth:`poclip.app.worker.Trainer.prepare`), so a run embeds only the crowd's pictures; and again,
while idle, each time the crowd's pairs grew by :data:`PREPARE_EVERY_PAIRS`, so a run finds most of those cached too.
A run queued meanwhile does not wait for it: the preparing child is stopped (what it cached stays cached).

This module holds both ends: :class:`ChildTrainer` runs in the app; :func:`watch_parent` and
:func:`process_info` run in the child. Neither imports the trainer (:mod:`poclip.app.worker`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from annotation_db import InvalidTransitionError, Repository, RunInfo
from poclip.app.live import LiveHead
from poclip.app.retrain.loop import TrainerLoop
from poclip.settings import REPO_DIR, Settings

log = logging.getLogger(__name__)

TRAIN_NICENESS = 10  # how much lower the child's CPU priority is than the app's (Linux: 0 to 19 from 0)
CHILD_STOP_S = 30.0  # after asking a child to stop (SIGTERM: its run fails at its next step), kill it after this
PARENT_POLL_S = 1.0  # how often a child checks that the app that started it is still there
ORPHAN_GRACE_S = 30.0  # a child whose app is gone ends its run at the next step, and exits after this at most
EXIT_ORPHANED = 3  # the exit status of a child that outlived its app's grace
OUTPUT_TAIL = 2000  # characters of a dead child's output kept in its run's error
# While idle, the crowd's new pictures go through the trunk once this many crowd pairs came since the last
# preparation: on the bundled model some 6 pictures per pair, about 2.5 s of a core for 20 pairs, plus the child's
# start (some 7 s), at lower priority.
PREPARE_EVERY_PAIRS = 20


def process_info(worker: str) -> dict[str, Any]:
    """Who ran a run, as its record keeps it (``process``): the worker name, pid, CPU niceness and torch threads."""
    return {"worker": worker, "pid": os.getpid(), "nice": os.nice(0) if hasattr(os, "nice") else None,
            "threads": torch.get_num_threads()}


def watch_parent(parent: int, on_gone: Callable[[str], None], every_s: float = PARENT_POLL_S,
                 grace_s: float = ORPHAN_GRACE_S) -> threading.Thread:
    """In a child: call ``on_gone(reason)`` once process ``parent`` has exited, then end this process ``grace_s``
    later if it is still running. Returns the watching (daemon) thread.

    A process whose parent exits is handed to another (init, or a subreaper), so its parent pid changes: that is
    the sign, whatever killed the app (SIGKILL included, which no handler in the app could pass on).
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        on_gone(f"the app that started this training process (pid {parent}) exited")
        time.sleep(grace_s)
        log.error("the app (pid %s) is gone and the run did not stop within %g s: exiting", parent, grace_s)
        os._exit(EXIT_ORPHANED)

    thread = threading.Thread(target=watch, name="poclip-parent-watch", daemon=True)
    thread.start()
    return thread


def _ran_in(run: RunInfo, pid: int) -> bool:
    # Worker names are host:pid:tag (annotation_db.worker_name).
    return (run.worker or "").split(":")[:2] == [socket.gethostname(), str(pid)]


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-OUTPUT_TAIL:].strip()


class ChildTrainer(TrainerLoop):
    """The trainer loop of a serving process: schedules runs and executes each in a child process.

    Args:
        settings: the app's settings, handed to every child through its environment.
        repo: the store; live_head: the app's live head, synced after every run (and every pass).
        clock: the schedule's time.
    """

    def __init__(self, settings: Settings, repo: Repository, live_head: LiveHead,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(settings, repo, live_head, clock)
        self.logs_dir = settings.data_dir / "logs"
        self.prepared = False
        self.prepared_crowd_pairs = 0  # the crowd pairs there were when the last preparing child started
        self._labels_seen: tuple[int, int] | None = None  # (labels, undone) when the crowd pairs were last counted

    def command(self, *args: str) -> list[str]:
        """The child's command line: ``python -m poclip worker ARGS``, watching this process, at lower priority,
        its result as one JSON line (the last of its log)."""
        return [sys.executable, "-m", "poclip", "worker", *args, "--parent", str(os.getpid()),
                "--nice", str(TRAIN_NICENESS), "--json"]

    def spawn(self, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        """Start a child (``python -m poclip worker ARGS``); returns it and the file its output goes to."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        out = self.logs_dir / f"{name}.log"
        # The child imports this checkout's package wherever the app was started from.
        path = os.pathsep.join(p for p in (str(REPO_DIR), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, **self.settings.to_env(), "PYTHONPATH": path}
        with open(out, "wb") as sink:  # the child holds its own descriptor
            proc = subprocess.Popen(self.command(*args), env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT)
        log.info("training child %s started (pid %s), output in %s", name, proc.pid, out)
        return proc, out

    def wait(self, proc: subprocess.Popen, cancel: Callable[[], bool] | None = None) -> int:
        """The child's exit status once it ends; on :meth:`stop`, SIGTERM (its run fails at the next step), then
        SIGKILL after :data:`CHILD_STOP_S`. When ``cancel()`` (asked once a second) says so, SIGKILL at once: for
        a child that writes nothing a kill can leave half-done (the cache writes each file whole)."""
        polls = 0
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if self.stopping:
                    break
                polls += 1
                if cancel is not None and polls % 2 == 0 and cancel():
                    proc.kill()
                    return proc.wait()
        proc.terminate()
        try:
            return proc.wait(timeout=CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def prepare(self, cancel: Callable[[], bool] | None = None) -> int:
        """Run the preparing child (:meth:`poclip.app.worker.Trainer.prepare`) and wait for it, or until
        ``cancel()``; returns its exit status. A failure is logged, not fatal: each run then computes what it needs
        itself."""
        self.prepared_crowd_pairs = self.pair_counts().crowd_pairs
        proc, out = self.spawn("prepare", "--prepare")
        code = self.wait(proc, cancel)
        self.prepared = True
        if code == -signal.SIGKILL and cancel is not None:
            log.info("preparing child stopped: a run was queued")
        elif code != 0:
            log.error("preparing the retrain cache failed: the child %s: %s", _how_it_ended(code), _tail(out))
        return code

    def maybe_prepare(self) -> bool:
        """While idle, prepare again once the crowd pairs grew by :data:`PREPARE_EVERY_PAIRS` since the last
        preparation; a run queued meanwhile stops it. Returns whether a preparing child ran."""
        counters = self.repo.counts()  # O(1): the crowd pairs are counted again only once labels changed
        labels = (counters["judgments"], counters["undone"])
        if labels == self._labels_seen:
            return False
        self._labels_seen = labels
        if self.pair_counts().crowd_pairs - self.prepared_crowd_pairs < PREPARE_EVERY_PAIRS:
            return False
        self.prepare(cancel=lambda: any(r.status == "queued" for r in self.repo.list_runs(limit=1)))
        return True

    def loop(self, train: bool = True, interval_s: float = 2.0, once: bool = False,
             on_run: Callable[[RunInfo], None] | None = None) -> None:
        """The loop (:meth:`TrainerLoop.loop`), after the preparing child when this process trains."""
        if train and not self.prepared:
            self.prepare()
        super().loop(train, interval_s, once, on_run)

    def run_pending(self) -> RunInfo | None:
        """Execute the queued run in a child process, unless a run is running somewhere; returns the run once the
        child is done (None when nothing was queued, or another worker took it)."""
        self.repo.reap_stale_runs()
        runs = self.repo.list_runs(limit=2)
        queued = next((r for r in runs if r.status == "queued"), None)
        if any(r.status == "running" for r in runs):
            return None
        if queued is None:
            self.maybe_prepare()
            return None
        proc, out = self.spawn(f"run{queued.id}", "--run", str(queued.id))
        code = self.wait(proc)
        run = self.repo.get_run(queued.id)
        if code != 0:
            run = self._fail_dead_child(run, proc.pid, code, out)
        if run.status == "failed":
            self.schedule.failed(self.clock())
        elif run.status == "succeeded":
            self.schedule.succeeded()
        self.sync_live()
        return None if run.status == "queued" else run

    def _fail_dead_child(self, run: RunInfo, pid: int, code: int, out: Path) -> RunInfo:
        """Fail ``run`` when the dead child had it (running under its pid) or died before taking it (queued)."""
        if run.status == "running" and _ran_in(run, pid):
            when = ""
        elif run.status == "queued":
            when = " before it took the run"
        else:  # the child finished or failed the run itself before it died
            return run
        reason = f"the training process (pid {pid}) {_how_it_ended(code)}{when}"
        tail = _tail(out)
        log.error("training run %s failed: %s", run.id, reason)
        try:
            return self.repo.fail_run(run.id, f"{reason}; its last output:\n{tail}" if tail else reason)
        except InvalidTransitionError:  # it ended some other way in the meantime
            return self.repo.get_run(run.id)
