"""Helpers shared by the app tests (imported by test modules; pytest puts tests/ on sys.path)."""

import socket
import threading
from pathlib import Path

from annotation_db.models import Sample
from poclip.app.identity import SECRET_FILE
from poclip.app.seeding import annotation_item, annotation_text, misleading_label
from poclip.app.service import AppService
from poclip.settings import Settings
from poclip.world.attacks import TextAttack

ADMIN_TOKEN = "s3cret-admin"
# The app's abuse defaults count a person's labels only after 3 gold items and let one person decide at most a
# quarter of a training set. Tests (and benches) that train on one simulated person's labels turn both off, by
# name: what they check is learning from those labels, not the defence against one person.
ONE_PERSON = {"min_gold_seen": 0, "max_annotator_share": 1.0}
ONE_PERSON_ENV = {"POCLIP_MIN_GOLD_SEEN": "0", "POCLIP_MAX_ANNOTATOR_SHARE": "1"}


def make_service(data_dir, encoder, **overrides) -> AppService:
    """An app back end on a real SQLite file in ``data_dir``, with settings fit for tests.

    Retrains use the crowd's pairs alone unless a test asks for replay (it adds 1,000 pairs by default), and the
    gate writes the paper's style only unless a test asks for more attack families (each embeds 300 pictures).
    The deployment secret is fixed (unless the test wrote its own), so which seeded items are gold (a keyed
    hash) and hence every training set is the same on every run.
    """
    secret = Path(data_dir) / SECRET_FILE
    if not secret.exists():
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("5e" * 32)
    settings = Settings(**{
        "data_dir": data_dir, "model_spec": "bundled", "admin_token": ADMIN_TOKEN, "rate_limit": "off",
        "gate_eval_n": 300, "gate_families": ("paper",), "retrain_every_pairs": 0, "backup_every_minutes": 0,
        "seed_items": 30, "starter_head": False, "replay_pairs": 0, "peers": (), **overrides,
    })
    return AppService.create(settings, encoder=encoder)


def make_trainer(service: AppService, **kwargs):
    """The trainer as ``app.py`` builds it beside the service: same settings and store, sharing the live head.
    The service never builds one; tests that train call :meth:`~poclip.app.worker.Trainer.run_pending` on it, or
    ``start()`` it (then ``stop()`` it before closing the service)."""
    from poclip.app.worker import Trainer  # only tests that train load it

    return Trainer(service.settings, service.repo, service.encoder, service.live_head, **kwargs)


def footprint(service: AppService) -> dict[str, int]:
    """What a vote can leave behind: rows of each kind and picture files on disk."""
    stats = service.repo.stats()
    files = sum(1 for _ in (service.settings.data_dir / "images").rglob("*.png"))
    return {"images": stats.images, "samples": stats.samples, "judgments": stats.judgments + stats.undone,
            "annotators": len(stats.per_annotator), "files": files}


def crowd_pairs_in_store(repo) -> int:
    """The crowd pairs counted the long way: every item decided from all of its votes (what a run counts)."""
    batch = repo.training_pairs(None)
    return sum(pair.from_people for pair in batch.pairs + batch.held_out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def truth_by_attack(n: int) -> dict[str, str]:
    """attack JSON -> true shape for the first ``n`` seeded annotation items (what an honest person answers)."""
    truth = {}
    for i in range(n):
        scene, attack = annotation_item(i)
        truth[attack.to_json()] = scene.shape
    return truth


def all_at_once(ask, n: int) -> dict:
    """``ask(k)`` for k < n from n threads released together; their results by k."""
    start, results = threading.Barrier(n), {}

    def run(k: int) -> None:
        start.wait()
        results[k] = ask(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return results


def seeded_samples(repo, n):
    """(sample id, true shape, the wrong label its writing argues for) of the seeded items, in seeding order."""
    truth = {}
    for i in range(n):
        scene, text = annotation_text(i)
        truth[text.attack.to_json()] = (scene.shape, misleading_label(i, scene, text))
    with repo.db.reading() as s:
        rows = s.query(Sample.id, Sample.attack).order_by(Sample.id).all()
    return [(sid, *truth[TextAttack.from_dict(attack).to_json()]) for sid, attack in rows]


def judge_seeded(repo, n=12, of=30):
    """The synthetic generator's truthful judgments (the true shape over the written word) on the first ``n`` of the
    ``of`` seeded items: enough pairs for a retrain."""
    for sid, shape, written in seeded_samples(repo, of)[:n]:
        judge(repo, "poclip-synthetic", sid, shape, written, kind="synthetic")


def judge(repo, who, sample_id, chosen, rejected, kind="human"):
    """Record one judgment straight into the store (no rate limit), creating the annotator if new."""
    repo.ensure_annotator(who)
    repo.record_judgment(sample_id, who, chosen, rejected, kind=kind, enforce_rate_limit=False)
