"""Recording, validating, rate limiting and undoing judgments."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from annotation_db import (
    DuplicateJudgmentError,
    NotFoundError,
    RateLimitedError,
    Repository,
    RepositoryConfig,
    ValidationError,
)
from annotation_db.models import Judgment


def count_judgments(repo: Repository) -> int:
    with repo.db.reading() as s:
        return s.scalar(select(func.count()).select_from(Judgment))


def test_record_judgment_stores_one_row_with_everything(repo, world, clock):
    stored = repo.record_judgment(
        world.samples[0], "annotator-a", "cat", "dog", shown_left="aligned", said_right="left"
    )
    assert count_judgments(repo) == 1
    [row] = repo.judgments_of("annotator-a")
    assert row == stored
    assert (row.sample_id, row.chosen, row.rejected, row.kind) == (world.samples[0], "cat", "dog", "human")
    assert (row.shown_left, row.said_right) == ("aligned", "left")
    assert row.created_at == clock() and row.undone_at is None


def test_one_judgment_per_sample_and_annotator(repo, world):
    repo.record_judgment(world.samples[0], "annotator-a", "cat", "dog")
    with pytest.raises(DuplicateJudgmentError, match="already judged"):
        repo.record_judgment(world.samples[0], "annotator-a", "dog", "cat")
    repo.record_judgment(world.samples[0], "annotator-b", "dog", "cat")
    assert count_judgments(repo) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chosen": "cat", "rejected": "cat"}, "must differ"),
        ({"chosen": "unicorn", "rejected": "cat"}, "'unicorn' is not in label set"),
        ({"chosen": "cat", "rejected": "Dog"}, "'Dog' is not in label set"),
        ({"chosen": 3, "rejected": "cat"}, "chosen label must be text, got int"),
        ({"chosen": "cat", "rejected": None}, "rejected label must be text, got NoneType"),
        ({"chosen": "cat", "rejected": "dog", "kind": "robot"}, "judgment kind must be one of human, gold"),
        ({"chosen": "cat", "rejected": "dog", "shown_left": "left"}, "model shown left must be one of base"),
        ({"chosen": "cat", "rejected": "dog", "said_right": 1}, "arena verdict must be one of"),
        ({"chosen": "x" * 10_000_000, "rejected": "dog"}, "too long: 10,000,000 characters, at most 100"),
        ({"chosen": "cat\x00", "rejected": "dog"}, "NUL"),
        ({"chosen": "   ", "rejected": "dog"}, "must not be empty"),
    ],
)
def test_bad_judgments_raise_clear_errors_and_write_nothing(repo, world, kwargs, message):
    with pytest.raises(ValidationError, match=message) as caught:
        repo.record_judgment(world.samples[0], "annotator-a", **kwargs)
    assert len(str(caught.value)) < 200  # a 10 MB input must not become a 10 MB message
    assert count_judgments(repo) == 0


@pytest.mark.parametrize("sample_id", ["1", 1.0, True, None, -3, 0])
def test_wrong_sample_id_types_are_refused(repo, world, sample_id):
    with pytest.raises(ValidationError, match="sample id must be"):
        repo.record_judgment(sample_id, "annotator-a", "cat", "dog")
    assert count_judgments(repo) == 0


def test_unknown_sample_and_annotator(repo, world):
    with pytest.raises(NotFoundError, match="unknown sample 999"):
        repo.record_judgment(999, "annotator-a", "cat", "dog")
    with pytest.raises(NotFoundError, match="unknown annotator 'nobody'"):
        repo.record_judgment(world.samples[0], "nobody", "cat", "dog")
    assert count_judgments(repo) == 0


def test_sql_like_and_unicode_text_is_stored_verbatim(repo, png):
    labels = ["Robert'); DROP TABLE judgments;--", "猫 🐱", "naïve\u0301 café", "' OR 1=1 --", "\\\\%_"]
    repo.ensure_label_set("tricky ' \" names; --", labels, prompt_template="ein Foto von {} — 照片")
    image = repo.store_image(png(1))
    sample = repo.add_sample(image.sha256, "tricky ' \" names; --", {"text": "'; DELETE FROM samples; --"})
    handle = "x'); DROP TABLE annotators;-- ünï"
    repo.ensure_annotator(handle, hf_username="名前")
    repo.record_judgment(sample.id, handle, labels[0], labels[1])
    repo.record_judgment(sample.id, repo.ensure_annotator("b").handle, labels[3], labels[4])

    [row] = repo.judgments_of(handle)
    assert (row.chosen, row.rejected, row.annotator) == (labels[0], labels[1], handle)
    again = repo.get_sample(sample.id)
    assert again.labels == tuple(labels)
    assert again.label_set == "tricky ' \" names; --"
    assert again.prompt_template == "ein Foto von {} — 照片"
    assert again.attack == {"text": "'; DELETE FROM samples; --"}
    assert repo.get_annotator(handle).hf_username == "名前"
    assert count_judgments(repo) == 2


def test_rate_limit_per_annotator(make_repo, world_factory, clock):
    repo = make_repo(RepositoryConfig(rate_limit_count=3, rate_limit_window_s=10))
    world = world_factory(repo)
    for sample_id in world.samples[:3]:
        repo.record_judgment(sample_id, "annotator-a", "cat", "dog")
    with pytest.raises(RateLimitedError, match="at most 3 judgments per 10 s"):
        repo.record_judgment(world.samples[3], "annotator-a", "cat", "dog")
    # Others are not slowed down by one fast annotator, nor are synthetic/gold writers.
    repo.record_judgment(world.samples[3], "annotator-b", "cat", "dog")
    repo.record_judgment(world.samples[3], "annotator-a", "cat", "dog", kind="synthetic")
    clock.advance(10.5)
    repo.record_judgment(world.samples[4], "annotator-a", "cat", "dog")
    assert count_judgments(repo) == 6


def test_undo_last_within_window_then_redo(repo, world, clock):
    first = repo.record_judgment(world.samples[0], "annotator-a", "cat", "dog")
    clock.advance(1)
    second = repo.record_judgment(world.samples[1], "annotator-a", "bird", "dog")
    clock.advance(1)
    undone = repo.undo_last_judgment("annotator-a")
    assert undone is not None and undone.id == second.id and undone.undone_at == clock()
    assert [j.id for j in repo.judgments_of("annotator-a")] == [first.id]
    assert [j.undone_at is not None for j in repo.judgments_of("annotator-a", include_undone=True)] == [
        False,
        True,
    ]

    # Redo the same sample: allowed, and it gets a fresh id (so "pairs since a version" sees it).
    redo = repo.record_judgment(world.samples[1], "annotator-a", "fish", "dog")
    assert redo.id > second.id
    assert [(j.sample_id, j.chosen) for j in repo.judgments_of("annotator-a")] == [
        (world.samples[0], "cat"),
        (world.samples[1], "fish"),
    ]

    # Past the window nothing is undone.
    clock.advance(repo.config.undo_window_s + 1)
    assert repo.undo_last_judgment("annotator-a") is None
    assert len(repo.judgments_of("annotator-a")) == 2


def test_undo_touches_only_the_annotators_own_judgment(repo, world, clock):
    mine = repo.record_judgment(world.samples[0], "annotator-a", "cat", "dog")
    clock.advance(1)
    repo.record_judgment(world.samples[0], "annotator-b", "cat", "dog")
    assert repo.undo_last_judgment("annotator-a").id == mine.id
    assert repo.undo_last_judgment("annotator-c") is None
    assert len(repo.judgments_of("annotator-b")) == 1


def test_one_gold_answer_per_sample(repo, world):
    repo.ensure_annotator("maintainer")
    repo.record_judgment(world.samples[0], "maintainer", "cat", "dog", kind="gold")
    with pytest.raises(ValidationError, match="already has a gold answer"):
        repo.record_judgment(world.samples[0], "annotator-a", "dog", "cat", kind="gold")
    assert repo.get_sample(world.samples[0]).is_gold
