"""The Data tab: counts and agreement for everyone; who labelled what, exports and backups for admins only."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from poclip.app.compare import MODEL_TITLES
from poclip.app.service import AppService
from poclip.app.ui.boundary import QUIET, store_errors_shown, user_errors
from poclip.app.ui.counts import counted, pairs_text
from poclip.app.ui.identity import hf_orgs

PEOPLE_COLUMNS = ["annotator", "labels", "undone", "gold seen", "gold correct", "trust"]
LEADERBOARD_COLUMNS = ["rank", "defense", "rating", "95% interval", "blind votes", "won"]
RECENT_COLUMNS = ["id", "when", "annotator", "item", "chosen", "rejected", "kind", "undone"]


def data_view(service: AppService, token: str | None, oauth_token: gr.OAuthToken | None = None):
    """(summary text, per-annotator table or None, recent judgments or None): the tables for admins only."""
    admin = service.admin.is_admin(token or None, hf_orgs(oauth_token))
    s = service.admin.data_summary(admin=admin)
    counts = service.pair_counts()
    text = (f"{counted(counts.labels, 'label', bold=True)} from "
            f"{counted(s['annotators'], 'person', 'people', bold=True)} ({s['undone']} undone) on "
            f"{counted(s['items'], 'item', bold=True)} "
            f"({counted(s['gold_items'], 'gold item')} with a reference answer) · {pairs_text(counts)}")
    if not admin:  # counters only: bounded whatever the database size, and nothing that identifies anyone
        return text + "\n\n_Who labelled what and agreement are shown to admins only._", None, None
    alpha = "n/a (needs items with two or more human labels)" if s["alpha"] is None else f"{s['alpha']:.3f}"
    text += f" · agreement (Krippendorff's alpha): **{alpha}**"
    people = pd.DataFrame([{"annotator": a.handle, "labels": a.judgments, "undone": a.undone,
                            "gold seen": a.gold_seen, "gold correct": a.gold_correct, "trust": round(a.trust, 3)}
                           for a in s["per_annotator"]], columns=PEOPLE_COLUMNS)
    recent = pd.DataFrame([{"id": j.id, "when": j.created_at.strftime("%Y-%m-%d %H:%M:%S"), "annotator": j.annotator,
                            "item": j.sample_id, "chosen": j.chosen, "rejected": j.rejected, "kind": j.kind,
                            "undone": j.undone_at is not None} for j in s["recent"]], columns=RECENT_COLUMNS)
    return text, people, recent


def leaderboard_rows(service: AppService) -> list[dict]:
    """The defense leaderboard as plain rows, best first (what ``/leaderboard`` returns)."""
    return [{"model": r.model, "title": MODEL_TITLES.get(r.model, r.model), "rating": r.rating, "low": r.low,
             "high": r.high, "votes": r.votes, "win_rate": r.win_rate} for r in service.comparisons.leaderboard()]


def leaderboard_view(service: AppService) -> tuple[str, pd.DataFrame]:
    """(note, table) for the Data tab: the ranking from blind arena votes, and which peers are built."""
    rows = leaderboard_rows(service)
    table = pd.DataFrame([{"rank": k + 1, "defense": r["title"], "rating": r["rating"],
                           "95% interval": f"{r['low']:.0f} to {r['high']:.0f}", "blind votes": r["votes"],
                           "won": f"{r['win_rate']:.0%}"} for k, r in enumerate(rows)], columns=LEADERBOARD_COLUMNS)
    states = service.peers.states()
    built = ", ".join(f"{MODEL_TITLES.get(n, n)} {state}" for n, state in states.items()) or "none offered"
    note = ("**Defense leaderboard** from blind arena votes only (Compare tab, arena mode: PO-CLIP against a random "
            "defense, named after the vote); Bradley-Terry ratings on the Elo scale with the base model at 1000 "
            "and 95% bootstrap intervals; a tie (both right, or neither) counts half. "
            + ("No blind votes yet." if not rows else "") + f"\n\nPeer defenses: {built}.")
    return note, table


def build_data(service: AppService, admin_token: gr.State) -> dict:
    """The Data tab's components and events (inside an open ``gr.Tab``); returns what the page refreshes."""
    summary = gr.Markdown(elem_id="data-summary")
    people = gr.Dataframe(label="Annotators (admins only)", interactive=False, visible=False, elem_id="people")
    recent = gr.Dataframe(label="Recent judgments (admins only)", interactive=False, visible=False, elem_id="recent")
    board_note = gr.Markdown(elem_id="leaderboard-note")
    board = gr.Dataframe(label="Defense leaderboard", interactive=False, elem_id="leaderboard")
    with gr.Row():
        export_btn = gr.Button("Export pairs (parquet)")
        export_file = gr.File(label="Download", interactive=False)
    with gr.Row():
        hub_repo = gr.Textbox(label="Hub dataset repo (user/name)", value=service.settings.export_repo)
        push_btn = gr.Button("Push to the Hub")
        backup_btn = gr.Button("Back up now")
    data_message = gr.Markdown()

    @user_errors
    def on_export(token, oauth_token: gr.OAuthToken | None = None):
        return service.admin.export_parquet(token=token, hf_orgs=hf_orgs(oauth_token))

    @user_errors
    def on_push(token, repo_id, oauth_token: gr.OAuthToken | None = None):
        return f"Pushed to {service.admin.push_to_hub(repo_id, token=token, hf_orgs=hf_orgs(oauth_token))}."

    @user_errors
    def on_backup(token, oauth_token: gr.OAuthToken | None = None):
        return f"Snapshot written: `{service.admin.backup(token=token, hf_orgs=hf_orgs(oauth_token))}`"

    # The token comes from the page's sign-in state; API clients pass theirs to /export, /push_to_hub, /backup.
    private = {"api_visibility": "private", **QUIET}
    export_btn.click(on_export, [admin_token], export_file, **private)
    push_btn.click(on_push, [admin_token, hub_repo], data_message, **private)
    backup_btn.click(on_backup, [admin_token], data_message, **private)

    @store_errors_shown(5)
    def refresh(token, oauth_token: gr.OAuthToken | None = None):
        text, people_, recent_ = data_view(service, token, oauth_token)
        admin = people_ is not None
        return (text, gr.update(value=people_, visible=admin), gr.update(value=recent_, visible=admin),
                *leaderboard_view(service))

    return {"outputs": [summary, people, recent, board_note, board], "refresh": refresh}
