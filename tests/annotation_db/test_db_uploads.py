"""A person's own picture and their judgment on it are stored together or not at all."""

from __future__ import annotations

import pytest

from annotation_db import DuplicateJudgmentError, RateLimitedError, RepositoryConfig, ValidationError


def files(repo):
    return sorted(p.name for p in (repo.data_dir / "images").rglob("*") if p.is_file())


def test_a_refused_vote_writes_nothing(make_repo, png):
    repo = make_repo(RepositoryConfig(rate_limit_count=1, rate_limit_window_s=60))
    repo.ensure_label_set("animals", ["cat", "dog", "bird"])
    judgment, sample = repo.record_upload_judgment(png(1), "animals", {"text": "dog"}, "voter", "cat", "dog",
                                                   shown_left="base", said_right="left")
    assert (judgment.chosen, sample.label_set, sample.attack) == ("cat", "animals", {"text": "dog"})
    before, on_disk = repo.counts(), files(repo)
    assert before == {"annotators": 1, "images": 1, "judgments": 1, "samples": 1, "undone": 0}

    for image, who, chosen, error in [
        (png(2), "voter", "cat", RateLimitedError),  # over the rate limit
        (png(3), "stranger", "lion", ValidationError),  # a label outside the set: no annotator either
        (b"not a png", "stranger", "cat", ValidationError),
        (png(1), "voter", "cat", RateLimitedError),
    ]:
        with pytest.raises(error):
            repo.record_upload_judgment(image, "animals", None, who, chosen, "dog")
        assert repo.counts() == before and files(repo) == on_disk

    fresh = make_repo(RepositoryConfig(rate_limit_count=None))
    with pytest.raises(DuplicateJudgmentError):  # the same person, picture and attack again
        fresh.record_upload_judgment(png(1), "animals", {"text": "dog"}, "voter", "bird", "dog")
    assert fresh.counts() == before and files(fresh) == on_disk
    with pytest.raises(ValidationError, match="bidirectional"):
        fresh.record_upload_judgment(png(4), "animals", None, "evil\u202eknab", "cat", "dog")
    assert fresh.counts() == before and files(fresh) == on_disk
