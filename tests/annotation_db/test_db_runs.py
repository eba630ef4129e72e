"""Training runs and the single-runner lock, across threads and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from sqlalchemy.exc import IntegrityError

from annotation_db import InvalidTransitionError, RunLostError, RunnerBusyError, ValidationError
from annotation_db.models import RunStatus, TrainingRun


def test_run_lifecycle(repo, clock):
    queued = repo.enqueue_run({"loss": "dpo", "beta": 1.0})
    assert queued.status == "queued" and queued.config == {"loss": "dpo", "beta": 1.0}
    run = repo.claim_run("host-1:123")
    assert (run.id, run.status, run.worker, run.heartbeat_at) == (queued.id, "running", "host-1:123", clock())
    clock.advance(10)
    repo.heartbeat(run.id, {"step": 5, "loss": 0.4})
    assert repo.get_run(run.id).metrics == {"step": 5, "loss": 0.4}
    assert repo.get_run(run.id).heartbeat_at == clock()
    version = repo.register_version("bundled", "heads/v1.safetensors", {"acc": 0.9})
    done = repo.finish_run(run.id, metrics={"loss": 0.1}, version_id=version.id)
    assert (done.status, done.version_id, done.metrics, done.finished_at) == (
        "succeeded",
        version.id,
        {"loss": 0.1},
        clock(),
    )
    with pytest.raises(RunLostError, match="succeeded"):
        repo.heartbeat(run.id)
    with pytest.raises(InvalidTransitionError, match="already succeeded"):
        repo.fail_run(run.id, "late")
    assert repo.claim_run("host-1:123") is None  # nothing queued


def test_claiming_while_another_run_is_alive_fails_cleanly(repo, clock):
    first = repo.enqueue_run({"n": 1})
    repo.claim_run("worker-a")
    second = repo.enqueue_run({"n": 2})
    clock.advance(repo.config.stale_heartbeat_s / 2)
    with pytest.raises(RunnerBusyError, match=f"run {first.id} is running on worker-a"):
        repo.claim_run("worker-b")
    assert repo.get_run(second.id).status == "queued"
    repo.fail_run(first.id, "stopped by the maintainer")
    with pytest.raises(InvalidTransitionError, match="is failed, not queued"):
        repo.claim_run("worker-b", run_id=first.id)
    assert repo.claim_run("worker-b").id == second.id


def test_stale_heartbeat_marks_the_run_failed_and_frees_the_lock(repo, clock):
    first = repo.enqueue_run({"n": 1})
    repo.claim_run("worker-a")
    second = repo.enqueue_run({"n": 2})
    clock.advance(repo.config.stale_heartbeat_s + 1)
    run = repo.claim_run("worker-b")
    assert run.id == second.id
    dead = repo.get_run(first.id)
    assert dead.status == "failed" and "no heartbeat" in dead.error
    with pytest.raises(RunLostError, match="no longer running"):
        repo.heartbeat(first.id)  # the slow worker learns it lost the run and stops


def test_reap_stale_runs(repo, clock):
    run = repo.enqueue_run({})
    repo.claim_run("w")
    assert repo.reap_stale_runs() == []
    clock.advance(repo.config.stale_heartbeat_s + 1)
    assert repo.reap_stale_runs() == [run.id]
    assert repo.get_run(run.id).status == "failed"


def test_fail_run_keeps_long_error_text_verbatim(repo):
    run = repo.enqueue_run({})
    repo.claim_run("w")
    error = "Traceback (most recent call last):\n  File 'x', ' OR 1=1; -- 失败\n" + "E" * 10_000_000
    assert repo.fail_run(run.id, error).error == error
    assert repo.get_run(run.id).error == error
    with pytest.raises(ValidationError, match="run config must be a dict"):
        repo.enqueue_run("beta=1")


def test_only_one_of_many_concurrent_claimers_wins(make_repo):
    repos = [make_repo() for _ in range(6)]  # separate engines, as separate processes would have
    for i in range(6):
        repos[0].enqueue_run({"n": i})
    barrier = threading.Barrier(6)
    won, busy = [], []

    def claim(repo, name):
        barrier.wait()
        try:
            if repo.claim_run(name) is not None:
                won.append(name)
        except RunnerBusyError:
            busy.append(name)

    threads = [threading.Thread(target=claim, args=(r, f"w{i}")) for i, r in enumerate(repos)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(busy) == 5
    assert sum(r.status == "running" for r in repos[0].list_runs()) == 1


def test_the_database_itself_refuses_two_running_runs(repo):
    repo.enqueue_run({})
    repo.claim_run("w")
    second = repo.enqueue_run({})
    with pytest.raises(IntegrityError), repo.db.writing() as s:
        s.get_one(TrainingRun, second.id).status = RunStatus.RUNNING


def test_the_lock_holds_across_processes(make_repo, db_url):
    repo = make_repo(real_clock=True)
    repo.enqueue_run({"n": 1})
    held = repo.claim_run("parent")
    repo.enqueue_run({"n": 2})
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from annotation_db import Database, DatabaseConfig, Repository, RunnerBusyError, create_db_engine
        repo = Repository(Database(create_db_engine(DatabaseConfig({db_url!r}))), Path("."))
        try:
            repo.claim_run("child")
            print("CLAIMED")
        except RunnerBusyError as exc:
            print("BUSY:", exc)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith(f"BUSY: training run {held.id} is running on parent")
    repo.finish_run(held.id)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "CLAIMED", child.stderr


def test_at_most_one_run_is_queued_whoever_asks(make_repo):
    repos = [make_repo() for _ in range(6)]  # separate engines, as separate processes would have
    barrier = threading.Barrier(6)
    got = []

    def ask(repo, i):
        barrier.wait()
        got.append(repo.enqueue_run({"n": i}).id)

    threads = [threading.Thread(target=ask, args=(r, i)) for i, r in enumerate(repos)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1
    assert [r.status for r in repos[0].list_runs()] == ["queued"]
    with pytest.raises(IntegrityError), repos[0].db.writing() as s:  # the database itself refuses a second one
        s.add(TrainingRun(status=RunStatus.QUEUED, config={}, created_at=repos[0].now()))


def test_a_lease_lost_worker_cannot_register_or_promote(repo, clock):
    """A worker frozen past the heartbeat timeout resumes: it may no longer register, promote or finish."""
    repo.enqueue_run({})
    slow = repo.claim_run("host-a:1:slow")
    clock.advance(repo.config.stale_heartbeat_s + 1)
    repo.enqueue_run({})
    fast = repo.claim_run("host-b:2:fast")  # reaps the slow run, takes the lock with a new lease
    v2 = repo.register_version("bundled", "heads/v2.safetensors", {}, run_id=fast.id, lease=fast.lease)
    repo.promote_version(v2.id, run_id=fast.id, lease=fast.lease)
    repo.finish_run(fast.id, version_id=v2.id, lease=fast.lease)

    with pytest.raises(RunLostError, match="may not register or promote"):
        repo.register_version("bundled", "heads/v3.safetensors", {}, run_id=slow.id, lease=slow.lease)
    # Even a candidate it registered in time cannot be promoted once the lease is gone.
    assert [v.id for v in repo.list_versions()] == [v2.id]
    with pytest.raises(RunLostError):
        repo.promote_version(v2.id, run_id=slow.id, lease=slow.lease)
    with pytest.raises(RunLostError):
        repo.heartbeat(slow.id, lease=slow.lease)
    assert repo.active_version().id == v2.id


def test_a_forged_lease_is_refused_and_a_stale_gate_cannot_promote(repo):
    repo.enqueue_run({})
    run = repo.claim_run("w")
    with pytest.raises(RunLostError, match="another lease|may not"):
        repo.register_version("bundled", "x.safetensors", {}, run_id=run.id, lease="0" * 32)
    cand = repo.register_version("bundled", "v1.safetensors", {}, run_id=run.id, lease=run.lease)
    other = repo.register_version("bundled", "v0.safetensors", {})
    repo.promote_version(other.id)  # an admin promoted another version while the candidate was gated
    with pytest.raises(InvalidTransitionError, match="gated against version None"):
        repo.promote_version(cand.id, run_id=run.id, lease=run.lease)


def test_a_run_whose_worker_process_died_is_reaped_at_once(repo, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that no longer exists on this host
    import socket

    repo.enqueue_run({})
    dead = repo.claim_run(f"{socket.gethostname()}:{proc.pid}:crashed")
    repo.enqueue_run({})
    assert repo.claim_run(f"{socket.gethostname()}:{os.getpid()}") is not None  # no 300 s wait
    assert "worker process" in repo.get_run(dead.id).error


def test_trained_runs_are_the_newest_runs_with_a_version_and_say_which_were_rejected(repo):
    def run_to_the_end(promote: bool | None, watermark: int):
        run = repo.claim_run("host-1:123", repo.enqueue_run({"loss": "dpo"}).id)
        if promote is None:
            return repo.fail_run(run.id, "out of memory")
        version = repo.register_version("bundled", f"heads/run{run.id}.safetensors", {}, run_id=run.id,
                                        lease=run.lease)
        if promote:
            repo.promote_version(version.id, run_id=run.id, lease=run.lease)
        else:
            repo.reject_version(version.id, "the gate said no", run_id=run.id, lease=run.lease)
        return repo.finish_run(run.id, metrics={"crowd_pairs": watermark}, version_id=version.id,
                               lease=run.lease, judgment_watermark=watermark)

    assert repo.trained_runs() == []
    promoted, rejected, _, again = (run_to_the_end(True, 10), run_to_the_end(False, 20), run_to_the_end(None, 30),
                                    run_to_the_end(False, 40))
    trained = repo.trained_runs()
    assert [(t.run.id, t.rejected) for t in trained] == [(again.id, True), (rejected.id, True), (promoted.id, False)]
    assert (trained[0].run.judgment_watermark, trained[0].run.metrics) == (40, {"crowd_pairs": 40})
    assert [t.run.id for t in repo.trained_runs(limit=1)] == [again.id]


def test_a_run_whose_worker_died_is_queued_again_once_and_a_second_death_stays_failed(repo, clock):
    first = repo.enqueue_run({"loss": "ipo", "reason": "manual retrain"})
    repo.claim_run("host-a:1")
    clock.advance(repo.config.stale_heartbeat_s + 1)
    assert repo.reap_stale_runs() == [first.id]
    retry = repo.list_runs()[0]
    assert (retry.status, retry.attempt, retry.config) == ("queued", 2, {"loss": "ipo", "reason": f"retry of run "
                                                                                                   f"{first.id}"})
    assert repo.get_run(first.id).error.endswith(f"queued again as run {retry.id} (attempt 2 of 2)")

    assert repo.claim_run("host-b:2").id == retry.id  # any trainer picks it up
    clock.advance(repo.config.stale_heartbeat_s + 1)
    assert repo.reap_stale_runs() == [retry.id]
    assert [(r.id, r.status, r.attempt) for r in repo.list_runs()] == [(retry.id, "failed", 2), (first.id, "failed", 1)]
    assert "queued again" not in repo.get_run(retry.id).error


def test_a_run_that_failed_by_itself_is_not_retried_and_a_queued_run_stands_in_for_the_retry(repo, clock):
    repo.enqueue_run({})
    failed = repo.claim_run("w")
    repo.fail_run(failed.id, "NotEnoughData: 3 pairs")
    assert repo.reap_stale_runs() == [] and repo.claim_run("w") is None  # its trainer said why: no retry
    dead = repo.claim_run("w", repo.enqueue_run({"n": 1}).id)
    waiting = repo.enqueue_run({"n": 2})
    clock.advance(repo.config.stale_heartbeat_s + 1)
    assert repo.reap_stale_runs() == [dead.id]
    assert [r.id for r in repo.list_runs() if r.status == "queued"] == [waiting.id]  # no second queued run
    assert "queued again" not in repo.get_run(dead.id).error
