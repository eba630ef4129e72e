"""The training recipe: :class:`TrainConfig` and the per-loss, per-head defaults it falls back to.

Each option is declared once, as a field with its help, bounds and choices (:func:`poclip.options.option`); the
``train`` command's flags and their help are generated from these fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from poclip.engine.heads import HeadSpec
from poclip.engine.losses import DEFAULT_BETA, LOSS_NAMES
from poclip.options import check as check_options
from poclip.options import option

# IPO's squared loss pulls harder on clean pictures than DPO's saturating one, so it needs the paper's lambda.
DEFAULT_LAMBDA: dict[str, float] = {"ipo": 1.0}
OTHER_LAMBDA = 0.3  # every other loss
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
# Image towers above this many parameters are real-size (a ViT-B/32's is 88 M; the bundled one's 3 M).
REAL_SIZE_TOWER = 20_000_000
# A recipe = which pairs (synth_preferences' ``styles``) and the weight of the text-invariance term.
RECIPES: dict[str, dict[str, object]] = {
    "invariant": {"styles": "family", "invariance": 1.0},
    "paper": {"styles": "paper", "invariance": 0.0},
}
DEFAULT_RECIPE = "invariant"


OPTIMIZERS = ("adamax", "adamw")
AVERAGES = ("beta",)


def _per(name: str, defaults: Mapping[str, float], other: float | None = None) -> str:
    # "per head: linear 0.05, projection 0.001, last_blocks 0.0003", written from the table the code reads.
    pairs = [f"{key} {value:g}" for key, value in defaults.items()]
    return f"per {name}: {', '.join(pairs)}" + (f", other losses {other:g}" if other is not None else "")


def head_kind(head: str) -> str:
    """The kind of a head spec (``'last_blocks:2'`` -> ``'last_blocks'``); :class:`~poclip.engine.heads.HeadError`
    if it is not one."""
    return HeadSpec.parse(head).kind


@dataclass
class TrainConfig:
    """Training recipe. ``None`` fields take their default for the loss or head kind (each field's
    ``default_doc``, written from :data:`~poclip.engine.losses.DEFAULT_BETA`, :data:`DEFAULT_LAMBDA`,
    :data:`DEFAULT_LR`, :data:`DEFAULT_EPOCHS` and :data:`DEFAULT_BATCH`). The paper's starting points are DPO
    1.0, IPO 0.01, KTO 1.5, lambda 1, Adamax. Fields with a ``flag`` are the ``train`` command's options.
    """

    head: str = option(DEFAULT_HEAD, flag="--head",
                       help="the trained head: linear, projection or last_blocks:K (see poclip.engine.policy).")
    loss: str = option("dpo", flag="--loss", choices=LOSS_NAMES, help="the preference loss (ce: the baseline).")
    beta: float | None = option(None, flag="--beta", parse=float, low=0, low_open=True,
                                default_doc=_per("loss", DEFAULT_BETA), help="the loss's beta.")
    reg_lambda: float | None = option(None, flag="--lambda", parse=float, low=0,
                                      default_doc=_per("loss", DEFAULT_LAMBDA, OTHER_LAMBDA),
                                      help="weight of the KL(pi_ref || pi) regularizer on clean pictures "
                                           "(ignored by ce).")
    invariance: float = option(
        float(RECIPES[DEFAULT_RECIPE]["invariance"]), flag="--invariance", parse=float, low=0,
        default_doc="the recipe's: " + ", ".join(f"{name} {r['invariance']:g}" for name, r in RECIPES.items()),
        help="weight mu of the text-invariance term (0 = the paper's pure objective; ignored by ce).")
    ortho: float = option(1e-3, flag="--ortho", parse=float, low=0,
                          help="weight of ||W^T W - I||^2 (linear head), the strength-dial penalty.")
    label_noise: float = option(0.1, parse=float, low=0, high=0.5, high_open=True,
                                help="assumed flip rate of crowd labels for robust and conservative.")
    optimizer: str = option("adamw", flag="--optimizer", choices=OPTIMIZERS, help="the optimizer.")
    lr: float | None = option(None, flag="--lr", parse=float, low=0, low_open=True,
                              default_doc=_per("head", DEFAULT_LR), help="learning rate (cosine schedule).")
    weight_decay: float = option(0.0, parse=float, low=0, help="the optimizer's weight decay.")
    epochs: int | None = option(None, flag="--epochs", parse=int, low=1, default_doc=_per("head", DEFAULT_EPOCHS),
                                help="passes over the pairs.")
    batch_size: int | None = option(None, flag="--batch-size", parse=int, low=1,
                                    default_doc=_per("head", DEFAULT_BATCH), help="pairs per step.")
    val_fraction: float = option(0.1, parse=float, low=0, high=1, high_open=True,
                                 help="share of the pairs held out for early stopping.")
    patience: int = option(15, flag="--patience", parse=int, low=0,
                           help="epochs without validation improvement before stopping (0 = never stop early).")
    average: str | None = option(None, flag="--average", choices=AVERAGES, default_doc="off",
                                 help="average the weights over training with Beta(a, b) weights on progress.")
    average_ab: tuple[float, float] = option((3.0, 1.0), help="the (a, b) of the Beta moving average.")
    seed: int = option(0, flag="--seed", parse=int, help="seed of the split, the shuffling and the synthetic data.")
    show_progress: bool = option(False, help="a progress bar on stderr.")

    @property
    def resolved_beta(self) -> float:
        return float(self.beta if self.beta is not None else DEFAULT_BETA[self.loss])

    @property
    def resolved_lambda(self) -> float:
        return float(self.reg_lambda if self.reg_lambda is not None else DEFAULT_LAMBDA.get(self.loss, OTHER_LAMBDA))

    @property
    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[head_kind(self.head)])

    @property
    def resolved_epochs(self) -> int:
        return int(self.epochs if self.epochs is not None else DEFAULT_EPOCHS[head_kind(self.head)])

    @property
    def resolved_batch_size(self) -> int:
        return int(self.batch_size if self.batch_size is not None else DEFAULT_BATCH[head_kind(self.head)])

    def check(self) -> None:
        """Raise :class:`~poclip.errors.UserError` for an option outside its declared bounds or choices, or a head
        spec that is not one (:class:`~poclip.engine.policy.HeadError`)."""
        check_options(self, lambda f: f.name)
        head_kind(self.head)


def default_head(encoder) -> str:
    """The head a retrain trains unless ``POCLIP_HEAD`` names one: :data:`DEFAULT_HEAD`, except for a real-size
    image tower (:data:`REAL_SIZE_TOWER`) on the CPU, where it is ``projection``. There a ViT-B/32's last two blocks
    cost 2.9 s per training step of 64 pictures and the gate's three passes over its pictures minutes (``python
    bench/alignment.py --model ViT-B-32 --speed-only``), some 20 minutes per retrain on two cores; the projection
    trains in seconds on cached activations, and a retrain's time is the tower's pass over the crowd's new
    pictures."""
    params = sum(p.numel() for p in encoder.model.visual.parameters())
    return "projection" if encoder.device.type == "cpu" and params > REAL_SIZE_TOWER else DEFAULT_HEAD
