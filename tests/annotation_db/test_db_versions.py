"""Model versions: promote and roll back, exactly one active."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from annotation_db import InvalidTransitionError, NotFoundError, ValidationError
from annotation_db.models import ModelVersion, VersionStatus


def active_count(repo) -> int:
    with repo.db.reading() as s:
        return s.scalar(select(func.count()).where(ModelVersion.status == VersionStatus.ACTIVE))


def register(repo, name, **kwargs):
    return repo.register_version("bundled", f"heads/{name}.safetensors", {"acc": 0.9, "name": name}, **kwargs)


def test_promote_archives_the_previous_active_version(repo, clock):
    assert repo.active_version() is None
    v1 = register(repo, "v1")
    assert (v1.status, v1.parent_id) == ("candidate", None)
    assert repo.promote_version(v1.id).status == "active"
    v2 = register(repo, "v2")
    assert v2.parent_id == v1.id  # trained from the active version
    clock.advance(3)
    promoted = repo.promote_version(v2.id)
    assert promoted.promoted_at == clock()
    assert repo.active_version().id == v2.id
    assert repo.get_version(v1.id).status == "archived"
    assert active_count(repo) == 1
    assert repo.promote_version(v2.id).status == "active"  # promoting the active one is a no-op
    assert [v.id for v in repo.list_versions()] == [v2.id, v1.id]


def test_rollback_to_parent_or_a_given_version(repo):
    v1 = register(repo, "v1")
    repo.promote_version(v1.id)
    v2 = register(repo, "v2")
    repo.promote_version(v2.id)
    v3 = register(repo, "v3")
    repo.promote_version(v3.id)

    now_active = repo.rollback_version(reason="worse on the held-out set")
    assert now_active.id == v2.id and repo.active_version().id == v2.id
    old = repo.get_version(v3.id)
    assert old.status == "archived" and old.reason == "worse on the held-out set (to version 2)"

    assert repo.rollback_version(to_version_id=v1.id).id == v1.id
    assert active_count(repo) == 1
    with pytest.raises(InvalidTransitionError, match="first live version"):
        repo.rollback_version()
    assert repo.promote_version(v3.id).status == "active"  # roll forward again


def test_rollback_returns_to_the_version_that_was_live_not_the_parent(repo):
    v1 = register(repo, "v1")
    repo.promote_version(v1.id)
    v2 = register(repo, "v2")  # trained from v1 ...
    v3 = register(repo, "v3", parent_id=v1.id)  # ... and so was v3
    repo.promote_version(v2.id)
    repo.promote_version(v3.id)  # a manual promote: v2 was live, v3's parent is v1
    assert repo.get_version(v3.id).previous_id == v2.id
    assert repo.rollback_version().id == v2.id
    assert repo.rollback_version().id == v1.id  # repeated rollbacks walk back through what was live
    with pytest.raises(InvalidTransitionError, match="first live version"):
        repo.rollback_version()


def test_rejected_versions_cannot_be_promoted(repo):
    v1 = register(repo, "v1")
    rejected = repo.reject_version(v1.id, "kl/clean 0.9 above the gate 0.2")
    assert (rejected.status, rejected.reason) == ("rejected", "kl/clean 0.9 above the gate 0.2")
    with pytest.raises(InvalidTransitionError, match="rejected"):
        repo.promote_version(v1.id)
    with pytest.raises(InvalidTransitionError, match="nothing to roll back"):
        repo.rollback_version()
    v2 = register(repo, "v2")
    repo.promote_version(v2.id)
    with pytest.raises(InvalidTransitionError, match="only candidates"):
        repo.reject_version(v2.id, "too late")
    with pytest.raises(InvalidTransitionError, match="rejected"):
        repo.rollback_version(to_version_id=v1.id)
    with pytest.raises(NotFoundError):
        repo.promote_version(99)
    with pytest.raises(ValidationError, match="metrics must be a dict"):
        repo.register_version("bundled", "h", "acc=1")


def test_the_database_itself_refuses_two_active_versions(repo):
    v1 = register(repo, "v1")
    repo.promote_version(v1.id)
    v2 = register(repo, "v2")
    with pytest.raises(IntegrityError), repo.db.writing() as s:
        s.get_one(ModelVersion, v2.id).status = VersionStatus.ACTIVE
    assert active_count(repo) == 1


def test_concurrent_promotions_leave_exactly_one_active(make_repo):
    repos = [make_repo() for _ in range(4)]
    versions = [register(repos[0], f"v{i}") for i in range(4)]
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def promote(repo, version_id):
        barrier.wait()
        try:
            repo.promote_version(version_id)
            outcomes.append("ok")
        except InvalidTransitionError:
            outcomes.append("retry")

    threads = [threading.Thread(target=promote, args=(r, v.id)) for r, v in zip(repos, versions, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 4 and "ok" in outcomes
    assert active_count(repos[0]) == 1
