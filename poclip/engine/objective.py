"""The training objective: the weighted sum of the preference loss, the clean KL, text invariance and the
orthogonality penalty, with the metrics logged every step.

    L = mean_pairs L_pref(r_w, r_l)                      the paper's preference loss
      + lambda * mean_clean KL(pi_ref(.|x) || pi(.|x))    the paper's regularizer on clean pictures
      + mu * mean_pairs KL(sg pi(.|x) || pi(.|T(x)))      text invariance: texted picture vs its clean self
      + gamma * ||W^T W - I||_F^2                         linear head only: keeps the strength dial linear

The CE baseline is plain cross-entropy on the attacked pictures: no reference, no KL, no invariance, no ortho.
The losses themselves, per example and with their papers, are in :mod:`poclip.engine.losses`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from poclip.engine.losses import (
    cross_entropy_loss,
    kl_to_reference,
    preference_loss,
    reward_metrics,
    text_invariance_loss,
)
from poclip.engine.policy import Policy
from poclip.engine.prepare import label_log_probs

if TYPE_CHECKING:
    from poclip.engine.config import TrainConfig


class Objective:
    """The training loss of a batch of pairs and a batch of clean pictures, and its named terms.

    :meth:`terms` returns the unweighted terms (``preference``, ``kl``, ``invariance``, ``ortho``) and the
    rewards; :meth:`__call__` weights them by the config and returns ``(loss, metrics)``.
    """

    def __init__(self, policy: Policy, cfg: TrainConfig, text_bank: torch.Tensor) -> None:
        self.policy, self.cfg, self.text_bank = policy, cfg, text_bank
        self.beta = cfg.resolved_beta

    def log_probs(self, x: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return label_log_probs(self.policy.logits(x, self.text_bank, training=True), idx, mask)

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
