"""The Train tab's versions table: a short reason per version (whole lines only) and the full record on a click; an
admin promotes a rejected version only with a reason, which the table then shows, and rolls back to named versions."""

import gradio as gr
import pytest
from apphelpers import ADMIN_TOKEN, make_service

from poclip.app.retrain.gate import gate
from poclip.app.ui.boundary import user_errors
from poclip.app.ui.train import (
    VERSION_COLUMNS,
    fenced,
    promote_handler,
    rollback_handler,
    version_details,
    versions_table,
)
from poclip.engine.policy import Policy, save_head

LIVE = {"typographic_accuracy": 0.80, "clean_accuracy": 0.95,
        "per_class": {"star": {"attacked": 0.90, "clean": 0.95}, "circle": {"attacked": 0.70, "clean": 0.95}}}
# Better overall, but star's attacked accuracy falls by 0.2: the gate names the class and appends its table.
CANDIDATE = {"typographic_accuracy": 0.85, "clean_accuracy": 0.95,
             "per_class": {"star": {"attacked": 0.70, "clean": 0.95}, "circle": {"attacked": 1.00, "clean": 0.95}}}


@pytest.fixture
def service(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=0)
    yield svc
    svc.close()


def row_of(table, version_id):
    return table[table["id"] == version_id].iloc[0]


def test_a_rejection_naming_a_class_shows_its_first_line_in_the_table_and_everything_in_the_details(
        service, tmp_path, bundled):
    promoted, reason = gate(CANDIDATE, LIVE, LIVE)
    assert not promoted and reason.count("\n") == 3  # the verdict, then the per-class table's header and 2 classes
    verdict, table_text = reason.split("\n", 1)
    path = save_head(Policy(bundled), tmp_path / "heads" / "run1.safetensors")
    version = service.repo.register_version(bundled.spec, str(path), {"loss": "dpo", "gate": reason})
    service.repo.reject_version(version.id, reason)

    table = versions_table(service)
    assert list(table.columns) == VERSION_COLUMNS
    row = row_of(table, version.id)
    assert (row["model"], row["status"]) == (f"version {version.id}", "rejected")
    # The whole verdict (every failing test, the class named), never half of the per-class table.
    assert row["reason"] == f"gate: {verdict} [more in the version's details]"
    assert "star (attacked -0.200)" in row["reason"] and "\n" not in row["reason"]
    assert not any(line.strip() in row["reason"] for line in table_text.splitlines())

    details = version_details(service, version.id)
    assert fenced(reason) in details  # line for line, in a code block
    for line in table_text.splitlines():
        assert f"\n{line}\n" in details
    assert "Click a version's row" in version_details(service, None)


def test_promoting_a_rejected_version_needs_a_reason_which_the_table_then_shows(service, tmp_path, bundled):
    _, reason = gate(CANDIDATE, LIVE, LIVE)
    path = save_head(Policy(bundled), tmp_path / "heads" / "run1.safetensors")
    version = service.repo.register_version(bundled.spec, str(path), {"loss": "dpo", "gate": reason})
    service.repo.reject_version(version.id, reason)
    before = versions_table(service)

    for typed in ("", "   ", None):
        with pytest.raises(gr.Error, match=f"Version {version.id} was rejected by the promotion gate; to promote it "
                                           "anyway, give the reason"):
            user_errors(promote_handler)(service, ADMIN_TOKEN, version.id, typed)
    assert versions_table(service).equals(before) and service.live_head.current.version is None

    message, table, details = promote_handler(service, ADMIN_TOKEN, version.id, "star is not in our label sets")
    assert message == f"Version {version.id} is live."
    row = row_of(table, version.id)
    assert row["status"] == "active"
    assert row["reason"].startswith("promoted by admin: star is not in our label sets; gate: neither rule holds")
    assert "**Promoted by admin** at " in details and fenced("star is not in our label sets") in details
    assert fenced(reason) in details  # the gate's verdict stays on the record

    message, table, details = rollback_handler(service, ADMIN_TOKEN, None, "base", "photos read worse")
    base = table[table["model"] == "base model"].iloc[0]
    assert message == f"Rolled back. The base model is live (version {base['id']})."
    assert (base["status"], base["reason"]) == ("active", "promoted by admin: rolled back: photos read worse")
    old = row_of(table, version.id)
    assert old["status"] == "archived"
    assert old["reason"].startswith("promoted by admin: star is not in our label sets; rolled back: photos read "
                                    "worse (to the base model); gate: neither rule holds")
    assert details.startswith(f"**Base model** (id {base['id']}, `bundled`): active, live since ")
