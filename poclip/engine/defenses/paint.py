"""PAINT (Ilharco et al., NeurIPS 2022, arXiv 2208.05592): fine-tune with cross-entropy, then interpolate weights.

    theta_alpha = (1 - alpha) theta_base + alpha theta_ft

The fine-tune is the default head's kind (:data:`~poclip.engine.train.DEFAULT_HEAD`: the image tower's last
residual blocks and projection) trained with plain cross-entropy on the texted pictures
(:class:`~poclip.engine.train.TrainConfig` ``loss="ce"``: no reference, no KL, no invariance) on PO-CLIP's
budget. The interpolation is the tower head's strength knob (:meth:`~poclip.engine.policy.Policy.with_strength`,
``theta_ref + alpha (theta - theta_ref)``, the same formula). As PAINT does, alpha is chosen on held-out
data, the calibration set (stream ``calibration:7:i``, disjoint from training and evaluation): the alpha of
:data:`ALPHAS` with the best mean of attacked and clean accuracy.
"""

from __future__ import annotations

import torch

from poclip.engine.config import DEFAULT_HEAD, TrainConfig
from poclip.engine.defenses.data import (
    CALIBRATION_N,
    CALIBRATION_SEED,
    CLEAN,
    PAIRS,
    SEED,
    calibration_set,
    training_data,
)
from poclip.engine.defenses.head import PolicyDefense
from poclip.engine.policy import Policy
from poclip.engine.train import train

ALPHAS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(11))


class Paint(PolicyDefense):
    """A cross-entropy fine-tune interpolated with the base weights; the build is the fine-tuned head and alpha
    (``info['alpha']``)."""

    name = "paint"

    def __init__(self, encoder, pairs: int = PAIRS, clean: int = CLEAN, seed: int = SEED, head: str = DEFAULT_HEAD,
                 epochs: int | None = None, calibration_n: int = CALIBRATION_N,
                 calibration_seed: int = CALIBRATION_SEED) -> None:
        super().__init__(encoder, pairs=pairs, clean=clean, seed=seed, head=head, epochs=epochs,
                         calibration_n=calibration_n, calibration_seed=calibration_seed)
        self.finetuned: Policy | None = None

    def fit(self) -> None:
        r = self.recipe
        prefs, clean = training_data(int(r["pairs"]), int(r["clean"]), int(r["seed"]))
        cfg = TrainConfig(head=str(r["head"]), loss="ce", invariance=0.0, seed=int(r["seed"]), epochs=r["epochs"])
        result = train(self.encoder, prefs, clean, cfg)
        self.finetuned = result.policy
        cal = calibration_set(int(r["calibration_n"]), int(r["calibration_seed"]))
        text = self.encoder.classifier(list(cal.labels))
        clean_x, attacked_x = self.finetuned.inputs(cal.clean), self.finetuned.inputs(cal.attacked)
        scores = {}
        with torch.no_grad():
            for alpha in ALPHAS:
                policy = self.finetuned.with_strength(alpha)
                scores[alpha] = (cal.accuracy(policy.logits(attacked_x, text)),
                                 cal.accuracy(policy.logits(clean_x, text)))
        alpha = max(ALPHAS, key=lambda a: (sum(scores[a]) / 2, -a))  # ties: the smaller step from the base model
        self.policy = self.finetuned.with_strength(alpha)
        self.info = {"alpha": alpha, "train_seconds": result.train_seconds, "steps": result.steps,
                     "calibration": {str(a): {"attacked": round(s[0], 4), "clean": round(s[1], 4)}
                                     for a, s in scores.items()}}

    def state(self) -> dict[str, torch.Tensor]:
        return self.finetuned.head_state()

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.finetuned = Policy(self.encoder, str(self.recipe["head"]))
        self.finetuned.load_head_state(tensors)
        self.policy = self.finetuned.with_strength(float(self.info["alpha"]))
