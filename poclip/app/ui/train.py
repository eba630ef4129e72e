"""The Train tab (admin): retrain now, live progress and curves, held-out evaluation, versions, promote, roll back."""

from __future__ import annotations

import re

import gradio as gr
import pandas as pd

from annotation_db import VersionInfo, VersionKind
from poclip.app.service import AppService
from poclip.app.ui.boundary import QUIET, user_errors
from poclip.app.ui.chart import chart_svg
from poclip.app.ui.counts import counted
from poclip.app.ui.identity import admin_name, hf_orgs
from poclip.engine.losses import PREFERENCE_LOSSES
from poclip.errors import UserError

EVAL_KEYS = ("clean_accuracy", "typographic_accuracy", "attack_success_rate", "kl_drift")
VERSION_COLUMNS = ["id", "model", "status", "loss", "parent", "created", "typographic acc", "clean acc", "pairs",
                   "reason"]
ROLLBACK_CHOICES = [("the id above, or the version live before the current one", "previous"),
                    ("the starter head", "starter"), ("the base model (no head)", "base")]


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


def first_line(text: str) -> str:
    """The first line of ``text``, marked when more follows (a gate verdict's per-class table, a long reason)."""
    head, _, rest = text.strip().partition("\n")
    return head + (" [more in the version's details]" if rest.strip() else "")


def version_reason(v: VersionInfo) -> str:
    """The versions table's short reason: who made the version live by hand and why, the rollback note, and the
    gate's verdict, each by its first line (whole lines only: a per-class table is never cut in the middle; the
    details show everything)."""
    gate = v.metrics.get("gate")
    parts = []
    if v.promoted_by:
        parts.append(f"promoted by {v.promoted_by}" + (f": {first_line(v.promotion_reason)}"
                                                       if v.promotion_reason else ""))
    if v.reason and v.reason != gate:
        parts.append(first_line(v.reason))
    if gate:
        parts.append(f"gate: {first_line(gate)}")
    return "; ".join(parts)


def versions_table(service: AppService) -> pd.DataFrame:
    rows = [{"id": v.id, "model": v.name, "status": v.status, "loss": v.metrics.get("loss"), "parent": v.parent_id,
             "created": v.created_at.strftime("%Y-%m-%d %H:%M"),
             "typographic acc": (v.metrics.get("candidate") or {}).get("typographic_accuracy"),
             "clean acc": (v.metrics.get("candidate") or {}).get("clean_accuracy"),
             "pairs": v.metrics.get("pairs"), "reason": version_reason(v)}
            for v in service.admin.versions(limit=50)]
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


def fenced(text: str) -> str:
    """``text`` as a Markdown code block, line for line (the fence is longer than any run of backticks in it)."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))
    body = text.strip("\n")
    return f"{fence}text\n{body}\n{fence}"


def version_details(service: AppService, version_id: int | float | None) -> str:
    """Everything recorded about one version, as Markdown: what it serves, who made it live by hand, when and
    why, the rollback note, and the gate's verdict with its per-class table, line for line."""
    if not version_id:
        return "Click a version's row (or enter its id) to see its full record."
    v = service.admin.version(int(version_id))
    at = f" {v.promoted_at:%Y-%m-%d %H:%M} UTC" if v.promoted_at else ""
    parts = [f"**{v.name.capitalize()}** (id {v.id}, `{v.backbone}`): {v.status}"
             + (f", live since{at}" if v.status == "active" else "")]
    if v.promoted_by:
        parts.append(f"**Promoted by {v.promoted_by}** at{at}" + (f", because:\n\n{fenced(v.promotion_reason)}"
                                                                   if v.promotion_reason else ""))
    gate = v.metrics.get("gate")
    if v.reason and v.reason != gate:
        parts.append(f"**Note:**\n\n{fenced(v.reason)}")
    if gate:
        parts.append(f"**Promotion gate:**\n\n{fenced(gate)}")
    return "\n\n".join(parts)


def now_serving(result: dict) -> str:
    """What an admin action made live, in words: ``Version 4 is live.`` or ``The base model is live (version 7).``"""
    if result["kind"] == VersionKind.TRAINED:
        return f"Version {result['active_version']} is live."
    return f"The {result['serving']} is live (version {result['active_version']})."


def retrain_handler(service: AppService, token: str | None, loss: str | None,
                    oauth_token: gr.OAuthToken | None = None) -> str:
    """Queue a retrain (admin only); the background trainer runs it while the UI stays responsive (on ZeroGPU the
    click runs it, and this answers once it is over)."""
    run = service.training.retrain(loss or "dpo", token=token, hf_orgs=hf_orgs(oauth_token))
    if run["status"] in ("promoted", "rejected", "failed"):
        return f"**Trainer:** run {run['run_id']} ended: {run['status']}; the table below says why."
    return f"**Trainer:** run {run['run_id']} is {run['status']}; progress appears here."


def promote_handler(service: AppService, token: str | None, version_id, reason: str | None = "",
                    oauth_token: gr.OAuthToken | None = None, profile: gr.OAuthProfile | None = None):
    """Promote the version (admin); a version the gate rejected needs the reason typed beside it."""
    if not version_id:
        raise UserError("Enter the id of the version to promote.")
    result = service.admin.promote(int(version_id), reason or "", token=token, hf_orgs=hf_orgs(oauth_token),
                                   username=admin_name(profile))
    return now_serving(result), versions_table(service), version_details(service, result["active_version"])


def rollback_handler(service: AppService, token: str | None, version_id, to: str | None = "previous",
                     reason: str | None = "", oauth_token: gr.OAuthToken | None = None,
                     profile: gr.OAuthProfile | None = None):
    """Roll back (admin) to the version id given, the version live before, the starter head or the base model."""
    result = service.admin.rollback(int(version_id) if version_id else None, to or "previous", reason or "",
                                    token=token, hf_orgs=hf_orgs(oauth_token), username=admin_name(profile))
    return (f"Rolled back. {now_serving(result)}", versions_table(service),
            version_details(service, result["active_version"]))


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
    versions = gr.Dataframe(label="Model versions (click a row for its full record)", interactive=False,
                            headers=VERSION_COLUMNS, wrap=True, elem_id="versions-table")
    with gr.Row():
        version_id = gr.Number(label="Version id", precision=0, scale=1)
        reason = gr.Textbox(label="Reason (recorded with your name; required to promote a version the gate "
                                  "rejected)", max_lines=4, scale=3, elem_id="admin-reason")
    with gr.Row():
        promote_btn = gr.Button("Promote", scale=1)
        target = gr.Radio(ROLLBACK_CHOICES, value="previous", label="Roll back to", scale=3)
        rollback_btn = gr.Button("Roll back", scale=1)
    admin_message = gr.Markdown(elem_id="admin-message")
    details = gr.Markdown(version_details(service, None), elem_id="version-details")

    @user_errors
    def on_retrain(token, loss_name, oauth_token: gr.OAuthToken | None = None):
        return retrain_handler(service, token, loss_name, oauth_token)

    @user_errors
    def on_promote(token, version, why, oauth_token: gr.OAuthToken | None = None,
                   profile: gr.OAuthProfile | None = None):
        return promote_handler(service, token, version, why, oauth_token, profile)

    @user_errors
    def on_rollback(token, version, to, why, oauth_token: gr.OAuthToken | None = None,
                    profile: gr.OAuthProfile | None = None):
        return rollback_handler(service, token, version, to, why, oauth_token, profile)

    @user_errors
    def on_details(version):
        return version_details(service, version)

    def on_select(event: gr.SelectData):
        chosen = event.row_value[0] if event.row_value else None
        return chosen, version_details(service, chosen)

    # The token comes from the page's sign-in state; API clients pass theirs to /retrain, /promote, /rollback.
    private = {"api_visibility": "private", **QUIET}
    retrain_btn.click(on_retrain, [admin_token, loss], progress, **private)
    promote_btn.click(on_promote, [admin_token, version_id, reason], [admin_message, versions, details], **private)
    rollback_btn.click(on_rollback, [admin_token, version_id, target, reason], [admin_message, versions, details],
                       **private)
    versions.select(on_select, None, [version_id, details], **private)
    version_id.submit(on_details, version_id, details, **private)

    def refresh():
        text, svg, table = progress_view(service)
        return text, svg, table, versions_table(service)

    return {"outputs": [progress, chart, before_after, versions], "refresh": refresh}
