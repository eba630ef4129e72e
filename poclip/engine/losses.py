"""Preference-optimization losses for CLIP as a policy over a finite label set.

CLIP is a policy ``pi(y|x) = softmax_y(s * <img(x), txt(y)>)``; the reference ``pi_ref`` is the frozen
base model. For a preference triple (image x, chosen label y_w, rejected label y_l) every loss here is a
function of the policy's and the reference's log-probabilities of the two labels::

    r_w = log pi(y_w|x) - log pi_ref(y_w|x)        (implicit reward of the chosen label)
    r_l = log pi(y_l|x) - log pi_ref(y_l|x)
    h   = r_w - r_l

The method follows Afzali et al., "Aligning Visual Contrastive learning models via Preference
Optimization" (ICLR 2025, arXiv 2411.08923); each loss names the paper it comes from. Functions return
per-example losses (shape ``[N]``) so callers choose the reduction; :data:`PREFERENCE_LOSSES` maps a
name to a function ``(r_w, r_l, beta, **kw) -> [N]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

# The paper's code starts from DPO 1.0, IPO 0.01 and KTO 1.5. Our defaults, chosen on bench/alignment.py (bundled
# model, 1,000 pairs) from DPO 0.5/1/2, IPO 0.01-0.25 and KTO 0.3/0.5/1.5. IPO regresses h to 1/(2*beta), so the
# paper's 0.01 (50 nats) wrecks clean accuracy here. "robust", "conservative" and "hinge" follow DPO's scale.
DEFAULT_BETA: dict[str, float] = {
    "dpo": 0.5, "ipo": 0.05, "kto": 0.3, "robust": 0.5, "conservative": 0.5, "hinge": 0.5, "ce": 1.0,
}


def dpo_loss(r_w: torch.Tensor, r_l: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO, Rafailov et al. 2023 (arXiv 2305.18290): ``-log sigmoid(beta * h)``, h = r_w - r_l.

    At the reference (h = 0) the loss is ``log 2``.
    """
    return -F.logsigmoid(beta * (r_w - r_l))


def ipo_loss(r_w: torch.Tensor, r_l: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO, Azar et al. 2023 (arXiv 2310.12036): ``(h - 1/(2*beta))^2``.

    A squared loss regresses h to a finite target, so it cannot push the margin to infinity as DPO can.
    """
    return (r_w - r_l - 1.0 / (2.0 * beta)) ** 2


def kto_loss(r_w: torch.Tensor, r_l: torch.Tensor, beta: float, z0: torch.Tensor | float = 0.0) -> torch.Tensor:
    """KTO, Ethayarajh et al. 2024 (arXiv 2402.01306), in the paired form of Afzali et al. 2025.

    ``mean(1 - sigmoid(beta*(r_w - z0)), 1 - sigmoid(beta*(z0 - r_l)))`` per example, where ``z0`` is the
    reference point: the detached mean KL(pi_ref || pi) on the clean batch (clamped at 0, as KTO does).
    """
    z0 = torch.as_tensor(z0, dtype=r_w.dtype, device=r_w.device).detach().clamp(min=0)
    desirable = 1.0 - torch.sigmoid(beta * (r_w - z0))
    undesirable = 1.0 - torch.sigmoid(beta * (z0 - r_l))
    return 0.5 * (desirable + undesirable)


def conservative_dpo_loss(r_w: torch.Tensor, r_l: torch.Tensor, beta: float, eps: float = 0.1) -> torch.Tensor:
    """Conservative DPO (cDPO), Mitchell 2023, "A note on DPO with noisy preferences".

    Label smoothing: each preference is assumed flipped with probability ``eps``::

        (1 - eps) * -log sigmoid(beta*h) + eps * -log sigmoid(-beta*h)

    The loss has a finite minimum at ``beta*h = log((1-eps)/eps)``, so noisy crowd labels cannot drive
    the margin without bound.
    """
    _check_eps(eps)
    logits = beta * (r_w - r_l)
    return -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


def robust_dpo_loss(r_w: torch.Tensor, r_l: torch.Tensor, beta: float, eps: float = 0.1) -> torch.Tensor:
    """Robust DPO (rDPO), Chowdhury et al. 2024 (arXiv 2403.00409), for labels flipped with rate ``eps``.

    The unbiased estimate of the clean-label DPO loss::

        [(1 - eps) * -log sigmoid(beta*h) - eps * -log sigmoid(-beta*h)] / (1 - 2*eps)

    With ``eps = 0`` it is DPO.
    """
    _check_eps(eps)
    logits = beta * (r_w - r_l)
    return (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)


def hinge_loss(r_w: torch.Tensor, r_l: torch.Tensor, beta: float) -> torch.Tensor:
    """Hinge (SLiC), Zhao et al. 2023 (arXiv 2305.10425): ``max(0, 1 - beta*h)``."""
    return torch.relu(1.0 - beta * (r_w - r_l))


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label noise eps must be in [0, 0.5), got {eps}")


PreferenceLoss = Callable[..., torch.Tensor]
PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "kto": kto_loss,
    "robust": robust_dpo_loss,
    "conservative": conservative_dpo_loss,
    "hinge": hinge_loss,
}
LOSS_NAMES: tuple[str, ...] = (*PREFERENCE_LOSSES, "ce")


def cross_entropy_loss(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fine-tuning baseline: ``-log pi(y_w|x)`` on the attacked images (no reference, no KL).

    ``logp`` is ``[N, L]`` log-probabilities, ``target`` the chosen label's index ``[N]``.
    """
    return -logp.gather(1, target[:, None]).squeeze(1)


def kl_to_reference(ref_logp: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(pi_ref(.|x) || pi(.|x)) = sum_y pi_ref(y|x) * (log pi_ref(y|x) - log pi(y|x)), per image ``[N]``.

    The regularizer on clean images (Afzali et al. 2025): it keeps the aligned model's whole predictive
    distribution, not just its top label, close to the base model's. ``mask`` (``[N, L]`` bool) marks
    real labels when label sets of different sizes are padded into one tensor.
    """
    if mask is not None:
        # Padded labels have log-probability -inf under both policies; their terms are 0, not nan.
        zero = torch.zeros_like(logp)
        ref_logp, logp = torch.where(mask, ref_logp, zero), torch.where(mask, logp, zero)
        return torch.where(mask, ref_logp.exp(), zero).mul(ref_logp - logp).sum(-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def text_invariance_loss(clean_logp: torch.Tensor, texted_logp: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Text invariance (ours, beyond the paper): KL(pi(.|x) || pi(.|T(x))) per picture ``[N]``.

    ``x`` is a clean picture and ``T(x)`` the same picture with any text written on it (a wrong word, the true
    word, a neutral word, several words)::

        L_inv = sum_y sg[pi(y|x)] * (log sg[pi(y|x)] - log pi(y|T(x)))

    where sg is stop-gradient: the clean picture's own prediction is the target, so the term pulls the texted
    picture's distribution to it and never moves the clean prediction toward the texted one. It is zero when
    the text changes nothing. ``mask`` marks real labels as in :func:`kl_to_reference`.
    """
    return kl_to_reference(clean_logp.detach(), texted_logp, mask)


def preference_loss(
    name: str,
    r_w: torch.Tensor,
    r_l: torch.Tensor,
    beta: float,
    *,
    z0: torch.Tensor | float = 0.0,
    eps: float = 0.1,
) -> torch.Tensor:
    """Per-example preference loss ``name`` (a key of :data:`PREFERENCE_LOSSES`)."""
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; choose one of {', '.join(PREFERENCE_LOSSES)}")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a positive number, got {beta}")
    if name == "kto":
        return kto_loss(r_w, r_l, beta, z0)
    if name in ("robust", "conservative"):
        return PREFERENCE_LOSSES[name](r_w, r_l, beta, eps)
    return PREFERENCE_LOSSES[name](r_w, r_l, beta)


def reward_metrics(r_w: torch.Tensor, r_l: torch.Tensor, beta: float) -> dict[str, float]:
    """TRL's logged reward metrics: rewards are ``beta * (log pi - log pi_ref)``, averaged over the batch."""
    chosen, rejected = beta * r_w.detach(), beta * r_l.detach()
    return {
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "rewards/margins": float((chosen - rejected).mean()),
        "rewards/accuracies": float((chosen > rejected).float().mean()),
    }
