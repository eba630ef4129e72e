"""The Gradio interface: Compare, Annotate, Train and Data tabs over :class:`poclip.app.service.AppService`.

Handlers are plain functions of the service and the component values, so tests call them directly;
every event a client may call has an explicit ``api_name``.
"""

from __future__ import annotations

import random
import secrets

import gradio as gr
from PIL import Image

from annotation_db import AnnotationDBError, BackupError, HubError
from poclip.app.service import AppService, UserError
from poclip.engine.policy import HeadError
from poclip.settings import ASSETS_DIR
from poclip.world import synth
from poclip.world.attacks import ATTACK_COLOURS, FONTS, AttackError, TextAttack, random_attack, to_hex
from poclip.world.images import ImageError, normalize_image, open_image
from poclip.world.labels import PRESETS, LabelSetError, parse_labels

EXAMPLES_DIR = ASSETS_DIR / "examples"
CUSTOM = "Custom (type below)"
MAX_LABEL_BUTTONS = 12
USER_ERRORS = (AttackError, ImageError, LabelSetError, UserError, AnnotationDBError, HeadError)

# Keyboard shortcuts on the Annotate tab: 1-9 and 0 pick a label, S skips, U undoes.
SHORTCUTS_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const tag = (e.target && e.target.tagName) || '';
  if (['INPUT', 'TEXTAREA', 'SELECT'].includes(tag) || e.ctrlKey || e.metaKey || e.altKey) return;
  const panel = document.getElementById('annotate-panel');
  if (!panel || panel.offsetParent === null) return;
  let id = null;
  if (/^[0-9]$/.test(e.key)) id = 'label-btn-' + (e.key === '0' ? 10 : Number(e.key));
  else if (e.key === 's' || e.key === 'S') id = 'skip-btn';
  else if (e.key === 'u' || e.key === 'U') id = 'undo-btn';
  const btn = id && document.getElementById(id);
  if (btn && btn.offsetParent !== null) { e.preventDefault(); btn.click(); }
});
</script>
"""


def user_errors(fn):
    """Turn errors a person can fix into ``gr.Error`` (shown in the page; nothing was written)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from exc

    return wrapper


# ----- shared pieces ----------------------------------------------------------------------------------------


def resolve_labels(preset: str, custom: str) -> list[str]:
    """The label set chosen in the UI: a preset, or the typed list when 'Custom' is picked."""
    if preset == CUSTOM or preset not in PRESETS:
        return parse_labels(custom or "")
    return list(PRESETS[preset])


def make_attack(
    text: str, font: str, size: float, fill: str, stroke: str, x: float, y: float, opacity: float, rotation: float
) -> TextAttack | None:
    """The attack the controls describe; ``None`` when no text is typed. ``size`` 0 means auto-fit."""
    if not text or not text.strip():
        return None
    return TextAttack(
        text=text, font=font, size=None if not size else float(size), fill=to_hex(fill, "Text colour"),
        stroke=to_hex(stroke, "Outline colour"), x=float(x), y=float(y), opacity=float(opacity),
        rotation=float(rotation),
    ).validate()


def load_upload(image) -> Image.Image:
    """The uploaded picture, validated: a path from the upload widget (or a PIL image from tests)."""
    if image is None:
        raise gr.Error("Upload an image or pick an example first.")
    try:
        return normalize_image(image) if isinstance(image, Image.Image) else open_image(image)
    except ImageError as exc:
        raise gr.Error(str(exc)) from exc


def annotator_handle(handle: str, anon_id: str, profile: gr.OAuthProfile | None = None) -> str:
    """Who is labelling: the Hugging Face login, else the typed handle, else the browser's anonymous id."""
    if profile is not None:
        return f"hf:{profile.username}"
    if handle and handle.strip():
        return handle.strip()
    if anon_id:
        return anon_id
    raise gr.Error("Type a handle (or log in) so your labels can be counted.")


def hf_orgs(oauth_token: gr.OAuthToken | None) -> list[str]:
    """The organisations of the logged-in Hugging Face user (empty when not logged in or offline)."""
    if oauth_token is None:
        return []
    try:
        from huggingface_hub import whoami

        return [org["name"] for org in whoami(token=oauth_token.token).get("orgs", [])]
    except Exception:  # no network or a revoked token: no org rights, not a crash
        return []


def side_titles(version: str, t: float, shown_left: str, revealed: bool) -> tuple[str, str]:
    """Headings of the two answer columns; in arena mode neutral names until the person has voted."""
    names = {"base": "Base CLIP", "aligned": f"PO-CLIP ({version}, t={t:g})"}
    right = "aligned" if shown_left == "base" else "base"
    if not revealed:
        return "### Model A", "### Model B"
    return f"### {names[shown_left]}", f"### {names[right]}"


# ----- Compare ------------------------------------------------------------------------------------------------


def predict_handler(service: AppService, image, text, font, size, fill, stroke, x, y, opacity, rotation, preset,
                    custom, t, arena):
    """Base and aligned predictions side by side: (picture seen, left top-5, right top-5, titles, left model)."""
    picture = load_upload(image)
    try:
        attack = make_attack(text, font, size, fill, stroke, x, y, opacity, rotation)
        result = service.compare(picture, resolve_labels(preset, custom), attack, t=float(t), normalize=False)
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc
    shown_left = random.choice(("base", "aligned")) if arena else "base"
    left, right = (result.base, result.aligned) if shown_left == "base" else (result.aligned, result.base)
    left_title, right_title = side_titles(result.version, result.t, shown_left, revealed=not arena)
    return result.picture, left.top(5), right.top(5), left_title, right_title, shown_left


def vote_handler(service: AppService, image, text, font, size, fill, stroke, x, y, opacity, rotation, preset, custom,
                 t, verdict, correct_label, shown_left, handle, anon_id, profile: gr.OAuthProfile | None = None):
    """Store the person's verdict on the last comparison; returns (message, left title, right title, count)."""
    if image is None:
        raise gr.Error("Upload an image and press Predict before voting.")
    who = annotator_handle(handle, anon_id, profile)
    picture = load_upload(image)
    try:
        attack = make_attack(text, font, size, fill, stroke, x, y, opacity, rotation)
        labels = resolve_labels(preset, custom)
        stored = service.vote(who, picture, labels, attack, verdict, shown_left or "base", correct_label or None,
                              t=float(t))
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc
    left_title, right_title = side_titles(stored["version"], stored["t"], shown_left or "base", revealed=True)
    message = f"Thanks! Stored: **{stored['chosen']}** is right, not *{stored['rejected']}*."
    return message, left_title, right_title, f"You have labelled {service.labelled_by(who)} items."


def random_attack_handler(preset: str, custom: str, seed: int | None = None):
    """Fill the attack controls with a paper-style random attack: a label from the set, random style."""
    try:
        labels = resolve_labels(preset, custom)
    except LabelSetError as exc:
        raise gr.Error(str(exc)) from exc
    a = random_attack(labels, None, random.Random(seed))
    return a.text, a.font, a.size, a.fill, a.stroke, a.x, a.y, 1.0, 0.0


def synthetic_object_handler(seed: int | None = None) -> Image.Image:
    """A fresh picture from the synthetic world (what the bundled model was trained on)."""
    return synth.draw_scene(synth.sample_scene(random.Random(seed)), 224)


def place_text_handler(image, evt: gr.SelectData):
    """Clicking the picture puts the text's centre there."""
    if image is None or evt is None or evt.index is None:
        return gr.update(), gr.update()
    width, height = image.size if isinstance(image, Image.Image) else Image.open(image).size
    px, py = evt.index[0], evt.index[1]
    return round(px / width, 3), round(py / height, 3)


def example_paths() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))


# ----- Annotate -----------------------------------------------------------------------------------------------


def _item_outputs(service: AppService, who: str, item, note: str = ""):
    status = service.status()
    mine = service.labelled_by(who)
    counter = (f"**{mine}** labelled by you · **{status['judgments']}** by everyone · "
               + (f"next retrain at **{status['next_retrain_at']}** more new pairs"
                  if status["next_retrain_at"] is not None else "automatic retraining is off"))
    if item is None:
        buttons = [gr.update(visible=False) for _ in range(MAX_LABEL_BUTTONS)]
        return (None, None, "Nothing left to label right now: thank you!" + note, counter, *buttons)
    buttons = [
        gr.update(value=f"{k + 1 if k < 9 else 0}  {label}" if k < 10 else label, visible=True)
        if k < len(item.labels) else gr.update(visible=False)
        for k, label in enumerate(item.labels[:MAX_LABEL_BUTTONS])
    ] + [gr.update(visible=False)] * (MAX_LABEL_BUTTONS - min(len(item.labels), MAX_LABEL_BUTTONS))
    prompt = "Which label names the **object** (ignore any writing)?" + note
    return (item.picture, item.sample.id, prompt, counter, *buttons)


def next_item_handler(service: AppService, handle, anon_id, profile: gr.OAuthProfile | None = None):
    """The next item for this annotator: (picture, sample id, prompt, counters, label buttons...)."""
    who = annotator_handle(handle, anon_id, profile)
    try:
        return _item_outputs(service, who, service.next_item(who))
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc


def answer_handler(service: AppService, sample_id, chosen, handle, anon_id, profile: gr.OAuthProfile | None = None):
    """Record the chosen label for the item, then serve the next one."""
    who = annotator_handle(handle, anon_id, profile)
    if sample_id is None:
        raise gr.Error("There is no item on screen to answer.")
    label = chosen.split("  ", 1)[-1].strip() if chosen else ""
    try:
        service.answer_item(who, int(sample_id), label)
        return _item_outputs(service, who, service.next_item(who))
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc


def skip_handler(service: AppService, sample_id, handle, anon_id, profile: gr.OAuthProfile | None = None):
    """Show another item without recording anything (the skipped one may come back later)."""
    who = annotator_handle(handle, anon_id, profile)
    try:
        item = service.next_item(who)
        for _ in range(5):
            if item is None or item.sample.id != sample_id:
                break
            item = service.next_item(who)
        return _item_outputs(service, who, item)
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc


def undo_handler(service: AppService, handle, anon_id, profile: gr.OAuthProfile | None = None):
    """Undo this annotator's last label (within the undo window) and show that item again."""
    who = annotator_handle(handle, anon_id, profile)
    try:
        undone = service.undo(who)
        if undone is None:
            return _item_outputs(service, who, service.next_item(who), note="\n\n_Nothing recent to undo._")
        sample = service.repo.get_sample(undone["sample_id"])
        from poclip.app.service import Item

        item = Item(sample, service.picture_of(sample), list(sample.labels))
        return _item_outputs(service, who, item, note="\n\n_Undone: answer this one again._")
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc


# ----- Train and Data (admin) ---------------------------------------------------------------------------------


def status_handler(service: AppService) -> dict:
    """Live model, counts and trainer state (JSON)."""
    return service.status()


def retrain_handler(service: AppService, token, loss, oauth_token: gr.OAuthToken | None = None) -> str:
    """Queue a retrain (admin only); the background trainer runs it while the UI stays responsive."""
    try:
        run = service.retrain(loss or "dpo", token=token, hf_orgs=hf_orgs(oauth_token))
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc
    return f"Run {run['run_id']} is {run['status']}. Progress appears below."


def progress_view(service: AppService):
    """Trainer progress text, the loss and reward curves, and the latest before/after evaluation."""
    p = service.trainer.progress
    text = f"**Trainer:** {p.phase}" + (f" (run {p.run_id})" if p.run_id else "")
    if p.total:
        text += f", epoch {p.step}/{p.total}"
    if p.message:
        text += f"\n\n{p.message}"
    rows = []
    for record in p.history:
        for key in ("loss", "rewards/margins", "rewards/accuracies", "kl/clean"):
            if key in record:
                rows.append({"step": record["step"], "metric": key, "value": float(record[key])})
    import pandas as pd

    curves = pd.DataFrame(rows, columns=["step", "metric", "value"])
    runs = service.repo.list_runs(limit=1)
    table = pd.DataFrame(columns=["metric", "live before", "candidate", "base"])
    if runs and runs[0].metrics and "candidate" in runs[0].metrics:
        m = runs[0].metrics
        keys = ["clean_accuracy", "typographic_accuracy", "attack_success_rate", "kl_drift"]
        table = pd.DataFrame([{"metric": k, "live before": m["live_before"].get(k), "candidate": m["candidate"].get(k),
                               "base": m["base"].get(k)} for k in keys])
    return text, curves, table


def versions_table(service: AppService):
    import pandas as pd

    rows = [{"id": v.id, "status": v.status, "parent": v.parent_id, "created": v.created_at.strftime("%Y-%m-%d %H:%M"),
             "typographic acc": (v.metrics.get("candidate") or {}).get("typographic_accuracy"),
             "clean acc": (v.metrics.get("candidate") or {}).get("clean_accuracy"),
             "pairs": v.metrics.get("pairs"), "reason": v.reason or v.metrics.get("gate", "")}
            for v in service.repo.list_versions(limit=50)]
    return pd.DataFrame(rows, columns=["id", "status", "parent", "created", "typographic acc", "clean acc", "pairs",
                                       "reason"])


def promote_handler(service: AppService, token, version_id, oauth_token: gr.OAuthToken | None = None):
    if not version_id:
        raise gr.Error("Enter the id of the version to promote.")
    try:
        service.promote(int(version_id), token=token, hf_orgs=hf_orgs(oauth_token))
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc
    return f"Version {int(version_id)} is live.", versions_table(service)


def rollback_handler(service: AppService, token, version_id, oauth_token: gr.OAuthToken | None = None):
    try:
        result = service.rollback(int(version_id) if version_id else None, token=token, hf_orgs=hf_orgs(oauth_token))
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc
    return f"Rolled back: version {result['active_version']} is live.", versions_table(service)


def data_view(service: AppService):
    import pandas as pd

    s = service.repo.stats()
    alpha = "n/a (needs items with two or more human votes)" if s.alpha is None else f"{s.alpha:.3f}"
    text = (f"**{s.images}** images · **{s.samples}** items ({s.gold_items} gold) · **{s.judgments}** judgments "
            f"({s.undone} undone) · **{s.annotators}** annotators · **{s.pairs}** training pairs · "
            f"agreement (Krippendorff's alpha): **{alpha}**")
    people = pd.DataFrame([{"annotator": a.handle, "judgments": a.judgments, "undone": a.undone,
                            "gold seen": a.gold_seen, "gold correct": a.gold_correct, "trust": round(a.trust, 3)}
                           for a in s.per_annotator],
                          columns=["annotator", "judgments", "undone", "gold seen", "gold correct", "trust"])
    recent = pd.DataFrame([{"id": j.id, "when": j.created_at.strftime("%Y-%m-%d %H:%M:%S"), "annotator": j.annotator,
                            "item": j.sample_id, "chosen": j.chosen, "rejected": j.rejected, "kind": j.kind,
                            "undone": j.undone_at is not None}
                           for j in service.repo.recent_judgments(20)],
                          columns=["id", "when", "annotator", "item", "chosen", "rejected", "kind", "undone"])
    return text, people, recent


def export_handler(service: AppService, token, oauth_token: gr.OAuthToken | None = None):
    try:
        return service.export_parquet(token=token, hf_orgs=hf_orgs(oauth_token))
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc


def push_handler(service: AppService, token, repo_id, oauth_token: gr.OAuthToken | None = None):
    try:
        return f"Pushed to {service.push_to_hub(repo_id, token=token, hf_orgs=hf_orgs(oauth_token))}."
    except (*USER_ERRORS, HubError) as exc:
        raise gr.Error(str(exc)) from exc


def backup_handler(service: AppService, token, oauth_token: gr.OAuthToken | None = None):
    try:
        return f"Snapshot written: `{service.backup(token=token, hf_orgs=hf_orgs(oauth_token))}`"
    except (*USER_ERRORS, BackupError) as exc:
        raise gr.Error(str(exc)) from exc


# ----- layout -------------------------------------------------------------------------------------------------


def browser_secret(service: AppService) -> str:
    """A secret kept in the data dir, so anonymous ids stored in browsers survive restarts."""
    path = service.settings.data_dir / "browser_state_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
    return path.read_text().strip()


def build_demo(service: AppService) -> gr.Blocks:
    """The whole app page."""
    on_space = bool(service.settings.space_id)
    with gr.Blocks(title="PO-CLIP: typographic attacks on CLIP") as demo:
        gr.Markdown("# PO-CLIP\nWrite a word on a picture and watch CLIP change its mind; help it learn not to.")
        model_line = gr.Markdown(f"**Live model:** {service.model_info()}")
        anon_id = gr.BrowserState("", storage_key="poclip-annotator", secret=browser_secret(service))
        with gr.Row():
            if on_space:
                gr.LoginButton()
            handle = gr.Textbox(label="Your handle (optional; kept with your labels)", max_lines=1, scale=3)

        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", label="Image (click it to place the text)",
                                     sources=["upload", "clipboard", "webcam"], height=320)
                    with gr.Row():
                        synth_btn = gr.Button("New synthetic object")
                        random_btn = gr.Button("Random attack")
                    if example_paths():
                        gr.Examples(example_paths(), inputs=image, label="Examples")
                    text = gr.Textbox(label="Text to write on the image", placeholder="e.g. star", max_lines=4)
                    with gr.Accordion("Text style and position", open=False):
                        font = gr.Dropdown(list(FONTS), value="sans-bold", label="Font")
                        size = gr.Slider(0, 0.5, value=0.15, step=0.005, label="Size (fraction of image; 0 = fit)")
                        with gr.Row():
                            fill = gr.ColorPicker(value=ATTACK_COLOURS["white"], label="Text colour")
                            stroke = gr.ColorPicker(value=ATTACK_COLOURS["black"], label="Outline colour")
                        x = gr.Slider(0, 1, value=0.5, step=0.01, label="Horizontal position")
                        y = gr.Slider(0, 1, value=0.5, step=0.01, label="Vertical position")
                        opacity = gr.Slider(0, 1, value=1, step=0.05, label="Opacity")
                        rotation = gr.Slider(-90, 90, value=0, step=1, label="Rotation (degrees)")
                    preset = gr.Dropdown([*PRESETS, CUSTOM], value="Synthetic shapes", label="Label set")
                    custom = gr.Textbox(label="Custom labels (comma-separated)", placeholder="dog, cat, car")
                    with gr.Row():
                        t = gr.Slider(-2, 2, value=1, step=0.05, label="Alignment strength t (0 = base, 1 = trained)")
                        arena = gr.Checkbox(label="Arena mode (hide which side is which until I vote)")
                    predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
                with gr.Column():
                    seen = gr.Image(type="pil", label="What the models see", interactive=False, height=320)
                    with gr.Row():
                        with gr.Column():
                            left_title = gr.Markdown("### Base CLIP")
                            left = gr.Label(num_top_classes=5, label="Left", elem_id="left-answer")
                        with gr.Column():
                            right_title = gr.Markdown("### PO-CLIP")
                            right = gr.Label(num_top_classes=5, label="Right", elem_id="right-answer")
                    gr.Markdown("**Which answer is right?**")
                    with gr.Row():
                        vote_left = gr.Button("Left is right", elem_id="vote-left")
                        vote_right = gr.Button("Right is right", elem_id="vote-right")
                        vote_both = gr.Button("Both", elem_id="vote-both")
                    with gr.Row():
                        correct = gr.Dropdown(list(synth.SHAPES), label="Neither: the object is ...", scale=3)
                        vote_neither = gr.Button("Neither", elem_id="vote-neither")
                    vote_message = gr.Markdown(elem_id="vote-message")
                    vote_counter = gr.Markdown(elem_id="vote-counter")
            shown_left = gr.Textbox("base", visible=False)
            verdict = gr.Textbox("", visible=False)
            vote_api = gr.Button(visible=False)

        with gr.Tab("Annotate", elem_id="annotate-tab"):
            with gr.Column(elem_id="annotate-panel"):
                gr.Markdown("Label as fast as you like: number keys pick a label, **S** skips, **U** undoes. "
                            "Pictures you upload in Compare may be shown to other annotators; upload only "
                            "pictures you have the right to share.")
                item_counter = gr.Markdown(elem_id="item-counter")
                item_prompt = gr.Markdown()
                item_image = gr.Image(type="pil", label="Item", interactive=False, height=300)
                item_id = gr.Number(visible=False, precision=0)
                chosen = gr.Textbox(visible=False)
                with gr.Row():
                    label_buttons = [gr.Button(visible=False, elem_id=f"label-btn-{k + 1}")
                                     for k in range(MAX_LABEL_BUTTONS)]
                with gr.Row():
                    start_btn = gr.Button("Start / next item", variant="primary", elem_id="next-btn")
                    skip_btn = gr.Button("Skip (S)", elem_id="skip-btn")
                    undo_btn = gr.Button("Undo (U)", elem_id="undo-btn")
                answer_api = gr.Button(visible=False)

        with gr.Tab("Train"):
            gr.Markdown("Admin only: retraining, promotion and rollback need the admin token "
                        "(`POCLIP_ADMIN_TOKEN`) or membership of the admin organisation.")
            token = gr.Textbox(label="Admin token", type="password", max_lines=1)
            with gr.Row():
                loss = gr.Dropdown(["dpo", "ipo", "kto", "robust", "hinge"], value="dpo", label="Loss")
                retrain_btn = gr.Button("Retrain now", variant="primary")
            retrain_message = gr.Markdown()
            progress_text = gr.Markdown()
            curves = gr.LinePlot(x="step", y="value", color="metric", label="Loss and rewards per epoch", height=260)
            before_after = gr.Dataframe(label="Held-out evaluation: live model before, candidate, base",
                                        interactive=False)
            versions = gr.Dataframe(label="Model versions", interactive=False)
            with gr.Row():
                version_id = gr.Number(label="Version id", precision=0)
                promote_btn = gr.Button("Promote")
                rollback_btn = gr.Button("Roll back (to this id, or the previous version if empty)")
            admin_message = gr.Markdown()
            status_json = gr.JSON(label="Status", visible=False)
            status_btn = gr.Button(visible=False)

        with gr.Tab("Data"):
            data_text = gr.Markdown()
            people = gr.Dataframe(label="Annotators", interactive=False)
            recent = gr.Dataframe(label="Recent judgments", interactive=False)
            with gr.Row():
                export_btn = gr.Button("Export pairs (parquet)")
                export_file = gr.File(label="Download", interactive=False)
            with gr.Row():
                hub_repo = gr.Textbox(label="Hub dataset repo (user/name)", value=service.settings.export_repo)
                push_btn = gr.Button("Push to the Hub")
                backup_btn = gr.Button("Back up now")
            data_message = gr.Markdown()

        # ---- events ----
        style = [text, font, size, fill, stroke, x, y, opacity, rotation]
        compare_in = [image, *style, preset, custom, t]
        compare_out = [seen, left, right, left_title, right_title, shown_left]

        @user_errors
        def predict(image, text, font, size, fill, stroke, x, y, opacity, rotation, preset, custom, t, arena):
            return predict_handler(service, image, text, font, size, fill, stroke, x, y, opacity, rotation, preset,
                                   custom, t, arena)

        predict_btn.click(predict, [*compare_in, arena], compare_out, api_name="predict")
        text.submit(predict, [*compare_in, arena], compare_out, api_visibility="private")

        def vote(image, text, font, size, fill, stroke, x, y, opacity, rotation, preset, custom, t, verdict,
                 correct, shown_left, handle, anon_id, profile: gr.OAuthProfile | None = None):
            return vote_handler(service, image, text, font, size, fill, stroke, x, y, opacity, rotation, preset,
                                custom, t, verdict, correct, shown_left, handle, anon_id, profile)

        vote_in = [*compare_in, verdict, correct, shown_left, handle, anon_id]
        vote_out = [vote_message, left_title, right_title, vote_counter]
        vote_api.click(vote, vote_in, vote_out, api_name="vote")
        for button, value in ((vote_left, "left"), (vote_right, "right"), (vote_both, "both"),
                              (vote_neither, "neither")):
            button.click(lambda v=value: v, None, verdict, api_visibility="private").then(
                vote, vote_in, vote_out, api_visibility="private")

        def random_style(preset, custom):
            return random_attack_handler(preset, custom)

        random_btn.click(random_style, [preset, custom],
                         [text, font, size, fill, stroke, x, y, opacity, rotation], api_name="random_attack")
        synth_btn.click(lambda: synthetic_object_handler(), None, image, api_name="synthetic_object")
        image.select(place_text_handler, image, [x, y], api_visibility="private")
        preset.change(lambda p, c: gr.update(choices=resolve_labels(p, c) if p != CUSTOM else []), [preset, custom],
                      correct, api_visibility="private")

        def next_item(handle, anon_id, profile: gr.OAuthProfile | None = None):
            return next_item_handler(service, handle, anon_id, profile)

        def answer(item_id, chosen, handle, anon_id, profile: gr.OAuthProfile | None = None):
            return answer_handler(service, item_id, chosen, handle, anon_id, profile)

        def skip(item_id, handle, anon_id, profile: gr.OAuthProfile | None = None):
            return skip_handler(service, item_id, handle, anon_id, profile)

        def undo(handle, anon_id, profile: gr.OAuthProfile | None = None):
            return undo_handler(service, handle, anon_id, profile)

        item_out = [item_image, item_id, item_prompt, item_counter, *label_buttons]
        start_btn.click(next_item, [handle, anon_id], item_out, api_name="next_item")
        answer_api.click(answer, [item_id, chosen, handle, anon_id], item_out, api_name="answer")
        for button in label_buttons:
            button.click(answer, [item_id, button, handle, anon_id], item_out, api_visibility="private")
        skip_btn.click(skip, [item_id, handle, anon_id], item_out, api_name="skip")
        undo_btn.click(undo, [handle, anon_id], item_out, api_name="undo")

        def retrain(token, loss, oauth_token: gr.OAuthToken | None = None):
            return retrain_handler(service, token, loss, oauth_token)

        def promote(token, version_id, oauth_token: gr.OAuthToken | None = None):
            return promote_handler(service, token, version_id, oauth_token)

        def rollback(token, version_id, oauth_token: gr.OAuthToken | None = None):
            return rollback_handler(service, token, version_id, oauth_token)

        def export(token, oauth_token: gr.OAuthToken | None = None):
            return export_handler(service, token, oauth_token)

        def push(token, repo_id, oauth_token: gr.OAuthToken | None = None):
            return push_handler(service, token, repo_id, oauth_token)

        def backup(token, oauth_token: gr.OAuthToken | None = None):
            return backup_handler(service, token, oauth_token)

        retrain_btn.click(retrain, [token, loss], retrain_message, api_name="retrain")
        status_btn.click(lambda: status_handler(service), None, status_json, api_name="status")
        promote_btn.click(promote, [token, version_id], [admin_message, versions], api_name="promote")
        rollback_btn.click(rollback, [token, version_id], [admin_message, versions], api_name="rollback")
        export_btn.click(export, [token], export_file, api_name="export")
        push_btn.click(push, [token, hub_repo], data_message, api_name="push_to_hub")
        backup_btn.click(backup, [token], data_message, api_name="backup")

        def refresh():
            text_, curves_, table_ = progress_view(service)
            data_text_, people_, recent_ = data_view(service)
            return (f"**Live model:** {service.model_info()}", text_, curves_, table_, versions_table(service),
                    data_text_, people_, recent_)

        refresh_out = [model_line, progress_text, curves, before_after, versions, data_text, people, recent]
        gr.Timer(3.0).tick(refresh, None, refresh_out, api_visibility="private", queue=False)
        demo.load(refresh, None, refresh_out, api_visibility="private")
        demo.load(service.annotator_token, anon_id, anon_id, api_visibility="private")  # server-signed id
    return demo


def launch_kwargs() -> dict:
    """Arguments for ``demo.launch`` that belong to the page rather than the server."""
    return {"head": SHORTCUTS_JS, "theme": gr.themes.Soft()}

