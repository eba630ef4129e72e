"""ZeroGPU: the decorator is inert off the platform, and on it predictions and the admin's retrain run as GPU calls.

Hugging Face's scheduler cannot be reached from here, so the platform is stood in for by :class:`StandIn`, which
keeps the contract the app relies on (``spaces.GPU(duration=...)``: the call runs in a worker process forked from
the app and kept for later calls, arguments and results cross by pickling, the duration is asked for up front).
The app's side is real: the bundled model, a SQLite store, the trainer, the head files.
"""

import os
import pickle
import subprocess
import sys
import types

import pytest
import torch
from apphelpers import ADMIN_TOKEN, judge_seeded, make_service

from poclip import zerogpu
from poclip.app.retrain.training import REFINE_SHARE, replay_epochs
from poclip.app.seeding import annotation_item
from poclip.engine.models import ModelUnavailable, load_model, resolve_device
from poclip.errors import UserError
from poclip.settings import REPO_DIR, Settings
from poclip.world import synth


class StandIn:
    """``spaces`` as ZeroGPU runs it: each decorated function gets one worker, forked at its first call and
    reused while it lives; arguments and results are pickled across; ``calls`` records (duration, worker pid)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self._workers: list[tuple] = []

    def GPU(self, task=None, *, duration=60):  # noqa: N802 - the platform's name
        def decorate(fn):
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            worker: dict = {}

            def serve(conn) -> None:
                torch.set_num_threads(1)
                while (message := conn.recv_bytes()) != b"stop":
                    args, kwargs = pickle.loads(message)
                    try:
                        reply = ("ok", fn(*args, **kwargs))
                    except Exception as exc:  # the platform re-raises the worker's error in the app
                        reply = ("error", f"{type(exc).__name__}: {exc}")
                    conn.send_bytes(pickle.dumps((*reply, os.getpid())))

            def call(*args, **kwargs):
                seconds = duration(*args, **kwargs) if callable(duration) else duration
                if not worker:
                    here, there = ctx.Pipe()
                    process = ctx.Process(target=serve, args=(there,), daemon=True)
                    process.start()
                    worker.update(process=process, conn=here)
                    self._workers.append((process, here))
                worker["conn"].send_bytes(pickle.dumps((args, kwargs)))
                kind, value, pid = pickle.loads(worker["conn"].recv_bytes())
                self.calls.append((seconds, pid))
                if kind == "error":
                    raise RuntimeError(value)
                return value

            return call

        return decorate(task) if callable(task) else decorate

    def close(self) -> None:
        for process, conn in self._workers:
            conn.send_bytes(b"stop")
            process.join(timeout=30)


@pytest.fixture
def platform(monkeypatch):
    stand_in = StandIn()
    monkeypatch.setenv(zerogpu.ZERO_GPU_ENV, "true")
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=stand_in.GPU))
    yield stand_in
    stand_in.close()


def test_off_zerogpu_the_real_decorator_and_ours_leave_the_function_as_it_is(monkeypatch):
    import spaces

    monkeypatch.delenv(zerogpu.ZERO_GPU_ENV, raising=False)

    def fn(x):
        return x + 1

    assert not zerogpu.detected()
    assert zerogpu.gpu_task(fn, 30) is fn
    assert spaces.GPU(duration=30)(fn) is fn  # the package's own decorator is inert here too
    assert zerogpu.detected({"SPACES_ZERO_GPU": "true"})


def test_on_zerogpu_the_settings_default_to_click_retrains_and_no_peers():
    on = Settings.from_env({"SPACES_ZERO_GPU": "true"})
    assert (on.trainer, on.peers) == ("zerogpu", ())
    off = Settings.from_env({})
    assert off.trainer == "thread" and "prefix" in off.peers
    assert Settings.from_env({"SPACES_ZERO_GPU": "true", "POCLIP_TRAINER": "off"}).trainer == "off"


def test_a_retrains_call_asks_for_more_with_more_pairs_and_never_over_the_cap():
    small = zerogpu.retrain_seconds(200, 4, 400, cap=120)
    assert 20 < small < zerogpu.retrain_seconds(2000, 4, 4000, cap=10_000)
    assert zerogpu.retrain_seconds(100_000, 8, 100_000, cap=120) == 120


def test_the_device_setting_says_what_is_wrong():
    with pytest.raises(UserError, match="POCLIP_DEVICE"):
        Settings.from_env({"POCLIP_DEVICE": "gpu"})
    assert Settings.from_env({"POCLIP_DEVICE": "cuda:1"}).device == "cuda:1"
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailable, match="no CUDA GPU"):
            load_model("bundled", Settings(device="cuda"))


def test_predictions_and_the_admins_retrain_run_as_gpu_calls_and_a_worker_from_before_a_promotion_serves_the_new_head(
        tmp_path, bundled, platform):
    svc = make_service(tmp_path, bundled, starter_head=True, trainer="zerogpu", seed_items=30)
    try:
        from poclip.app.zerogpu_trainer import ZeroGpuTrainer

        labels = list(synth.SHAPES)
        scene, attack = annotation_item(3)
        picture = synth.draw_scene(scene)

        def shown():
            c = svc.comparisons.compare(picture, labels, attack)
            return c, torch.tensor([c.aligned.probs[label] for label in labels])

        def in_process():
            policy = svc.live_head.current.policy
            return policy.predict([shown()[0].seen], labels)[1][0]

        first, probs = shown()
        seconds, pid = platform.calls[-1]
        assert seconds == zerogpu.PREDICT_S and pid != os.getpid()  # computed in the worker
        assert torch.allclose(probs, in_process(), atol=1e-5)
        starter = probs

        judge_seeded(svc.repo)
        trainer = ZeroGpuTrainer(svc.settings, svc.repo, svc.encoder, svc.live_head)
        svc.training.executor = trainer.execute
        out = svc.training.retrain("dpo", token=ADMIN_TOKEN)  # the click: it returns once the run is over
        run = svc.repo.get_run(out["run_id"])
        assert run.status == "succeeded", run.error
        assert out["status"] in ("promoted", "rejected")
        seconds, pid = platform.calls[-1]
        assert pid != os.getpid() and 20 <= seconds <= svc.settings.zerogpu_max_s
        version = svc.repo.get_version(run.version_id)
        assert os.path.isfile(version.head_path) and run.metrics["pairs"] > 0 and "gate_table" in run.metrics
        # it refined the starter head that served: half the epochs of a run from the base model
        fresh = replay_epochs(8, run.metrics["judged_pairs"], run.metrics["replay_pairs"])
        assert run.metrics["epochs"] == max(1, round(fresh * REFINE_SHARE)) < fresh
        if out["status"] == "rejected":
            svc.admin.promote(version.id, "test: serve the ZeroGPU candidate", token=ADMIN_TOKEN)
        assert svc.live_head.sync().version.id == version.id

        # The prediction worker was forked while the starter served; the app names the new head with the call.
        _, after = shown()
        assert torch.allclose(after, in_process(), atol=1e-5)
        assert not torch.allclose(after, starter, atol=1e-6)
    finally:
        svc.close()


def test_a_second_click_while_a_zerogpu_retrain_runs_is_refused_and_queues_nothing(tmp_path, bundled, platform):
    svc = make_service(tmp_path, bundled, trainer="zerogpu", seed_items=30, retrain_every_pairs=50)
    try:
        running = svc.repo.claim_run("the first click", svc.repo.enqueue_run({"loss": "dpo"}).id)
        svc.training.executor = lambda run_id: pytest.fail(f"run {run_id} should not have been executed")
        with pytest.raises(UserError, match="A retrain is running"):
            svc.training.retrain("dpo", token=ADMIN_TOKEN)
        assert [(r.id, r.status) for r in svc.repo.list_runs(limit=5)] == [(running.id, "running")]
        # Nothing retrains by count there, so no page promises "next retrain after N more crowd pairs".
        assert svc.status()["next_retrain_after_crowd_pairs"] is None
    finally:
        svc.close()


def test_the_zerogpu_trainer_off_zerogpu_stops_the_app_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv(zerogpu.ZERO_GPU_ENV, raising=False)
    env = {**os.environ, "POCLIP_TRAINER": "zerogpu", "POCLIP_MODEL": "bundled", "POCLIP_DATA_DIR": str(tmp_path),
           "POCLIP_PEERS": "off", "POCLIP_SEED_ITEMS": "0", "GRADIO_SERVER_PORT": "0"}
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO_DIR, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert "POCLIP_TRAINER=zerogpu is for ZeroGPU hardware" in done.stderr
