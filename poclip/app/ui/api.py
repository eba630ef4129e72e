"""The app's public API: one typed function per endpoint, registered with ``gr.api`` (no page component involved).

Each endpoint is a method of :class:`PublicApi`: its parameters are the endpoint's parameters (a default makes one
optional) and its return type, a ``NamedTuple``, names the endpoint's outputs; :func:`expose` derives the endpoint
from both, so a client calls it by those names and README's "### API" table lists the same ones (a test compares
them). The page's own buttons use private events and the same handlers.

A file parameter arrives as Gradio's record of the raw upload (its ``path``; nothing has decoded it), so the app's
validator (:func:`poclip.world.images.open_image`) is the first to read it. Every endpoint goes through the UI's
error boundary (:func:`poclip.app.ui.boundary.user_errors`): a person's mistake comes back as the app's message,
and the service sees the request's origin for the per-address limits.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypedDict, get_type_hints

import gradio as gr
from gradio.context import get_blocks_context
from gradio.data_classes import FileData

from poclip.app.admin import ROLLBACK_TARGETS
from poclip.app.compare import VERDICTS
from poclip.app.service import AppService
from poclip.app.ui.annotate import ItemView, answer_handler, next_item_handler, skip_handler, undo_handler
from poclip.app.ui.boundary import user_errors
from poclip.app.ui.compare import (
    MANY_PREDICTIONS,
    Controls,
    predict_handler,
    random_attack_handler,
    shown_file,
    upload_handler,
    vote_handler,
)
from poclip.app.ui.data import leaderboard_rows
from poclip.app.ui.identity import admin_name, hf_orgs
from poclip.app.ui.train import now_serving
from poclip.engine.losses import PREFERENCE_LOSSES

Verdict = Literal[VERDICTS]  # type: ignore[valid-type]  # the service's vocabulary, once
Loss = Literal[tuple(PREFERENCE_LOSSES)]  # type: ignore[valid-type]
RollbackTarget = Literal[ROLLBACK_TARGETS]  # type: ignore[valid-type]


class Confidence(TypedDict):
    label: str
    confidence: float


class Answer(TypedDict):
    """One model's top-5 answer, shaped as Gradio's Label payload (what clients of this API always read)."""

    label: str
    confidences: list[Confidence]


class Stored(TypedDict):
    """The judgment a vote stored."""

    judgment_id: int
    sample_id: int
    comparison_id: str
    chosen: str
    rejected: str
    verdict: str
    shown_left: str
    shown_right: str
    blind: bool
    version: str
    t: float


class Prediction(NamedTuple):
    seen: FileData  # the picture with the text, as both models saw it
    left: Answer  # the left model's (base CLIP unless chosen otherwise, or drawn in arena mode)
    right: Answer
    left_title: str
    right_title: str
    comparison_id: str  # what /vote names
    labels: list[str]


class Vote(NamedTuple):
    stored: Stored
    counter: str
    anonymous_id: str | None  # the signed id that acted: pass it back to act as the same annotator




class ItemShown(NamedTuple):
    picture: FileData | None  # None when nothing is left to label
    sample_id: int | None
    labels: list[str]
    prompt: str
    counters: str
    anonymous_id: str | None  # the signed id that acted (None for a Hugging Face login): pass it back


class Attack(NamedTuple):
    text: str
    font: str
    size: float
    fill: str
    stroke: str
    x: float
    y: float
    opacity: float
    rotation: float


class Message(NamedTuple):
    message: str


class Status(NamedTuple):
    status: dict[str, Any]


class Export(NamedTuple):
    file: FileData


class Leaderboard(NamedTuple):
    # Best first: model, title, rating (Elo scale, the base model at 1000), low and high (its 95% interval),
    # votes, win_rate; from blind arena votes only.
    leaderboard: list[dict[str, Any]]


def top5(probs: dict[str, float]) -> Answer:
    """``label -> probability`` (at most five, highest first) as Gradio's Label payload."""
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    return {"label": ranked[0][0], "confidences": [{"label": k, "confidence": v} for k, v in ranked]}


def item_shown(view: ItemView, anonymous_id: str | None) -> ItemShown:
    picture = None if view.picture is None else FileData(path=view.picture_file())
    return ItemShown(picture, view.sample_id, view.labels, view.prompt, view.counter, anonymous_id)


class PublicApi:
    """Every public endpoint, in README's order; a method's name is its ``api_name``."""

    ENDPOINTS = ("predict", "vote", "next_item", "answer", "skip", "undo", "random_attack", "retrain", "status",
                 "leaderboard", "promote", "rollback", "export", "push_to_hub", "backup")

    def __init__(self, service: AppService) -> None:
        self.service = service

    def acting_id(self, anonymous_id: str | None, profile: gr.OAuthProfile | None) -> str | None:
        """The anonymous id a call acts with: the one passed, else (no login) a fresh signed one, returned to
        the client so that it can act as the same annotator on its next call. A typed handle never acts."""
        if anonymous_id or profile is not None:
            return anonymous_id or None
        return self.service.identity.issue()

    # The defaults are the Compare tab's (Controls), so a call that leaves a control out gets what the page shows.
    def predict(self, picture: FileData, text: str = Controls.text, font: str = Controls.font,
                size: float = Controls.size, fill: str = Controls.fill, stroke: str = Controls.stroke,
                x: float = Controls.x, y: float = Controls.y, opacity: float = Controls.opacity,
                rotation: float = Controls.rotation, label_set: str = Controls.preset,
                custom_labels: str = Controls.custom, t: float = Controls.t, arena: bool = Controls.arena,
                share: bool = Controls.share, left: str = Controls.left_model,
                right: str = Controls.right_model) -> Prediction:
        """The raw picture file and the text to write on it -> what both models answered, kept for /vote.

        Args:
            picture: the picture file (PNG, JPEG, WebP, GIF), checked by the app's validator.
            size: text height as a fraction of the picture's short side; 0 fits the text to the picture.
            label_set: a preset name, or "Custom (type below)" to use custom_labels (comma-separated).
            t: alignment strength (0 = the base model, 1 = the trained head).
            share: the uploader's consent: the picture may be stored with a vote and shown to annotators.
            left, right: the models each side shows: base, aligned (PO-CLIP) or a peer defense once built
                (prompts, ablation, prefix, ocr_mask, paint); arena mode draws them instead.
        """
        controls = Controls(text, font, size, fill, stroke, x, y, opacity, rotation, label_set, custom_labels, t,
                            arena, share, left, right)
        # An address over its prediction rate is refused before its upload is decoded. Gradio hands the upload
        # over as its file record (a dict): the raw file's path, not yet decoded.
        visitors = self.service.visitors
        visitors.admit_prediction(count=False)
        shown = predict_handler(self.service, upload_handler(picture["path"], visitors.client()), controls)
        return Prediction(FileData(path=shown_file(shown.seen)), top5(shown.left), top5(shown.right),
                          shown.left_title, shown.right_title, shown.comparison_id, list(shown.labels))

    def vote(self, comparison_id: str, verdict: Verdict, neither_label: str = "", handle: str = "",
             anonymous_id: str | None = None, profile: gr.OAuthProfile | None = None) -> Vote:
        """Which side of comparison ``comparison_id`` (from /predict) was right; ``neither`` needs neither_label.

        Args:
            neither_label: for ``neither``: the right label, one of the comparison's labels.
            handle: a display name only, shown for the annotator that acts.
            anonymous_id: the server-signed id that acts (the page keeps one; a call without one gets a new
                one, returned as ``anonymous_id``).
        """
        anonymous_id = self.acting_id(anonymous_id, profile)
        result = vote_handler(self.service, comparison_id, verdict, neither_label, handle, anonymous_id, profile)
        return Vote(Stored(**{key: result[key] for key in Stored.__annotations__}), result["counter"], anonymous_id)

    def next_item(self, handle: str = "", anonymous_id: str | None = None,
                  profile: gr.OAuthProfile | None = None) -> ItemShown:
        """The next attacked picture for this annotator to label."""
        anonymous_id = self.acting_id(anonymous_id, profile)
        return item_shown(next_item_handler(self.service, handle, anonymous_id, profile), anonymous_id)

    def answer(self, sample_id: int, label: str, handle: str = "", anonymous_id: str | None = None,
               profile: gr.OAuthProfile | None = None) -> ItemShown:
        """The right label for item ``sample_id`` (as /next_item served it) -> the next item."""
        anonymous_id = self.acting_id(anonymous_id, profile)
        return item_shown(answer_handler(self.service, sample_id, label, handle, anonymous_id, profile), anonymous_id)

    def skip(self, sample_id: int | None = None, handle: str = "", anonymous_id: str | None = None,
             profile: gr.OAuthProfile | None = None) -> ItemShown:
        """Another item instead of ``sample_id``, recording nothing."""
        anonymous_id = self.acting_id(anonymous_id, profile)
        return item_shown(skip_handler(self.service, sample_id, handle, anonymous_id, profile), anonymous_id)

    def undo(self, handle: str = "", anonymous_id: str | None = None,
             profile: gr.OAuthProfile | None = None) -> ItemShown:
        """Undo this annotator's last label and show that item again."""
        anonymous_id = self.acting_id(anonymous_id, profile)
        return item_shown(undo_handler(self.service, handle, anonymous_id, profile), anonymous_id)

    def random_attack(self, label_set: str = Controls.preset, custom_labels: str = Controls.custom) -> Attack:
        """A paper-style random attack: a label of the set written in a random style and place."""
        return Attack(*random_attack_handler(label_set, custom_labels))

    def retrain(self, token: str, loss: Loss = "dpo", oauth_token: gr.OAuthToken | None = None) -> Message:
        """Queue a retrain (admin); the background trainer runs it."""
        run = self.service.training.retrain(loss, token=token, hf_orgs=hf_orgs(oauth_token))
        return Message(f"Run {run['run_id']} is {run['status']}; /status shows its progress.")

    def status(self) -> Status:
        """The live model, data counts and the trainer's state."""
        return Status(self.service.status())

    def leaderboard(self) -> Leaderboard:
        """The defenses ranked by blind arena votes (Bradley-Terry, 95% bootstrap intervals)."""
        return Leaderboard(leaderboard_rows(self.service))

    def promote(self, token: str, version_id: int, reason: str = "", oauth_token: gr.OAuthToken | None = None,
                profile: gr.OAuthProfile | None = None) -> Message:
        """Make version ``version_id`` live (admin).

        Args:
            reason: why; recorded with the admin's name and the time and shown in the versions table. Required to
                promote a version the promotion gate rejected.
        """
        live = self.service.admin.promote(version_id, reason, token=token, hf_orgs=hf_orgs(oauth_token),
                                          username=admin_name(profile))
        return Message(now_serving(live))

    def rollback(self, token: str, version_id: int | None = None, to: RollbackTarget = "previous", reason: str = "",
                 oauth_token: gr.OAuthToken | None = None, profile: gr.OAuthProfile | None = None) -> Message:
        """Return to version ``version_id``, the version live before the current one, the starter head or the
        base model (admin).

        Args:
            version_id: the version to return to (leave ``to`` at "previous").
            to: "previous" (version_id, or the version live before the current one), "starter" (the shipped starter
                head) or "base" (the base model, no head).
            reason: why (optional); recorded as for /promote.
        """
        live = self.service.admin.rollback(version_id, to, reason, token=token, hf_orgs=hf_orgs(oauth_token),
                                           username=admin_name(profile))
        return Message(f"Rolled back. {now_serving(live)}")

    def export(self, token: str, oauth_token: gr.OAuthToken | None = None) -> Export:
        """The preference pairs as a Hugging Face dataset in one parquet file (admin)."""
        return Export(FileData(path=self.service.admin.export_parquet(token=token, hf_orgs=hf_orgs(oauth_token))))

    def push_to_hub(self, token: str, repo_id: str = "", oauth_token: gr.OAuthToken | None = None) -> Message:
        """Push the pairs to a Hub dataset repository (default: POCLIP_EXPORT_REPO) (admin)."""
        target = self.service.admin.push_to_hub(repo_id, token=token, hf_orgs=hf_orgs(oauth_token))
        return Message(f"Pushed to {target}.")

    def backup(self, token: str, oauth_token: gr.OAuthToken | None = None) -> Message:
        """Snapshot the database now (admin)."""
        return Message(f"Snapshot written: {self.service.admin.backup(token=token, hf_orgs=hf_orgs(oauth_token))}")


def expose(method: Callable[..., tuple], **options) -> None:
    """Register ``method`` as the public endpoint of its name, inside an open ``gr.Blocks``.

    ``gr.api`` takes the parameters from the signature and the output types from a ``tuple[...]`` return
    annotation, and numbers the outputs; here the return annotation is a ``NamedTuple``, whose fields give the
    outputs' types and names. An endpoint with one output returns that value alone.

    Args:
        method: a :class:`PublicApi` method, fully annotated.
        options: passed on to ``gr.api`` (e.g. a concurrency group).
    """
    outputs = get_type_hints(method)["return"]
    names, types = outputs._fields, tuple(get_type_hints(outputs).values())

    def endpoint(*args, **kwargs):
        result = method(*args, **kwargs)
        return result[0] if len(names) == 1 else tuple(result)

    functools.update_wrapper(endpoint, method)
    endpoint.__signature__ = inspect.signature(method, eval_str=True).replace(
        return_annotation=types[0] if len(names) == 1 else tuple[types])
    dependency = gr.api(user_errors(endpoint), api_name=method.__name__, **options)
    blocks = get_blocks_context().blocks
    for block_id, name in zip(dependency["outputs"], names, strict=True):
        blocks[block_id].label = name


def register_api(service: AppService) -> None:
    """Every public endpoint of the app (inside an open ``gr.Blocks``)."""
    api = PublicApi(service)
    for name in PublicApi.ENDPOINTS:
        expose(getattr(api, name), **(MANY_PREDICTIONS if name == "predict" else {}))
