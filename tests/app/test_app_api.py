"""The whole loop through the public API of a launched app (gradio_client), on the bundled model.

200 synthetic attacked pictures are labelled through /next_item and /answer, a retrain is queued
through /retrain (admin only), the background trainer promotes a new version, and the attacked
pictures' predictions through /predict flip to the true label.
"""

import random
import re
import time
from contextlib import contextmanager

import pytest
from apphelpers import ADMIN_TOKEN, ONE_PERSON, free_port, make_service, make_trainer, truth_by_attack
from gradio_client import Client, handle_file

from poclip.world import synth
from poclip.world.attacks import random_attack

pytestmark = pytest.mark.slow


def test_label_retrain_promote_and_predictions_flip(tmp_path, bundled):
    from poclip.app.ui import build_demo
    from poclip.world.attacks import TextAttack

    service = make_service(tmp_path / "data", bundled, seed_items=240, **ONE_PERSON)
    trainer = make_trainer(service)  # the background trainer, beside the service as in app.py
    trainer.start()
    demo = build_demo(service)
    port = free_port()
    demo.queue(default_concurrency_limit=8).launch(server_name="127.0.0.1", server_port=port,
                                                   prevent_thread_lock=True, quiet=True)
    truth = truth_by_attack(240)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, item_id, labels, _, counter, me = client.predict(handle="alice", api_name="/next_item")
        assert "**0** labels from you" in counter and labels == list(synth.SHAPES)
        for _ in range(200):
            sample = service.repo.get_sample(int(item_id))
            answer = truth[TextAttack.from_dict(sample.attack).to_json()]
            _, item_id, labels, _, counter, _ = client.predict(sample_id=int(item_id), label=answer, handle="alice",
                                                               anonymous_id=me, api_name="/answer")
        assert "**200** labels from you" in counter
        assert service.repo.training_pairs().pairs.__len__() >= 200

        with pytest.raises(Exception, match="admin"):
            client.predict(token="wrong-token", loss="dpo", api_name="/retrain")
        assert service.repo.list_runs() == []
        assert "queued" in client.predict(token=ADMIN_TOKEN, loss="dpo", api_name="/retrain")

        deadline = time.time() + 300
        status = client.predict(api_name="/status")
        while status["live_version"] is None and time.time() < deadline:
            assert status["trainer"]["phase"] not in ("failed", "rejected"), status
            time.sleep(2)
            status = client.predict(api_name="/status")
        assert status["live_version"] is not None, status

        flipped = fooled = 0
        for i in range(30):
            rng = random.Random(f"api-heldout:{i}")
            scene = synth.sample_scene(rng)
            attack = random_attack(synth.SHAPES, scene.shape, rng)
            path = tmp_path / f"held{i}.png"
            synth.draw_scene(scene, 224).save(path)
            _, left, right, *_ = client.predict(
                picture=handle_file(str(path)), text=attack.text, font=attack.font, size=attack.size,
                fill=attack.fill, stroke=attack.stroke, x=attack.x, y=attack.y, api_name="/predict")
            if left["label"] == attack.text:  # the base model (left) was fooled by the written word
                fooled += 1
                flipped += right["label"] == scene.shape
        assert fooled >= 15
        assert flipped / fooled >= 0.5, (flipped, fooled)
    finally:
        demo.close()
        trainer.stop()
        service.close()


def test_votes_through_the_api_name_a_comparison_and_nothing_else(tmp_path, bundled):
    """README's client example, then /vote: a vote without a comparison id stores nothing; a stale id (the
    client predicted again since) stores the old comparison exactly."""
    from apphelpers import footprint

    from poclip.app.ui import build_demo

    service = make_service(tmp_path / "data", bundled, seed_items=0)
    demo = build_demo(service)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    picture = tmp_path / "star.png"
    synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224).save(picture)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        seen, base, aligned, _, _, old_id, labels = client.predict(
            picture=handle_file(str(picture)), text="circle", share=True, api_name="/predict")
        assert base["label"] == "circle" and labels == list(synth.SHAPES)
        client.predict(picture=handle_file(str(picture)), text="heart", label_set="Custom (type below)",
                       custom_labels="heart, star", share=True, api_name="/predict")
        before = footprint(service)
        for missing in ("", "no-such-comparison"):
            with pytest.raises(Exception, match="Press Predict|expired"):
                client.predict(comparison_id=missing, verdict="left", handle="api-user", api_name="/vote")
        assert footprint(service) == before
        stored, counter, _ = client.predict(comparison_id=old_id, verdict="neither", neither_label="star",
                                            handle="api-user", api_name="/vote")
        assert (stored["chosen"], stored["rejected"], stored["comparison_id"]) == ("star", "circle", old_id)
        sample = service.repo.get_sample(stored["sample_id"])
        assert sample.attack["text"] == "circle" and sample.labels == tuple(synth.SHAPES)
        assert counter == "You have given 1 label."
    finally:
        demo.close()
        service.close()


def test_readmes_client_example_runs_as_printed(tmp_path, bundled, monkeypatch, capsys):
    from poclip.app.ui import build_demo
    from poclip.settings import REPO_DIR

    readme = (REPO_DIR / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "/vote" in block)
    service = make_service(tmp_path / "data", bundled, seed_items=20)
    demo = build_demo(service)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    monkeypatch.chdir(REPO_DIR)  # the example names a picture in the repository
    try:
        exec(compile(example.replace("http://127.0.0.1:7860/", f"http://127.0.0.1:{port}/"), "README", "exec"), {})
        printed = capsys.readouterr().out
        assert "star over circle | You have given 1 label." in printed
        assert "You have given" in printed and "'live_version': None" in printed
        # The vote is the signed id's first judgment; "me" is only that id's display name.
        first = [j for j in service.repo.recent_judgments(500) if j.annotator.startswith("anon-")][-1]
        assert first.chosen == "star"
        assert service.repo.get_annotator(first.annotator).display_name == "me"
    finally:
        demo.close()
        service.close()


# ----- the API is what README says it is ------------------------------------------------------------------------


def readme_api_table() -> dict[str, dict]:
    """README's "### API" table: endpoint -> {"parameters": [(name, optional)], "returns": [names]}.

    In the arguments cell a parameter is a backticked name, in italics when optional; what stands in parentheses
    or brackets describes it. A returns cell that says "as `/x`" returns what /x returns.
    """
    from poclip.settings import REPO_DIR

    readme = (REPO_DIR / "README.md").read_text()
    section = readme[readme.index("### API\n"):]
    section = section[:section.index("\n### ", 1)]

    def names(cell: str) -> list[tuple[str, bool]]:
        cell = re.sub(r"\[[^\]]*\]", "", re.sub(r"\([^()]*\)", "", cell))
        return [(name, bool(star)) for star, name in re.findall(r"(\*?)`(\w+)`", cell)]

    table = {}
    for row in re.findall(r"^\| `(/\w+)` \|(.*)\|(.*)\|$", section, re.M):
        endpoint, arguments, returns = row
        same = re.search(r"as `(/\w+)`", returns)
        table[endpoint] = {"parameters": names(arguments),
                           "returns": table[same.group(1)]["returns"] if same else [n for n, _ in names(returns)]}
    return table


@contextmanager
def launched(service):
    """The app of ``service`` served on a free local port; yields a client of it."""
    from poclip.app.ui import build_demo

    demo = build_demo(service)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def test_the_api_has_exactly_the_endpoints_parameters_and_outputs_readme_lists(tmp_path, bundled):
    table = readme_api_table()
    assert len(table) == 15
    service = make_service(tmp_path / "data", bundled, seed_items=0)
    try:
        with launched(service) as client:
            api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    finally:
        service.close()
    assert sorted(api) == sorted(table)
    for endpoint, documented in table.items():
        parameters = [(p["parameter_name"], p["parameter_has_default"]) for p in api[endpoint]["parameters"]]
        assert parameters == documented["parameters"], endpoint
        assert [r["label"] for r in api[endpoint]["returns"]] == documented["returns"], endpoint


def test_every_endpoint_answers_a_call_by_name_or_says_what_is_wrong(tmp_path, bundled):
    """Each endpoint called by its README names: it answers, or refuses with the app's own message."""
    from gradio_client.exceptions import AppError

    service = make_service(tmp_path / "data", bundled, seed_items=20)
    picture = tmp_path / "star.png"
    synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224).save(picture)
    try:
        with launched(service) as client:
            def refused(message: str, **kwargs) -> None:
                with pytest.raises(AppError, match=message):
                    client.predict(**kwargs)

            attack = client.predict(label_set="Custom (type below)", custom_labels="kite, doughnut",
                                    api_name="/random_attack")
            assert len(attack) == 9 and attack[0] in ("kite", "doughnut")
            seen, left, right, _, _, comparison_id, labels = client.predict(
                picture=handle_file(str(picture)), text=attack[0], label_set="Custom (type below)",
                custom_labels="star, kite, doughnut", x=0.3, api_name="/predict")
            assert labels == ["star", "kite", "doughnut"] and left["confidences"][0]["label"] == left["label"]
            refused("tick 'Others may see", comparison_id=comparison_id, verdict="left", handle="api",
                    api_name="/vote")  # an upload without consent
            refused("not a picture", picture=handle_file(__file__), api_name="/predict")
            refused("'paint' is not a model this app shows; choose from base, aligned", picture=handle_file(
                str(picture)), left="paint", api_name="/predict")  # no peer defenses in this app
            refused("Both sides show Base CLIP", picture=handle_file(str(picture)), right="base", api_name="/predict")
            assert client.predict(api_name="/leaderboard") == []  # no blind votes yet

            picture_file, sample_id, labels, prompt, counters, me = client.predict(handle="api",
                                                                                  api_name="/next_item")
            assert picture_file and sample_id is not None and "**0** labels from you" in counters
            skipped = client.predict(sample_id=sample_id, handle="api", anonymous_id=me, api_name="/skip")
            answered = client.predict(sample_id=skipped[1], label=skipped[2][0], handle="api", anonymous_id=me,
                                      api_name="/answer")
            assert "**1** label from you (api)" in answered[4]
            refused("already someone else's", handle="api", api_name="/undo")  # "api" is me's name
            assert client.predict(anonymous_id=me, api_name="/undo")[1] == skipped[1]
            refused("sample", sample_id=10**6, label="star", anonymous_id=me, api_name="/answer")

            assert client.predict(api_name="/status")["live_version"] is None
            refused("admin", token="wrong", api_name="/backup")
            assert "queued" in client.predict(token=ADMIN_TOKEN, loss="ipo", api_name="/retrain")
            assert "Snapshot written" in client.predict(token=ADMIN_TOKEN, api_name="/backup")
            refused("version", token=ADMIN_TOKEN, version_id=999, api_name="/promote")
            refused("[Nn]othing to roll back", token=ADMIN_TOKEN, api_name="/rollback")
            refused("version id or a named version", token=ADMIN_TOKEN, version_id=1, to="base",
                    api_name="/rollback")
            assert client.predict(token=ADMIN_TOKEN, to="base", reason="check the API", api_name="/rollback") == \
                "Rolled back. The base model is live (version 1)."
            assert client.predict(api_name="/status")["live_model"].startswith("base model")
            refused("Name the Hub dataset", token=ADMIN_TOKEN, api_name="/push_to_hub")
            exported = client.predict(token=ADMIN_TOKEN, api_name="/export")
            assert str(exported).endswith(".parquet")
    finally:
        service.close()
