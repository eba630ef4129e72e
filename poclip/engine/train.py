"""Train an alignment head from preference triples (DPO, IPO, KTO, robust DPO, hinge, or the CE baseline).

The whole loop is :func:`train`: embed every picture once (through :class:`~poclip.engine.embed_cache.EmbeddingCache`),
precompute the reference log-probabilities, then minimise::

    L = mean_pairs L_pref(r_w, r_l)  +  lambda * mean_clean KL(pi_ref || pi)  +  gamma * ||W^T W - I||_F^2

with Adamax or AdamW on a cosine schedule, early stopping on a validation split, and optionally a Beta
moving average of the weights. The last term (linear head only) keeps W close to orthogonal, which keeps
the logits near-linear in the strength t of :meth:`~poclip.engine.policy.Policy.with_strength`, so the strength
dial moves predictions monotonically from the base model to the trained one. The CE baseline is plain
cross-entropy on the attacked pictures: no reference, no KL, no orthogonality term.

Metrics logged every step use TRL's names: loss, rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies, plus kl/clean. :func:`train_head` is the entry point for the app.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from poclip.engine.embed_cache import EmbeddingCache, entry_key
from poclip.engine.losses import (
    DEFAULT_BETA,
    LOSS_NAMES,
    cross_entropy_loss,
    kl_to_reference,
    preference_loss,
    reward_metrics,
)
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy, parse_head, save_head
from poclip.world import synth
from poclip.world.attacks import TextAttack, random_attack, render

DEFAULT_TEMPLATE = "a photo of a {}."
# IPO's squared loss pulls harder on clean pictures than DPO's saturating one, so it needs the paper's lambda.
DEFAULT_LAMBDA: dict[str, float] = {"ipo": 1.0}
Progress = Callable[[int, int, dict[str, float]], None]


class TrainingDataError(ValueError):
    """Preference data that cannot be trained on; the message says which item and why."""


@dataclass(frozen=True)
class Preference:
    """One preference triple: on ``image`` (with ``attack`` written on it, if any) ``chosen`` beats ``rejected``.

    ``image`` is a picture or an embedding-cache key (:func:`poclip.engine.embed_cache.entry_key`).
    """

    image: Image.Image | str = field(repr=False)
    chosen: str
    rejected: str
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    attack: TextAttack | None = None


@dataclass(frozen=True)
class CleanImage:
    """A clean regularization picture and the label set whose distribution must stay the base model's."""

    image: Image.Image | str = field(repr=False)
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE


@dataclass
class TrainConfig:
    """Training recipe. ``beta=None`` / ``reg_lambda=None`` take the loss's default (:data:`DEFAULT_BETA`,
    :data:`DEFAULT_LAMBDA`), tuned on the benchmark; the paper's starting points are DPO 1.0, IPO 0.01, KTO 1.5.

    Attributes:
        head: ``linear``, ``projection`` or ``last_blocks:K`` (see :mod:`poclip.engine.policy`).
        loss: one of ``dpo``, ``ipo``, ``kto``, ``robust``, ``conservative``, ``hinge``, ``ce``.
        reg_lambda: weight of the KL(pi_ref || pi) regularizer on clean pictures (ignored by ``ce``).
        ortho: weight of ``||W^T W - I||_F^2`` (linear head), the strength-dial penalty.
        label_noise: assumed flip rate of crowd labels for ``robust``/``conservative``.
        average: ``None`` or ``"beta"``: average weights over training with Beta(a, b) weights on progress.
        patience: epochs without validation improvement before stopping (0 = never stop early).
    """

    head: str = "linear"
    loss: str = "dpo"
    beta: float | None = None
    # lambda 0.3 (IPO 1), ortho 1e-3, AdamW at 0.05 for 60 epochs: the best typographic accuracy at unchanged
    # clean accuracy on the bundled model (bench/alignment.py); the paper's code starts from lambda 1, Adamax.
    reg_lambda: float | None = None
    ortho: float = 1e-3
    label_noise: float = 0.1
    optimizer: str = "adamw"
    lr: float = 0.05
    weight_decay: float = 0.0
    epochs: int = 60
    batch_size: int = 128
    val_fraction: float = 0.1
    patience: int = 15
    average: str | None = None
    average_ab: tuple[float, float] = (3.0, 1.0)
    seed: int = 0
    show_progress: bool = False

    @property
    def resolved_beta(self) -> float:
        return float(self.beta if self.beta is not None else DEFAULT_BETA[self.loss])

    @property
    def resolved_lambda(self) -> float:
        return float(self.reg_lambda if self.reg_lambda is not None else DEFAULT_LAMBDA.get(self.loss, 0.3))

    def check(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSS_NAMES)}")
        parse_head(self.head)
        if self.optimizer not in ("adamax", "adamw"):
            raise ValueError(f"optimizer must be adamax or adamw, got {self.optimizer!r}")
        if self.average not in (None, "beta"):
            raise ValueError(f"average must be None or 'beta', got {self.average!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.resolved_beta <= 0 or self.resolved_lambda < 0 or self.ortho < 0:
            raise ValueError("beta must be positive; reg_lambda and ortho must not be negative")


@dataclass
class TrainResult:
    """What a training run produced. ``path`` is the checkpoint (None when not saved)."""

    policy: Policy
    path: Path | None
    metrics: dict[str, float]
    history: list[dict[str, float]]
    steps: int
    embed_seconds: float
    train_seconds: float
    cache_hits: int
    cache_misses: int
    data_fingerprint: str


# ----- data ----------------------------------------------------------------------------------------------------


class _LabelBank:
    """All prompts of all label sets, so items with different label sets share one text-embedding matrix.

    Each item gets a row of prompt indices (padded to the largest label set) and a mask of real labels.
    """

    def __init__(self) -> None:
        self.prompts: dict[str, int] = {}
        self.rows: list[list[int]] = []

    def add(self, labels: Sequence[str], template: str) -> None:
        self.rows.append([self.prompts.setdefault(template.format(label), len(self.prompts)) for label in labels])

    def tensors(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[start:stop]
        width = max(len(r) for r in rows)
        idx = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
        return idx, mask


def _check_preference(k: int, p: Preference) -> None:
    where = f"preference {k}"
    if not isinstance(p.image, Image.Image | str):
        raise TrainingDataError(f"{where}: image must be a PIL image or an embedding key, got {type(p.image)}")
    if len(set(p.labels)) != len(p.labels) or len(p.labels) < 2:
        raise TrainingDataError(f"{where}: the label set needs at least two distinct labels, got {list(p.labels)}")
    if p.chosen not in p.labels or p.rejected not in p.labels:
        raise TrainingDataError(f"{where}: chosen {p.chosen!r} and rejected {p.rejected!r} must both be in the "
                                f"label set {list(p.labels)}")
    if p.chosen == p.rejected:
        raise TrainingDataError(f"{where}: chosen and rejected are the same label {p.chosen!r}")
    if "{}" not in p.template:
        raise TrainingDataError(f"{where}: the template {p.template!r} has no {{}} for the label")


def _as_clean(items: Sequence[CleanImage | Image.Image | str], default: Preference) -> list[CleanImage]:
    out = []
    for item in items:
        if isinstance(item, CleanImage):
            out.append(item)
        else:  # a bare picture keeps the distribution over the first pair's label set
            out.append(CleanImage(item, tuple(default.labels), default.template))
    return out


def data_fingerprint(pref_keys: Sequence[str], prefs: Sequence[Preference], clean_keys: Sequence[str],
                     clean: Sequence[CleanImage]) -> str:
    """sha256 over every pair (picture key, chosen, rejected, labels, template) and clean picture, in order."""
    digest = hashlib.sha256()
    for key, p in zip(pref_keys, prefs, strict=True):
        digest.update(json.dumps([key, p.chosen, p.rejected, list(p.labels), p.template]).encode())
    digest.update(b"|clean|")
    for key, c in zip(clean_keys, clean, strict=True):
        digest.update(json.dumps([key, list(c.labels), c.template]).encode())
    return digest.hexdigest()[:20]


def _keys(items: Sequence[Image.Image | str], attacks: Sequence[TextAttack | None]) -> list[str]:
    return [img if isinstance(img, str) else entry_key(img, atk) for img, atk in zip(items, attacks, strict=True)]


def _embed(cache: EmbeddingCache, images: Sequence[Image.Image | str], attacks: Sequence[TextAttack | None],
           keys: Sequence[str]) -> torch.Tensor:
    # Pass keys for what is cached (no re-hash, no render) and pictures only for what is new.
    items = [k if k in cache else img for k, img in zip(keys, images, strict=True)]
    atks = [None if k in cache else a for k, a in zip(keys, attacks, strict=True)]
    return cache.embed(items, atks)


def _pixels(encoder: ClipEncoder, images: Sequence[Image.Image | str], attacks: Sequence[TextAttack | None]):
    if any(isinstance(img, str) for img in images):
        raise TrainingDataError("tower heads train on pixels: pass pictures, not embedding keys")
    pictures = [render(img, a) if a is not None else img for img, a in zip(images, attacks, strict=True)]
    return torch.cat([encoder.pixels(pictures[i : i + 256]).cpu() for i in range(0, len(pictures), 256)])


# ----- the loop --------------------------------------------------------------------------------------------------


def _beta_average_fn(total_steps: int, a: float, b: float):
    """avg_fn for AveragedModel: the running mean of weights with Beta(a, b)-density weights on progress.

    Update k (0-based) gets weight w_k = pdf_Beta((k + 0.5) / T); the average after k updates is
    sum_j w_j theta_j / sum_j w_j, maintained incrementally as avg + (theta_k - avg) * w_k / sum_{j<=k} w_j.
    """
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    weights = [math.exp((a - 1) * math.log(u) + (b - 1) * math.log(1 - u) - log_norm)
               for u in ((k + 0.5) / total_steps for k in range(total_steps))]
    cumulative = [0.0]
    for w in weights:
        cumulative.append(cumulative[-1] + w)

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        k = min(int(num_averaged), total_steps - 1)
        total = cumulative[k + 1]
        return averaged if total <= 0 else averaged + (current - averaged) * (weights[k] / total)

    return avg_fn


class _Objective:
    """Computes the training loss and metrics for a batch of pairs and a batch of clean pictures."""

    def __init__(self, policy: Policy, cfg: TrainConfig, text_bank: torch.Tensor) -> None:
        self.policy, self.cfg, self.text_bank = policy, cfg, text_bank
        self.beta = cfg.resolved_beta

    def log_probs(self, x: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # One matmul against every prompt, then pick each item's own label set.
        logits = self.policy.logits(x, self.text_bank).gather(1, idx)
        return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)

    def __call__(self, pairs: dict[str, torch.Tensor], clean: dict[str, torch.Tensor] | None):
        logp = self.log_probs(pairs["x"], pairs["idx"], pairs["mask"])
        ref = pairs["ref"]
        chosen, rejected = pairs["chosen"][:, None], pairs["rejected"][:, None]
        r_w = (logp.gather(1, chosen) - ref.gather(1, chosen)).squeeze(1)
        r_l = (logp.gather(1, rejected) - ref.gather(1, rejected)).squeeze(1)
        if clean is not None:
            kl = kl_to_reference(clean["ref"], self.log_probs(clean["x"], clean["idx"], clean["mask"]),
                                 clean["mask"]).mean()
        else:
            kl = torch.zeros(())
        if self.cfg.loss == "ce":
            loss = cross_entropy_loss(logp, pairs["chosen"]).mean()
        else:
            loss = preference_loss(self.cfg.loss, r_w, r_l, self.beta, z0=kl.detach(),
                                   eps=self.cfg.label_noise).mean()
            loss = loss + self.cfg.resolved_lambda * kl
            if self.cfg.ortho > 0 and self.policy.linear is not None:
                w = self.policy.linear.weight
                loss = loss + self.cfg.ortho * (w.T @ w - torch.eye(w.shape[0])).pow(2).sum()
        metrics = {"loss": float(loss.detach()), **reward_metrics(r_w, r_l, self.beta), "kl/clean": float(kl.detach())}
        return loss, metrics


def _slice(data: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in data.items()}


def train(
    encoder: ClipEncoder,
    preferences: Sequence[Preference],
    clean: Sequence[CleanImage | Image.Image | str] = (),
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    cache: EmbeddingCache | None = None,
    progress: Progress | None = None,
    policy: Policy | None = None,
) -> TrainResult:
    """Train an alignment head on ``preferences`` with ``clean`` regularization pictures.

    Args:
        encoder: the frozen backbone; it is also the reference policy.
        preferences: the triples. Attacked pictures are best given clean with their ``attack`` so the
            cache key records the attack parameters.
        clean: pictures (or :class:`CleanImage` with their own label sets) for the KL regularizer.
        config: the recipe (:class:`TrainConfig`).
        out: where to write the head (safetensors + metadata, atomically); ``None`` keeps it in memory.
        cache: embedding cache (default: in memory only).
        progress: called as ``progress(step, total_steps, metrics)`` after every optimizer step.
        policy: start from this policy instead of a fresh head (continued training).

    Returns a :class:`TrainResult`; ``metrics`` holds the last step's metrics and ``val/...`` ones.
    Raises :class:`TrainingDataError` for unusable data, ``ValueError`` for a bad config.
    """
    cfg = config or TrainConfig()
    cfg.check()
    if not preferences:
        raise TrainingDataError("no preference pairs to train on")
    for k, p in enumerate(preferences):
        _check_preference(k, p)
    clean_items = _as_clean(clean, preferences[0])
    torch.manual_seed(cfg.seed)
    # Adam's second-moment estimates of a nearly converged head decay into denormal floats, which made
    # some CPU runs 50x slower; flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    generator = torch.Generator().manual_seed(cfg.seed)
    cache = cache if cache is not None else EmbeddingCache(encoder)
    policy = policy if policy is not None else Policy(encoder, cfg.head)
    if policy.head != cfg.head:
        raise ValueError(f"policy head {policy.head!r} differs from config head {cfg.head!r}")

    started = time.perf_counter()
    hits0, misses0 = cache.hits, cache.misses
    pref_attacks = [p.attack for p in preferences]
    pref_keys = _keys([p.image for p in preferences], pref_attacks)
    clean_keys = _keys([c.image for c in clean_items], [None] * len(clean_items))
    fingerprint = data_fingerprint(pref_keys, preferences, clean_keys, clean_items)
    pref_emb = _embed(cache, [p.image for p in preferences], pref_attacks, pref_keys)
    clean_emb = _embed(cache, [c.image for c in clean_items], [None] * len(clean_items), clean_keys) \
        if clean_items else None

    bank = _LabelBank()
    for p in preferences:
        bank.add(p.labels, p.template)
    for c in clean_items:
        bank.add(c.labels, c.template)
    text_bank = encoder.encode_texts(list(bank.prompts))
    n_pairs = len(preferences)
    idx, mask = bank.tensors(0, n_pairs)
    ref_logits = encoder.logit_scale * pref_emb @ text_bank.T
    pairs = {
        "x": pref_emb if not policy.trains_on_pixels else _pixels(encoder, [p.image for p in preferences],
                                                                  pref_attacks),
        "idx": idx, "mask": mask,
        "ref": torch.log_softmax(ref_logits.gather(1, idx).masked_fill(~mask, float("-inf")), dim=-1),
        "chosen": torch.tensor([p.labels.index(p.chosen) for p in preferences]),
        "rejected": torch.tensor([p.labels.index(p.rejected) for p in preferences]),
    }
    clean_data = None
    if clean_emb is not None:
        cidx, cmask = bank.tensors(n_pairs, n_pairs + len(clean_items))
        cref = (encoder.logit_scale * clean_emb @ text_bank.T).gather(1, cidx)
        clean_data = {
            "x": clean_emb if not policy.trains_on_pixels else _pixels(encoder, [c.image for c in clean_items],
                                                                       [None] * len(clean_items)),
            "idx": cidx, "mask": cmask,
            "ref": torch.log_softmax(cref.masked_fill(~cmask, float("-inf")), dim=-1),
        }
    embed_seconds = time.perf_counter() - started

    # Validation split (deterministic under the seed); the same share of clean pictures is held out.
    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.randperm(n, generator=generator)
        n_val = int(round(n * cfg.val_fraction)) if n > 1 else 0
        return order[n_val:], order[:n_val]

    train_pairs, val_pairs = split(n_pairs)
    train_clean, val_clean = split(len(clean_items)) if clean_data is not None else (None, None)

    objective = _Objective(policy, cfg, text_bank)
    params = policy.trainable_parameters()
    opt_cls = torch.optim.Adamax if cfg.optimizer == "adamax" else torch.optim.AdamW
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches_per_epoch = math.ceil(len(train_pairs) / cfg.batch_size)
    total = cfg.epochs * batches_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    module = policy.linear if policy.linear is not None else policy.visual
    averaged = None
    if cfg.average == "beta":
        averaged = torch.optim.swa_utils.AveragedModel(module, avg_fn=_beta_average_fn(total, *cfg.average_ab))

    def trainable_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in m.named_parameters() if v.requires_grad}

    def load_state(m: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            named = dict(m.named_parameters())
            for k, v in state.items():
                named[k].copy_(v)

    @torch.no_grad()
    def validate() -> dict[str, float]:
        if len(val_pairs) == 0:
            return {}
        vclean = _slice(clean_data, val_clean) if clean_data is not None and len(val_clean) else None
        _, m = objective(_slice(pairs, val_pairs), vclean)
        return {f"val/{k}": v for k, v in m.items()}

    history: list[dict[str, float]] = []
    best = (math.inf, trainable_state(module), {})
    bad_epochs, step = 0, 0
    train_started = time.perf_counter()
    module.train(False)  # no dropout/batch-norm updates: the tower head trains weights, not statistics
    bar = tqdm(total=total, desc=f"train {cfg.loss}", unit="step", disable=not cfg.show_progress, leave=False)
    threads = torch.get_num_threads()
    if policy.linear is not None:
        # A d x d head's matmuls are too small to gain from threads, and when the cores are shared with
        # other work, threaded tiny ops wait on each other: measured 0.65 s on one thread vs 28-71 s on two.
        torch.set_num_threads(1)
    try:
        for epoch in range(cfg.epochs):
            order = train_pairs[torch.randperm(len(train_pairs), generator=generator)]
            clean_order = train_clean[torch.randperm(len(train_clean), generator=generator)] \
                if train_clean is not None and len(train_clean) else None
            for b in range(batches_per_epoch):
                batch = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                cbatch = None
                if clean_order is not None:
                    per = math.ceil(len(clean_order) / batches_per_epoch)
                    cbatch = _slice(clean_data, clean_order[b * per : (b + 1) * per]) if b * per < len(
                        clean_order) else _slice(clean_data, clean_order[:per])
                loss, metrics = objective(_slice(pairs, batch), cbatch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if averaged is not None:
                    averaged.update_parameters(module)
                step += 1
                metrics = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **metrics}
                history.append(metrics)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")
                if progress is not None:
                    progress(step, total, metrics)
            if averaged is not None:
                snapshot = trainable_state(module)
                load_state(module, trainable_state(averaged.module))
            val = validate()
            score = val.get("val/loss", -epoch)  # without a validation split, the last epoch wins
            if score < best[0] - 1e-6:
                best, bad_epochs = (score, trainable_state(module), val), 0
            else:
                bad_epochs += 1
            if averaged is not None:
                load_state(module, snapshot)
            if cfg.patience and bad_epochs >= cfg.patience:
                break
    finally:
        bar.close()
        torch.set_num_threads(threads)
    load_state(module, best[1])
    train_seconds = time.perf_counter() - train_started
    metrics = {k: v for k, v in history[-1].items() if k not in ("step", "epoch", "lr")}
    metrics.update(best[2])
    result = TrainResult(policy, None, metrics, history, step, round(embed_seconds, 3), round(train_seconds, 3),
                         cache.hits - hits0, cache.misses - misses0, fingerprint)
    if out is not None:
        result.path = save_head(policy, out, checkpoint_metadata(cfg, result, n_pairs, len(clean_items)))
    return result


def checkpoint_metadata(cfg: TrainConfig, result: TrainResult, n_pairs: int, n_clean: int) -> dict[str, object]:
    """The string metadata stored with a head (see :func:`poclip.engine.policy.save_head`)."""
    return {
        "loss": cfg.loss,
        "beta": str(cfg.resolved_beta),
        "lambda": str(cfg.resolved_lambda),
        "ortho": str(cfg.ortho),
        "n_pairs": str(n_pairs),
        "n_clean": str(n_clean),
        "data_fingerprint": result.data_fingerprint,
        "metrics": {k: round(v, 6) for k, v in result.metrics.items()},
        "steps": str(result.steps),
        "config": {k: v for k, v in asdict(cfg).items() if k != "show_progress"},
    }


def train_head(
    encoder: ClipEncoder,
    preferences: Sequence[Preference],
    clean: Sequence[CleanImage | Image.Image | str],
    out: str | Path,
    config: TrainConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a head and write it to ``out``; the app's entry point (``cache_dir`` e.g. ``data_dir/embeddings``).

    Returns the :class:`TrainResult` with ``path`` (the checkpoint) and ``metrics``. The checkpoint appears
    only when training finished; a crash or an exception from ``progress`` leaves an older file untouched.
    """
    cache = EmbeddingCache(encoder, cache_dir) if cache_dir is not None else None
    return train(encoder, preferences, clean, config, out=out, cache=cache, progress=progress)


# ----- synthetic training data ----------------------------------------------------------------------------


def synth_preferences(n: int, seed: int = 0, size: int = 224) -> list[Preference]:
    """``n`` typographic pairs from the synthetic world: a clean scene plus a paper-style attack.

    Chosen = the true shape, rejected = the written word, labels = all shapes. Pictures come from
    ``random.Random(f"pairs:{seed}:{i}")``, a stream disjoint from the evaluation sets' ``eval:`` seeds.
    """
    out = []
    for i in range(n):
        rng = random.Random(f"pairs:{seed}:{i}")
        scene = synth.sample_scene(rng)
        attack = random_attack(synth.SHAPES, scene.shape, rng)
        out.append(Preference(synth.draw_scene(scene, size), scene.shape, attack.text, synth.SHAPES,
                              DEFAULT_TEMPLATE, attack))
    return out


def synth_clean(n: int, seed: int = 0, size: int = 224) -> list[CleanImage]:
    """``n`` clean regularization scenes (stream ``clean:{seed}:{i}``) over the shape label set."""
    return [CleanImage(synth.draw_scene(synth.sample_scene(random.Random(f"clean:{seed}:{i}")), size), synth.SHAPES,
                       DEFAULT_TEMPLATE) for i in range(n)]

