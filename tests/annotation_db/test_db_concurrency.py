"""Many annotators at once lose nothing."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from annotation_db import DuplicateJudgmentError, RepositoryConfig
from annotation_db.models import Judgment

THREADS = 8
PER_THREAD = 500


def test_8_threads_x_500_judgments_give_exactly_4000_rows(make_repo, png):
    # One repository shared by all threads, as in the Gradio app. The rate limit is off: each thread is one
    # annotator writing as fast as it can, far beyond a person's pace.
    repo = make_repo(RepositoryConfig(rate_limit_count=None), real_clock=True)
    repo.ensure_label_set("animals", ["cat", "dog", "bird"])
    sha = repo.store_image(png(1)).sha256
    samples = [repo.add_sample(sha, "animals", {"text": f"word {i}"}).id for i in range(PER_THREAD)]
    handles = [repo.ensure_annotator(f"annotator-{t}").handle for t in range(THREADS)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def annotate(handle: str) -> None:
        barrier.wait()
        for sample_id in samples:
            try:
                repo.record_judgment(sample_id, handle, "cat", "dog")
            except BaseException as exc:  # every error counts against the test
                errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    with repo.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Judgment)) == THREADS * PER_THREAD
        per_annotator = s.execute(
            select(Judgment.annotator_id, func.count()).group_by(Judgment.annotator_id)
        ).all()
    assert sorted(n for _, n in per_annotator) == [PER_THREAD] * THREADS


def test_racing_duplicates_store_exactly_one(make_repo, world_factory):
    repos = [make_repo(real_clock=True) for _ in range(4)]  # separate engines: like app replicas
    world = world_factory(repos[0], n_samples=1, n_annotators=1)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def judge(repo) -> None:
        barrier.wait()
        try:
            repo.record_judgment(world.samples[0], "annotator-a", "cat", "dog")
            outcomes.append("stored")
        except DuplicateJudgmentError:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=judge, args=(r,)) for r in repos]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["duplicate"] * 3 + ["stored"]
    assert len(repos[0].judgments_of("annotator-a")) == 1


def test_sqlite_writers_are_served_in_arrival_order():
    from annotation_db.engine import FifoLock

    lock = FifoLock()
    order: list[int] = []
    lock.__enter__()
    threads = []
    for i in range(5):

        def take(i: int = i) -> None:
            with lock:
                order.append(i)

        t = threading.Thread(target=take)
        t.start()
        threads.append(t)
        while len(lock._waiters) < i + 1:  # wait until thread i is queued before starting the next
            threading.Event().wait(0.001)
    lock.__exit__(None, None, None)
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4]
