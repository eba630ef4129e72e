"""Who may act as whom, and what the service refuses before anything is written."""

import math
import random

import pytest
from apphelpers import make_service

from annotation_db.annotators import pseudonym_for
from poclip.app.identity import Identity, IdentityError, check_display_name, server_secret
from poclip.errors import UserError
from poclip.world import synth
from poclip.world.attacks import TextAttack


@pytest.fixture
def service(tmp_path, bundled):
    svc = make_service(tmp_path, bundled)
    yield svc
    svc.close()


def test_a_stolen_or_forged_annotator_id_is_refused(service):
    token = service.identity.issue()
    victim = service.visitors.who(token)
    assert victim.startswith("anon-") and token.startswith(victim + ".")
    item = service.annotation.next_item(token)
    service.annotation.answer_item(token, item.sample.id, item.labels[0])
    assert service.annotation.labelled_by(token) == 1

    forged = victim + "." + "0" * 32
    other_server = Identity(b"another deployment's secret!!").issue()
    for stolen in (victim, forged, other_server, victim + ".", "ANON-" + victim[5:]):
        with pytest.raises(UserError, match="not issued by this server"):
            service.annotation.undo(stolen)
        with pytest.raises(UserError):
            service.annotation.answer_item(stolen, item.sample.id, item.labels[1])
    assert service.annotation.labelled_by(token) == 1  # the victim's label is still there
    assert service.repo.counts()["judgments"] == service.repo.stats().judgments


def test_answers_are_accepted_only_for_items_served_to_that_annotator(service):
    b = service.identity.issue()
    served_to_b = service.annotation.next_item(b).sample.id
    never_served = next(i for i in range(1, 31) if i != served_to_b)
    with pytest.raises(Exception, match="was not served to you"):
        service.annotation.answer_item(b, never_served, "star")
    assert service.repo.counts()["judgments"] == len(service.repo.recent_judgments(500))
    service.annotation.answer_item(b, served_to_b, "star")
    assert service.annotation.labelled_by(b) == 1


@pytest.mark.parametrize("name, why", [
    ("hf:julien", "Hugging Face"), ("HF:julien", "Hugging Face"), ("poclip-gold", "reserved"),
    ("anon-1234", "anonymous ids"), ("evil\u202eknab", "control characters"), ("a\u2066b", "control characters"),
    ("tab\there", "control characters"), ("   ", "enter a name"), ("x" * 41, "too long"),
])
def test_typed_names_may_not_claim_identities_or_hide_text(name, why):
    with pytest.raises(IdentityError, match=why):
        check_display_name(name)


def test_display_names_and_logins(service):
    assert service.visitors.who("  Ada Lovelace ") == "Ada Lovelace"
    assert service.visitors.who("whatever typed", hf_username="ada") == "hf:ada"  # the login wins, from the server
    with pytest.raises(UserError):
        service.visitors.who("hf:ada")


def test_the_secret_stays_on_the_server_and_is_stable(tmp_path):
    first = server_secret(tmp_path)
    assert server_secret(tmp_path) == first and len(first) == 32
    assert (tmp_path / "server-secret.key").stat().st_mode & 0o077 == 0
    assert Identity(first).verify(Identity(first).issue()).startswith("anon-")


def test_export_pseudonyms_are_salted_with_the_deployment_secret(service):
    service.annotation.next_item("Ada")
    row = service.repo.get_annotator("Ada")
    assert row.pseudonym != pseudonym_for("Ada")  # the public salt no longer reverses it
    assert row.pseudonym == pseudonym_for("Ada", service.repo.config.pseudonym_secret)


@pytest.mark.parametrize("t", [math.nan, math.inf, -math.inf, "nan"])
def test_non_finite_strength_is_refused_before_anything_is_stored(service, t):
    picture = synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)
    before = service.repo.counts()
    with pytest.raises(UserError, match="finite number"):
        service.comparisons.predict(picture, list(synth.SHAPES), TextAttack("circle", size=0.15), t=t, shared=True)
    with pytest.raises(UserError, match="finite number"):
        service.comparisons.compare(picture, list(synth.SHAPES), None, t=t)
    assert service.repo.counts() == before


def test_a_refused_vote_through_the_service_writes_nothing(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, rate_limit="1/60")
    try:
        picture = synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)
        first = svc.comparisons.predict(picture, list(synth.SHAPES), TextAttack("circle", size=0.15), shared=True)
        svc.comparisons.vote("Ada", first.id, "neither", correct_label="star")

        def stored():
            stats = svc.repo.stats()
            return stats.images, stats.samples, stats.judgments, stats.annotators

        before = stored()
        images = sorted((tmp_path / "images").rglob("*.png"))
        for seed in range(3):  # rate limited: new pictures each time
            other = synth.draw_scene(synth.sample_scene(random.Random(10 + seed), shape="heart"), 224)
            with pytest.raises(Exception, match="slow down"):
                svc.comparisons.vote("Ada", svc.comparisons.predict(other, list(synth.SHAPES), shared=True).id, "both")
        assert stored() == before
        assert sorted((tmp_path / "images").rglob("*.png")) == images
    finally:
        svc.close()


def test_a_hugging_face_login_acts_through_a_server_signed_handle(service):
    token = service.identity.token_for("hf:ada")  # what the page builds from the server's OAuth profile
    assert service.visitors.who(token) == "hf:ada"
    item = service.annotation.next_item(token)
    service.annotation.answer_item(token, item.sample.id, item.labels[0])
    assert service.annotation.labelled_by(token) == 1
    for typed in ("hf:ada", "hf:ada." + "0" * 32, "HF:ada"):
        with pytest.raises(UserError):
            service.visitors.who(typed)
