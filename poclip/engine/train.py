"""Train an alignment head from preference triples (DPO, IPO, KTO, robust DPO, hinge, or the CE baseline).

Two steps, as in nanoGPT: :func:`~poclip.engine.prepare.prepare` computes every head input once (embeddings
for the linear head, the frozen trunk's activations at the cut for tower heads, both through on-disk caches)
and the reference log-probabilities through the base policy; :func:`fit` is the loop. It minimises the
:class:`~poclip.engine.objective.Objective` (preference loss + lambda * clean KL + mu * text invariance +
gamma * orthogonality) with AdamW (or Adamax) on a cosine schedule, early stopping on a validation split, and
optionally a Beta moving average of the weights. mu = 0 with paper-style pairs is the paper's pure recipe
(``RECIPES``).

Logged every step: TRL's names (loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies),
kl/clean, and each term unweighted (loss/preference, loss/kl, loss/invariance, loss/ortho).
:func:`train_head` is the entry point for the app; the data types are in :mod:`poclip.engine.preferences`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from poclip.engine.config import TrainConfig
from poclip.engine.embed_cache import EmbeddingCache, Picture
from poclip.engine.heads import HeadSpec
from poclip.engine.models import ClipEncoder
from poclip.engine.objective import Objective
from poclip.engine.policy import Policy, save_head
from poclip.engine.preferences import CleanImage, Preference, TrainingDataError, as_clean, check_preference
from poclip.engine.prepare import Prepared, prepare

Progress = Callable[[int, int, dict[str, float]], None]


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
        check_preference(k, p)
    clean_items = as_clean(clean, preferences[0])
    torch.manual_seed(cfg.seed)
    # Adam's second-moment estimates of a nearly converged head decay into denormal floats, which made
    # some CPU runs 50x slower; flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    policy = policy if policy is not None else Policy(encoder, cfg.head)
    if policy.spec != HeadSpec.parse(cfg.head):
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
    out: str | Path | None,
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
    if start is not None and start.spec == policy.spec and start.encoder is encoder:
        policy.load_head_state(start.head_state())
    return train(encoder, preferences, clean, cfg, out=out, cache=policy.make_cache(cache_dir), progress=progress,
                 policy=policy)
