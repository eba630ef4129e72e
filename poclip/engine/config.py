"""The training recipe: :class:`TrainConfig` and the per-loss, per-head defaults it falls back to."""

from __future__ import annotations

from dataclasses import dataclass

from poclip.engine.losses import DEFAULT_BETA, LOSS_NAMES
from poclip.engine.policy import parse_head

# IPO's squared loss pulls harder on clean pictures than DPO's saturating one, so it needs the paper's lambda.
DEFAULT_LAMBDA: dict[str, float] = {"ipo": 1.0}
# Tower weights are trained, not a fresh 128x128 matrix: a step the size of the linear head's would wreck them.
# For a tail of blocks, measured on bench/alignment.py (bundled model, last_blocks:2, 1,000 pairs): lr 3e-4,
# 8 epochs of batches of 64 beat lr 1e-3 (clean accuracy fell to 0.96) and 10 epochs of 128 (0.894 vs 0.904
# paper-style), and fit the 60 s retrain budget.
DEFAULT_LR: dict[str, float] = {"linear": 0.05, "projection": 1e-3, "last_blocks": 3e-4}
DEFAULT_EPOCHS: dict[str, int] = {"linear": 60, "projection": 12, "last_blocks": 8}
DEFAULT_BATCH: dict[str, int] = {"linear": 128, "projection": 128, "last_blocks": 64}
# The default head, chosen on bench/alignment.py's generalization table (README): the last two residual blocks
# and the attention pool beat the linear, projection and last_blocks:1 heads on every attack family, and
# retrain 1,000 pairs on cached trunk activations within the 60 s budget on 2 cores.
DEFAULT_HEAD = "last_blocks:2"
# A recipe = which pairs (synth_preferences' ``styles``) and the weight of the text-invariance term.
RECIPES: dict[str, dict[str, object]] = {
    "invariant": {"styles": "family", "invariance": 1.0},
    "paper": {"styles": "paper", "invariance": 0.0},
}
DEFAULT_RECIPE = "invariant"


@dataclass
class TrainConfig:
    """Training recipe. ``None`` fields take their default for the loss or head kind: ``beta``
    :data:`~poclip.engine.losses.DEFAULT_BETA`, ``reg_lambda`` :data:`DEFAULT_LAMBDA` (0.3), ``lr``
    :data:`DEFAULT_LR`, ``epochs`` :data:`DEFAULT_EPOCHS`, ``batch_size`` :data:`DEFAULT_BATCH`. The paper's
    starting points are DPO 1.0, IPO 0.01, KTO 1.5, lambda 1, Adamax.

    Attributes:
        head: ``linear``, ``projection`` or ``last_blocks:K`` (see :mod:`poclip.engine.policy`).
        loss: one of :data:`~poclip.engine.losses.LOSS_NAMES`.
        reg_lambda: weight of the KL(pi_ref || pi) regularizer on clean pictures (ignored by ``ce``).
        invariance: weight mu of the text-invariance term (0 = the paper's pure objective; ignored by ``ce``).
        ortho: weight of ``||W^T W - I||_F^2`` (linear head), the strength-dial penalty.
        label_noise: assumed flip rate of crowd labels for ``robust``/``conservative``.
        average: ``None`` or ``"beta"``: average weights over training with Beta(a, b) weights on progress.
        patience: epochs without validation improvement before stopping (0 = never stop early).
    """

    head: str = DEFAULT_HEAD
    loss: str = "dpo"
    beta: float | None = None
    reg_lambda: float | None = None
    invariance: float = float(RECIPES[DEFAULT_RECIPE]["invariance"])
    ortho: float = 1e-3
    label_noise: float = 0.1
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 0.0
    epochs: int | None = None
    batch_size: int | None = None
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

    @property
    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[parse_head(self.head)[0]])

    @property
    def resolved_epochs(self) -> int:
        return int(self.epochs if self.epochs is not None else DEFAULT_EPOCHS[parse_head(self.head)[0]])

    @property
    def resolved_batch_size(self) -> int:
        return int(self.batch_size if self.batch_size is not None else DEFAULT_BATCH[parse_head(self.head)[0]])

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
        if self.resolved_epochs < 1 or self.resolved_batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.resolved_lr <= 0:
            raise ValueError(f"lr must be positive, got {self.resolved_lr}")
        if self.resolved_beta <= 0 or self.resolved_lambda < 0 or self.ortho < 0 or self.invariance < 0:
            raise ValueError("beta must be positive; reg_lambda, invariance and ortho must not be negative")
