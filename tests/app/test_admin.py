"""Administration against a real SQLite file and the bundled model: who may act, and what each refusal says;
promote and rollback change the store and this process's live head at once; an admin overrides the gate only with a
reason, and returns to the starter head or the base model as named versions that outlast a restart."""

import random
from dataclasses import replace

import gradio as gr
import pytest
import torch
from apphelpers import ADMIN_TOKEN, make_service

from poclip.app.admin import Administration, AdminRequired
from poclip.app.ui.boundary import user_errors
from poclip.app.ui.identity import sign_in_handler
from poclip.errors import UserError
from poclip.world import synth
from poclip.world.attacks import TextAttack

TOKEN = ADMIN_TOKEN


@pytest.fixture
def service(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=0)
    yield svc
    svc.close()


def star_scene():
    return synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)


def test_a_refusal_says_whether_the_token_is_wrong_missing_or_admin_is_off(service):
    """Three different problems, three different messages: the person can tell what to fix."""
    missing = "This action needs admin rights: sign in with the admin token \\(POCLIP_ADMIN_TOKEN\\)"
    wrong = "The admin token is wrong: sign in with the admin token set in POCLIP_ADMIN_TOKEN"
    for token, message in ((None, missing), ("", missing), ("not-the-token", wrong)):
        with pytest.raises(AdminRequired, match=message):
            service.training.retrain(token=token)
        with pytest.raises(AdminRequired, match=message):
            service.admin.promote(1, token=token)
    # The same messages on the page's sign-in (the boundary capitalises nothing away).
    with pytest.raises(gr.Error, match=wrong):
        user_errors(sign_in_handler)(service, "not-the-token")
    with pytest.raises(gr.Error, match="needs admin rights: sign in"):
        user_errors(sign_in_handler)(service, "")
    assert service.repo.list_runs() == []  # nothing was queued by the refused clicks

    switched_off = Administration(replace(service.settings, admin_token=""), service.repo, service.live_head,
                                  service.seeding)
    for token in (None, "not-the-token", TOKEN):
        with pytest.raises(AdminRequired, match="switched off on this server: set POCLIP_ADMIN_TOKEN"):
            switched_off.require_admin(token)

    org_only = Administration(replace(service.settings, admin_token="", admin_org="poclip-maintainers"),
                              service.repo, service.live_head, service.seeding)
    with pytest.raises(AdminRequired, match="takes no admin token: log in with Hugging Face as a member of "
                                            "poclip-maintainers"):
        org_only.require_admin("some-token")
    with pytest.raises(AdminRequired, match="needs admin rights: log in with Hugging Face"):
        org_only.require_admin(None, ["someone-else"])
    org_only.require_admin(None, ["poclip-maintainers"])  # a member is an admin


def test_admin_actions_need_the_token(service):
    for action in (lambda **kw: service.training.retrain(**kw), lambda **kw: service.admin.rollback(**kw),
                   lambda **kw: service.admin.backup(**kw), lambda **kw: service.admin.export_parquet(**kw)):
        with pytest.raises(AdminRequired):
            action()
        with pytest.raises(AdminRequired):
            action(token="wrong")
    assert service.repo.list_runs() == []
    run = service.training.retrain(token=TOKEN)
    assert run["status"] == "queued"
    assert service.admin.is_admin(hf_orgs=["someone-else"]) is False


def test_live_head_swap_keeps_in_flight_requests_on_the_old_head(tmp_path, bundled):
    from poclip.engine.policy import Policy, save_head

    svc = make_service(tmp_path, bundled)
    try:
        policy = Policy(bundled)
        with torch.no_grad():
            policy.linear.weight.mul_(0.5)
        path = save_head(policy, tmp_path / "heads" / "manual.safetensors")
        version = svc.repo.register_version(bundled.spec, str(path), {"note": "manual"})
        old = svc.live_head.current
        svc.admin.promote(version.id, token=TOKEN)
        assert svc.live_head.current.version.id == version.id and old.policy is None  # the old object is untouched
        result = svc.comparisons.compare(star_scene(), list(synth.SHAPES))
        assert result.version == f"version {version.id}"
    finally:
        svc.close()


def test_rollback_after_a_manual_promote_returns_to_what_was_live(tmp_path, bundled):
    from poclip.engine.policy import Policy, save_head

    svc = make_service(tmp_path, bundled, seed_items=0)
    try:
        ids = []
        for k in range(3):
            path = save_head(Policy(bundled), tmp_path / "heads" / f"v{k}.safetensors")
            parent = ids[0] if ids else None  # versions 2 and 3 were both trained from version 1
            ids.append(svc.repo.register_version(bundled.spec, str(path), {"loss": "dpo"}, parent_id=parent).id)
        svc.admin.promote(ids[0], token=TOKEN)
        svc.admin.promote(ids[2], token=TOKEN)
        svc.admin.promote(ids[1], token=TOKEN)  # manual: version 3 was live, version 2's parent is version 1
        assert svc.admin.rollback(token=TOKEN) == {"active_version": ids[2], "kind": "trained",
                                                   "serving": f"version {ids[2]}"}
        assert svc.live_head.current.version.id == ids[2]
    finally:
        svc.close()


ATTACKED = [TextAttack(word, size=0.15) for word in ("circle", "square", "heart")]


def answers(svc):
    """Base and aligned answers (probabilities) on a star with a wrong word written on it, per word."""
    shown = [svc.comparisons.compare(star_scene(), list(synth.SHAPES), attack) for attack in ATTACKED]
    return [c.base.probs for c in shown], [c.aligned.probs for c in shown]


def test_an_admin_promotes_a_rejected_version_only_with_a_reason(tmp_path, bundled):
    from poclip.engine.policy import Policy, save_head

    svc = make_service(tmp_path, bundled, seed_items=0)
    try:
        path = save_head(Policy(bundled), tmp_path / "heads" / "rejected.safetensors")
        version = svc.repo.register_version(bundled.spec, str(path), {"loss": "dpo"})
        svc.repo.reject_version(version.id, "neither rule holds: star drops\nclass  attacked\nstar   0.9 -> 0.7  <-")
        for reason in ("", "   "):
            with pytest.raises(UserError, match="rejected by the promotion gate; to promote it anyway, give the "
                                                "reason"):
                svc.admin.promote(version.id, reason, token=TOKEN)
        assert svc.repo.get_version(version.id).status == "rejected" and svc.repo.active_version() is None
        assert svc.live_head.current.version is None  # nothing changed
        with pytest.raises(AdminRequired):  # the reason does not stand in for the rights
            svc.admin.promote(version.id, "fine", token="wrong")

        assert svc.admin.promote(version.id, "star is not in our label sets", token=TOKEN,
                                 username="maintainer") == {"active_version": version.id, "kind": "trained",
                                                            "serving": f"version {version.id}"}
        live = svc.repo.get_version(version.id)
        assert (live.status, live.promoted_by, live.promotion_reason) == (
            "active", "maintainer", "star is not in our label sets")
        assert svc.live_head.current.version.id == version.id
    finally:
        svc.close()


def test_rollback_to_the_base_model_or_the_starter_head_serves_it_here_after_a_restart_and_in_the_trainer(
        tmp_path, bundled):
    from poclip.app.live import LiveHead
    from poclip.engine.starter import load_starter

    svc = make_service(tmp_path, bundled, seed_items=0, starter_head=True)  # the product default
    try:
        base, starter = answers(svc)
        assert base != starter  # the starter head serves a fresh app: its answers are not the base model's
        with pytest.raises(UserError, match="version id or a named version \\(base\\).*not both"):
            svc.admin.rollback(3, "base", token=TOKEN)
        with pytest.raises(UserError, match="one of previous, starter, base"):
            svc.admin.rollback(to="newest", token=TOKEN)

        result = svc.admin.rollback(to="base", reason="the starter misreads our photos", token=TOKEN)
        assert (result["kind"], result["serving"]) == ("base", "base model")
        assert answers(svc) == (base, base)  # aligned = base: no head serves
        assert "base model (no aligned head" in svc.model_info()
        assert svc.status()["live_version"] == result["active_version"]
        assert svc.status()["live_model"].startswith("base model")
    finally:
        svc.close()

    svc = make_service(tmp_path, bundled, seed_items=0, starter_head=True)  # a restart on the same data dir
    try:
        assert svc.live_head.current.policy is None and answers(svc) == (base, base)
        # The trainer (or a worker process) follows the same store: it trains from, and gates against, the base.
        worker = LiveHead(svc.repo, bundled, load_starter(bundled)).sync()
        assert (worker.version.kind, worker.policy) == ("base", None)

        assert svc.admin.rollback(to="starter", token=TOKEN)["serving"] == "starter head"
        assert answers(svc) == (base, starter)
        with pytest.raises(UserError, match="the starter head is already live"):
            svc.admin.rollback(to="starter", token=TOKEN)
    finally:
        svc.close()

    svc = make_service(tmp_path, bundled, seed_items=0, starter_head=True)
    try:
        assert svc.live_head.current.label == "starter head (an admin rolled back to it)"
        assert answers(svc) == (base, starter)
    finally:
        svc.close()

    svc = make_service(tmp_path, bundled, seed_items=0, starter_head=False)  # a process without the starter head
    try:
        assert answers(svc) == (base, base)  # it serves the base model, and refuses to roll back to a starter
        svc.admin.rollback(to="base", token=TOKEN)
        with pytest.raises(UserError, match="no starter head to roll back to: .*POCLIP_STARTER_HEAD is off"):
            svc.admin.rollback(to="starter", token=TOKEN)
    finally:
        svc.close()
