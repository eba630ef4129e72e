"""Settings: declared once, read from the environment, checked, and documented by the same declarations."""

import dataclasses

import pytest

from poclip.cli import main
from poclip.errors import UserError
from poclip.settings import REPO_DIR, Settings, settings_table


def test_the_readme_holds_exactly_the_generated_table(capsys):
    assert settings_table() in (REPO_DIR / "README.md").read_text()
    assert main(["settings"]) == 0
    assert capsys.readouterr().out == settings_table() + "\n"


def test_every_setting_has_a_variable_and_a_row():
    rows = settings_table().splitlines()[2:]
    variables = [f.metadata["env"] for f in dataclasses.fields(Settings)]
    assert [row.split("`")[1] for row in rows] == variables and len(set(variables)) == len(variables)
    row = next(r for r in rows if r.startswith("| `POCLIP_REPLAY_PAIRS` | `1000` |"))
    assert row.endswith("Allowed: 0 or more. |")


def test_from_env_reads_each_variable_with_its_defaults_and_rules(tmp_path):
    default = Settings.from_env({"POCLIP_DATA_DIR": str(tmp_path)})
    assert (default.data_dir, default.storage, default.replay_pairs, default.starter_head) == (
        tmp_path, "snapshots", 1000, True)
    assert (default.proxy_hops, default.server_port, default.hub_timeout_s) == (0, 7860, 8.0)
    env = {"POCLIP_DATA_DIR": str(tmp_path), "POCLIP_STORAGE": " Bucket ", "POCLIP_TRAINER": "OFF",
           "POCLIP_SQLITE_JOURNAL": "delete", "POCLIP_HEAD": " linear ", "POCLIP_REPLAY_PAIRS": "0",
           "POCLIP_MAX_ANNOTATOR_SHARE": "1", "SPACE_ID": "a/b", "POCLIP_GATE_N": ""}
    s = Settings.from_env(env)
    assert (s.storage, s.trainer, s.sqlite_journal_mode, s.head) == ("bucket", "off", "DELETE", "linear")
    assert (s.replay_pairs, s.max_annotator_share, s.proxy_hops, s.gate_eval_n) == (0, 1.0, 1, 500)
    for word in ("0", "false", "Off", "no"):
        assert Settings.from_env({"POCLIP_STARTER_HEAD": word, "POCLIP_DATA_DIR": str(tmp_path)}).starter_head is False
    assert Settings.from_env({"POCLIP_STARTER_HEAD": "yes", "POCLIP_DATA_DIR": str(tmp_path)}).starter_head


@pytest.mark.parametrize(("env", "message"), [
    ({"POCLIP_REPLAY_PAIRS": "-1"}, "POCLIP_REPLAY_PAIRS must be 0 or more, got -1"),
    ({"POCLIP_GATE_N": "many"}, "POCLIP_GATE_N must be a whole number, got 'many'"),
    ({"POCLIP_DECODE_WAIT_S": "soon"}, "POCLIP_DECODE_WAIT_S must be a number, got 'soon'"),
    ({"POCLIP_MAX_ANNOTATOR_SHARE": "1.5"}, "POCLIP_MAX_ANNOTATOR_SHARE must be more than 0 and at most 1, got 1.5"),
    ({"POCLIP_STORAGE": "s3"}, "POCLIP_STORAGE must be one of snapshots, bucket, got 's3'"),
    ({"POCLIP_TRAINER": "process"}, "POCLIP_TRAINER must be one of thread, off, zerogpu, got 'process'"),
    ({"GRADIO_SERVER_PORT": "70000"}, "GRADIO_SERVER_PORT must be 0 or more and at most 65535, got 70000"),
])
def test_a_bad_variable_is_a_user_error_naming_it_and_the_allowed_range(tmp_path, env, message):
    with pytest.raises(UserError) as exc:
        Settings.from_env({"POCLIP_DATA_DIR": str(tmp_path), **env})
    assert str(exc.value) == message


def test_keyword_construction_is_checked_the_same_way(tmp_path):
    assert Settings(data_dir=tmp_path, seed_items=0).seed_items == 0
    with pytest.raises(UserError, match="POCLIP_BACKUP_KEEP must be 1 or more, got 0"):
        Settings(data_dir=tmp_path, backup_keep=0)


def test_a_child_process_gets_the_same_settings_back_from_the_variables_they_write(tmp_path):
    """The app hands its settings to its training child through the environment: every kind of value (paths,
    numbers, switches, unset ones) reads back equal, whatever the parent's own environment says."""
    settings = Settings(data_dir=tmp_path, local_dir=None, starter_head=False, held_out_share=0.1 + 0.2,
                        retrain_every_minutes=2.5, train_threads=3, head="last_blocks:1", admin_token="t0k3n",
                        peers=())
    env = settings.to_env()
    assert (env["POCLIP_STARTER_HEAD"], env["POCLIP_TRAIN_THREADS"], env["POCLIP_LOCAL_DIR"]) == ("0", "3", "")
    assert env["POCLIP_PEERS"] == "off"  # none, not the default (an empty variable would be)
    assert Settings.from_env(env) == settings
    assert Settings.from_env({**env, "POCLIP_PEERS": "prefix, paint"}).peers == ("prefix", "paint")
    with pytest.raises(UserError, match="POCLIP_TRAIN_THREADS must be 1 or more, got 0"):
        Settings.from_env({**env, "POCLIP_TRAIN_THREADS": "0"})
