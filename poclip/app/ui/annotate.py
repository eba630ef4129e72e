"""The Annotate tab: one attacked picture at a time, a button per candidate label, keyboard shortcuts."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from poclip.app.annotation import Item
from poclip.app.display import display_file
from poclip.app.service import AppService
from poclip.app.ui.boundary import QUIET, user_errors
from poclip.app.ui.counts import counted, pairs_text
from poclip.app.ui.identity import annotator_handle, keep_name
from poclip.errors import UserError
from poclip.world.photos import CREDIT, is_photo_label_set

# Room for the largest label set of the real photos (25 labels); a larger custom set shows its first 32.
MAX_LABEL_BUTTONS = 32

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


@dataclass(frozen=True)
class ItemView:
    """What the Annotate tab shows: the picture, its sample id and label set, the prompt and the counters."""

    picture: object
    sample_id: int | None
    labels: list[str]
    prompt: str
    counter: str

    def picture_file(self) -> str:
        """The picture as a finished display file (one per picture, shared by every client that shows it)."""
        return display_file(self.picture)

    def outputs(self) -> tuple:
        """What the Annotate tab's components show: picture, sample id, prompt, counters, the label buttons."""
        buttons = [gr.update(value=f"{k + 1 if k < 9 else 0}  {label}" if k < 10 else label, visible=True)
                   for k, label in enumerate(self.labels[:MAX_LABEL_BUTTONS])]
        buttons += [gr.update(visible=False)] * (MAX_LABEL_BUTTONS - len(buttons))
        shown = None if self.picture is None else self.picture_file()
        return (shown, self.sample_id, self.prompt, self.counter, *buttons)


def counter_text(service: AppService, who: str) -> str:
    """The person's own labels, everyone's, and the pair figures (:func:`~poclip.app.ui.counts.pairs_text`)."""
    counts = service.pair_counts()
    people = service.admin.people_counts()["annotators"]
    mine = service.annotation.labelled_by(who)
    name = service.visitors.display_name(who)
    you = "you" if name is None else f"you ({name})"
    return (f"{counted(mine, 'label', bold=True)} from {you} · {counted(counts.labels, 'label', bold=True)} from "
            f"{counted(people, 'person', 'people')} · {pairs_text(counts)}")


def item_view(service: AppService, who: str, item: Item | None, note: str = "") -> ItemView:
    counter = counter_text(service, who)
    if item is None:
        return ItemView(None, None, [], "Nothing left to label right now: thank you!" + note, counter)
    prompt = "Which label names the **object** (ignore any writing)?" + note
    if is_photo_label_set(item.sample.label_set):  # one of the real photos: their licence requires the credit
        prompt += f"\n\n<small>{CREDIT}</small>"
    return ItemView(item.picture, item.sample.id, list(item.labels), prompt, counter)


def next_item_handler(service: AppService, handle: str | None, anon_id: str | None,
                      profile: gr.OAuthProfile | None = None) -> ItemView:
    """The next item for this annotator."""
    who = annotator_handle(handle, anon_id, profile, service)
    item = service.annotation.next_item(who)
    keep_name(service, who, handle)
    return item_view(service, who, item)


def answer_handler(service: AppService, sample_id: int | None, chosen: str | None, handle: str | None,
                   anon_id: str | None, profile: gr.OAuthProfile | None = None) -> ItemView:
    """Record the chosen label for the item (a button's text or the bare label), then serve the next one."""
    who = annotator_handle(handle, anon_id, profile, service)
    if sample_id is None:
        raise UserError("There is no item on screen to answer: press Start.")
    label = chosen.split("  ", 1)[-1].strip() if chosen else ""
    service.annotation.answer_item(who, int(sample_id), label)
    keep_name(service, who, handle)
    return item_view(service, who, service.annotation.next_item(who))


def skip_handler(service: AppService, sample_id: int | None, handle: str | None, anon_id: str | None,
                 profile: gr.OAuthProfile | None = None) -> ItemView:
    """Show another item without recording anything (the skipped one may come back later)."""
    who = annotator_handle(handle, anon_id, profile, service)
    item = service.annotation.next_item(who)
    for _ in range(5):
        if item is None or item.sample.id != sample_id:
            break
        item = service.annotation.next_item(who)
    keep_name(service, who, handle)
    return item_view(service, who, item)


def undo_handler(service: AppService, handle: str | None, anon_id: str | None,
                 profile: gr.OAuthProfile | None = None) -> ItemView:
    """Undo this annotator's last label (within the undo window) and show that item again."""
    who = annotator_handle(handle, anon_id, profile, service)
    undone = service.annotation.undo(who)
    keep_name(service, who, handle)
    if undone is None:
        return item_view(service, who, service.annotation.next_item(who), note="\n\n_Nothing recent to undo._")
    return item_view(service, who, service.annotation.item(undone["sample_id"]),
                     note="\n\n_Undone: answer this one again._")


def build_annotate(service: AppService, handle_box: gr.Textbox, anon_id: gr.BrowserState) -> None:
    """The Annotate tab's components and events (inside an open ``gr.Tab``); the public API's /next_item,
    /answer, /skip and /undo call the same handlers (:mod:`poclip.app.ui.api`)."""
    with gr.Column(elem_id="annotate-panel"):
        gr.Markdown("Number keys pick a label, **S** skips, **U** undoes.", elem_id="annotate-help")
        item_counter = gr.Markdown(elem_id="item-counter")
        item_prompt = gr.Markdown(elem_id="item-prompt")
        item_image = gr.Image(type="filepath", label="Item", interactive=False, height=250, elem_id="item-image",
                              show_label=False)
        item_id = gr.State(None)  # the sample on screen: what a label button answers
        with gr.Row(elem_id="label-grid"):
            label_buttons = [gr.Button(visible=False, elem_id=f"label-btn-{k + 1}", min_width=0, size="sm")
                             for k in range(MAX_LABEL_BUTTONS)]
        with gr.Row(elem_id="annotate-actions"):
            start_btn = gr.Button("Start / next item", variant="primary", elem_id="next-btn", min_width=0)
            skip_btn = gr.Button("Skip (S)", elem_id="skip-btn", min_width=0)
            undo_btn = gr.Button("Undo (U)", elem_id="undo-btn", min_width=0)

    @user_errors
    def on_next_item(handle, anon, profile: gr.OAuthProfile | None = None):
        return next_item_handler(service, handle, anon, profile).outputs()

    @user_errors
    def on_answer(sample_id, label, handle, anon, profile: gr.OAuthProfile | None = None):
        return answer_handler(service, sample_id, label, handle, anon, profile).outputs()

    @user_errors
    def on_skip(sample_id, handle, anon, profile: gr.OAuthProfile | None = None):
        return skip_handler(service, sample_id, handle, anon, profile).outputs()

    @user_errors
    def on_undo(handle, anon, profile: gr.OAuthProfile | None = None):
        return undo_handler(service, handle, anon, profile).outputs()

    private = {"api_visibility": "private", **QUIET}
    item_out = [item_image, item_id, item_prompt, item_counter, *label_buttons]
    start_btn.click(on_next_item, [handle_box, anon_id], item_out, **private)
    for button in label_buttons:  # a button's text is its label (after the shortcut number)
        button.click(on_answer, [item_id, button, handle_box, anon_id], item_out, **private)
    skip_btn.click(on_skip, [item_id, handle_box, anon_id], item_out, **private)
    undo_btn.click(on_undo, [handle_box, anon_id], item_out, **private)
