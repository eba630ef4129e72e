"""The Train tab shows the latest run's promotion gate as one table: metric, live, candidate, base, margin, pass."""

from apphelpers import ADMIN_TOKEN, make_service

from poclip.app.retrain.crowd import Agreement
from poclip.app.retrain.gate import gate_table
from poclip.app.ui.train import GATE_COLUMNS, progress_view


def test_the_train_tab_shows_the_latest_runs_gate_table(tmp_path, bundled):
    svc = make_service(tmp_path, bundled)
    try:
        live = {"typographic_accuracy": 0.8, "clean_accuracy": 0.95, "per_class": {}}
        candidate = {**live, "typographic_accuracy": 0.9}
        base = {"typographic_accuracy": 0.1, "clean_accuracy": 0.96, "per_class": {}}
        crowd = {"candidate": Agreement.of(45, 120), "live": Agreement.of(60, 120), "base": Agreement.of(40, 120)}
        assert progress_view(svc)[2].empty  # no run yet: an empty table with the gate's columns
        svc.training.retrain(token=ADMIN_TOKEN)
        run = svc.repo.claim_run("a-worker")
        svc.repo.finish_run(run.id, metrics={"candidate": candidate, "live_before": live, "base": base,
                                             "gate_table": gate_table(candidate, live, base, crowd)},
                            lease=run.lease)
        table = progress_view(svc)[2]
        assert list(table.columns) == GATE_COLUMNS
        falls = table[table["metric"] == "crowd agreement does not fall"].iloc[0]
        assert (falls["live"], falls["candidate"], falls["base"], falls["pass"]) == (0.5, 0.375, 0.3333, "fail")
        assert table[table["metric"] == "typographic accuracy improves"].iloc[0]["pass"] == "pass"
    finally:
        svc.close()
