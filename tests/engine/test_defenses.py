"""The defenses beside PO-CLIP: each builds on the bundled model, is cached by backbone and recipe, and moves its
figures the right way; the reading family and the peers benchmark."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from poclip.engine.defenses.ablation import KINDS, Ablation
from poclip.engine.defenses.base import BaseModel
from poclip.engine.defenses.data import calibration_set
from poclip.engine.defenses.head import Starter
from poclip.engine.defenses.ocr_mask import OcrMask, OcrUnavailable
from poclip.engine.defenses.paint import Paint
from poclip.engine.defenses.prefix import DefensePrefix
from poclip.engine.defenses.prompts import PromptEnsemble
from poclip.engine.defenses.reading import reading_set
from poclip.engine.starter import load_starter
from poclip.errors import UserError
from poclip.world import synth
from poclip.world.attacks import TextAttack, render

LABELS = list(synth.SHAPES)


def _accuracy(defense, pictures, truth) -> float:
    return sum(p == t for p, t in zip(defense.predict(pictures, LABELS), truth, strict=True)) / len(truth)


@pytest.fixture(scope="module")
def held_out():
    """60 evaluation pictures with the paper's attack (seed 2024: never trained or calibrated on)."""
    items = synth.eval_set(60, 2024)
    return [it.attacked for it in items], [it.label for it in items]


@pytest.fixture(scope="module")
def base(bundled):
    return BaseModel(bundled).build()


def test_prompts_are_training_free_and_deterministic(bundled, base):
    first = PromptEnsemble(bundled, max_templates=2, calibration_n=60).build()
    second = PromptEnsemble(bundled, max_templates=2, calibration_n=60).build()
    assert first.state() == {}
    assert first.templates == second.templates and first.templates
    cal = calibration_set(60)
    assert torch.equal(first.log_probs(cal.attacked, LABELS), second.log_probs(cal.attacked, LABELS))
    # the chosen wording reads the objects under text better than the plain template, at the same clean accuracy
    assert cal.accuracy(first.log_probs(cal.attacked, LABELS)) > cal.accuracy(base.log_probs(cal.attacked, LABELS))
    assert cal.accuracy(first.log_probs(cal.clean, LABELS)) >= cal.accuracy(base.log_probs(cal.clean, LABELS)) - 0.01


def test_a_second_build_loads_the_cached_one_and_scores_identically(bundled, tmp_path, monkeypatch, held_out):
    built = DefensePrefix(bundled, pairs=60, clean=60, epochs=2).build(tmp_path)
    assert not built.loaded and built.seconds_to_build > 0
    assert list((tmp_path / "prefix").glob("*.safetensors")) == [built.cache_path(tmp_path)]

    def no_training(self):
        raise AssertionError("a cached build must not train again")

    monkeypatch.setattr(DefensePrefix, "fit", no_training)
    loaded = DefensePrefix(bundled, pairs=60, clean=60, epochs=2).build(tmp_path)
    assert loaded.loaded and loaded.seconds_to_build == built.seconds_to_build and loaded.info == built.info
    pictures = held_out[0][:12]
    assert torch.equal(loaded.log_probs(pictures, LABELS), built.log_probs(pictures, LABELS))
    # another recipe is another build
    assert DefensePrefix(bundled, pairs=60, clean=60, epochs=3).recipe_hash != loaded.recipe_hash


def test_prefix_raises_attacked_accuracy_above_the_base_model(bundled, base, held_out):
    prefix = DefensePrefix(bundled, pairs=300, clean=300, epochs=10).build()
    assert _accuracy(prefix, *held_out) > _accuracy(base, *held_out) + 0.2
    assert prefix.ms_per_picture is not None and prefix.ms_per_picture > 0


@pytest.mark.slow
def test_paint_raises_attacked_accuracy_above_the_base_model(bundled, base, held_out):
    paint = Paint(bundled, pairs=200, clean=20, epochs=4, calibration_n=60).build()
    assert 0.0 < paint.info["alpha"] <= 1.0
    assert _accuracy(paint, *held_out) > _accuracy(base, *held_out) + 0.1


def test_ablation_keeps_clean_accuracy_within_its_cap_on_its_calibration_set(bundled, base):
    ablation = Ablation(bundled, calibration_n=60, candidates=12).build()
    assert ablation.info["kind"] in KINDS
    cal = calibration_set(60)
    clean, base_clean = (cal.accuracy(d.log_probs(cal.clean, LABELS)) for d in (ablation, base))
    attacked, base_attacked = (cal.accuracy(d.log_probs(cal.attacked, LABELS)) for d in (ablation, base))
    assert clean >= base_clean - 0.01 - 1e-9
    assert attacked >= base_attacked
    assert attacked > base_attacked or ablation.info["units"] == 0  # a kept unit always raised attacked accuracy


def test_ocr_mask_paints_out_a_word_that_fooled_the_base_model(bundled, base, tesseract):
    ocr = OcrMask(bundled, calibration_n=6).build()
    assert 0.0 <= ocr.info["detection_rate"] <= 1.0
    # a red square on the left of a light picture, and a sign-like word on the right
    scene = synth.Scene("square", "red", 0.4, 0.27, 0.5, 0.0, "plain", (235, 235, 235), (235, 235, 235), 0)
    clean = synth.draw_scene(scene)
    attacked = render(clean, TextAttack(text="star", font="sans-bold", size=0.16, fill="#000000", stroke="#000000",
                                        stroke_width=0.0, x=0.76, y=0.5))
    assert base.predict([clean], LABELS) == ["square"] and base.predict([attacked], LABELS) == ["star"]
    assert base.predict([ocr.mask(attacked)], LABELS) == ["square"]
    assert ocr.predict([attacked], LABELS) == ["square"]


def test_ocr_mask_without_tesseract_says_how_to_install_it(bundled, monkeypatch):
    import pytesseract

    def missing():
        raise pytesseract.TesseractNotFoundError()

    monkeypatch.setattr(pytesseract, "get_tesseract_version", missing)
    with pytest.raises(OcrUnavailable, match="apt-get install tesseract-ocr") as info:
        OcrMask(bundled, calibration_n=6).build()
    assert isinstance(info.value, UserError)


def test_the_starter_defense_scores_as_the_starter_policy(bundled, held_out):
    starter = Starter(bundled).build()
    pictures = held_out[0][:8]
    _, aligned = load_starter(bundled).compare(pictures, LABELS)
    assert torch.allclose(starter.log_probs(pictures, LABELS), aligned, atol=1e-5)
    assert starter.info["shipped"] and starter.seconds_to_build is not None


def test_the_base_model_reads_signs_whose_word_is_the_answer(base):
    signs, words = reading_set(50)
    assert _accuracy(base, signs, words) >= 0.8


def test_peers_bench_writes_the_table_timings_and_checks(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("peers", Path(__file__).resolve().parents[2] / "bench" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    out = tmp_path / "peers.json"
    assert peers.main(["--n", "20", "--columns", "base,prompts", "--cache-dir", str(tmp_path / "cache"),
                       "--json", str(out), "--threads", "1"]) == 0
    result = json.loads(out.read_text())
    assert set(result["table"]) == {*peers.ATTACK_FAMILIES, "clean", "reading"}
    assert all(set(cells) == {"base", "prompts"} for cells in result["table"].values())
    assert result["n"] == 20 and result["ms_per_picture"]["prompts"] > 0
    assert result["seconds_to_build"]["prompts"] >= 0
    assert "columns below the reading floor" in result["checks"]
    printed = capsys.readouterr().out
    assert "| paper |" in printed and "| reading |" in printed
