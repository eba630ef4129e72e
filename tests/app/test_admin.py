"""Administration against a real SQLite file and the bundled model: who may act, and what each refusal says;
promote and rollback change the store and this process's live head at once."""

import random
from dataclasses import replace

import gradio as gr
import pytest
import torch
from apphelpers import ADMIN_TOKEN, make_service

from poclip.app.admin import Administration, AdminRequired
from poclip.app.ui.boundary import user_errors
from poclip.app.ui.identity import sign_in_handler
from poclip.world import synth

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
        assert svc.admin.rollback(token=TOKEN) == {"active_version": ids[2]}
        assert svc.live_head.current.version.id == ids[2]
    finally:
        svc.close()
