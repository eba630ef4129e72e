"""The app's trainer thread runs each retrain in a child process (``POCLIP_TRAINER=thread``), against a real SQLite
file and the bundled model: the run trains elsewhere, at lower priority with bounded threads, the serving process
loads the head it promotes, and a child that dies or outlives its app fails the run with the reason."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from apphelpers import judge, make_service, make_trainer, seeded_samples

from poclip.app.child_trainer import TRAIN_NICENESS, ChildTrainer
from poclip.app.retrain.data import MIN_CLEAN
from poclip.engine.embed_cache import ActivationCache
from poclip.settings import REPO_DIR

PHASES = {"start", "model_load", "queue_wait", "data", "embedding", "training", "evaluation", "registration"}


def labelled_service(tmp_path, bundled, n=12, **overrides):
    """An app back end with ``n`` honest judgments (the true shape over the written word) on seeded items."""
    svc = make_service(tmp_path, bundled, seed_items=30, augment_attacks=0, **overrides)
    for sid, shape, written in seeded_samples(svc.repo, 30)[:n]:
        judge(svc.repo, "poclip-synthetic", sid, shape, written, kind="synthetic")
    return svc


def wait_for(condition, timeout_s=300.0, every_s=0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s:g} s")


def worker_pid(run) -> int:
    return int(run.worker.split(":")[1])


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting for its new parent to reap it has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: the signal answered


def test_a_retrain_runs_in_a_child_at_lower_priority_and_the_app_serves_the_head_it_promotes(tmp_path, bundled):
    svc = labelled_service(tmp_path, bundled, train_threads=1)
    try:
        trainer = ChildTrainer(svc.settings, svc.repo, svc.live_head)
        queued = svc.training.retrain(token="s3cret-admin")
        run = trainer.run_pending()
        assert run.id == queued["run_id"] and run.status == "succeeded", run.error
        # Another process trained it, at the app's niceness plus TRAIN_NICENESS, on POCLIP_TRAIN_THREADS threads.
        process = run.metrics["process"]
        assert worker_pid(run) == process["pid"] != os.getpid()
        assert process["nice"] == min(19, os.nice(0) + TRAIN_NICENESS) and process["threads"] == 1
        assert not alive(process["pid"])  # it exited, and its memory with it
        # The head went live and this process serves it, loaded from the file the child wrote.
        version = svc.repo.get_version(run.version_id)
        assert version.status == "active", run.metrics["gate"]
        assert svc.live_head.current.version.id == version.id and Path(version.head_path).is_file()
        assert svc.status()["live_version"] == version.id
        assert svc.training.progress().phase == "promoted"
        # Where the time went, from the child's start to the registration: wall seconds, and the child's CPU.
        phases, cpu = run.metrics["phases_s"], run.metrics["phases_cpu_s"]
        assert set(phases) == set(cpu) == PHASES and all(s >= 0 for s in [*phases.values(), *cpu.values()])
        assert min(phases["training"], phases["model_load"], cpu["training"], cpu["start"]) > 0
        assert cpu["queue_wait"] == 0  # the queue's wait is not the child's work
        log = (tmp_path / "logs" / f"run{run.id}.log").read_text()
        assert f'"run": {run.id}, "status": "succeeded"' in log
    finally:
        svc.close()


def test_a_child_killed_mid_run_fails_the_run_with_how_it_ended_and_nothing_goes_live(tmp_path, bundled):
    svc = labelled_service(tmp_path, bundled)
    try:
        trainer = ChildTrainer(svc.settings, svc.repo, svc.live_head)
        trainer.request()
        done = {}
        thread = threading.Thread(target=lambda: done.setdefault("run", trainer.run_pending()))
        thread.start()
        running = wait_for(lambda: next((r for r in svc.repo.list_runs() if r.status == "running"), None))
        os.kill(worker_pid(running), signal.SIGKILL)  # as the kernel's out-of-memory killer would
        thread.join(120)
        run = done["run"]
        assert run.id == running.id and run.status == "failed"
        assert run.error.startswith(f"the training process (pid {worker_pid(running)}) was killed by SIGKILL")
        assert svc.training.progress().phase == "failed"
        assert svc.repo.list_versions() == [] and svc.live_head.current.version is None
        assert trainer.schedule.waiting(trainer.clock())  # backs off as after any failed run
        assert trainer.run_pending() is None  # nothing queued: no child is started again
    finally:
        svc.close()


def test_a_child_whose_app_died_stops_its_run_and_exits(tmp_path, bundled):
    """The app is SIGKILLed mid-run (no handler of its own can tell the child): the child notices, fails the run
    with the reason and exits instead of training on as an orphan."""
    svc = labelled_service(tmp_path, bundled)
    try:
        trainer = ChildTrainer(svc.settings, svc.repo, svc.live_head)
        run = trainer.request()
        env = {**os.environ, **svc.settings.to_env(), "PYTHONPATH": str(REPO_DIR)}
        # A stand-in app: starts the child as ChildTrainer does, names its pid, then waits to be killed.
        app = subprocess.Popen([sys.executable, "-c", f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "poclip", "worker", "--run", "{run.id}", "--parent", str(os.getpid()),
                          "--nice", "{TRAIN_NICENESS}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""], env=env, stdout=subprocess.PIPE, text=True)
        child = int(app.stdout.readline())
        wait_for(lambda: svc.repo.get_run(run.id).status == "running")
        app.kill()
        app.wait()
        wait_for(lambda: not alive(child), timeout_s=120)
        failed = svc.repo.get_run(run.id)
        assert failed.status == "failed", failed.metrics
        assert f"the app that started this training process (pid {app.pid}) exited" in failed.error
        assert svc.repo.list_versions() == []
    finally:
        svc.close()


def test_prepared_caches_leave_a_retrain_only_the_pictures_judged_since_to_embed(tmp_path, bundled):
    """What a retrain looks up (the gate's pictures, the replayed pairs, the crowd's pairs so far) is computed while
    idle; a run afterwards embeds only the pictures judged since, and preparing again computes nothing."""
    replay = 24  # with the clean pictures topped up to MIN_CLEAN from another synthetic stream
    svc = labelled_service(tmp_path, bundled, replay_pairs=replay, gate_eval_n=40,
                           gate_families=("paper", "upper_case"))
    cache_dir = tmp_path / "embeddings"
    try:
        entries = lambda: len(ActivationCache(bundled, cache_dir, blocks=2))  # noqa: E731 - the default head's cut
        assert entries() == 0
        prepared_at = make_trainer(svc).prepare()
        prepared = entries()
        # The gate's pictures clean and attacked in each of its two families; the replayed pairs, their clean selves
        # and clean pictures; the top-up pictures, bare and with text; the 12 judged pictures, attacked and clean.
        assert prepared >= 3 * 40 + 3 * replay + 2 * (MIN_CLEAN - replay) + 2 * 12
        assert prepared_at["crowd"] > 0 and prepared_at["crowd_pairs"] == 0  # the generator's votes are no crowd's
        assert make_trainer(svc).prepare()["crowd_pairs"] == 0 and entries() == prepared
        for sid, shape, written in seeded_samples(svc.repo, 30)[12:18]:  # six more judged after it
            judge(svc.repo, "poclip-synthetic", sid, shape, written, kind="synthetic")
        trainer = make_trainer(svc)  # a fresh process's trainer: nothing in memory, all on disk
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
        # Only the six new pictures, attacked and clean (and gold items' reference answers among them).
        assert 0 < entries() - prepared <= 2 * 6
    finally:
        svc.close()


def test_while_idle_the_crowds_new_pairs_are_prepared_and_a_queued_run_does_not_wait_for_it(tmp_path, bundled):
    from poclip.app.child_trainer import PREPARE_EVERY_PAIRS

    svc = make_service(tmp_path, bundled, seed_items=60, augment_attacks=0, replay_pairs=0, gate_eval_n=40,
                       gate_families=("paper",), min_gold_seen=0, retrain_every_pairs=0)
    try:
        trainer = ChildTrainer(svc.settings, svc.repo, svc.live_head)
        items = [item for item in seeded_samples(svc.repo, 60) if not svc.repo.get_sample(item[0]).is_gold]
        people = [f"person{k}" for k in range(5)]  # one person's votes may decide at most a quarter of the items
        for k, (sid, shape, written) in enumerate(items[:PREPARE_EVERY_PAIRS - 1]):
            judge(svc.repo, people[k % 5], sid, shape, written)
        assert not trainer.maybe_prepare()  # too few new crowd pairs: no child
        judge(svc.repo, people[(PREPARE_EVERY_PAIRS - 1) % 5], *items[PREPARE_EVERY_PAIRS - 1])
        assert trainer.run_pending() is None  # nothing queued: the idle pass prepares instead
        assert trainer.prepared_crowd_pairs == PREPARE_EVERY_PAIRS
        done = (tmp_path / "logs" / "prepare.log").read_text().strip().splitlines()[-1]
        assert f'"crowd_pairs": {PREPARE_EVERY_PAIRS}' in done
        assert not trainer.maybe_prepare()  # nothing new since

        for k, (sid, shape, written) in enumerate(items[PREPARE_EVERY_PAIRS:2 * PREPARE_EVERY_PAIRS]):
            judge(svc.repo, people[k % 5], sid, shape, written)
        threading.Timer(1.0, trainer.request).start()  # a run queued while the child prepares
        started = time.monotonic()
        assert trainer.maybe_prepare()
        assert time.monotonic() - started < 15  # stopped, not waited for
        assert trainer.prepared_crowd_pairs == 2 * PREPARE_EVERY_PAIRS
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
    finally:
        svc.close()
