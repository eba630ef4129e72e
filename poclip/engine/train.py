"""Train an alignment head from preference triples (DPO, IPO, KTO, robust DPO, hinge, or the CE baseline).

Two steps, as in nanoGPT: :func:`prepare` computes every head input once (embeddings for the linear head,
the frozen trunk's activations at the cut for tower heads, both through on-disk caches) and the reference
log-probabilities through the base policy; :func:`fit` is the loop. It minimises::

    L = mean_pairs L_pref(r_w, r_l)                      the paper's preference loss
      + lambda * mean_clean KL(pi_ref(.|x) || pi(.|x))    the paper's regularizer on clean pictures
      + mu * mean_pairs KL(sg pi(.|x) || pi(.|T(x)))      text invariance: texted picture vs its clean self
      + gamma * ||W^T W - I||_F^2                         linear head only: keeps the strength dial linear

with AdamW (or Adamax) on a cosine schedule, early stopping on a validation split, and optionally a Beta
moving average of the weights. mu = 0 with paper-style pairs is the paper's pure recipe (``RECIPES``). The
CE baseline is plain cross-entropy on the attacked pictures: no reference, no KL, no invariance, no ortho.

Logged every step: TRL's names (loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies),
kl/clean, and each term unweighted (loss/preference, loss/kl, loss/invariance, loss/ortho).
:func:`train_head` is the entry point for the app.
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

from poclip.engine.config import (  # noqa: F401 (re-exported: TrainConfig and its defaults moved there)
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_HEAD,
    DEFAULT_LAMBDA,
    DEFAULT_LR,
    DEFAULT_RECIPE,
    RECIPES,
    TrainConfig,
)
from poclip.engine.embed_cache import EmbeddingCache, Picture, StoredPicture, entry_key
from poclip.engine.losses import (
    cross_entropy_loss,
    kl_to_reference,
    preference_loss,
    reward_metrics,
    text_invariance_loss,
)
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy, save_head
from poclip.errors import UserError
from poclip.world import synth
from poclip.world.attacks import TextAttack
from poclip.world.styles import STYLE_WEIGHTS, sample_style, styled_attack
from poclip.world.synth import DEFAULT_TEMPLATE

Progress = Callable[[int, int, dict[str, float]], None]


class TrainingDataError(UserError):
    """Preference data that cannot be trained on; the message says which item and why."""


@dataclass(frozen=True)
class Preference:
    """One preference triple: on ``image`` (with ``attack`` written on it, if any) ``chosen`` beats ``rejected``.

    ``image`` is a picture, a :class:`~poclip.engine.embed_cache.StoredPicture` (opened only on a cache
    miss) or a cache key (:func:`poclip.engine.embed_cache.entry_key`; no invariance term then, since the
    clean picture is unknown). ``rejected=None`` means the reference model's strongest wrong answer on the
    texted picture: the pair for text that names the true class or no class.
    """

    image: Picture | str = field(repr=False)
    chosen: str
    rejected: str | None
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    attack: TextAttack | None = None


@dataclass(frozen=True)
class CleanImage:
    """A clean regularization picture and the label set whose distribution must stay the base model's.

    ``attack``: text to write on it for the text-invariance term (the policy on the texted picture is pulled to
    its own prediction on the clean one). That term needs no label, so any clean picture can teach "ignore the
    writing"; ``None`` = the picture serves the KL regularizer only.
    """

    image: Picture | str = field(repr=False)
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    attack: TextAttack | None = None


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
    if not isinstance(p.image, Image.Image | StoredPicture | str):
        raise TrainingDataError(f"{where}: image must be a PIL image, a stored picture or a cache key, "
                                f"got {type(p.image)}")
    if len(set(p.labels)) != len(p.labels) or len(p.labels) < 2:
        raise TrainingDataError(f"{where}: the label set needs at least two distinct labels, got {list(p.labels)}")
    if p.chosen not in p.labels or (p.rejected is not None and p.rejected not in p.labels):
        raise TrainingDataError(f"{where}: chosen {p.chosen!r} and rejected {p.rejected!r} must both be in the "
                                f"label set {list(p.labels)}")
    if p.chosen == p.rejected:
        raise TrainingDataError(f"{where}: chosen and rejected are the same label {p.chosen!r}")
    if "{}" not in p.template:
        raise TrainingDataError(f"{where}: the template {p.template!r} has no {{}} for the label")


def _as_clean(items: Sequence[CleanImage | Picture | str], default: Preference) -> list[CleanImage]:
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


def _keys(items: Sequence[Picture | str], attacks: Sequence[TextAttack | None]) -> list[str]:
    return [img if isinstance(img, str) else entry_key(img, atk) for img, atk in zip(items, attacks, strict=True)]


def _lookup(cache: EmbeddingCache, images: Sequence[Picture | str], attacks: Sequence[TextAttack | None],
            keys: Sequence[str]) -> torch.Tensor:
    # Pass keys for what is cached (no re-hash, no render, no file opened) and pictures only for what is new.
    items = [k if k in cache else img for k, img in zip(keys, images, strict=True)]
    atks = [None if k in cache else a for k, a in zip(keys, attacks, strict=True)]
    return cache.embed(items, atks)


def _label_log_probs(logits: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) over each item's own label set: logits against every prompt, gathered, padding masked."""
    return torch.log_softmax(logits.gather(1, idx).masked_fill(~mask, float("-inf")), dim=-1)


@torch.no_grad()
def _reference_log_probs(policy: Policy, x: torch.Tensor, text_bank: torch.Tensor, idx: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    # The reference is the base policy, the same head at strength 0: one definition of pi(y|x) for both.
    base = policy.with_strength(0.0)
    return torch.cat([_label_log_probs(base.logits(x[i : i + 512], text_bank), idx[i : i + 512], mask[i : i + 512])
                      for i in range(0, len(x), 512)])


@dataclass
class Prepared:
    """Everything the loop needs, as tensors: ``pairs`` (x, x_clean, inv, idx, mask, ref, chosen, rejected)
    and ``clean`` (x, x_text, inv, idx, mask, ref), with the text embeddings of every prompt."""

    text_bank: torch.Tensor
    pairs: dict[str, torch.Tensor]
    clean: dict[str, torch.Tensor] | None
    fingerprint: str
    seconds: float
    hits: int
    misses: int


def prepare(policy: Policy, preferences: Sequence[Preference], clean_items: Sequence[CleanImage],
            cache: EmbeddingCache, clean_selves: bool = True) -> Prepared:
    """Head inputs of every picture (through ``cache``), reference log-probs, and resolved rejected labels.

    With ``clean_selves`` a pair's clean self (its picture without the text) and a clean picture's texted
    version (its ``attack``) are looked up too, for the text-invariance term. Cost: one tower (trunk) pass per
    picture not already in the cache.
    """
    started = time.perf_counter()
    hits0, misses0 = cache.hits, cache.misses
    images = [p.image for p in preferences]
    pref_keys = _keys(images, [p.attack for p in preferences])
    clean_keys = _keys([c.image for c in clean_items], [None] * len(clean_items))
    x = _lookup(cache, images, [p.attack for p in preferences], pref_keys)
    # The invariance term needs each texted picture's clean self: known unless the pair gave only a cache key.
    inv = [clean_selves and p.attack is not None and not isinstance(p.image, str) for p in preferences]
    inv_rows = [i for i, ok in enumerate(inv) if ok]
    x_clean = torch.zeros_like(x)
    if inv_rows:
        rows_images = [images[i] for i in inv_rows]
        x_clean[inv_rows] = _lookup(cache, rows_images, [None] * len(inv_rows), _keys(rows_images, [None] * len(
            inv_rows)))
    cx = _lookup(cache, [c.image for c in clean_items], [None] * len(clean_items), clean_keys) \
        if clean_items else None
    # Clean pictures with text add invariance rows (texted vs clean self) without a preference.
    cinv = [clean_selves and c.attack is not None and not isinstance(c.image, str) for c in clean_items]
    cx_text = torch.zeros_like(cx) if cx is not None else None
    if any(cinv):
        rows = [i for i, ok in enumerate(cinv) if ok]
        rows_images, rows_attacks = [clean_items[i].image for i in rows], [clean_items[i].attack for i in rows]
        cx_text[rows] = _lookup(cache, rows_images, rows_attacks, _keys(rows_images, rows_attacks))

    bank = _LabelBank()
    for p in preferences:
        bank.add(p.labels, p.template)
    for c in clean_items:
        bank.add(c.labels, c.template)
    text_bank = policy.encoder.encode_texts(list(bank.prompts))
    idx, mask = bank.tensors(0, len(preferences))
    ref = _reference_log_probs(policy, x, text_bank, idx, mask)
    chosen = torch.tensor([p.labels.index(p.chosen) for p in preferences])
    # rejected=None: the reference's strongest wrong answer on the texted picture.
    runner_up = ref.scatter(1, chosen[:, None], float("-inf")).argmax(1)
    rejected = torch.tensor([p.labels.index(p.rejected) if p.rejected is not None else int(runner_up[i])
                             for i, p in enumerate(preferences)])
    pairs = {"x": x, "x_clean": x_clean, "inv": torch.tensor(inv), "idx": idx, "mask": mask, "ref": ref,
             "chosen": chosen, "rejected": rejected}
    clean = None
    if cx is not None:
        cidx, cmask = bank.tensors(len(preferences), len(preferences) + len(clean_items))
        clean = {"x": cx, "x_text": cx_text, "inv": torch.tensor(cinv), "idx": cidx, "mask": cmask,
                 "ref": _reference_log_probs(policy, cx, text_bank, cidx, cmask)}
    # The fingerprint names the resolved rejected labels, so it says exactly what was trained on.
    resolved = [p if p.rejected is not None else Preference(p.image, p.chosen, p.labels[int(r)], p.labels,
                                                              p.template, p.attack)
                for p, r in zip(preferences, rejected, strict=True)]
    fingerprint = data_fingerprint(pref_keys, resolved, [k if c.attack is None else f"{k}+{entry_key(k, c.attack)}"
                                                         for k, c in zip(clean_keys, clean_items, strict=True)],
                                   clean_items)
    return Prepared(text_bank, pairs, clean, fingerprint, time.perf_counter() - started,
                    cache.hits - hits0, cache.misses - misses0)


# ----- the objective -----------------------------------------------------------------------------------------


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


class Objective:
    """The training loss of a batch of pairs and a batch of clean pictures, and its named terms.

    :meth:`terms` returns the unweighted terms (``preference``, ``kl``, ``invariance``, ``ortho``) and the
    rewards; :meth:`__call__` weights them by the config and returns ``(loss, metrics)``.
    """

    def __init__(self, policy: Policy, cfg: TrainConfig, text_bank: torch.Tensor) -> None:
        self.policy, self.cfg, self.text_bank = policy, cfg, text_bank
        self.beta = cfg.resolved_beta

    def log_probs(self, x: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _label_log_probs(self.policy.logits(x, self.text_bank, training=True), idx, mask)

    def terms(self, pairs: dict[str, torch.Tensor], clean: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        logp = self.log_probs(pairs["x"], pairs["idx"], pairs["mask"])
        ref, chosen, rejected = pairs["ref"], pairs["chosen"][:, None], pairs["rejected"][:, None]
        r_w = (logp.gather(1, chosen) - ref.gather(1, chosen)).squeeze(1)
        r_l = (logp.gather(1, rejected) - ref.gather(1, rejected)).squeeze(1)
        zero = torch.zeros(())
        clean_logp = self.log_probs(clean["x"], clean["idx"], clean["mask"]) if clean is not None else None
        kl = kl_to_reference(clean["ref"], clean_logp, clean["mask"]).mean() if clean is not None else zero
        if self.cfg.loss == "ce":
            pref = cross_entropy_loss(logp, pairs["chosen"]).mean()
        else:
            pref = preference_loss(self.cfg.loss, r_w, r_l, self.beta, z0=kl.detach(), eps=self.cfg.label_noise).mean()
        invariance = zero
        if self.cfg.invariance > 0 and self.cfg.loss != "ce":
            # Rows: pairs (texted picture vs its clean self) and clean pictures with text (vs themselves). The
            # target is the clean picture's own prediction, detached.
            targets, texted, masks = [], [], []
            inv = pairs["inv"]
            if bool(inv.any()):
                with torch.no_grad():
                    targets.append(self.log_probs(pairs["x_clean"][inv], pairs["idx"][inv], pairs["mask"][inv]))
                texted.append(logp[inv])
                masks.append(pairs["mask"][inv])
            if clean is not None and bool(clean["inv"].any()):
                cinv = clean["inv"]
                targets.append(clean_logp[cinv].detach())
                texted.append(self.log_probs(clean["x_text"][cinv], clean["idx"][cinv], clean["mask"][cinv]))
                masks.append(clean["mask"][cinv])
            if targets:
                width = max(m.shape[1] for m in masks)
                pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
                invariance = text_invariance_loss(torch.cat([pad(t, float("-inf")) for t in targets]),
                                                  torch.cat([pad(t, float("-inf")) for t in texted]),
                                                  torch.cat([pad(m, False) for m in masks])).mean()
        ortho = zero
        if self.policy.linear is not None:
            w = self.policy.linear.weight
            ortho = (w.T @ w - torch.eye(w.shape[0])).pow(2).sum()
        return {"preference": pref, "kl": kl, "invariance": invariance, "ortho": ortho, "r_w": r_w, "r_l": r_l}

    def __call__(self, pairs: dict[str, torch.Tensor], clean: dict[str, torch.Tensor] | None):
        t = self.terms(pairs, clean)
        loss = t["preference"]
        if self.cfg.loss != "ce":  # the CE baseline has no reference, no KL, no invariance, no ortho
            loss = loss + self.cfg.resolved_lambda * t["kl"] + self.cfg.invariance * t["invariance"] \
                + self.cfg.ortho * t["ortho"]
        metrics = {"loss": float(loss.detach()), **reward_metrics(t["r_w"], t["r_l"], self.beta),
                   "kl/clean": float(t["kl"].detach()),
                   **{f"loss/{k}": float(t[k].detach()) for k in ("preference", "kl", "invariance", "ortho")}}
        return loss, metrics


def _slice(data: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in data.items()}


def _split(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic (train, validation) split of ``range(n)``."""
    order = torch.randperm(n, generator=generator)
    n_val = int(round(n * fraction)) if n > 1 else 0
    return order[n_val:], order[:n_val]


def _trainable_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.named_parameters() if v.requires_grad}


def _load_state(m: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        named = dict(m.named_parameters())
        for k, v in state.items():
            named[k].copy_(v)


# ----- the loop --------------------------------------------------------------------------------------------------


def fit(policy: Policy, data: Prepared, cfg: TrainConfig, progress: Progress | None = None
        ) -> tuple[list[dict[str, float]], dict[str, float], int]:
    """The training loop: returns (history, best validation metrics, steps); ``policy`` ends at its best epoch."""
    generator = torch.Generator().manual_seed(cfg.seed)
    train_pairs, val_pairs = _split(len(data.pairs["x"]), cfg.val_fraction, generator)
    train_clean, val_clean = _split(len(data.clean["x"]), cfg.val_fraction, generator) if data.clean else (None, None)
    objective = Objective(policy, cfg, data.text_bank)
    module = policy.trainable_module()
    opt_cls = torch.optim.Adamax if cfg.optimizer == "adamax" else torch.optim.AdamW
    optimizer = opt_cls(policy.trainable_parameters(), lr=cfg.resolved_lr, weight_decay=cfg.weight_decay)
    batch_size = cfg.resolved_batch_size
    per_epoch = math.ceil(len(train_pairs) / batch_size)
    total = cfg.resolved_epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    averaged = torch.optim.swa_utils.AveragedModel(module, avg_fn=_beta_average_fn(total, *cfg.average_ab)) \
        if cfg.average == "beta" else None
    history: list[dict[str, float]] = []
    best, bad_epochs, step = (math.inf, _trainable_state(module), {}), 0, 0
    bar = tqdm(total=total, desc=f"train {cfg.loss}", unit="step", disable=not cfg.show_progress, leave=False)
    module.train(False)  # no dropout, no batch-norm statistics updates: the head trains weights only
    for epoch in range(cfg.resolved_epochs):
        order = train_pairs[torch.randperm(len(train_pairs), generator=generator)]
        corder = train_clean[torch.randperm(len(train_clean), generator=generator)] if train_clean is not None \
            and len(train_clean) else None
        per = math.ceil(len(corder) / per_epoch) if corder is not None else 0
        for b in range(per_epoch):
            cbatch = _slice(data.clean, corder[(b * per) % len(corder):][:per]) if corder is not None else None
            loss, metrics = objective(_slice(data.pairs, order[b * batch_size : (b + 1) * batch_size]),
                                      cbatch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(module)
            step += 1
            history.append({"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **metrics})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")
            if progress is not None:
                progress(step, total, history[-1])
        snapshot = _trainable_state(module)
        if averaged is not None:
            _load_state(module, _trainable_state(averaged.module))
        val = {}
        if len(val_pairs):
            with torch.no_grad():
                vclean = _slice(data.clean, val_clean) if data.clean is not None and len(val_clean) else None
                val = {f"val/{k}": v for k, v in objective(_slice(data.pairs, val_pairs), vclean)[1].items()}
        score = val.get("val/loss", -epoch)  # without a validation split, the last epoch wins
        best, bad_epochs = ((score, _trainable_state(module), val), 0) if score < best[0] - 1e-6 else (
            best, bad_epochs + 1)
        _load_state(module, snapshot)
        if cfg.patience and bad_epochs >= cfg.patience:
            break
    bar.close()
    _load_state(module, best[1])
    return history, best[2], step


def train(
    encoder: ClipEncoder,
    preferences: Sequence[Preference],
    clean: Sequence[CleanImage | Picture | str] = (),
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    cache: EmbeddingCache | None = None,
    progress: Progress | None = None,
    policy: Policy | None = None,
) -> TrainResult:
    """Train an alignment head on ``preferences`` with ``clean`` regularization pictures.

    Args:
        encoder: the frozen backbone; it is also the reference policy.
        preferences: the triples. Attacked pictures are best given clean with their ``attack``: the cache key
            records the attack parameters, and the text-invariance term needs the clean picture.
        clean: pictures (or :class:`CleanImage` with their own label sets) for the KL regularizer.
        config: the recipe (:class:`TrainConfig`).
        out: where to write the head (safetensors + metadata, atomically); ``None`` keeps it in memory.
        cache: the cache of the head's inputs (:meth:`Policy.make_cache`: embeddings for the linear head,
            activations at the cut for tower heads); default: in memory only.
        progress: called as ``progress(step, total_steps, metrics)`` after every optimizer step.
        policy: start from this policy instead of a fresh head (continued training).

    Returns a :class:`TrainResult`; ``metrics`` holds the last step's metrics and ``val/...`` ones.
    Raises :class:`TrainingDataError` for unusable data, ``ValueError`` for a bad config or a cache of
    another head's inputs.
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
    policy = policy if policy is not None else Policy(encoder, cfg.head)
    if policy.head != cfg.head:
        raise ValueError(f"policy head {policy.head!r} differs from config head {cfg.head!r}")
    cache = cache if cache is not None else policy.make_cache()
    if (cache.namespace or "embedding") != policy.cut:
        raise ValueError(f"the cache holds {cache.namespace or 'embedding'} inputs, head {policy.head!r} needs "
                         f"{policy.cut}: use policy.make_cache()")
    data = prepare(policy, preferences, clean_items, cache, clean_selves=cfg.invariance > 0 and cfg.loss != "ce")
    threads = torch.get_num_threads()
    if policy.linear is not None:
        # A d x d head's matmuls are too small to gain from threads, and when the cores are shared with
        # other work, threaded tiny ops wait on each other: measured 0.65 s on one thread vs 28-71 s on two.
        # A tower tail does gain: last_blocks:1 on 1,000 pairs, quiet 2 cores, 34 s on two threads vs 64 s on
        # one (on an oversubscribed machine two threads can be far slower; set torch's threads there).
        torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        history, best_val, steps = fit(policy, data, cfg, progress)
    finally:
        torch.set_num_threads(threads)
    train_seconds = time.perf_counter() - started
    metrics = {k: v for k, v in history[-1].items() if k not in ("step", "epoch", "lr")}
    metrics.update(best_val)
    result = TrainResult(policy, None, metrics, history, steps, round(data.seconds, 3), round(train_seconds, 3),
                         data.hits, data.misses, data.fingerprint)
    if out is not None:
        result.path = save_head(policy, out, checkpoint_metadata(cfg, result, len(preferences), len(clean_items)))
    return result


def checkpoint_metadata(cfg: TrainConfig, result: TrainResult, n_pairs: int, n_clean: int) -> dict[str, object]:
    """The string metadata stored with a head (see :func:`poclip.engine.policy.save_head`)."""
    return {
        "loss": cfg.loss,
        "beta": str(cfg.resolved_beta),
        "lambda": str(cfg.resolved_lambda),
        "invariance": str(cfg.invariance),
        "ortho": str(cfg.ortho),
        "lr": str(cfg.resolved_lr),
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
    clean: Sequence[CleanImage | Picture | str],
    out: str | Path,
    config: TrainConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    start: Policy | None = None,
) -> TrainResult:
    """Train a head and write it to ``out``; the app's entry point (``cache_dir`` e.g. ``data_dir/embeddings``
    holds the head's input cache, embeddings or activations at the cut, on disk).

    ``start``: continue from a copy of this head (e.g. the live one) when it is of the config's head kind on
    this backbone; otherwise the head starts at the base model. The reference stays the base model.
    Returns the :class:`TrainResult` with ``path`` (the checkpoint) and ``metrics``. The checkpoint appears
    only when training finished; a crash or an exception from ``progress`` leaves an older file untouched.
    """
    cfg = config or TrainConfig()
    policy = Policy(encoder, cfg.head)
    if start is not None and start.head == cfg.head and start.encoder is encoder:
        policy.load_head_state(start.head_state())
    return train(encoder, preferences, clean, cfg, out=out, cache=policy.make_cache(cache_dir), progress=progress,
                 policy=policy)


# ----- synthetic training data ----------------------------------------------------------------------------


def _styled_text(labels: Sequence[str], true_label: str, rng: random.Random, styles: str):
    if styles not in ("family", "paper"):
        raise ValueError(f"styles must be 'family' or 'paper', got {styles!r}")
    return styled_attack(sample_style(rng, STYLE_WEIGHTS) if styles == "family" else "wrong", labels, true_label, rng)


def styled_preference(image: Picture, true_label: str, labels: Sequence[str], rng: random.Random,
                      styles: str = "family", template: str = DEFAULT_TEMPLATE) -> Preference:
    """A pair for ``image`` (of ``true_label``) with text drawn from the style family (or the paper's style).

    Chosen = the true label; rejected = a wrong label the text writes, or ``None`` (the reference's
    strongest wrong answer) when the text names the true class or no class. ``styles``: ``family``
    (:data:`~poclip.world.styles.STYLE_WEIGHTS`) or ``paper`` (one wrong class word).
    """
    text = _styled_text(labels, true_label, rng, styles)
    return Preference(image, true_label, text.wrong[0] if text.wrong else None, tuple(labels), template, text.attack)


def synth_preferences(n: int, seed: int = 0, size: int = 224, styles: str = "family") -> list[Preference]:
    """``n`` typographic pairs from the synthetic world: a clean scene plus text (:func:`styled_preference`).

    Labels = all shapes. Pictures come from ``random.Random(f"pairs:{seed}:{i}")``, a stream disjoint from
    the evaluation sets' ``eval:`` seeds. ``styles="paper"`` gives the paper's pairs (one wrong word each).
    """
    out = []
    for i in range(n):
        rng = random.Random(f"pairs:{seed}:{i}")
        scene = synth.sample_scene(rng)
        out.append(styled_preference(synth.draw_scene(scene, size), scene.shape, synth.SHAPES, rng, styles))
    return out


def synth_clean(n: int, seed: int = 0, size: int = 224, styles: str | None = "family") -> list[CleanImage]:
    """``n`` clean regularization scenes (stream ``clean:{seed}:{i}``) over the shape label set.

    ``styles`` (``family`` or ``paper``) also draws text for each scene's invariance row (stream
    ``clean-text:{seed}:{i}``); ``None`` gives the paper's bare clean pictures.
    """
    out = []
    for i in range(n):
        scene = synth.sample_scene(random.Random(f"clean:{seed}:{i}"))
        attack = None
        if styles is not None:
            attack = _styled_text(synth.SHAPES, scene.shape, random.Random(f"clean-text:{seed}:{i}"), styles).attack
        out.append(CleanImage(synth.draw_scene(scene, size), synth.SHAPES, DEFAULT_TEMPLATE, attack))
    return out

