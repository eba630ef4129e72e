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


GATE_REASON = ("neither rule holds: per-class accuracy drops by more than 0.15 versus the live model on: star "
               "(attacked -0.200)\nclass      attacked live -> cand   clean live -> cand\n"
               "star           0.900 -> 0.700 (-0.200)  0.950 -> 0.940 (-0.010)  <-")


def test_a_rejected_version_is_promoted_only_by_an_admin_who_gives_a_reason(repo, clock):
    v1 = register(repo, "v1")
    repo.promote_version(v1.id)
    v2 = register(repo, "v2")
    repo.reject_version(v2.id, GATE_REASON)
    for by, reason in ((None, "looks fine"), ("admin", None), ("admin", ""), ("admin", " \n\t ")):
        with pytest.raises(InvalidTransitionError, match="rejected by the promotion gate; to promote it anyway, "
                                                         "give the reason"):
            repo.promote_version(v2.id, by=by, reason=reason)
        refused = repo.get_version(v2.id)
        assert (refused.status, refused.promoted_by, refused.promotion_reason) == ("rejected", None, None)
        assert repo.active_version().id == v1.id  # nothing changed

    clock.advance(60)
    promoted = repo.promote_version(v2.id, by="alice", reason="  star is not in our label sets  ")
    assert (promoted.status, promoted.promoted_by, promoted.promotion_reason) == (
        "active", "alice", "star is not in our label sets")
    assert promoted.promoted_at == clock() and promoted.previous_id == v1.id
    assert promoted.reason == GATE_REASON  # the gate's verdict stays on the record
    assert repo.get_version(v1.id).status == "archived"
    # The gate's own promotions record no admin.
    v3 = register(repo, "v3")
    assert (repo.promote_version(v3.id).promoted_by, repo.get_version(v3.id).promotion_reason) == (None, None)


def test_rollback_to_the_starter_head_or_the_base_model_makes_a_named_version_live(make_repo, repo):
    with pytest.raises(ValidationError, match="one of starter, base, got 'previous'"):
        repo.rollback_to_named("previous", "bundled")
    # Nothing was live (the app served its default): the base model can still be chosen.
    base = repo.rollback_to_named("base", "bundled", "the starter misreads photos", by="admin")
    assert (base.kind, base.name, base.status, base.head_path) == ("base", "base model", "active", "")
    assert (base.promoted_by, base.promotion_reason) == ("admin", "the starter misreads photos")
    with pytest.raises(InvalidTransitionError, match="the base model is already live"):
        repo.rollback_to_named("base", "bundled")
    with pytest.raises(InvalidTransitionError, match="base model was the first live version"):
        repo.rollback_version()

    v1 = register(repo, "v1")
    assert v1.parent_id == base.id  # trained against what serves
    repo.promote_version(v1.id)  # the gate's promotion replaces the named version as usual
    assert repo.get_version(base.id).status == "archived"
    starter = repo.rollback_to_named("starter", "bundled", by="bob")
    assert (starter.name, starter.promotion_reason, repo.get_version(v1.id).reason) == (
        "starter head", "rolled back", "rolled back (to the starter head)")

    # A new process on the same database (a restart, another replica, the trainer) serves the same.
    other = make_repo()
    assert other.active_version().id == starter.id and other.active_version().kind == "starter"
    again = other.rollback_to_named("base", "bundled", by="admin")
    assert again.id == base.id  # one row per named version and backbone, reused
    assert [v.name for v in repo.list_versions()] == ["starter head", "version 2", "base model"]
    assert active_count(repo) == 1
    assert repo.rollback_version(to_version_id=v1.id).id == v1.id  # and back to a trained version


def test_a_lost_runs_head_file_is_deleted_unless_a_version_names_it(repo, tmp_path):
    heads = repo.data_dir / "heads"
    heads.mkdir(parents=True)
    lost, kept, relative = heads / "run1.safetensors", heads / "run2.safetensors", heads / "run3.safetensors"
    for path in (lost, kept, relative):
        path.write_bytes(b"head")
    repo.register_version("bundled", str(kept), {})  # registered in time: the version keeps its file
    repo.register_version("bundled", "heads/run3.safetensors", {})  # named relative to the data dir
    assert repo.discard_head(lost) is True and not lost.exists()
    assert repo.discard_head(kept) is False and kept.exists()
    assert repo.discard_head(relative) is False and relative.exists()
    assert repo.discard_head(lost) is False  # already gone
