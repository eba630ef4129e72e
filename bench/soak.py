"""Soak: many annotators at once, a trainer process killed and restarted mid-run, on SQLite and PostgreSQL.

    python bench/soak.py --json                      # PostgreSQL from POCLIP_TEST_POSTGRES_URL or --pg-url

Per database, through the app's back end (the calls the /answer handler makes: record the answer, serve the
next item, the status line, the person's own count):
1. N clients x M answers from N anonymous annotators (server-signed tokens), answering truthfully with a
   pause between answers, while a ``python -m poclip worker`` process trains on what arrives; once half the
   answers are in and the worker is training, it is SIGKILLed and started again.
2. Counted: ``lost`` (acknowledged judgments missing afterwards), ``duplicates`` (a person's answer on one item
   stored twice), ``false_errors`` (an error answered although the judgment was stored), ``deadlocks``,
   ``other_errors``, answer latency p50/p95, and this process's peak resident memory.
3. ``answer_latency_ratio_30k_vs_100``: on a fresh database, the /answer p50 with 100 judgments stored, then
   again after 30,000 judgments are bulk-inserted directly (300 annotators x 100 items).

The machine is shared and noisy; figures are medians of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text, update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from annotation_db.counters import bump  # noqa: E402
from annotation_db.models import Annotator, Judgment, JudgmentKind, Sample  # noqa: E402
from poclip.app.seeding import annotation_item  # noqa: E402
from poclip.app.service import AppService  # noqa: E402
from poclip.engine.models import load_model  # noqa: E402
from poclip.settings import Settings  # noqa: E402


def truth_table(n: int) -> dict[str, str]:
    """attack JSON -> the true shape of the first ``n`` seeded items (what an honest person answers)."""
    return {annotation_item(i)[1].to_json(): annotation_item(i)[0].shape for i in range(n)}


def memory_reset() -> None:
    try:  # Linux: writing 5 resets the peak resident set size (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def memory_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Database:
    """A fresh database per phase: a SQLite file in a temporary folder, or a new PostgreSQL database."""

    def __init__(self, backend: str, pg_url: str, root: Path) -> None:
        self.backend, self.pg_url, self.root = backend, pg_url, root
        self.made: list[str] = []

    def new(self, name: str) -> tuple[Path, str]:
        data_dir = self.root / f"{self.backend}-{name}"
        data_dir.mkdir(parents=True)
        if self.backend == "sqlite":
            return data_dir, ""
        db = f"poclip_soak_{name}_{uuid.uuid4().hex[:6]}"
        with create_engine(self.pg_url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db}"'))
        self.made.append(db)
        return data_dir, make_url(self.pg_url).set(database=db).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self.made:
            return
        with create_engine(self.pg_url, isolation_level="AUTOCOMMIT").connect() as conn:
            for db in self.made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def settings_for(data_dir: Path, url: str, seed_items: int, retrain_every: int) -> Settings:
    return Settings(data_dir=data_dir, database_url=url, model_spec="bundled", rate_limit="off", trainer="off",
                    retrain_every_pairs=retrain_every, gate_eval_n=100, backup_every_minutes=0,
                    seed_items=seed_items, augment_attacks=0, peers=())


def start_worker(data_dir: Path, url: str, retrain_every: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "POCLIP_DATA_DIR": str(data_dir), "DATABASE_URL": url, "POCLIP_MODEL": "bundled",
           "POCLIP_RETRAIN_EVERY_PAIRS": str(retrain_every), "POCLIP_GATE_N": "100", "POCLIP_AUGMENT": "0",
           "POCLIP_BACKUP_EVERY_MINUTES": "0", "POCLIP_RATE_LIMIT": "off", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "poclip", "worker", "--interval", "1"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def answer_once(svc: AppService, token: str, item, truth: dict[str, str]) -> tuple[object, float]:
    """What the /answer handler does: record, serve the next item, the status line, the person's count."""
    from poclip.world.attacks import TextAttack

    chosen = truth[TextAttack.from_dict(item.sample.attack).to_json()]
    t0 = time.perf_counter()
    stored = svc.annotation.answer_item(token, item.sample.id, chosen)
    following = svc.annotation.next_item(token)
    svc.status()
    svc.annotation.labelled_by(token)
    return (stored, following), (time.perf_counter() - t0) * 1000


def soak(db: Database, encoder, clients: int, per_client: int, seed_items: int, retrain_every: int,
         think_s: float) -> dict:
    data_dir, url = db.new("soak")
    svc = AppService.create(settings_for(data_dir, url, seed_items, retrain_every), encoder=encoder)
    truth = truth_table(seed_items)
    log = data_dir / "worker.log"
    worker = start_worker(data_dir, url, retrain_every, log)
    memory_reset()
    acknowledged: list[int] = []
    latencies: list[float] = []
    counts = {"deadlocks": 0, "false_errors": 0, "other_errors": 0}
    done = [0]
    lock = threading.Lock()
    half = clients * per_client // 2

    def client() -> None:
        token = svc.identity.issue()
        handle = svc.visitors.who(token)
        item = svc.annotation.next_item(token)
        for _ in range(per_client):
            if item is None:
                return
            try:
                (stored, item), ms = answer_once(svc, token, item, truth)
                with lock:
                    acknowledged.append(stored["judgment_id"])
                    latencies.append(ms)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                stored_anyway = any(j.sample_id == item.sample.id for j in svc.repo.judgments_of(handle))
                with lock:
                    if "deadlock" in message.lower():
                        counts["deadlocks"] += 1
                    if stored_anyway:
                        counts["false_errors"] += 1
                    else:
                        counts["other_errors"] += 1
                print(f"soak: {message}", file=sys.stderr)
                item = svc.annotation.next_item(token)
            with lock:
                done[0] += 1
            time.sleep(think_s)  # a person reads the next picture

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    # Kill the worker once half the answers are in and it is training (or, failing that, at 90 %).
    killed_during, killed_run = "idle", 0
    while done[0] < clients * per_client * 0.9:
        running = [r for r in svc.repo.list_runs(limit=2) if r.status == "running"]
        if done[0] >= half and running:
            killed_run = running[0].id
            killed_during = f"run {killed_run}, phase {(running[0].metrics or {}).get('phase', 'starting')}"
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    worker = start_worker(data_dir, url, retrain_every, log)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    # The restarted worker reaps the killed one's run (its process is gone) and trains on what is new.
    deadline = time.time() + 240
    while time.time() < deadline:
        runs = svc.repo.list_runs(limit=5)
        if any(r.id > killed_run and r.status in ("succeeded", "failed") for r in runs) and not any(
                r.status in ("queued", "running") for r in runs):
            break
        time.sleep(1)
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()

    with svc.repo.db.reading() as s:
        stored = set(s.scalars(select(Judgment.id).where(Judgment.kind == JudgmentKind.HUMAN,
                                                         Judgment.undone_at.is_(None))))
        doubled = s.scalar(select(func.count()).select_from(
            select(Judgment.sample_id).group_by(Judgment.sample_id, Judgment.annotator_id)
            .having(func.count() > 1).subquery()))
    runs = [r.status for r in svc.repo.list_runs(limit=100)]
    result = {
        "clients": clients, "answers_per_client": per_client, "acknowledged": len(acknowledged),
        "lost": len(set(acknowledged) - stored),
        "duplicates": int(doubled or 0) + len(acknowledged) - len(set(acknowledged)),
        **counts,
        "answer_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "answer_p95_ms": round(statistics.quantiles(latencies, n=20)[18], 1) if len(latencies) >= 20 else None,
        "answers_per_s": round(len(latencies) / wall, 1),
        "memory_peak_mb": memory_peak_mb(),
        "worker_killed_and_restarted": True,
        "worker_killed_during": killed_during,
        "soak_wall_s": round(wall, 1),
        "runs": {status: runs.count(status) for status in sorted(set(runs))},
        "run_errors": sorted({(r.error or "").splitlines()[0] for r in svc.repo.list_runs(limit=100) if r.error}),
        "runs_left_running": sum(r == "running" for r in runs),
        "versions": len(svc.repo.list_versions()),
    }
    svc.close()
    return result


def bulk_judgments(svc: AppService, n_annotators: int, per_annotator: int) -> int:
    """Insert ``n_annotators`` x ``per_annotator`` synthetic-annotator judgments directly (Core, executemany),
    moving the counters and vote counts as the write path would."""
    repo = svc.repo
    now = datetime.now(UTC)
    with repo.db.writing() as s:
        sample_rows = s.execute(select(Sample.id, Sample.attack).order_by(Sample.id).limit(per_annotator)).all()
        first = s.scalar(select(func.coalesce(func.max(Annotator.id), 0)))
        s.execute(insert(Annotator), [
            {"handle": f"bulk-{first + i}", "pseudonym": f"bulk{uuid.uuid4().hex[:24]}", "trust": 1.0,
             "gold_seen": 0, "gold_correct": 0, "created_at": now} for i in range(n_annotators)])
        ids = list(s.scalars(select(Annotator.id).where(Annotator.handle.like("bulk-%"))))
        s.execute(insert(Judgment), [
            {"sample_id": sid, "annotator_id": aid, "chosen": "star", "rejected": "circle",
             "kind": JudgmentKind.SYNTHETIC, "created_at": now}
            for aid in ids for sid, _ in sample_rows])
        s.execute(update(Sample).where(Sample.id.in_([sid for sid, _ in sample_rows]))
                  .values(votes=Sample.votes + len(ids)))
        bump(s, annotators=len(ids), judgments=len(ids) * len(sample_rows))
    return len(ids) * len(sample_rows)


def probe(svc: AppService, truth: dict[str, str], n: int) -> float:
    token = svc.identity.issue()
    item = svc.annotation.next_item(token)
    times = []
    for _ in range(n):
        (_, item), ms = answer_once(svc, token, item, truth)
        times.append(ms)
    return statistics.median(times)


def latency_ratio(db: Database, encoder, probes: int) -> dict:
    data_dir, url = db.new("ratio")
    seed = 2 * probes + 120
    svc = AppService.create(settings_for(data_dir, url, seed, 50), encoder=encoder)
    truth = truth_table(seed)
    svc.repo.ensure_annotator("poclip-synthetic")
    with svc.repo.db.reading() as s:
        sample_ids = list(s.scalars(select(Sample.id).order_by(Sample.id.desc()).limit(90)))
    from poclip.world.attacks import TextAttack

    for sid in sample_ids:  # about 100 judgments before the first probe (gold answers from seeding included)
        shape = truth[TextAttack.from_dict(svc.repo.get_sample(sid).attack).to_json()]
        svc.repo.record_judgment(sid, "poclip-synthetic", shape, "circle" if shape != "circle" else "star",
                                 kind="synthetic", enforce_rate_limit=False)
    small = svc.repo.counts()["judgments"]
    p50_small = probe(svc, truth, probes)
    bulk_judgments(svc, 300, 100)
    large = svc.repo.counts()["judgments"]
    p50_large = probe(svc, truth, probes)
    svc.close()
    return {"judgments_small": small, "judgments_large": large, "answer_p50_ms_small": round(p50_small, 1),
            "answer_p50_ms_large": round(p50_large, 1),
            "answer_latency_ratio_30k_vs_100": round(p50_large / p50_small, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=25)
    parser.add_argument("--seed-items", type=int, default=150)
    parser.add_argument("--retrain-every", type=int, default=40, help="the worker's POCLIP_RETRAIN_EVERY_PAIRS")
    parser.add_argument("--probes", type=int, default=30, help="answers timed for each latency probe")
    parser.add_argument("--think-ms", type=float, default=1000, help="pause between a client's answers")
    parser.add_argument("--pg-url", default=os.environ.get("POCLIP_TEST_POSTGRES_URL", ""),
                        help="a PostgreSQL URL whose role may create databases (default POCLIP_TEST_POSTGRES_URL)")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    encoder = load_model("bundled", device=torch.device("cpu"))
    out: dict[str, object] = {}
    backends = [args.only] if args.only else ["sqlite", "postgresql"]
    with tempfile.TemporaryDirectory(prefix="poclip-soak-") as tmp:
        for backend in backends:
            if backend == "postgresql" and not args.pg_url:
                out[backend] = {"skipped": "no PostgreSQL: pass --pg-url or set POCLIP_TEST_POSTGRES_URL"}
                continue
            db = Database(backend, args.pg_url, Path(tmp))
            try:
                result = soak(db, encoder, args.clients, args.per_client, args.seed_items, args.retrain_every,
                              args.think_ms / 1000)
                result.update(latency_ratio(db, encoder, args.probes))
                out[backend] = result
            finally:
                db.drop_all()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
