"""One client against the others: the attacks of issue 18, run against a launched app through its public API.

    python bench/abuse.py --json                                  # SQLite
    eval "$(bash .ci/start_postgres.sh)"; python bench/abuse.py --json --postgres "$POCLIP_TEST_POSTGRES_URL"

The app runs as its own process (``python app.py``, bundled model, default limits, no trainer) on a fresh data
folder. Every simulated client connects from its own loopback address (``127.0.0.2`` and up, bound as the source
of its connections), so the app's per-address limits see separate clients without trusting any proxy header.

Attacks and what each reports (bar in brackets):

- ``victim_vote_failures`` [0]: 15 visitors, each from its own address, predict during a one-address flood of
  /predict calls with a 1024-px upload and vote once it ends; the votes (and predictions) that failed.
- ``victim_upload_failures`` [0]: 4 visitors upload 12-megapixel photos (3 each) while one address keeps sending
  40-megapixel PNGs from 8 threads; the visitors' uploads that failed. Their median time is reported beside the
  same visitors' median with no flood (``victim_upload_p50_ms``).
- ``rss_mb_over_idle_after_uploads`` [300]: the app process's resident memory 3 s after the upload bursts, minus
  its idle level after the first prediction.
- ``gold_detection_auc`` [0.6]: three identities (one address each) call /next_item 900 times without answering,
  over the app's default 600 items (about 60 of them gold), so items come back; per item the bench records how
  often and how early it came back, the response time, its picture's size, its id and its label order. The figure
  is the best one-feature classifier's AUC, folded (max(AUC, 1 - AUC)) over those features: 0.5 is chance.
  ``chance_level_95`` is what a server serving both alike shows by chance with this many items (the 95th
  percentile of the same figure for randomly drawn "gold" sets).
- ``impersonation_trust_change`` [0]: a person named "alice" answers 20 items truthfully; another address types
  "alice" and tries /undo and 120 wrong answers. The change in alice's trust (and in her label count).
- ``lookalike_names_accepted`` [0]: names that look like a reserved name or alice's (zero-width characters,
  Cyrillic letters, full-width forms, case) or are blank once invisible characters go; how many became a
  display name. ``plain_name_accepted`` shows an ordinary new name still is.
- ``overwrite_detected`` [true]: an older copy of the SQLite file (a consistent snapshot taken after start) is
  copied over the live file in place (same inode); detected when /status says so, an answer is refused with the
  app's message (no server path in it) and nothing is written.

With ``--postgres URL`` the attacks that touch the store (gold detection, impersonation, look-alike names) run
again on a second app using a fresh database on that server (``postgresql`` in the output).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sqlite3
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from visitors import (  # noqa: E402
    REPO,
    ApiCaller,
    CallRefused,
    create_database,
    drop_database,
    rss_mb,
    scratch_dir,
    seeded_truth,
    start_app,
    stop,
)

sys.path.insert(0, str(REPO))

from annotation_db import Repository, open_repository  # noqa: E402
from annotation_db.engine import DatabaseConfig  # noqa: E402
from annotation_db.models import Sample  # noqa: E402
from poclip.app.seeding import GOLD_HANDLE  # noqa: E402
from poclip.app.service import repository_config  # noqa: E402
from poclip.settings import Settings  # noqa: E402

TOKEN = "abuse-admin"
BARS = {"victim_vote_failures": 0, "victim_upload_failures": 0, "rss_mb_over_idle_after_uploads": 300,
        "gold_detection_auc": 0.6, "impersonation_trust_change": 0, "lookalike_names_accepted": 0}


def address(n: int) -> str:
    """The loopback source address of simulated client ``n`` (1 is the bench's own, unlabelled traffic)."""
    return f"127.0.{n // 250}.{2 + n % 250}"


def picture(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A smooth picture with mild blocky noise: compressible enough to stay under the 25 MB upload limit."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = (np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
            + np.linspace(0, 60, height, dtype=np.float32)[:, None, None])
    noise = np.kron(rng.integers(0, 24, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8),
                    np.ones((16, 16, 1), dtype=np.uint8))[:height, :width]
    out = io.BytesIO()
    Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8)).save(out, format=fmt, quality=90)
    return out.getvalue()


def predict_args(file: dict, text: str, share: bool = True) -> list:
    # picture, word, font, size, fill, outline, x, y, opacity, rotation, label set, custom labels, t, arena, share,
    # left and right model (the raw HTTP call passes every input)
    return [file, text, "sans-bold", 0.15, "#ffffff", "#000000", 0.5, 0.5, 1.0, 0.0, "Synthetic shapes", "", 1.0,
            False, share, "base", "aligned"]


def separation(gold: list[float], regular: list[float]) -> float:
    """max(AUC, 1 - AUC) of telling ``gold`` from ``regular`` by one value: the Mann-Whitney statistic from
    average ranks (ties count half); 0.5 is chance."""
    import numpy as np

    if not gold or not regular:
        return 0.5
    values = np.asarray([*gold, *regular], dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):  # ties share their average rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    auc = (ranks[: len(gold)].sum() - len(gold) * (len(gold) + 1) / 2) / (len(gold) * len(regular))
    return float(max(auc, 1 - auc))


def best_separation(features: dict[str, dict[int, float]], gold: set[int]) -> dict[str, float]:
    """:func:`separation` of ``gold`` from the other items by each feature (item -> value)."""
    return {name: round(separation([v for s, v in values.items() if s in gold],
                                   [v for s, v in values.items() if s not in gold]), 3)
            for name, values in features.items()}


def chance_level(features: dict[str, dict[int, float]], items: list[int], n_gold: int, draws: int = 200) -> float:
    """The 95th percentile of the best feature's separation when ``n_gold`` items drawn at random are called
    gold: what a server that serves gold and regular items alike shows by chance, with this many items."""
    import random

    rng = random.Random(0)
    best = sorted(max(best_separation(features, set(rng.sample(items, n_gold))).values()) for _ in range(draws))
    return best[int(0.95 * (draws - 1))]


def app_rss(pid: int, reads: int = 3) -> float:
    """The median of a few reads of the app process's resident memory (MB), 0.3 s apart."""
    values = []
    for _ in range(reads):
        values.append(rss_mb(pid))
        time.sleep(0.3)
    return statistics.median(values)


class App:
    """One launched app, the bench's read-only view of its store, and where its SQLite file lives."""

    def __init__(self, work: Path, database_url: str = "") -> None:
        work.mkdir(parents=True, exist_ok=True)
        # No peer defenses: their one-off build (a child process, niced) would share the cores with the attacks.
        self.settings = Settings(data_dir=work / "data", model_spec="bundled", admin_token=TOKEN, trainer="off",
                                 retrain_every_pairs=0, backup_every_minutes=0, database_url=database_url, peers=())
        env = {**os.environ, **self.settings.to_env()}
        env.pop("POCLIP_PROXY_HOPS", None)
        env.pop("SPACE_ID", None)  # no proxy in front: the connection's address is the client's
        self.proc, self.url = start_app("app", [sys.executable, "app.py"], env, work)
        self.repo: Repository = open_repository(self.settings, repository_config(self.settings))
        self.sqlite = DatabaseConfig.from_settings(self.settings).sqlite_path

    def close(self) -> None:
        stop(self.proc)
        self.repo.close()


class Flood:
    """``threads`` threads from one address sending /predict with one uploaded picture, as fast as the app answers
    (a short pause after a refusal), until :meth:`stop`; counts what was answered and what refused."""

    def __init__(self, app: App, source: str, content: bytes, threads: int) -> None:
        self.app, self.source, self.content = app, source, content
        self.sent = self.refused = 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(k,)) for k in range(threads)]
        for th in self._threads:
            th.start()

    def _send(self, k: int) -> None:
        caller = ApiCaller(self.app.url, self.source)
        file = caller.upload("flood.png", self.content)
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                caller.call("predict", predict_args(file, f"w{k}-{i}"))  # a new word: a new comparison each time
                with self._lock:
                    self.sent += 1
            except CallRefused:
                with self._lock:
                    self.refused += 1
                time.sleep(0.05)
        caller.close()

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join()

    def counts(self) -> dict[str, int]:
        return {"attacker_predictions": self.sent, "attacker_refused": self.refused}


# ----- a prediction flood ---------------------------------------------------------------------------------------


def vote_under_predict_flood(app: App, result: dict, victims: int = 15, flood_s: float = 60,
                             threads: int = 4) -> None:
    failures: list[str] = []
    pending: list[tuple[ApiCaller, str]] = []
    flood = Flood(app, address(10), picture(1024, 1024, seed=1), threads)
    started = time.perf_counter()
    victim_picture = picture(224, 224, seed=2)
    for v in range(victims):  # spread over the first half of the flood, so each comparison waits long
        time.sleep(max(0.0, started + v * flood_s / (2 * victims) - time.perf_counter()))
        caller = ApiCaller(app.url, address(20 + v))
        try:
            file = caller.upload("mine.png", victim_picture)
            pending.append((caller, caller.call("predict", predict_args(file, "kite"))[5]))
        except Exception as exc:  # a refused or failed prediction is a victim's failure too
            failures.append(f"predict: {exc}"[:200])
    time.sleep(max(0.0, started + flood_s - time.perf_counter()))
    flood.stop()
    for caller, comparison_id in pending:
        try:
            caller.call("vote", [comparison_id, "left", "", "", None])
        except Exception as exc:
            failures.append(f"vote: {exc}"[:200])
        caller.close()
    result["victim_vote_failures"] = len(failures)
    result["predict_flood"] = {"seconds": flood_s, "attacker_threads": threads, **flood.counts(),
                               "victims": victims, "failures": failures[:5]}


# ----- a decode flood, and memory after it -----------------------------------------------------------------------


def uploads_under_decode_flood(app: App, result: dict, victims: int = 4, each: int = 3, threads: int = 8) -> None:
    photos = [picture(4000, 3000, "JPEG", seed=10 + v) for v in range(victims)]
    large = picture(6320, 6320, seed=3)

    def victim_round(tag: str) -> tuple[list[float], list[str]]:
        times: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def victim(v: int) -> None:
            caller = ApiCaller(app.url, address(40 + v))
            for i in range(each):
                t = time.perf_counter()
                try:
                    file = caller.upload(f"phone{v}.jpg", photos[v])
                    caller.call("predict", predict_args(file, f"{tag}{i}"))
                    with lock:
                        times.append(1000 * (time.perf_counter() - t))
                except Exception as exc:
                    with lock:
                        failures.append(f"{exc}"[:200])
            caller.close()

        people = [threading.Thread(target=victim, args=(v,)) for v in range(victims)]
        for th in people:
            th.start()
        for th in people:
            th.join()
        return times, failures

    quiet_times, quiet_failures = victim_round("quiet")
    flood = Flood(app, address(11), large, threads)
    time.sleep(3)  # the flood holds its share before the visitors come
    flood_times, flood_failures = victim_round("flood")
    flood.stop()
    result["victim_upload_failures"] = len(flood_failures)
    quiet = statistics.median(quiet_times) if quiet_times else None
    busy = statistics.median(flood_times) if flood_times else None
    result["decode_flood"] = {
        "attacker_threads": threads, **flood.counts(), "victim_uploads": victims * each,
        "victim_upload_p50_ms": {"no_flood": round(quiet or 0), "flood": round(busy or 0)},
        "slowdown": round(busy / quiet, 2) if quiet and busy else None,
        "failures_without_flood": len(quiet_failures), "failures": flood_failures[:5]}
    time.sleep(3)
    after = app_rss(app.proc.pid)
    kept = ApiCaller(app.url, address(1)).call("status", [])[0]["comparisons"]
    result["rss_mb"] = {**result["rss_mb"], "after_uploads": after}
    result["rss_mb_over_idle_after_uploads"] = round(after - result["rss_mb"]["idle"], 1)
    # What the app keeps on purpose: the predictions held for votes (each address at most an eighth of 512 MB).
    result["kept_comparisons"] = kept
    result["rss_mb_over_idle_less_kept_comparisons"] = round(after - result["rss_mb"]["idle"] - kept["mb"], 1)


# ----- the store: gold items, typed names ------------------------------------------------------------------------


def gold_detection(app: App, result: dict, identities: int = 3, calls: int = 900) -> None:
    count: dict[int, int] = defaultdict(int)
    first: dict[int, list[int]] = defaultdict(list)
    latency: dict[int, list[float]] = defaultdict(list)
    size: dict[int, int] = {}
    sorted_labels: dict[int, int] = {}
    for k in range(identities):
        caller = ApiCaller(app.url, address(60 + k))
        me, seen = None, set()
        for call in range(calls):
            t = time.perf_counter()
            out = caller.call("next_item", ["", me])
            took = 1000 * (time.perf_counter() - t)
            me, sample_id = out[-1], out[1]
            if sample_id is None:
                break
            sample_id = int(sample_id)
            count[sample_id] += 1
            latency[sample_id].append(took)
            if sample_id not in seen:
                seen.add(sample_id)
                first[sample_id].append(call)
            if sample_id not in size:
                size[sample_id] = len(caller.fetch(out[0]))
                sorted_labels[sample_id] = int(out[2] == sorted(out[2]))
        caller.close()
    gold = {j.sample_id for j in app.repo.judgments_of(GOLD_HANDLE)}
    from sqlalchemy import select

    with app.repo.db.reading() as session:
        samples = list(session.scalars(select(Sample.id)))
    features = {
        "times_served": {s: count.get(s, 0) for s in samples},
        "first_served_at": {s: statistics.mean(first[s]) if first[s] else calls for s in samples},
        "response_ms": {s: statistics.median(latency[s]) for s in latency},
        "picture_bytes": size,
        "sample_id": {s: s for s in samples},
        "labels_in_sorted_order": sorted_labels,
    }
    aucs = best_separation(features, gold)
    result["gold_detection_auc"] = max(aucs.values())
    gold_counts = [count.get(s, 0) for s in samples if s in gold]
    regular_counts = [count.get(s, 0) for s in samples if s not in gold]
    result["gold_detection"] = {
        "identities": identities, "calls_each": calls, "items": len(samples), "gold_items": len(gold),
        "auc_by_feature": aucs, "chance_level_95": round(chance_level(features, samples, len(gold)), 3),
        "times_served": {"gold": [min(gold_counts, default=0), max(gold_counts, default=0)],
                         "regular": [min(regular_counts, default=0), max(regular_counts, default=0)]}}


class Person:
    """Someone labelling truthfully through /next_item and /answer from one address, as one signed identity."""

    def __init__(self, app: App, n: int, name: str, truth: dict[str, str]) -> None:
        self.app, self.caller, self.name, self.truth = app, ApiCaller(app.url, address(n)), name, truth
        self.me: str | None = None
        self.sample_id: int | None = None

    def _take(self, out: list) -> None:
        self.me, self.sample_id = out[-1], None if out[1] is None else int(out[1])

    def next_item(self) -> None:
        self._take(self.caller.call("next_item", [self.name, self.me]))

    def label(self, right: bool = True) -> str:
        """The true shape of the item on screen, or (``right=False``) another one."""
        from poclip.world import synth
        from poclip.world.attacks import TextAttack

        sample = self.app.repo.get_sample(self.sample_id)
        shape = self.truth[TextAttack.from_dict(sample.attack).to_json()]
        return shape if right else next(s for s in synth.SHAPES if s != shape)

    def answer(self, right: bool = True, label: str | None = None) -> None:
        label = label or self.label(right)
        self._take(self.caller.call("answer", [self.sample_id, label, self.name, self.me]))

    @property
    def handle(self) -> str:
        return self.me.split(".", 1)[0]


def impersonation(app: App, result: dict, truth: dict[str, str], honest: int = 20, wrong: int = 120) -> None:
    alice = Person(app, 70, "alice", truth)
    alice.next_item()
    for _ in range(honest):
        alice.answer()
    before = app.repo.get_annotator(alice.handle)
    labels_before = len(app.repo.judgments_of(alice.handle))
    mallory = Person(app, 71, "alice", truth)  # types her name, from another address and session
    accepted, refusals = 0, []
    try:
        mallory.caller.call("undo", ["alice", None])
        accepted += 1
    except CallRefused as exc:
        refusals.append(str(exc))
    for _ in range(wrong):
        try:
            if mallory.sample_id is None:
                mallory.next_item()
            mallory.answer(right=False)
            accepted += 1
        except CallRefused as exc:
            refusals.append(str(exc))
            mallory.sample_id = None
    after = app.repo.get_annotator(alice.handle)
    result["impersonation_trust_change"] = round(abs(after.trust - before.trust), 4)
    result["impersonation"] = {
        "alice_trust": [round(before.trust, 4), round(after.trust, 4)],
        "alice_gold_seen": [before.gold_seen, after.gold_seen],
        "alice_labels": [labels_before, len(app.repo.judgments_of(alice.handle))],
        "attacker_calls": wrong + 1, "attacker_calls_accepted": accepted,
        "refusal_examples": sorted(set(r[:160] for r in refusals))[:3]}


LOOKALIKES = {
    "gold name + zero-width space": "poclip-gold\u200b",
    "gold name, Cyrillic o": "p\u043eclip-gold",
    "full-width admin": "\uff41\uff44\uff4d\uff49\uff4e",
    "ADMIN": "ADMIN",
    "alice, Cyrillic a": "\u0430lice",
    "alice + zero-width joiner": "alice\u200d",
    "full-width ALICE": "\uff21\uff2c\uff29\uff23\uff25",
    "zero-width characters only": "\u200b\u2060",
    "soft hyphen only": "\u00ad",
}


def lookalike_names(app: App, result: dict) -> None:
    accepted = []

    def try_name(name: str) -> str | None:
        caller = ApiCaller(app.url, address(80))
        try:
            me = caller.call("next_item", [name, None])[-1]
        except CallRefused:
            return None
        finally:
            caller.close()
        return app.repo.get_annotator(me.split(".", 1)[0]).display_name

    for what, name in LOOKALIKES.items():
        if try_name(name) is not None:
            accepted.append(what)
    result["lookalike_names_accepted"] = len(accepted)
    result["lookalike_names"] = {"tried": len(LOOKALIKES), "accepted": accepted,
                                 "plain_name_accepted": try_name("bob the annotator") == "bob the annotator"}


def store_attacks(app: App, result: dict) -> None:
    truth = seeded_truth(Settings.seed_items)
    impersonation(app, result, truth)  # alice's name is taken from here on
    lookalike_names(app, result)
    gold_detection(app, result)


# ----- the database file replaced in place ------------------------------------------------------------------------


def snapshot(app: App, to: Path) -> None:
    """A consistent copy of the live SQLite file, as a maintainer's backup would be."""
    with sqlite3.connect(app.sqlite) as live, sqlite3.connect(to) as copy:
        live.backup(copy)


def overwrite(app: App, result: dict, older: Path) -> None:
    person = Person(app, 90, "", seeded_truth(Settings.seed_items))
    person.next_item()
    label = person.label()
    before = app.repo.counts()["judgments"]
    app.repo.close()  # the bench's own connections would read the copy too
    inode = os.stat(app.sqlite).st_ino
    shutil.copyfile(older, app.sqlite)  # in place: the same inode, older content
    assert os.stat(app.sqlite).st_ino == inode
    status = ApiCaller(app.url, address(91)).call("status", [])[0]
    try:
        person.answer(label=label)
        refused, message = False, ""
    except CallRefused as exc:
        refused, message = True, str(exc)
    # What a process opening the file now reads (the replaced file's write-ahead log still lays newer pages over
    # the copy): the refused answer must not have added a row.
    with sqlite3.connect(f"file:{app.sqlite}?mode=ro", uri=True) as conn:
        after = conn.execute("SELECT count(*) FROM judgments").fetchone()[0]
    path_shown = str(app.settings.data_dir) in message or str(app.sqlite) in message
    result["overwrite_detected"] = bool(status.get("database") != "ok" and refused and not path_shown
                                        and after == before)
    result["overwrite"] = {"status_database": status.get("database"), "answer_refused": refused,
                           "message": message[:300], "server_path_shown": path_shown,
                           "judgments_before": before, "judgments_after": after}


# ----- the run -----------------------------------------------------------------------------------------------------


def measure_sqlite(work: Path) -> dict:
    result: dict = {"database": "sqlite"}
    app = App(work)
    try:
        warm = ApiCaller(app.url, address(1))
        warm.call("predict", predict_args(warm.upload("warm.png", picture(224, 224)), "warm"))
        warm.close()
        time.sleep(2)
        result["rss_mb"] = {"idle": app_rss(app.proc.pid)}
        older = work / "older-copy.db"
        snapshot(app, older)
        store_attacks(app, result)
        result["rss_mb"]["after_store_attacks"] = app_rss(app.proc.pid)
        vote_under_predict_flood(app, result)
        result["rss_mb"]["after_predict_flood"] = app_rss(app.proc.pid)
        uploads_under_decode_flood(app, result)
        overwrite(app, result, older)
    finally:
        app.close()
    return result


def measure_postgres(work: Path, server_url: str) -> dict:
    url = create_database(server_url, "poclip_abuse")
    result: dict = {"database": "postgresql"}
    try:
        app = App(work, url)
        try:
            store_attacks(app, result)
        finally:
            app.close()
    finally:
        drop_database(server_url, url)
    return result


def bars(result: dict) -> dict[str, bool]:
    met = {key: result[key] <= bar for key, bar in BARS.items() if key in result}
    if "overwrite_detected" in result:
        met["overwrite_detected"] = result["overwrite_detected"] is True
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    parser.add_argument("--postgres", default="", metavar="URL",
                        help="also run the store attacks on a fresh database on this PostgreSQL server")
    parser.add_argument("--out", type=Path, help="also write the JSON here (e.g. bench/results/abuse.json)")
    args = parser.parse_args()
    with scratch_dir("poclip-abuse-") as work:
        result = measure_sqlite(work / "sqlite")
        result["bars"] = bars(result)
        if args.postgres:
            pg = measure_postgres(work / "postgresql", args.postgres)
            pg["bars"] = bars(pg)
            result["postgresql"] = pg
    result["bars_met"] = all(result["bars"].values()) and all(result.get("postgresql", {}).get("bars", {}).values())
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if result["bars_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
