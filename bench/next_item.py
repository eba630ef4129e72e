"""Benchmark of choosing the next annotation item: its latency with 1,000 and with 30,000 samples.

    python bench/next_item.py --json               # SQLite, and PostgreSQL when reachable
    python bench/next_item.py --sizes 1000 30000 --calls 200

For each size, a fresh database gets that many samples in one bulk insert (a third of them with votes, as a
running app has), then one annotator asks ``Repository.next_sample`` and answers, ``--calls`` times; the median
and p95 of ``next_sample`` alone are reported, and the ratio of the largest size's median to the smallest's.
Bar: the ratio stays under 2 for 30 times the samples (the choice reads an index, not every sample). The SQLite
query plan of the choice's statement is printed too. The PostgreSQL URL defaults to ``POCLIP_TEST_POSTGRES_URL``;
a fresh database is created there per size and dropped after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Run as a script from the repository root: make the packages beside bench/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text, update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402

from annotation_db import (  # noqa: E402
    Database,
    DatabaseConfig,
    Repository,
    RepositoryConfig,
    create_db_engine,
    upgrade_schema,
)
from annotation_db.models import Sample  # noqa: E402
from bench.db import _setup  # noqa: E402

BAR_RATIO = 2.0


def _fill(repo: Repository, n: int) -> None:
    _setup(repo, n)  # the store benchmark's samples: one bulk insert
    with repo.db.writing() as s:
        # Votes as a running app has them: most items untouched, some short of k, some at or past it.
        s.execute(update(Sample).where(Sample.id % 3 == 1).values(votes=Sample.id % 5))


def _measure(url: str, data_dir: Path, n: int, calls: int) -> dict[str, Any]:
    engine = create_db_engine(DatabaseConfig(url))
    upgrade_schema(engine)
    repo = Repository(Database(engine), data_dir, RepositoryConfig(rate_limit_count=None))
    try:
        _fill(repo, n)
        repo.ensure_annotator("bench-annotator")
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            sample = repo.next_sample("bench-annotator")
            times.append(time.perf_counter() - start)
            repo.record_judgment(sample.id, "bench-annotator", "cat", "dog")
        ms = sorted(t * 1000 for t in times)
        return {"samples": n, "calls": calls, "median_ms": round(statistics.median(ms), 3),
                "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3)}
    finally:
        repo.close()


def _plan(url: str) -> list[str]:
    """SQLite's plan for the statement that picks an item never served (one vote count, from a random id)."""
    engine = create_engine(url)
    sql = ("EXPLAIN QUERY PLAN SELECT samples.id FROM samples WHERE samples.votes = 0 AND samples.id >= 100 "
           "AND NOT EXISTS (SELECT 1 FROM served_items WHERE served_items.annotator_id = 1 "
           "AND served_items.sample_id = samples.id) AND NOT EXISTS (SELECT 1 FROM judgments WHERE "
           "judgments.annotator_id = 1 AND judgments.sample_id = samples.id AND judgments.undone_at IS NULL) "
           "ORDER BY samples.id LIMIT 1")
    with engine.connect() as conn:
        rows = [row[-1] for row in conn.execute(text(sql))]
    engine.dispose()
    return rows


def _drop(admin, name: str) -> None:
    # Right after the run an autovacuum worker may still be in the new database; it leaves within seconds.
    for _ in range(30):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            return
        except DBAPIError:
            time.sleep(1)
    print(f"could not drop the benchmark's database {name}; drop it by hand", file=sys.stderr)


def _run(make_url_for, sizes: list[int], calls: int, data_dir: Path) -> dict[str, Any]:
    runs = [_measure(make_url_for(n), data_dir, n, calls) for n in sizes]
    ratio = runs[-1]["median_ms"] / runs[0]["median_ms"]
    return {"runs": runs, "median_ratio": round(ratio, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 30_000], help="numbers of samples")
    parser.add_argument("--calls", type=int, default=200, help="next_sample calls per size")
    parser.add_argument("--postgres-url", default=os.environ.get("POCLIP_TEST_POSTGRES_URL", ""),
                        help="PostgreSQL server to benchmark too (default: $POCLIP_TEST_POSTGRES_URL)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="poclip-bench-") as tmp:
        results["sqlite"] = _run(lambda n: f"sqlite:///{Path(tmp) / f'bench-{n}.db'}", args.sizes, args.calls,
                                 Path(tmp) / "data")
        results["sqlite"]["plan"] = _plan(f"sqlite:///{Path(tmp) / f'bench-{args.sizes[-1]}.db'}")
        if args.postgres_url:
            admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
            names: list[str] = []

            def pg_url(n: int) -> str:
                names.append(f"poclip_bench_{uuid.uuid4().hex[:8]}")
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{names[-1]}"'))
                return make_url(args.postgres_url).set(database=names[-1]).render_as_string(hide_password=False)

            try:
                results["postgresql"] = _run(pg_url, args.sizes, args.calls, Path(tmp) / "pgdata")
            finally:
                for name in names:
                    _drop(admin, name)
                admin.dispose()
        else:
            results["postgresql"] = {"skipped": "no --postgres-url and POCLIP_TEST_POSTGRES_URL is not set"}
    ok = all(r["median_ratio"] < BAR_RATIO for r in results.values() if "median_ratio" in r)
    results["bar"] = {"median_ratio_below": BAR_RATIO, "pass": ok}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for db, result in results.items():
            if db == "bar":
                continue
            if "skipped" in result:
                print(f"{db:10s} skipped: {result['skipped']}")
                continue
            for run in result["runs"]:
                print(f"{db:10s} {run['samples']:7,d} samples: next_sample median {run['median_ms']:.2f} ms, "
                      f"p95 {run['p95_ms']:.2f} ms")
            print(f"{db:10s} median ratio {result['median_ratio']:.2f} (bar < {BAR_RATIO})")
            for line in result.get("plan", []):
                print(f"{db:10s} plan: {line}")
        print("bar:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
