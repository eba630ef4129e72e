"""One set of counters: labels, crowd pairs, replay pairs and the next retrain, the same on the Annotate tab, the Data
tab and ``/status``, against a real SQLite file, the bundled model and a real retrain."""

import json
import re

from apphelpers import ONE_PERSON, crowd_pairs_in_store, make_service, make_trainer, truth_by_attack

from poclip.app.pair_counts import crowd_pairs_used
from poclip.app.ui.annotate import answer_handler, next_item_handler
from poclip.app.ui.data import data_view
from poclip.world.attacks import TextAttack

TRUTH = truth_by_attack(30)


def figures(text: str) -> dict:
    """The labels, crowd pairs, replay pairs and crowd pairs to the next retrain a page's text states."""
    found = {
        "labels": re.search(r"\*\*(\d+)\*\* labels? from \**\d+\**? (?:person|people)", text),
        "crowd_pairs": re.search(r"\*\*(\d+)\*\* crowd pairs?", text),
        "replay_pairs": re.search(r"\*\*(\d+)\*\* replay pairs?", text),
        "next_retrain_after_crowd_pairs": re.search(r"next retrain after \*\*(\d+)\*\* more crowd pairs?", text),
    }
    assert all(found.values()), (text, found)
    return {key: int(match.group(1)) for key, match in found.items()}


def test_annotate_data_and_status_show_the_same_labels_crowd_pairs_and_replay_pairs(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=30, replay_pairs=200, retrain_every_pairs=50, **ONE_PERSON)
    try:
        me = svc.identity.issue()
        shown = next_item_handler(svc, handle="ann", anon_id=me)
        for _ in range(16):  # gold and held-out items among them; at least 10 pairs are left to train on
            truth = TRUTH[TextAttack.from_dict(svc.repo.get_sample(shown.sample_id).attack).to_json()]
            shown = answer_handler(svc, sample_id=shown.sample_id, chosen=truth, handle="ann", anon_id=me)
        trainer = make_trainer(svc)
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
        used = crowd_pairs_used(run.metrics)
        assert used == crowd_pairs_in_store(svc.repo) > 0 and run.metrics["replay_pairs"] == 200
        for _ in range(3):  # more labels after the run
            truth = TRUTH[TextAttack.from_dict(svc.repo.get_sample(shown.sample_id).attack).to_json()]
            shown = answer_handler(svc, sample_id=shown.sample_id, chosen=truth, handle="ann", anon_id=me)

        status = json.loads(json.dumps(svc.status()))  # /status returns this dict as JSON
        annotate = figures(shown.counter)
        data = figures(data_view(svc, token="")[0])
        assert annotate == data == {key: status[key] for key in annotate}, (annotate, data, status)
        rejected = svc.repo.get_version(run.version_id).status == "rejected"
        new = crowd_pairs_in_store(svc.repo) - used
        assert status == {**status, "labels": 19, "judgments": 19, "crowd_pairs": used + new, "replay_pairs": 200,
                          "next_retrain_after_crowd_pairs": 50 * (2 if rejected else 1) - new}
        assert shown.counter.startswith("**19** labels from you (ann) · **19** labels from 1 person · ")
    finally:
        svc.close()


def test_gold_items_and_synthetic_votes_are_no_crowd_pairs_and_undoing_a_label_takes_its_pair_away(tmp_path,
                                                                                                   bundled):
    svc = make_service(tmp_path, bundled, seed_items=30, retrain_every_pairs=50, **ONE_PERSON)
    try:
        gold = svc.seeding.gold_items
        assert (svc.pair_counts().labels, svc.pair_counts().crowd_pairs) == (0, 0) and gold > 0
        for _ in range(10):
            item = svc.annotation.next_item("ann")
            svc.annotation.answer_item("ann", item.sample.id, TRUTH[TextAttack.from_dict(item.sample.attack).to_json()])
        counts = svc.pair_counts()
        on_gold = 10 - crowd_pairs_in_store(svc.repo)  # their pair is the reference answer, not the crowd's
        assert (counts.labels, counts.crowd_pairs, counts.more_needed) == (10, 10 - on_gold, 40 + on_gold)
        item = svc.annotation.next_item("ann")  # the synthetic generator decides an item nobody labelled yet
        svc.repo.ensure_annotator("poclip-synthetic")
        svc.repo.record_judgment(item.sample.id, "poclip-synthetic", item.labels[0], item.labels[1], kind="synthetic",
                                 enforce_rate_limit=False)
        assert svc.pair_counts().crowd_pairs == counts.crowd_pairs == crowd_pairs_in_store(svc.repo)
        while svc.pair_counts().crowd_pairs == counts.crowd_pairs:  # up to the next label that makes a pair
            item = svc.annotation.next_item("ann")
            svc.annotation.answer_item("ann", item.sample.id, TRUTH[TextAttack.from_dict(item.sample.attack).to_json()])
        assert svc.pair_counts().crowd_pairs == counts.crowd_pairs + 1
        svc.annotation.undo("ann")
        assert svc.pair_counts().crowd_pairs == crowd_pairs_in_store(svc.repo) == counts.crowd_pairs
    finally:
        svc.close()
