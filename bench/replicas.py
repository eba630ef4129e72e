"""Scale-out, run for real: two app replicas and one standalone trainer on one PostgreSQL.

    eval "$(bash .ci/start_postgres.sh)"          # or any PostgreSQL you may create databases on
    python bench/replicas.py --json

What it does, with the bundled model (offline):
1. creates a fresh database on the server in ``POCLIP_TEST_POSTGRES_URL`` (or ``--database-url``);
2. starts two ``python app.py`` processes (``POCLIP_TRAINER=off``) and one ``python -m poclip worker``, all on
   that database and one shared data folder (the images and heads every process must see);
3. annotators label truthfully through *both* replicas' ``/next_item`` and ``/answer``, and keep labelling
   for the rest of the run;
4. ``/retrain`` is called on replica A; as soon as the worker is running that training run it is killed
   (SIGKILL, mid-run) and a replacement worker is started, which fails the dead run, trains again and
   promotes the new head;
5. both replicas are polled (``/status``) until they serve the promoted version;
6. nothing lost: every ``/answer`` that returned success is a judgment in the database, exactly once.

Figures: labels answered per replica, errors, time from the kill to the promotion, each replica's delay from
promotion to serving it, and the judgment count check.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from visitors import (  # noqa: E402
    REPO,
    Annotator,
    create_database,
    drop_database,
    scratch_dir,
    seeded_truth,
    start_app,
    stop,
)

sys.path.insert(0, str(REPO))

TOKEN = "replicas-admin"


class Processes:
    """The processes this run started, each stopped by its own pid at the end."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env, self.procs = work, env, {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")  # noqa: SIM115 - open for the process's lifetime
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def app(self, name: str) -> str:
        proc, url = start_app(name, [sys.executable, "app.py"], self.env, self.work)
        self.procs[name] = proc
        return url

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("POCLIP_TEST_POSTGRES_URL", ""),
                        help="a PostgreSQL server URL this script may create a database on")
    parser.add_argument("--labels", type=int, default=80, help="labels before the retrain is requested")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        raise SystemExit('needs PostgreSQL: eval "$(bash .ci/start_postgres.sh)" or --database-url')
    with scratch_dir("poclip-replicas-") as work:
        return measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> int:
    from gradio_client import Client

    from annotation_db import open_repository
    from poclip.settings import Settings

    url = create_database(args.database_url, "poclip_replicas")
    env = {**os.environ, "DATABASE_URL": url, "POCLIP_DATA_DIR": str(work / "shared"), "POCLIP_MODEL": "bundled",
           "POCLIP_TRAINER": "off", "POCLIP_ADMIN_TOKEN": TOKEN, "POCLIP_RATE_LIMIT": "off",
           "POCLIP_RETRAIN_EVERY_PAIRS": "0", "POCLIP_SEED_ITEMS": str(4 * args.labels), "POCLIP_GATE_N": "300",
           "POCLIP_BACKUP_EVERY_MINUTES": "0", "POCLIP_PEERS": "off",
           # The live model is the base model until the first promotion: the shipped starter head (2,000 pairs)
           # would rightly keep a head trained on this run's few labels out at the gate.
           "POCLIP_STARTER_HEAD": "0",
           # Every simulated person answers truthfully from 127.0.0.1: the per-address limits and the gold check
           # (tested on their own) would only throttle this run or leave its first labels out of training.
           "POCLIP_CLIENT_RATE_LIMIT": "off", "POCLIP_CLIENT_NEW_ANNOTATORS": "off", "POCLIP_CLIENT_PREDICTIONS": "off",
           "POCLIP_MIN_GOLD_SEEN": "0"}
    procs = Processes(work, env)
    settings = Settings(data_dir=work / "shared", database_url=url)
    truth = seeded_truth(4 * args.labels)
    result: dict = {"database": "PostgreSQL", "replicas": 2}
    answered: dict[str, list[int]] = {"A": [], "B": []}
    errors: list[str] = []
    stop_labelling = threading.Event()
    repo = None
    try:
        t0 = time.perf_counter()
        urls = {"A": procs.app("replica-A")}  # A seeds the items first; B finds them there
        urls["B"] = procs.app("replica-B")
        worker = procs.start("worker-1", [sys.executable, "-m", "poclip", "worker", "--interval", "0.5"])
        result["startup_seconds"] = round(time.perf_counter() - t0, 1)
        repo = open_repository(settings)

        acting: list[Annotator] = []  # everyone who labelled (their signed ids say who acted)

        def annotate(replica: str, who: str, budget: threading.Semaphore | None) -> None:
            person = Annotator(urls[replica], who, repo, truth)
            acting.append(person)  # list.append is atomic
            try:
                person.next_item()
            except Exception as exc:  # counted, never hidden
                errors.append(f"{replica} next_item: {exc}"[:200])
                return
            while not stop_labelling.is_set() and person.sample_id is not None:
                if budget is not None and not budget.acquire(blocking=False):
                    return
                try:
                    answered[replica].append(person.answer())  # list.append is atomic
                except Exception as exc:
                    errors.append(f"{replica} answer: {exc}"[:200])
                    person.next_item()

        # Phase 1: the labels the first training run learns from, through both replicas.
        budget = threading.Semaphore(args.labels)
        first = [threading.Thread(target=annotate, args=(r, f"ann-{r}{k}", budget)) for r in "AB" for k in range(2)]
        t0 = time.perf_counter()
        for th in first:
            th.start()
        for th in first:
            th.join()
        result["phase1_labels"] = {r: len(v) for r, v in answered.items()}
        result["phase1_seconds"] = round(time.perf_counter() - t0, 1)

        # Phase 2: people keep labelling on both replicas while the trainer is killed and replaced.
        ongoing = [threading.Thread(target=annotate, args=(r, f"late-{r}", None)) for r in "AB"]
        for th in ongoing:
            th.start()
        Client(urls["A"], verbose=False).predict(TOKEN, "dpo", api_name="/retrain")
        deadline = time.time() + 300
        running = None
        while time.time() < deadline and running is None:
            running = next((r for r in repo.list_runs(limit=5) if r.status == "running"), None)
            time.sleep(0.05)
        if running is None:
            raise RuntimeError("the worker never started the training run")
        time.sleep(0.5)  # well inside the run: embedding and training take seconds
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        killed_at = time.time()
        result["killed_run"] = running.id
        procs.start("worker-2", [sys.executable, "-m", "poclip", "worker", "--interval", "0.5"])
        # The dead run must be failed (its lock freed) and the work redone; queue it again if nothing is queued.
        requeued = False
        promoted = None
        marks: dict[str, float] = {}  # when each step of the recovery was first seen, seconds after the kill
        deadline = time.time() + 600
        while time.time() < deadline:
            active = repo.active_version()
            if active is not None:
                promoted = active
                break
            runs = repo.list_runs(limit=5)
            dead = next((r for r in runs if r.id == running.id), None)
            if dead is not None and dead.status == "failed":
                marks.setdefault("killed_run_failed", round(time.time() - killed_at, 1))
            rerun = next((r for r in runs if r.id > running.id and r.status != "queued"), None)
            if rerun is not None:
                marks.setdefault("rerun_started", round(time.time() - killed_at, 1))
                if rerun.status != "running":
                    version = repo.get_version(rerun.version_id) if rerun.version_id else None
                    result["rerun"] = {"run": rerun.id, "status": rerun.status, "error": (rerun.error or "")[:300],
                                       "version": version and version.id, "version_status": version and version.status,
                                       "gate": version and (version.reason or "")[:500]}
                    if version is None or version.status != "active":
                        break  # failed, or trained but kept out by the gate: nothing will be promoted
            if not requeued and dead is not None and dead.status == "failed" and not any(
                    r.status in ("queued", "running") for r in runs):
                Client(urls["B"], verbose=False).predict(TOKEN, "dpo", api_name="/retrain")
                requeued = True
            time.sleep(0.1)
        dead = repo.get_run(running.id)
        result["killed_run_status"] = dead.status
        result["killed_run_error"] = (dead.error or "")[:200]
        result["retrain_requeued_by_script"] = requeued
        result["seconds_after_kill"] = marks
        if promoted is None:
            raise RuntimeError(f"no version was promoted after the worker was replaced: {json.dumps(result)}")
        promoted_at = time.time()
        result["kill_to_promotion_seconds"] = round(promoted_at - killed_at, 1)
        result["promoted_version"] = promoted.id

        serving = {}
        for replica, replica_url in urls.items():
            client = Client(replica_url, verbose=False)
            while time.time() - promoted_at < 120:
                try:
                    live = client.predict(api_name="/status").get("live_version")
                except Exception as exc:  # a replica that stops answering is a finding, not a crash
                    errors.append(f"{replica} status: {exc}"[:200])
                    live = None
                if live == promoted.id:
                    serving[replica] = round(time.time() - promoted_at, 2)
                    break
                time.sleep(0.1)
        result["seconds_from_promotion_to_serving"] = serving

        stop_labelling.set()
        for th in ongoing:
            th.join()
        # A signed id is "<handle>.<signature>": the handle is the annotator the judgments are stored under.
        stored = sum(len(repo.judgments_of(p.anonymous_id.partition(".")[0])) for p in acting if p.anonymous_id)
        result["labels_answered"] = {r: len(v) for r, v in answered.items()}
        result["judgments_in_database"] = stored
        result["errors"] = len(errors)
        result["error_examples"] = errors[:3]
        result["nothing_lost"] = stored == sum(len(v) for v in answered.values())
        result["both_replicas_serve_promoted_head"] = set(serving) == {"A", "B"}
    finally:
        stop_labelling.set()
        if repo is not None:
            repo.close()
        procs.stop_all()
        drop_database(args.database_url, url)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if result.get("nothing_lost") and result.get("both_replicas_serve_promoted_head") else 1


if __name__ == "__main__":
    raise SystemExit(main())
