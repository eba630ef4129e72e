"""The Train tab (admin): retrain now, live progress and curves, held-out evaluation, versions, promote, roll back."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from poclip.app.service import AppService
from poclip.app.ui.boundary import QUIET, user_errors
from poclip.app.ui.chart import chart_svg
from poclip.app.ui.counts import counted
from poclip.app.ui.identity import hf_orgs
from poclip.engine.losses import PREFERENCE_LOSSES
from poclip.errors import UserError

EVAL_KEYS = ("clean_accuracy", "typographic_accuracy", "attack_success_rate", "kl_drift")
VERSION_COLUMNS = ["id", "status", "loss", "parent", "created", "typographic acc", "clean acc", "pairs", "reason"]


def progress_text(service: AppService) -> str:
    """The trainer's state in steps (the unit of the chart), e.g. 'training run 3: step 120 of 180'."""
    p = service.training.progress()
    run = f" run {p.run_id}" if p.run_id else ""
    if p.phase == "training" and p.total:
        text = f"**Trainer:** training{run}: step {p.step} of {p.total}"
    elif p.phase in ("promoted", "rejected") and p.history:
        text = f"**Trainer:**{run} {p.phase} after {counted(int(p.history[-1]['step']), 'step')}"
    else:
        text = f"**Trainer:** {p.phase}{run}"
    if p.message:
        text += f"\n\n{p.message}"
    return text


_chart_cache: dict[str, tuple[tuple, str]] = {}


def training_chart(service: AppService) -> str:
    """The chart of the current run, redrawn only when the run has new steps (every open page polls it). The
    stored curve is thinned to a bounded length, so its newest step, not its length, says whether it moved."""
    p = service.training.progress()
    key = (id(service), p.run_id, p.phase, p.history[-1].get("step") if p.history else None)
    cached = _chart_cache.get("last")
    if cached is None or cached[0] != key:
        cached = (key, chart_svg(list(p.history), title=f"Training run {p.run_id or ''} (per optimizer step)"))
        _chart_cache["last"] = cached
    return cached[1]


GATE_COLUMNS = ["metric", "live", "candidate", "base", "margin", "pass", "rule"]


def progress_view(service: AppService) -> tuple[str, str, pd.DataFrame]:
    """Progress text, the chart (SVG in HTML) and the latest run's gate table: one row per test of the promotion
    rule (metric, live, candidate, base, margin, pass or fail, the rule that needs it). A run recorded before the
    gate kept its table shows its held-out metrics instead."""
    chart = training_chart(service)
    table = pd.DataFrame(columns=GATE_COLUMNS)
    metrics = service.training.latest_evaluation()
    if metrics and metrics.get("gate_table"):
        table = pd.DataFrame([{**row, "pass": "pass" if row["pass"] else "fail"} for row in metrics["gate_table"]],
                             columns=GATE_COLUMNS)
    elif metrics:
        table = pd.DataFrame([{"metric": k, "live": metrics["live_before"].get(k),
                               "candidate": metrics["candidate"].get(k), "base": metrics["base"].get(k)}
                              for k in EVAL_KEYS], columns=GATE_COLUMNS)
    return progress_text(service), chart, table


def versions_table(service: AppService) -> pd.DataFrame:
    rows = [{"id": v.id, "status": v.status, "loss": v.metrics.get("loss"), "parent": v.parent_id,
             "created": v.created_at.strftime("%Y-%m-%d %H:%M"),
             "typographic acc": (v.metrics.get("candidate") or {}).get("typographic_accuracy"),
             "clean acc": (v.metrics.get("candidate") or {}).get("clean_accuracy"),
             "pairs": v.metrics.get("pairs"), "reason": v.reason or v.metrics.get("gate", "")}
            for v in service.admin.versions(limit=50)]
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


def retrain_handler(service: AppService, token: str | None, loss: str | None,
                    oauth_token: gr.OAuthToken | None = None) -> str:
    """Queue a retrain (admin only); the background trainer runs it while the UI stays responsive."""
    run = service.training.retrain(loss or "dpo", token=token, hf_orgs=hf_orgs(oauth_token))
    return f"**Trainer:** run {run['run_id']} is {run['status']}; progress appears here."


def promote_handler(service: AppService, token: str | None, version_id, oauth_token: gr.OAuthToken | None = None):
    if not version_id:
        raise UserError("Enter the id of the version to promote.")
    service.admin.promote(int(version_id), token=token, hf_orgs=hf_orgs(oauth_token))
    return f"Version {int(version_id)} is live.", versions_table(service)


def rollback_handler(service: AppService, token: str | None, version_id, oauth_token: gr.OAuthToken | None = None):
    result = service.admin.rollback(int(version_id) if version_id else None, token=token, hf_orgs=hf_orgs(oauth_token))
    return f"Rolled back: version {result['active_version']} is live.", versions_table(service)


def build_train(service: AppService, admin_token: gr.State) -> dict:
    """The Train tab's components and events (inside an open ``gr.Tab``); returns what the page refreshes."""
    gr.Markdown("Admin only: sign in above (admin token or Hugging Face login) to retrain, promote and roll back.")
    with gr.Row():
        loss = gr.Dropdown(list(PREFERENCE_LOSSES), value="dpo", label="Loss", scale=2)
        retrain_btn = gr.Button("Retrain now", variant="primary", elem_id="retrain-btn", scale=1)
    progress = gr.Markdown(elem_id="train-progress")
    chart = gr.HTML(chart_svg([]), elem_id="train-chart-box")
    before_after = gr.Dataframe(label="Promotion gate of the latest run: live model before, candidate, base",
                                interactive=False, headers=GATE_COLUMNS)
    versions = gr.Dataframe(label="Model versions", interactive=False, headers=VERSION_COLUMNS)
    with gr.Row():
        version_id = gr.Number(label="Version id", precision=0)
        promote_btn = gr.Button("Promote")
        rollback_btn = gr.Button("Roll back (to this id, or to the version live before the current one)")
    admin_message = gr.Markdown(elem_id="admin-message")

    @user_errors
    def on_retrain(token, loss_name, oauth_token: gr.OAuthToken | None = None):
        return retrain_handler(service, token, loss_name, oauth_token)

    @user_errors
    def on_promote(token, version, oauth_token: gr.OAuthToken | None = None):
        return promote_handler(service, token, version, oauth_token)

    @user_errors
    def on_rollback(token, version, oauth_token: gr.OAuthToken | None = None):
        return rollback_handler(service, token, version, oauth_token)

    # The token comes from the page's sign-in state; API clients pass theirs to /retrain, /promote, /rollback.
    private = {"api_visibility": "private", **QUIET}
    retrain_btn.click(on_retrain, [admin_token, loss], progress, **private)
    promote_btn.click(on_promote, [admin_token, version_id], [admin_message, versions], **private)
    rollback_btn.click(on_rollback, [admin_token, version_id], [admin_message, versions], **private)

    def refresh():
        text, svg, table = progress_view(service)
        return text, svg, table, versions_table(service)

    return {"outputs": [progress, chart, before_after, versions], "refresh": refresh}
