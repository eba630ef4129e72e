"""Trainer control from the serving side, against a real SQLite file and the bundled model: a retrain is a run
queued in the store, and the Train tab's progress is the newest run's row and its heartbeat, whichever process
trains. Tests that train build the trainer beside the service, as ``app.py`` does (:func:`make_trainer`)."""

import os
import socket
import subprocess
import sys

import pytest
from apphelpers import ADMIN_TOKEN, ONE_PERSON, ONE_PERSON_ENV, make_service, make_trainer, truth_by_attack

from poclip.app.ui.train import progress_text, progress_view, training_chart
from poclip.settings import REPO_DIR
from poclip.world.attacks import TextAttack

TOKEN = ADMIN_TOKEN
TRUTH = truth_by_attack(40)


@pytest.fixture
def service(tmp_path, bundled):
    svc = make_service(tmp_path, bundled)
    yield svc
    svc.close()


def curves(steps: int) -> list[dict]:
    """A heartbeat's metric history as the trainer writes it: one record per optimizer step."""
    return [{"step": s, "loss": 0.7 - s / 400, "rewards/margins": s / 50, "kl/clean": s / 2000,
             "rewards/accuracies": min(1.0, s / 100)} for s in range(1, steps + 1)]


def test_with_the_trainer_in_another_process_the_train_tab_shows_its_heartbeat(tmp_path, bundled):
    """POCLIP_TRAINER=off: no trainer in this process; the worker's heartbeat in the store is what the Train tab
    shows (the steps, the curves, the outcome), and /status says the same."""
    from poclip.engine.policy import Policy, save_head

    svc = make_service(tmp_path, bundled, seed_items=0, trainer="off")
    try:
        assert progress_text(svc) == "**Trainer:** idle" and "No training curves" in training_chart(svc)
        queued = svc.training.retrain(token=TOKEN)
        assert progress_text(svc) == f"**Trainer:** queued run {queued['run_id']}"

        run = svc.repo.claim_run("worker-on-another-machine")  # what `python -m poclip worker` does
        svc.repo.heartbeat(run.id, {"phase": "embedding", "step": 0, "total": 0, "message": ""}, lease=run.lease)
        assert progress_text(svc) == f"**Trainer:** embedding run {run.id}"
        assert "No training curves" in training_chart(svc)  # a heartbeat without a history: no curves yet

        beat = {"phase": "training", "step": 120, "total": 180, "message": "", "history": curves(120)}
        svc.repo.heartbeat(run.id, beat, lease=run.lease)
        text, chart, _ = progress_view(svc)
        assert text == f"**Trainer:** training run {run.id}: step 120 of 180"
        for shown in ("reward margin", "KL on clean pictures", "reward accuracy", ">100<"):
            assert shown in chart, shown
        assert svc.status()["trainer"] == {"run": run.id, "phase": "training", "step": 120, "total": 180,
                                           "message": ""}

        path = save_head(Policy(bundled), tmp_path / "heads" / "worker.safetensors")
        version = svc.repo.register_version(bundled.spec, str(path), {"loss": "dpo"}, run_id=run.id,
                                            lease=run.lease)
        svc.repo.promote_version(version.id, run_id=run.id, lease=run.lease)
        svc.repo.finish_run(run.id, metrics={"gate": "typographic accuracy 0.500 -> 0.900", "pairs": 1012,
                                             "replay_pairs": 1000, "history": curves(180)}, version_id=version.id,
                            lease=run.lease)
        assert progress_text(svc) == (f"**Trainer:** run {run.id} promoted after 180 steps\n\n"
                                      "typographic accuracy 0.500 -> 0.900")
        assert svc.status()["trainer"]["phase"] == "promoted" and svc.status()["replay_pairs"] == 1000
        assert svc.live_head.current.version is None  # nothing follows here until asked (app.py starts it)
        svc.live_head.sync()
        assert svc.live_head.current.version.id == version.id
    finally:
        svc.close()


def test_a_malformed_heartbeat_shows_what_it_can(service):
    """A worker of another release may write other keys; the Train tab never fails on them."""
    service.training.retrain(token=TOKEN)
    run = service.repo.claim_run("worker-on-another-machine")
    service.repo.heartbeat(run.id, {"phase": "training", "step": "ten", "history": [{"loss": 1.0}, "x", 3,
                                                                                    {"step": 2, "loss": 0.5}]},
                           lease=run.lease)
    progress = service.training.progress()
    assert (progress.phase, progress.step, progress.total) == ("training", 0, 0)
    assert progress.history == [{"step": 2.0, "loss": 0.5}]
    assert progress_text(service) == f"**Trainer:** training run {run.id}"


def test_a_retrain_after_a_worker_died_mid_run_queues_a_fresh_run(service):
    service.training.retrain(token=TOKEN)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = service.repo.claim_run(f"{socket.gethostname()}:{dead.pid}")  # a worker on this host, now gone
    queued = service.training.retrain(token=TOKEN)
    assert queued["run_id"] != crashed.id and queued["status"] == "queued"
    failed = service.repo.get_run(crashed.id)
    assert failed.status == "failed" and "is gone" in failed.error
    assert progress_text(service) == f"**Trainer:** queued run {queued['run_id']}"


def test_the_serving_side_never_imports_the_trainer(tmp_path):
    """Building the service, the page and the app's trainer thread (whose runs go to child processes) and using
    every trainer control (retrain, progress, status, promote, rollback) leaves ``poclip.app.worker`` unimported."""
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(REPO_DIR / "tests")!r})
from apphelpers import ADMIN_TOKEN, make_service
from poclip.app.ui import build_demo
from poclip.app.ui.train import progress_view, versions_table
from poclip.engine.models import load_model
from poclip.engine.policy import Policy, save_head

encoder = load_model("bundled")
data = Path({str(tmp_path)!r})
svc = make_service(data, encoder, seed_items=0)
build_demo(svc)
from poclip.app.child_trainer import ChildTrainer
ChildTrainer(svc.settings, svc.repo, svc.live_head).tick(train=False)
svc.training.retrain(token=ADMIN_TOKEN)
progress_view(svc), versions_table(svc), svc.status()
ids = [svc.repo.register_version(encoder.spec, str(save_head(Policy(encoder), data / f"v{{k}}.safetensors")),
                                 {{}}).id for k in range(2)]
svc.admin.promote(ids[0], token=ADMIN_TOKEN)
svc.admin.promote(ids[1], token=ADMIN_TOKEN)
svc.admin.rollback(token=ADMIN_TOKEN)
svc.close()
loaded = sorted(m for m in sys.modules if m.startswith("poclip.app.worker"))
print("trainer modules:", loaded)
sys.exit(1 if loaded else 0)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_DIR, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_too_few_pairs_fails_the_run_with_the_reason(service):
    service.training.retrain(token=TOKEN)
    run = make_trainer(service).run_pending()
    assert run.status == "failed" and "at least 10" in run.error
    assert service.repo.list_versions() == []


def test_five_new_crowd_pairs_schedule_a_run(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, retrain_every_pairs=5, **ONE_PERSON)
    try:
        trainer = make_trainer(svc)
        while svc.status()["next_retrain_after_crowd_pairs"] > 0:
            assert trainer.maybe_schedule() is None
            item = svc.annotation.next_item("sched")
            truth = TRUTH[TextAttack.from_dict(item.sample.attack).to_json()]
            svc.annotation.answer_item("sched", item.sample.id, truth)
        assert svc.status()["crowd_pairs"] == trainer.pair_counts().new_crowd_pairs == 5
        run = trainer.maybe_schedule()
        assert run is not None and run.status == "queued"
    finally:
        svc.close()


@pytest.mark.slow
def test_standalone_worker_process_trains_the_queued_run(tmp_path, bundled):
    import json

    svc = make_service(tmp_path, bundled, seed_items=40, trainer="off", **ONE_PERSON)
    try:
        for _ in range(20):
            item = svc.annotation.next_item("walt")
            truth = TRUTH[TextAttack.from_dict(item.sample.attack).to_json()]
            svc.annotation.answer_item("walt", item.sample.id, truth)
        queued = svc.training.retrain(token=TOKEN)
        env = {**os.environ, "POCLIP_DATA_DIR": str(tmp_path), "POCLIP_MODEL": "bundled", "POCLIP_GATE_N": "300",
               "POCLIP_RETRAIN_EVERY_PAIRS": "0", "POCLIP_STARTER_HEAD": "0", **ONE_PERSON_ENV}
        proc = subprocess.run([sys.executable, "-m", "poclip", "worker", "--once", "--json"], cwd=REPO_DIR, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        runs = json.loads(proc.stdout)["runs"]
        assert [r["run"] for r in runs] == [queued["run_id"]] and runs[0]["status"] == "succeeded"
        version = svc.repo.get_version(runs[0]["version"])
        # The app process follows whatever the worker decided.
        svc.live_head.sync()
        assert (svc.live_head.current.version is not None) == (version.status == "active")
    finally:
        svc.close()


def test_two_retrain_clicks_queue_one_run(service):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: service.training.retrain(token=TOKEN), range(4)))
    queued = [r for r in service.repo.list_runs() if r.status == "queued"]
    assert len(queued) == 1 and {r["run_id"] for r in runs} == {queued[0].id}
