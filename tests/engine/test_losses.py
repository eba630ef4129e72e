"""The preference losses against hand-computed values (the formulas in poclip.engine.losses' docstrings)."""

import math

import pytest
import torch

from poclip.engine.losses import (
    conservative_dpo_loss,
    cross_entropy_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kl_to_reference,
    kto_loss,
    preference_loss,
    reward_metrics,
    robust_dpo_loss,
    text_invariance_loss,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_dpo_at_the_reference_is_log_2_and_matches_hand_values():
    assert dpo_loss(t(0.0), t(0.0), 1.0).item() == pytest.approx(math.log(2), abs=1e-12)
    # h = 0.7 - (-0.3) = 1.0; beta = 0.5 -> -log sigmoid(0.5)
    assert dpo_loss(t(0.7), t(-0.3), 0.5).item() == pytest.approx(-math.log(sigmoid(0.5)), abs=1e-12)
    assert dpo_loss(t(-1.0), t(1.0), 2.0).item() == pytest.approx(-math.log(sigmoid(-4.0)), abs=1e-12)


def test_ipo_regresses_the_margin_to_one_over_two_beta():
    # beta = 0.25 -> target 2; h = 0.5 -> (0.5 - 2)^2 = 2.25
    assert ipo_loss(t(0.5), t(0.0), 0.25).item() == pytest.approx(2.25)
    assert ipo_loss(t(1.0), t(-1.0), 0.25).item() == pytest.approx(0.0)
    assert ipo_loss(t(0.0), t(0.0), 0.01).item() == pytest.approx(2500.0)


def test_kto_uses_the_clean_kl_as_reference_point():
    r_w, r_l, z0, beta = 0.4, -0.2, 0.1, 1.5
    expected = 0.5 * ((1 - sigmoid(beta * (r_w - z0))) + (1 - sigmoid(beta * (z0 - r_l))))
    assert kto_loss(t(r_w), t(r_l), beta, z0).item() == pytest.approx(expected, abs=1e-12)
    assert kto_loss(t(0.0), t(0.0), 1.0, 0.0).item() == pytest.approx(0.5)
    # z0 is detached and a negative estimate is clamped at 0, as in KTO
    z = torch.tensor(-3.0, requires_grad=True)
    assert kto_loss(t(0.0), t(0.0), 1.0, z).item() == pytest.approx(0.5)


def test_label_smoothed_dpo_variants():
    h, beta, eps = 0.8, 1.0, 0.2
    lw, ll = -math.log(sigmoid(beta * h)), -math.log(sigmoid(-beta * h))
    assert conservative_dpo_loss(t(h), t(0.0), beta, eps).item() == pytest.approx((1 - eps) * lw + eps * ll)
    assert robust_dpo_loss(t(h), t(0.0), beta, eps).item() == pytest.approx(((1 - eps) * lw - eps * ll) / (1 - 2 * eps))
    assert robust_dpo_loss(t(h), t(0.0), beta, 0.0).item() == pytest.approx(lw)
    with pytest.raises(ValueError, match="eps"):
        robust_dpo_loss(t(h), t(0.0), beta, 0.5)


def test_hinge_is_zero_beyond_the_margin():
    assert hinge_loss(t(0.3), t(0.0), 1.0).item() == pytest.approx(0.7)
    assert hinge_loss(t(2.0), t(0.0), 1.0).item() == 0.0


def test_kl_regularizer_and_cross_entropy_by_hand():
    ref = torch.log(t(0.5, 0.25, 0.25))[None]
    pol = torch.log(t(0.25, 0.5, 0.25))[None]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5)
    assert kl_to_reference(ref, pol).item() == pytest.approx(expected)
    assert kl_to_reference(ref, ref).item() == 0.0
    # padded labels (log-prob -inf in both) contribute nothing and give no nan
    pad = torch.tensor([[True, True, True, False]])
    ref_p = torch.cat([ref, torch.full((1, 1), -math.inf, dtype=ref.dtype)], 1)
    pol_p = torch.cat([pol, torch.full((1, 1), -math.inf, dtype=pol.dtype)], 1)
    assert kl_to_reference(ref_p, pol_p, pad).item() == pytest.approx(expected)
    assert cross_entropy_loss(pol, torch.tensor([1])).item() == pytest.approx(-math.log(0.5))


def test_reward_metrics_use_trl_names_and_beta_scaling():
    m = reward_metrics(t(0.2, -0.1), t(-0.4, 0.3), beta=2.0)
    assert m == pytest.approx({"rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2,
                               "rewards/accuracies": 0.5})


def test_preference_loss_rejects_unknown_names_and_bad_beta():
    with pytest.raises(ValueError, match="unknown preference loss"):
        preference_loss("orpo", t(0.0), t(0.0), 1.0)
    with pytest.raises(ValueError, match="beta"):
        preference_loss("dpo", t(0.0), t(0.0), 0.0)


def _clip_log_probs(img, text, w, s=10.0):
    return torch.log_softmax(s * (img @ w.T) @ (text @ w.T).T, dim=-1)


@pytest.mark.parametrize("name", ["dpo", "ipo", "kto", "robust", "conservative", "hinge"])
def test_gradient_wrt_the_image_embedding_points_along_chosen_minus_rejected(name):
    """At the reference (W = I) h = s <i, T(y_w) - T(y_l)> - const, so descent moves i toward T(y_w) - T(y_l)."""
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, 16, dtype=torch.float64), dim=-1)
    img = torch.nn.functional.normalize(torch.randn(1, 16, dtype=torch.float64), dim=-1).requires_grad_(True)
    w = torch.eye(16, dtype=torch.float64)
    ref = _clip_log_probs(img, text, w).detach()  # the reference is frozen
    logp = _clip_log_probs(img, text, w)
    chosen, rejected = 1, 3
    r_w, r_l = logp[:, chosen] - ref[:, chosen], logp[:, rejected] - ref[:, rejected]
    loss = preference_loss(name, r_w, r_l, 0.5, z0=0.0).sum()
    if name == "dpo":
        assert loss.item() == pytest.approx(math.log(2))
    (grad,) = torch.autograd.grad(loss, img)
    direction = text[chosen] - text[rejected]
    cosine = torch.nn.functional.cosine_similarity(-grad[0], direction, dim=0).item()
    assert cosine == pytest.approx(1.0, abs=1e-9)


def test_text_invariance_is_zero_when_the_text_changes_nothing():
    logp = torch.log_softmax(torch.randn(5, 7, dtype=torch.float64), dim=-1)
    assert torch.allclose(text_invariance_loss(logp, logp.clone()), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    other = torch.log_softmax(torch.randn(5, 7, dtype=torch.float64), dim=-1)
    assert (text_invariance_loss(logp, other) > 0).all()


def test_text_invariance_gradient_pulls_the_texted_picture_to_the_clean_one_and_leaves_the_clean_one():
    clean = torch.log_softmax(torch.tensor([[3.0, 0.0, -1.0]]), dim=-1)
    clean_logits = torch.tensor([[3.0, 0.0, -1.0]], requires_grad=True)
    texted = torch.tensor([[0.0, 4.0, 0.0]], requires_grad=True)  # the text made label 1 win
    loss = text_invariance_loss(torch.log_softmax(clean_logits, -1), torch.log_softmax(texted, -1)).sum()
    loss.backward()
    assert clean_logits.grad is None or torch.count_nonzero(clean_logits.grad) == 0  # the target is detached
    # d/dz KL(p || softmax(z)) = softmax(z) - p: it raises the clean answer's logit and lowers the written one's
    assert torch.allclose(texted.grad, torch.softmax(texted.detach(), -1) - clean.exp(), atol=1e-6)
    z = texted.detach().clone().requires_grad_(True)
    before = float(text_invariance_loss(clean, torch.log_softmax(z, -1)).detach())
    for _ in range(50):
        text_invariance_loss(clean, torch.log_softmax(z, -1)).sum().backward()
        with torch.no_grad():
            z -= 2.0 * z.grad
        z.grad = None
    after = float(text_invariance_loss(clean, torch.log_softmax(z, -1)))
    assert after < 0.05 * before and z.argmax() == 0  # descent moves the texted answer to the clean one


def test_text_invariance_ignores_padded_labels():
    clean = torch.log_softmax(torch.tensor([[1.0, 0.0, float("-inf")]]), dim=-1)
    texted = torch.log_softmax(torch.tensor([[0.0, 1.0, float("-inf")]]), dim=-1)
    mask = torch.tensor([[True, True, False]])
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    expected = float((p * (p.log() - p.flip(0).log())).sum())
    assert float(text_invariance_loss(clean, texted, mask)[0]) == pytest.approx(expected, abs=1e-6)
