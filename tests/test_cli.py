import json
import subprocess
import sys

from poclip.settings import REPO_DIR


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "poclip", *args], cwd=REPO_DIR, capture_output=True, text=True,
                          timeout=timeout)


def test_eval_prints_one_json_object_with_the_metrics():
    proc = run("eval", "--model", "bundled", "--data", "synth", "--n", "30", "--seed", "5", "--attack", "random",
               "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 30 and result["attack"] == "random"
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["attack_success_rate"] <= 1
    clean = json.loads(run("eval", "--model", "bundled", "--n", "30", "--seed", "5", "--attack", "none",
                           "--json").stdout)
    assert clean["accuracy"] == result["clean_accuracy"]


def test_eval_with_an_unreachable_hub_model_exits_with_advice():
    proc = run("eval", "--model", "ViT-B-32:openai", "--n", "10", "--json", timeout=60)
    assert proc.returncode == 2
    assert "--model bundled" in proc.stderr and proc.stdout == ""
