"""The app's back end, free of Gradio: compare base and aligned CLIP, collect judgments, retrain, administer.

Every method either does its whole job or raises a :class:`UserError` subclass (or an annotation_db
``ValidationError``) with a message meant for the person, before anything is written.
"""

from __future__ import annotations

import hmac
import logging
import random
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from annotation_db import (
    Repository,
    RepositoryConfig,
    SampleInfo,
    ValidationError,
    open_repository,
)
from poclip.app.worker import LiveModel, Trainer
from poclip.engine.models import ClipEncoder, load_model
from poclip.settings import Settings
from poclip.world import synth
from poclip.world.attacks import TextAttack, random_attack, render
from poclip.world.images import normalize_image, open_image
from poclip.world.labels import DEFAULT_TEMPLATE, PRESETS, check_template, parse_labels

log = logging.getLogger(__name__)

SYNTH_LABEL_SET = "Synthetic shapes"
GOLD_SHARE = 0.1
VERDICTS = ("left", "right", "both", "neither")


class UserError(ValueError):
    """Something the person can fix; the message says what."""


class AdminRequired(UserError):
    """An admin action attempted without admin rights."""


@dataclass(frozen=True)
class Answer:
    """One model's answer on one picture."""

    model: str  # "base" or "aligned"
    probs: dict[str, float]  # label -> probability, all labels

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.get)

    def top(self, k: int = 5) -> dict[str, float]:
        return dict(sorted(self.probs.items(), key=lambda kv: -kv[1])[:k])


@dataclass(frozen=True)
class Comparison:
    """Base and aligned answers from one image-tower pass, and what the model saw."""

    picture: Image.Image
    labels: list[str]
    template: str
    base: Answer
    aligned: Answer
    version: str
    t: float


@dataclass(frozen=True)
class Item:
    """An item to annotate: the picture as shown, its candidate labels, and the sample behind it."""

    sample: SampleInfo
    picture: Image.Image
    labels: list[str]


def annotation_item(index: int) -> tuple[synth.Scene, TextAttack]:
    """Item ``index`` of the synthetic annotation stream: a scene and the paper-style attack written on it."""
    rng = random.Random(f"annotate:{index}")
    scene = synth.sample_scene(rng)
    return scene, random_attack(synth.SHAPES, scene.shape, rng)


def parse_rate_limit(text: str) -> tuple[int | None, float]:
    """``"60/60"`` -> (60, 60.0); ``"off"`` -> (None, 60.0)."""
    if text.strip().lower() in ("off", "none", "0", ""):
        return None, 60.0
    count, _, window = text.partition("/")
    try:
        return int(count), float(window or 60)
    except ValueError as exc:
        raise ValueError(f"POCLIP_RATE_LIMIT must look like 60/60 or off, got {text!r}") from exc


class AppService:
    """Everything the UI and the API do, as plain methods."""

    def __init__(self, settings: Settings, encoder: ClipEncoder, repo: Repository) -> None:
        self.settings = settings
        self.encoder = encoder
        self.repo = repo
        self.trainer = Trainer(settings, repo, encoder)
        self._seed_lock = threading.Lock()

    @classmethod
    def create(cls, settings: Settings, encoder: ClipEncoder | None = None) -> AppService:
        """Open (restore, migrate) the database, load the model, seed annotation items, load the live head."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        count, window = parse_rate_limit(settings.rate_limit)
        repo = open_repository(settings, RepositoryConfig(rate_limit_count=count, rate_limit_window_s=window))
        service = cls(settings, encoder or load_model(settings.model_spec, settings), repo)
        service.ensure_label_sets()
        service.seed_items()
        service.trainer.sync_live()
        return service

    def start_background(self) -> None:
        """Start the trainer loop (training only when ``POCLIP_TRAINER=thread``)."""
        self.trainer.start(train=self.settings.trainer == "thread")

    def close(self) -> None:
        self.trainer.stop()
        self.repo.close()

    # ----- status -------------------------------------------------------------------------------------------

    @property
    def live(self) -> LiveModel:
        return self.trainer.live

    def model_info(self) -> str:
        return f"{self.encoder.description} (`{self.encoder.spec}`, {self.encoder.device.type}); aligned head: " \
               f"{self.live.label}"

    def status(self) -> dict[str, Any]:
        """Live model, data counts and the trainer's state, as one JSON-friendly dict."""
        stats = self.repo.stats()
        progress = self.trainer.progress
        every = self.settings.retrain_every_pairs
        fresh = self.trainer.new_pairs()
        return {
            "backbone": self.encoder.spec,
            "live_version": self.live.version.id if self.live.version else None,
            "judgments": stats.judgments,
            "pairs": stats.pairs,
            "annotators": stats.annotators,
            "agreement_alpha": stats.alpha,
            "new_pairs": fresh,
            "next_retrain_at": (every - fresh) if every and fresh < every else (0 if every else None),
            "trainer": {"run": progress.run_id, "phase": progress.phase, "step": progress.step,
                        "total": progress.total, "message": progress.message},
        }

    # ----- label sets and annotation items ------------------------------------------------------------------

    def ensure_label_sets(self) -> None:
        for name, labels in PRESETS.items():
            self.repo.ensure_label_set(name, list(labels), DEFAULT_TEMPLATE)

    def label_set_for(self, labels: list[str], template: str) -> str:
        """The stored label set with exactly these labels and template (created on first use)."""
        for name, preset in PRESETS.items():
            if list(preset) == labels and template == DEFAULT_TEMPLATE:
                return name
        import hashlib

        digest = hashlib.sha256("\x00".join([template, *labels]).encode()).hexdigest()[:12]
        name = f"custom-{digest}"
        self.repo.ensure_label_set(name, labels, template)
        return name

    def seed_items(self, n: int | None = None) -> int:
        """Offer synthetic attacked pictures for annotation (bundled model), a share of them gold items.

        Idempotent: the pictures and attacks are a fixed stream, and samples are unique by image and attack.
        """
        n = self.settings.seed_items if n is None else n
        if "bundled" not in self.encoder.spec or n <= 0:
            return 0
        with self._seed_lock:
            if self.repo.stats().samples >= n:
                return 0
            gold = self.repo.ensure_annotator("poclip-gold")
            for i in range(n):
                scene, attack = annotation_item(i)
                image = self.repo.store_image(synth.draw_scene(scene, 224), source="synthetic")
                sample = self.repo.add_sample(image.sha256, SYNTH_LABEL_SET, attack.to_dict())
                if i % round(1 / GOLD_SHARE) == 0:
                    try:
                        self.repo.record_judgment(sample.id, gold.handle, scene.shape, attack.text, kind="gold",
                                                  enforce_rate_limit=False)
                    except ValidationError:
                        pass  # already recorded on an earlier start
            return n

    def picture_of(self, sample: SampleInfo) -> Image.Image:
        """The sample's picture as annotators and the trainer see it (attack re-rendered from its JSON)."""
        image = open_image(Path(sample.image_path))
        return render(image, TextAttack.from_dict(sample.attack)) if sample.attack else image

    def next_item(self, annotator: str) -> Item | None:
        """The next item ``annotator`` should label, or None when they have labelled everything."""
        self.repo.ensure_annotator(annotator)
        sample = self.repo.next_sample(annotator)
        if sample is None:
            return None
        return Item(sample, self.picture_of(sample), list(sample.labels))

    def answer_item(self, annotator: str, sample_id: int, chosen: str) -> dict[str, Any]:
        """Record that on ``sample_id`` the right label is ``chosen``.

        The rejected label is the word written on the picture when it is a candidate label, else the base
        model's most likely wrong label (what the person implicitly corrected).
        """
        sample = self.repo.get_sample(int(sample_id))
        if chosen not in sample.labels:
            raise UserError(f"{chosen!r} is not one of this item's labels.")
        rejected = self._rejected_for(sample, chosen)
        judgment = self.repo.record_judgment(sample.id, annotator, chosen, rejected)
        return {"judgment_id": judgment.id, "sample_id": sample.id, "chosen": chosen, "rejected": rejected}

    def _rejected_for(self, sample: SampleInfo, chosen: str) -> str:
        written = (sample.attack or {}).get("text", "").strip()
        if written in sample.labels and written != chosen:
            return written
        comparison = self.compare(self.picture_of(sample), list(sample.labels), None, sample.prompt_template, 0.0,
                                  normalize=False)
        ranked = sorted(comparison.base.probs.items(), key=lambda kv: -kv[1])
        return next(label for label, _ in ranked if label != chosen)

    def undo(self, annotator: str) -> dict[str, Any] | None:
        undone = self.repo.undo_last_judgment(annotator)
        return None if undone is None else {"judgment_id": undone.id, "sample_id": undone.sample_id}

    def labelled_by(self, annotator: str) -> int:
        return len(self.repo.judgments_of(annotator))

    # ----- compare and vote ------------------------------------------------------------------------------------

    def compare(
        self,
        image: Image.Image,
        labels: str | list[str],
        attack: TextAttack | None = None,
        template: str = DEFAULT_TEMPLATE,
        t: float = 1.0,
        normalize: bool = True,
    ) -> Comparison:
        """Base and aligned predictions for ``image`` (with ``attack`` written on it) over ``labels``.

        One image-tower pass; the aligned answer uses the live head at strength ``t`` (the base model when
        no version is live). The live head is read once, so a swap during the call does not mix versions.
        """
        label_list = parse_labels(labels)
        template = check_template(template)
        picture = normalize_image(image) if normalize else image
        if attack is not None:
            picture = render(picture, attack)
        live = self.live
        if live.policy is None:
            emb = self.encoder.encode_images([picture])
            base = self.encoder.log_probs(emb, self.encoder.classifier(label_list, (template,)))
            aligned = base
        else:  # any head kind: one trunk pass (a tower head runs its tail at base and aligned weights)
            base, aligned = live.policy.compare([picture], label_list, template, float(t))
        as_dict = lambda lp: {lab: round(float(p), 6) for lab, p in zip(label_list, lp[0].exp(), strict=True)}  # noqa: E731
        return Comparison(picture, label_list, template, Answer("base", as_dict(base)),
                          Answer("aligned", as_dict(aligned)), live.label, float(t))

    def vote(
        self,
        annotator: str,
        image: Image.Image,
        labels: str | list[str],
        attack: TextAttack | None,
        verdict: str,
        shown_left: str = "base",
        correct_label: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        t: float = 1.0,
    ) -> dict[str, Any]:
        """Store a judgment from the Compare tab.

        ``verdict`` says which side was right: ``left``, ``right``, ``both`` or ``neither`` (then
        ``correct_label`` names the object). ``shown_left`` is the model on the left (``base``/``aligned``).
        The chosen label is the right answer; the rejected one is the wrong answer shown (or, when both were
        right, the written word or the runner-up).
        """
        if verdict not in VERDICTS:
            raise UserError(f"The vote must be one of {', '.join(VERDICTS)}.")
        if shown_left not in ("base", "aligned"):
            raise UserError("shown_left must be 'base' or 'aligned'.")
        clean = normalize_image(image)
        result = self.compare(clean, labels, attack, template, t, normalize=False)
        left, right = (result.base, result.aligned) if shown_left == "base" else (result.aligned, result.base)
        if verdict == "neither":
            if not correct_label or correct_label not in result.labels:
                raise UserError("Pick the right label from the label set when neither side was right.")
            chosen = correct_label
            wrong = [a.label for a in (left, right) if a.label != chosen]
            rejected = wrong[0] if wrong else self._runner_up(left, chosen)
        elif verdict in ("left", "right"):
            winner, loser = (left, right) if verdict == "left" else (right, left)
            chosen = winner.label
            rejected = loser.label if loser.label != chosen else self._runner_up(loser, chosen)
        else:
            if left.label != right.label:
                raise UserError("The two sides give different answers, so they cannot both be right.")
            chosen = left.label
            written = attack.text.strip() if attack else ""
            rejected = written if written in result.labels and written != chosen else self._runner_up(left, chosen)
        self.repo.ensure_annotator(annotator)
        stored = self.repo.store_image(clean, source="upload", uploader=annotator)
        sample = self.repo.add_sample(stored.sha256, self.label_set_for(result.labels, template),
                                      attack.to_dict() if attack else None)
        judgment = self.repo.record_judgment(sample.id, annotator, chosen, rejected, shown_left=shown_left,
                                             said_right=verdict)
        return {"judgment_id": judgment.id, "sample_id": sample.id, "chosen": chosen, "rejected": rejected,
                "verdict": verdict, "shown_left": shown_left, "version": result.version, "t": result.t}

    @staticmethod
    def _runner_up(answer: Answer, chosen: str) -> str:
        return next(label for label, _ in sorted(answer.probs.items(), key=lambda kv: -kv[1]) if label != chosen)

    # ----- admin -------------------------------------------------------------------------------------------------

    def is_admin(self, token: str | None = None, hf_orgs: list[str] | None = None) -> bool:
        """Admin = the configured ``POCLIP_ADMIN_TOKEN`` (constant-time compare) or membership of
        ``POCLIP_ADMIN_ORG`` for a logged-in Hugging Face user."""
        expected = self.settings.admin_token
        if expected and token and hmac.compare_digest(token.encode(), expected.encode()):
            return True
        return bool(self.settings.admin_org and hf_orgs and self.settings.admin_org in hf_orgs)

    def require_admin(self, token: str | None = None, hf_orgs: list[str] | None = None) -> None:
        if not self.is_admin(token, hf_orgs):
            raise AdminRequired("This action needs admin rights: enter the admin token (POCLIP_ADMIN_TOKEN) or "
                                "log in with Hugging Face as a member of the admin organisation.")

    def retrain(self, loss: str = "dpo", *, token: str | None = None, hf_orgs: list[str] | None = None) -> dict:
        """Queue a retrain (admin). The background trainer picks it up; returns the queued run."""
        self.require_admin(token, hf_orgs)
        if loss not in ("dpo", "ipo", "kto", "robust", "conservative", "hinge"):
            raise UserError(f"Unknown loss {loss!r}.")
        run = self.trainer.request({"loss": loss}, reason="manual retrain")
        return {"run_id": run.id, "status": run.status}

    def promote(self, version_id: int, *, token: str | None = None, hf_orgs: list[str] | None = None) -> dict:
        self.require_admin(token, hf_orgs)
        version = self.repo.promote_version(int(version_id))
        self.trainer.sync_live()
        return {"active_version": version.id}

    def rollback(self, version_id: int | None = None, *, token: str | None = None,
                 hf_orgs: list[str] | None = None) -> dict:
        self.require_admin(token, hf_orgs)
        version = self.repo.rollback_version(int(version_id) if version_id else None)
        self.trainer.sync_live()
        return {"active_version": version.id}

    def backup(self, *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        self.require_admin(token, hf_orgs)
        from annotation_db import take_snapshot

        return str(take_snapshot(self.settings, keep=self.settings.backup_keep))

    def export_parquet(self, *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        """Export all pairs as a Hugging Face dataset, saved as one parquet file; returns its path."""
        self.require_admin(token, hf_orgs)
        from annotation_db.export import export_dataset, save_dataset

        dataset = export_dataset(self.repo)
        out = self.settings.data_dir / "exports" / f"poclip-pairs-{secrets.token_hex(4)}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_dataset(dataset, out, parquet=True)
        return str(out)

    def push_to_hub(self, repo_id: str = "", *, token: str | None = None, hf_orgs: list[str] | None = None) -> str:
        self.require_admin(token, hf_orgs)
        from annotation_db.export import export_dataset, push_dataset

        target = repo_id or self.settings.export_repo
        if not target:
            raise UserError("Name the Hub dataset repository (user/name) or set POCLIP_EXPORT_REPO.")
        push_dataset(export_dataset(self.repo), target, token=self.settings.hf_token or None)
        return target
