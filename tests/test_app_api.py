"""The whole loop through the public API of a launched app (gradio_client), on the bundled model.

200 synthetic attacked pictures are labelled through /next_item and /answer, a retrain is queued
through /retrain (admin only), the background trainer promotes a new version, and the attacked
pictures' predictions through /predict flip to the true label.
"""

import random
import time

import pytest
from apphelpers import ADMIN_TOKEN, free_port, make_service, truth_by_attack
from gradio_client import Client, handle_file

from poclip.world import synth
from poclip.world.attacks import random_attack

pytestmark = pytest.mark.slow


def test_label_retrain_promote_and_predictions_flip(tmp_path, bundled):
    from poclip.app.ui import build_demo
    from poclip.world.attacks import TextAttack

    service = make_service(tmp_path / "data", bundled, seed_items=240)
    service.start_background()
    demo = build_demo(service)
    port = free_port()
    demo.queue(default_concurrency_limit=8).launch(server_name="127.0.0.1", server_port=port,
                                                   prevent_thread_lock=True, quiet=True)
    truth = truth_by_attack(240)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, item_id, _, counter = client.predict("alice", "", api_name="/next_item")
        assert "**0** labelled by you" in counter
        for _ in range(200):
            sample = service.repo.get_sample(int(item_id))
            answer = truth[TextAttack.from_dict(sample.attack).to_json()]
            _, item_id, _, counter = client.predict(int(item_id), answer, "alice", "", api_name="/answer")
        assert "**200** labelled by you" in counter
        assert service.repo.training_pairs().pairs.__len__() >= 200

        with pytest.raises(Exception, match="admin"):
            client.predict("wrong-token", "dpo", api_name="/retrain")
        assert service.repo.list_runs() == []
        assert "queued" in client.predict(ADMIN_TOKEN, "dpo", api_name="/retrain")

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
                handle_file(str(path)), attack.text, attack.font, attack.size, attack.fill, attack.stroke,
                attack.x, attack.y, 1.0, 0.0, "Synthetic shapes", "", 1.0, False, api_name="/predict")
            if left["label"] == attack.text:  # the base model (left) was fooled by the written word
                fooled += 1
                flipped += right["label"] == scene.shape
        assert fooled >= 15
        assert flipped / fooled >= 0.5, (flipped, fooled)
    finally:
        demo.close()
        service.close()
