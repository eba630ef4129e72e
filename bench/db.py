"""Benchmark of the preference store: judgments per second with 1 and 8 writers, latency, rows lost.

    python bench/db.py --json                      # SQLite, and PostgreSQL when reachable
    python bench/db.py --postgres-url postgresql+psycopg://user:pw@127.0.0.1:5432/db

Every judgment goes through ``Repository.record_judgment`` with all its checks, the rate-limit query
included (the limit is set high enough not to trigger). Writers share one repository, as Gradio's worker
threads do. The PostgreSQL URL defaults to ``POCLIP_TEST_POSTGRES_URL`` (set by ``.ci/start_postgres.sh``);
a fresh database is created there for the run and dropped after.
Bars on SQLite: >= 1,000 judgments/s with one writer, p99 <= 20 ms with 8 writers, 0 lost.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as a script from the repository root: make the packages beside bench/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import PIL.Image  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from annotation_db import (  # noqa: E402
    Database,
    DatabaseConfig,
    Repository,
    RepositoryConfig,
    create_db_engine,
    upgrade_schema,
)
from annotation_db.models import Annotator, Judgment, Sample  # noqa: E402
from annotation_db.validation import json_key  # noqa: E402

BARS = {"sqlite_1_writer_per_s": 1000.0, "sqlite_8_writers_p99_ms": 20.0, "lost": 0}


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _setup(repo: Repository, n_samples: int) -> list[int]:
    repo.ensure_label_set("bench", ["cat", "dog", "bird", "fish"])
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (16, 16), "gray").save(buffer, format="PNG")
    sha = repo.store_image(buffer.getvalue(), source="synthetic").sha256
    label_set_id = repo.get_label_set("bench").id
    now = datetime.now(UTC)
    # Samples in one bulk insert: setup, not what is measured.
    with repo.db.writing() as s:
        rows = [
            {
                "image_sha256": sha,
                "label_set_id": label_set_id,
                "attack": {"text": f"w{i}"},
                "attack_key": json_key({"text": f"w{i}"}),
                "created_at": now,
            }
            for i in range(n_samples)
        ]
        s.execute(insert(Sample), rows)
        return list(s.scalars(select(Sample.id).order_by(Sample.id)))


def _phase(repo: Repository, samples: list[int], writers: int, per_writer: int, tag: str) -> dict[str, Any]:
    handles = [repo.ensure_annotator(f"{tag}-{w}").handle for w in range(writers)]
    latencies: list[list[float]] = [[] for _ in range(writers)]
    errors: list[str] = []
    barrier = threading.Barrier(writers + 1)

    def write(w: int) -> None:
        barrier.wait()
        for sample_id in samples[:per_writer]:
            start = time.perf_counter()
            try:
                repo.record_judgment(sample_id, handles[w], "cat", "dog")
            except Exception as exc:  # counted and reported: the bar is zero
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies[w].append(time.perf_counter() - start)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    with repo.db.reading() as s:
        stored = s.scalar(
            select(func.count()).select_from(Judgment).join(Annotator).where(Annotator.handle.in_(handles))
        )
    flat = sorted(x * 1000 for lane in latencies for x in lane)
    expected = writers * per_writer
    return {
        "writers": writers,
        "judgments": expected,
        "seconds": round(wall, 3),
        "judgments_per_s": round(expected / wall, 1),
        "p50_ms": round(statistics.median(flat), 3),
        "p99_ms": round(_percentile(flat, 0.99), 3),
        "max_ms": round(flat[-1], 3),
        "rows_lost": expected - stored,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def bench_url(
    url: str, data_dir: Path, single: int, writers: int, per_writer: int, **sqlite: str
) -> dict[str, Any]:
    config = DatabaseConfig(url, **sqlite)
    engine = create_db_engine(config)
    upgrade_schema(engine)
    repo = Repository(Database(engine), data_dir, RepositoryConfig(rate_limit_count=10**9))
    try:
        samples = _setup(repo, max(single, per_writer))
        _phase(repo, samples, 1, 50, "warmup")
        result = {
            "database": engine.dialect.name,
            "settings": {"journal_mode": config.sqlite_journal_mode, "synchronous": config.sqlite_synchronous}
            if config.is_sqlite
            else {"synchronous_commit": "on (server default)"},
            "one_writer": _phase(repo, samples, 1, single, "single"),
            "eight_writers" if writers == 8 else f"{writers}_writers": _phase(
                repo, samples, writers, per_writer, "multi"
            ),
        }
        return result
    finally:
        repo.close()


def bench_postgres(url: str, data_dir: Path, single: int, writers: int, per_writer: int) -> dict[str, Any]:
    name = f"poclip_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # unreachable server, bad credentials, no CREATEDB right
        return {
            "skipped": f"PostgreSQL not reachable at {make_url(url).render_as_string()}: {exc}".splitlines()[
                0
            ]
        }
    try:
        return bench_url(
            make_url(url).set(database=name).render_as_string(hide_password=False),
            data_dir,
            single,
            writers,
            per_writer,
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--judgments", type=int, default=2000, help="judgments of the single writer")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--per-writer", type=int, default=500, help="judgments of each concurrent writer")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("POCLIP_TEST_POSTGRES_URL", ""),
        help="PostgreSQL server to benchmark too (default: $POCLIP_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--sqlite-journal", default="WAL", help="journal mode (DELETE: as on a network FS)")
    parser.add_argument("--sqlite-synchronous", default="NORMAL", help="NORMAL (default) or FULL")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="poclip-bench-") as tmp:
        results["sqlite"] = bench_url(
            f"sqlite:///{Path(tmp) / 'bench.db'}",
            Path(tmp) / "data",
            args.judgments,
            args.writers,
            args.per_writer,
            sqlite_journal_mode=args.sqlite_journal.upper(),
            sqlite_synchronous=args.sqlite_synchronous.upper(),
        )
        if args.postgres_url:
            results["postgresql"] = bench_postgres(
                args.postgres_url, Path(tmp) / "pgdata", args.judgments, args.writers, args.per_writer
            )
        else:
            results["postgresql"] = {"skipped": "no --postgres-url and POCLIP_TEST_POSTGRES_URL is not set"}

    sqlite = results["sqlite"]
    multi = next(v for k, v in sqlite.items() if k.endswith("writers"))
    lost = sum(
        r.get("rows_lost", 0) + r.get("errors", 0)
        for db in results.values()
        if "skipped" not in db
        for r in db.values()
        if isinstance(r, dict) and "rows_lost" in r
    )
    results["bars"] = {
        "sqlite_1_writer_per_s": {
            "bar": BARS["sqlite_1_writer_per_s"],
            "got": sqlite["one_writer"]["judgments_per_s"],
        },
        "sqlite_8_writers_p99_ms": {"bar": BARS["sqlite_8_writers_p99_ms"], "got": multi["p99_ms"]},
        "lost_or_failed": {"bar": BARS["lost"], "got": lost},
    }
    results["bars"]["pass"] = (
        sqlite["one_writer"]["judgments_per_s"] >= BARS["sqlite_1_writer_per_s"]
        and multi["p99_ms"] <= BARS["sqlite_8_writers_p99_ms"]
        and lost == 0
    )

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for db, result in results.items():
            if db == "bars":
                continue
            if "skipped" in result:
                print(f"{db:10s} skipped: {result['skipped']}")
                continue
            for phase, r in result.items():
                if isinstance(r, dict) and "judgments_per_s" in r:
                    print(
                        f"{db:10s} {phase:13s} {r['judgments_per_s']:9.1f} judgments/s"
                        f"  p50 {r['p50_ms']:7.2f} ms"
                        f"  p99 {r['p99_ms']:7.2f} ms  lost {r['rows_lost']}  errors {r['errors']}"
                    )
        print("bars:", "PASS" if results["bars"]["pass"] else "FAIL", json.dumps(results["bars"]))
    return 0 if results["bars"]["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
