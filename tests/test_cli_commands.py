"""The engine's command line: train, eval --head/--t, sweep-t, disentangle; one JSON object each with --json."""

import json
import subprocess
import sys

import pytest

from poclip.cli import main
from poclip.settings import REPO_DIR


def run_main(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head trained by the real command line (a subprocess, as a user runs it)."""
    out = tmp_path_factory.mktemp("heads") / "dpo.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "poclip", "train", "--model", "bundled", "--pairs", "60",
         "--clean", "30", "--loss", "dpo", "--epochs", "4", "--eval-n", "20", "--out", str(out), "--json"],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["out"] == str(out) and out.is_file()
    assert report["loss"] == "dpo" and report["beta"] == 0.5 and report["pairs"] == 60 and report["clean"] == 30
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "kl/clean"} <= set(report["metrics"])
    assert set(report["eval"]["aligned"]) == {"clean_accuracy", "typographic_accuracy", "attack_success_rate",
                                              "kl_drift"}
    return out


def test_eval_with_a_head_reports_the_aligned_and_base_metrics(capsys, head):
    code, result, err = run_main(capsys, "eval", "--head", str(head), "--n", "20", "--seed", "5", "--json")
    assert code == 0, err
    assert result["n"] == 20 and result["head"] == str(head) and result["t"] == 1.0
    for key in ("accuracy", "clean_accuracy", "attack_success_rate", "kl_drift", "per_class", "base"):
        assert key in result
    _, at_zero, _ = run_main(capsys, "eval", "--head", str(head), "--n", "20", "--seed", "5", "--t", "0", "--json")
    assert at_zero["accuracy"] == result["base"]["typographic_accuracy"]
    assert at_zero["clean_accuracy"] == result["base"]["clean_accuracy"]
    assert at_zero["kl_drift"] == pytest.approx(0.0, abs=1e-4)


def test_sweep_t_covers_minus_2_to_1_5_and_writes_a_plot(capsys, head, tmp_path):
    plot = tmp_path / "sweep.png"
    code, result, err = run_main(capsys, "sweep-t", "--head", str(head), "--n", "20", "--t-step", "0.5",
                                 "--plot", str(plot), "--json")
    assert code == 0, err
    assert [row["t"] for row in result["sweep"]] == [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    zero = next(row for row in result["sweep"] if row["t"] == 0.0)
    assert zero["typographic_accuracy"] == result["base"]["typographic_accuracy"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result["plot"] == str(plot)


def test_eval_on_an_image_folder_dataset(capsys, tmp_path):
    from imagefolders import make_imagefolder

    folder = make_imagefolder(tmp_path / "imgs", per_class=2)
    code, result, err = run_main(capsys, "eval", "--model", "bundled", "--data", f"imagefolder:{folder}", "--n", "6",
                                 "--json")
    assert code == 0, err
    assert result["n"] == 6 and set(result["per_class"]) == {"circle", "square", "star"}


def test_user_errors_exit_2_with_a_message(capsys, tmp_path):
    code, _, err = run_main(capsys, "eval", "--head", str(tmp_path / "missing.safetensors"), "--json")
    assert code == 2 and "does not exist" in err
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    code, _, err = run_main(capsys, "sweep-t", "--head", str(tmp_path / "bad.safetensors"), "--json")
    assert code == 2 and "not a readable" in err
    code, _, err = run_main(capsys, "train", "--loss", "orpo")
    assert code == 2 and err.startswith("error: argument --loss: invalid choice: 'orpo'")
    code, _, err = run_main(capsys, "eval", "--data", "nowhere", "--json")
    assert code == 2 and "imagefolder:DIR" in err
    # Combinations are checked before the model loads too.
    bad = str(tmp_path / "bad.safetensors")  # unreadable, so refusing first proves the order
    code, _, err = run_main(capsys, "eval", "--head", bad, "--attack", "none")
    assert code == 2 and "use --attack random" in err
    code, _, err = run_main(capsys, "sweep-t", "--head", bad, "--t-min", "1", "--t-max", "0")
    assert code == 2 and err == "error: --t-max (0.0) must not be below --t-min (1.0)\n"


@pytest.mark.slow
def test_disentangle_prints_the_sweep_and_the_neutral_point(capsys, tmp_path):
    plot = tmp_path / "d.png"
    code, result, err = run_main(capsys, "disentangle", "--pairs", "200", "--n", "100", "--plot", str(plot), "--json")
    assert code == 0, err
    assert result["base"]["attribute_accuracy"] >= 0.9
    zero = next(r for r in result["sweep"] if r["t"] == 0.0)
    assert zero["attribute_accuracy"] == result["base"]["attribute_accuracy"]
    assert 0.0 <= result["neutral"]["t"] <= 1.0 and plot.is_file()
    assert set(result["checks"]) >= {"neutral_t", "reversed_attribute_accuracy_at_1", "max_shape_drop_on_0_1"}


def test_starter_builds_a_loadable_head_and_the_shipped_one_matches_the_defaults(capsys, tmp_path, bundled):
    from poclip.engine.policy import load_head, read_head_metadata
    from poclip.engine.starter import CLEAN, PAIRS, SEED, STARTER_HEAD

    out = tmp_path / "starter.safetensors"
    code, result, err = run_main(capsys, "starter", "--pairs", "40", "--clean", "40", "--out", str(out), "--json")
    assert code == 0, err
    assert (result["pairs"], result["clean"], result["out"]) == (40, 40, str(out))
    assert 0 <= result["eval"]["typographic_accuracy"] <= 1 and result["eval"]["n"] == 1000
    meta = read_head_metadata(out)
    assert (meta["n_pairs"], meta["n_clean"], meta["dtype"]) == ("40", "40", "float16")
    assert load_head(out, bundled).head == result["head"]
    # `python -m poclip starter` with no numbers rebuilds the shipped head: its metadata names the same data.
    shipped = read_head_metadata(STARTER_HEAD)
    assert (int(shipped["n_pairs"]), int(shipped["n_clean"]), shipped["command"]) == (
        PAIRS, CLEAN, "python -m poclip starter --out assets/heads/starter.safetensors")
    assert json.loads(shipped["config"])["seed"] == SEED


def test_without_json_a_command_prints_aligned_key_value_lines_and_a_table_of_rows(capsys, head):
    code = main(["sweep-t", "--head", str(head), "--n", "20", "--t-step", "0.5"])
    out = capsys.readouterr().out
    assert code == 0 and not out.startswith("{")
    lines = out.splitlines()
    keys = lines[: lines.index("")]
    assert keys[0].startswith("model:") and any(line.startswith("base.clean_accuracy:") for line in keys)
    assert len({len(line) - len(line.split(":", 1)[1].lstrip()) for line in keys}) == 1  # values in one column
    sweep = lines[lines.index("sweep:") + 1:]
    assert sweep[0].split()[:3] == ["t", "clean_accuracy", "typographic_accuracy"]
    assert [row.split()[0] for row in sweep[1:]] == ["-2", "-1.5", "-1", "-0.5", "0", "0.5", "1", "1.5"]
