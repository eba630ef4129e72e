"""The annotation items: their writing takes turns in the attack families, and every gold answer is a real label
pair whatever the writing says."""

import pytest
from apphelpers import make_service

from annotation_db.models import Judgment, JudgmentKind, Sample
from poclip.app.retrain.evaluation import GateEvaluation
from poclip.app.seeding import ANNOTATE_FAMILIES, annotation_text
from poclip.errors import UserError
from poclip.settings import Settings
from poclip.world import synth
from poclip.world.attacks import HELD_OUT_FONTS, TextAttack
from poclip.world.styles import EVAL_NEUTRAL_WORDS


def test_the_stream_rotates_through_the_families_and_keeps_held_out_variety_out():
    texts = [annotation_text(i)[1] for i in range(70)]
    styles = {t.style for t in texts}
    # paper, several words (repeat or mixed), patch, true, neutral, upper, faint: every kind appears
    assert {"wrong", "patch", "true", "neutral", "upper", "faint"} <= styles and styles & {"repeat", "mixed"}
    assert all(t.attack.font not in HELD_OUT_FONTS for t in texts)
    assert not {t.attack.text for t in texts} & set(EVAL_NEUTRAL_WORDS)
    # The paper's style alone is the stream the app always served (item 0 of the default stream is paper-style).
    assert annotation_text(0, ("paper",)) == annotation_text(0)
    several = [annotation_text(i, ("several_words",))[1] for i in range(20)]
    assert all(t.style in ("repeat", "mixed") and len(t.attack.text.split()) >= 2 for t in several)


def test_a_focused_app_seeds_one_family_and_gold_answers_reject_a_wrong_label(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=80, annotate_families=("true_word",))
    try:
        with svc.repo.db.reading() as s:
            samples = s.query(Sample).all()
            gold = s.query(Judgment).filter(Judgment.kind == JudgmentKind.GOLD).all()
        assert len(samples) == 80
        truth = {annotation_text(i, ("true_word",))[1].attack.to_json(): annotation_text(i, ("true_word",))[0].shape
                 for i in range(80)}
        written = [TextAttack.from_dict(s.attack) for s in samples]
        assert all(truth[a.to_json()] == a.text for a in written)  # every item writes its true class
        assert gold and all(j.chosen != j.rejected and j.rejected in synth.SHAPES for j in gold)
    finally:
        svc.close()


def test_an_unknown_family_is_refused_at_start_naming_the_choices(tmp_path, bundled):
    settings = Settings.from_env({"POCLIP_ANNOTATE_FAMILIES": "several_words, bold", "POCLIP_DATA_DIR": str(tmp_path)})
    assert settings.annotate_families == ("several_words", "bold")
    with pytest.raises(UserError, match="POCLIP_ANNOTATE_FAMILIES: bold; choose from .*label_patch"):
        make_service(tmp_path, bundled, annotate_families=settings.annotate_families)
    with pytest.raises(UserError, match="POCLIP_GATE_FAMILIES: held_out_font; choose from"):
        GateEvaluation(bundled, 10, tmp_path, ("paper", "held_out_font"))
    assert set(ANNOTATE_FAMILIES) == {"paper", "several_words", "label_patch", "true_word", "neutral_word",
                                      "upper_case", "low_opacity"}
