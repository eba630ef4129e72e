import dataclasses
import json
import os
import re
import subprocess
import sys
import time

from poclip.cli import build_parser
from poclip.engine.config import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_HEAD,
    DEFAULT_LAMBDA,
    DEFAULT_LR,
    RECIPES,
    TrainConfig,
)
from poclip.engine.losses import DEFAULT_BETA
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


COMMANDS = ("pretrain", "eval", "train", "sweep-t", "disentangle", "starter", "examples", "worker", "defenses",
            "settings")


def one_error_line(proc):
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_bad_arguments_end_in_one_error_line_before_any_model_loads(tmp_path):
    assert one_error_line(run("eval", "--n", "-3")) == "error: argument --n: must be 1 or more, got -3\n"
    missing = tmp_path / "nope"
    assert one_error_line(run("eval", "--data", f"imagefolder:{missing}")) == (
        f"error: argument --data: {missing} is not a folder\n")
    assert "use synth, distill-wild" in one_error_line(run("eval", "--data", "imagefolder:"))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "poclip", "train", "--pairs", "-5"],
                          cwd=REPO_DIR, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    imported, _, message = proc.stderr.rpartition("\n" + "error: ")
    assert proc.returncode == 2 and message == "argument --pairs: must be 1 or more, got -5\n"
    assert "open_clip" not in imported  # no model can have been loaded
    assert elapsed < 5  # loading the model alone takes about 20 s
    assert one_error_line(run("train", "--lr", "fast")) == "error: argument --lr: must be a number, got 'fast'\n"
    assert "unknown head 'mlp'" in one_error_line(run("train", "--head", "mlp"))
    assert "--t-step: must be more than 0" in one_error_line(run("sweep-t", "--head", "README.md", "--t-step", "0"))
    assert "invalid choice: 'frobnicate'" in one_error_line(run("frobnicate"))
    assert one_error_line(run("defenses", "--cache-dir", "unused", "--only", "prompts,gpt")) == (
        "error: unknown defenses gpt; choose from prompts, ablation, prefix, ocr_mask, paint\n")


def test_help_lists_every_command():
    proc = run("--help")
    assert proc.returncode == 0
    listed = re.findall(r"^    (\S+)\s", proc.stdout, flags=re.M)
    assert tuple(listed) == COMMANDS


def option_help(text: str) -> dict[str, str]:
    """``--help`` output as {flag: its help, whitespace collapsed}."""
    blocks: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        if match := re.match(r"^  (--[\w-]+)", line):
            flag = match.group(1)
            blocks[flag] = line[match.end():]
        elif flag and line.startswith("   "):
            blocks[flag] += " " + line
        else:
            flag = None
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def test_train_help_states_the_declared_options_and_their_real_defaults():
    proc = subprocess.run([sys.executable, "-m", "poclip", "train", "--help"], cwd=REPO_DIR, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "1000"})
    assert proc.returncode == 0, proc.stderr
    shown = option_help(proc.stdout)
    declared = {f.metadata["flag"]: f for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag")}
    assert set(declared) == {"--loss", "--beta", "--lambda", "--ortho", "--head", "--invariance", "--optimizer",
                             "--lr", "--epochs", "--batch-size", "--patience", "--average", "--seed"}
    per_kind = {"--lr": DEFAULT_LR, "--epochs": DEFAULT_EPOCHS, "--batch-size": DEFAULT_BATCH,
                "--beta": DEFAULT_BETA, "--lambda": DEFAULT_LAMBDA}
    for flag, f in declared.items():
        text = shown[flag]
        assert " ".join(f.metadata["help"].split()) in text, flag
        for choice in f.metadata["choices"] or ():
            assert choice in text
        if flag in per_kind:  # the defaults the trainer reads, not numbers retyped in the help
            assert all(f"{kind} {value:g}" in text for kind, value in per_kind[flag].items()), (flag, text)
        elif flag == "--invariance":
            assert all(f"{name} {recipe['invariance']:g}" in text for name, recipe in RECIPES.items())
        elif f.default is None:
            assert text.endswith(f"Default: {f.metadata['default_doc']}."), (flag, text)
        else:
            default = f"{f.default:g}" if isinstance(f.default, float) else f.default
            assert text.endswith(f"Default: {default}."), (flag, text)
    assert "Default: per head: linear 0.05, projection 0.001, last_blocks 0.0003." in shown["--lr"]
    assert shown["--head"].endswith(f"Default: {DEFAULT_HEAD}.")
    assert shown["--lambda"] and "--reg-lambda" not in shown
    args = build_parser("train").parse_args(["train", "--lambda", "2", "--batch-size", "3"])
    assert (args.reg_lambda, args.batch_size, args.lr) == (2.0, 3, None)
