"""Defense-Prefix (Azuma & Matsui, ICCV 2023 workshop, arXiv 2304.04512): one learned word before the class name.

The prompt ``"a photo of a {}."`` becomes ``"a photo of a [DP] {}."``, where [DP] is a token embedding learned
for the purpose; both towers stay frozen, so the image side and every other word keep their meaning, and any
label set can use the same token. The token minimises, over batches of the training budget::

    L = L_defense + lambda * L_identity
    L_defense  = mean_x' CE( softmax_y s <img(x'), txt_DP(y)>, y_true )          x' = the picture with text
    L_identity = mean_x  KL( softmax_y s <img(x), txt(y)>  ||  softmax_y s <img(x), txt_DP(y)> )   x clean

the paper's two losses: the defense loss is cross-entropy on typographically attacked pictures scored with the
prefixed prompts; the identity loss keeps the prefixed prompts' class distribution on clean pictures the same as
the original prompts' (the original distribution is the fixed target), so [DP] does not change what a class name
means. As in the paper, each step draws one prompt template, lambda = 1, and the token starts at N(0, 0.02^2).
Data: PO-CLIP's budget (:func:`~poclip.engine.defenses.data.training_data`), the texted pairs' pictures with
their true label and the clean pictures; image embeddings are computed once (the image tower is frozen).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from poclip.engine.defenses.base import Defense
from poclip.engine.defenses.data import CLEAN, PAIRS, SEED, training_data
from poclip.engine.embed_cache import EmbeddingCache
from poclip.engine.losses import cross_entropy_loss, kl_to_reference
from poclip.errors import UserError
from poclip.world.synth import DEFAULT_TEMPLATE

PLACEHOLDER = "*"  # one token in CLIP's vocabulary; its embedding is swapped for the learned one
# The templates training draws from, one per step (the paper draws from its ImageNet templates).
TRAIN_TEMPLATES: tuple[str, ...] = (DEFAULT_TEMPLATE, "a {}.", "a drawing of a {}.", "a photo of the {}.",
                                    "a picture of a {}.", "an image of a {}.")


class PrefixError(UserError):
    """A backbone whose text tower Defense-Prefix cannot insert a token into."""


def encode_with_prefix(encoder, prompts: list[str], token: torch.Tensor) -> torch.Tensor:
    """Unit-norm text embeddings ``[len(prompts), d]`` of prompts in which :data:`PLACEHOLDER` stands for
    ``token`` (a ``[width]`` embedding); differentiable in ``token``, the text tower's weights are only read.

    Raises :class:`PrefixError` if the backbone's text tower is not open_clip's own transformer.
    """
    model = encoder.model
    if not hasattr(model, "token_embedding") or not hasattr(model, "positional_embedding"):
        raise PrefixError(f"Defense-Prefix needs an open_clip text transformer; {encoder.spec} has another kind")
    tokens = encoder.tokenizer(prompts).to(encoder.device)
    placeholder = int(encoder.tokenizer([PLACEHOLDER])[0, 1])
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast)
    x = torch.where((tokens == placeholder)[..., None], token.to(x.device, cast), x)
    x = model.transformer(x + model.positional_embedding.to(cast), attn_mask=model.attn_mask)
    x = text_global_pool(model.ln_final(x), tokens, model.text_pool_type,
                         eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return F.normalize(x.float(), dim=-1).cpu()


def prefixed(template: str, labels, placeholder: str = PLACEHOLDER) -> list[str]:
    """``template`` with ``"[DP] label"`` for each label."""
    return [template.format(f"{placeholder} {label}") for label in labels]


class DefensePrefix(Defense):
    """One learned token before the class name (see the module docstring); ``token`` is the build."""

    name = "prefix"

    def __init__(self, encoder, pairs: int = PAIRS, clean: int = CLEAN, seed: int = SEED, epochs: int = 30,
                 batch_size: int = 100, lr: float = 0.01, identity_weight: float = 1.0) -> None:
        super().__init__(encoder, pairs=pairs, clean=clean, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                         identity_weight=identity_weight)
        self.token: torch.Tensor | None = None
        self._text: dict[tuple, torch.Tensor] = {}

    def fit(self) -> None:
        r = self.recipe
        prefs, clean = training_data(int(r["pairs"]), int(r["clean"]), int(r["seed"]))
        labels = list(prefs[0].labels)
        if any(list(p.labels) != labels for p in prefs):
            raise ValueError("Defense-Prefix trains on one label set")
        cache = EmbeddingCache(self.encoder)
        attacked = cache.embed([p.image for p in prefs], [p.attack for p in prefs])
        truth = torch.tensor([labels.index(p.chosen) for p in prefs])
        clean_emb = cache.embed([c.image for c in clean])
        scale = self.encoder.logit_scale
        originals = {t: self.encoder.classifier(labels, (t,)) for t in TRAIN_TEMPLATES}
        generator = torch.Generator().manual_seed(int(r["seed"]))
        rng = random.Random(f"prefix:{r['seed']}")
        width = self.encoder.model.token_embedding.weight.shape[1]
        token = (torch.randn(width, generator=generator) * 0.02).requires_grad_(True)
        optimizer = torch.optim.AdamW([token], lr=float(r["lr"]), weight_decay=0.0)
        batch = int(r["batch_size"])
        steps_per_epoch = -(-len(attacked) // batch)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(r["epochs"]) * steps_per_epoch)
        history = []
        for _ in range(int(r["epochs"])):
            order = torch.randperm(len(attacked), generator=generator)
            corder = torch.randperm(len(clean_emb), generator=generator)
            cper = -(-len(clean_emb) // steps_per_epoch)
            for b in range(steps_per_epoch):
                template = rng.choice(TRAIN_TEMPLATES)
                text = encode_with_prefix(self.encoder, prefixed(template, labels), token)
                rows, crows = order[b * batch : (b + 1) * batch], corder[b * cper : (b + 1) * cper]
                defense = cross_entropy_loss(torch.log_softmax(scale * attacked[rows] @ text.T, -1),
                                             truth[rows]).mean()
                target = torch.log_softmax(scale * clean_emb[crows] @ originals[template].T, -1)
                identity = kl_to_reference(target, torch.log_softmax(scale * clean_emb[crows] @ text.T, -1)).mean()
                loss = defense + float(r["identity_weight"]) * identity
                # Gradients for the token only: the frozen text tower's weights are shared with the live model.
                (grad,) = torch.autograd.grad(loss, [token])
                token.grad = grad
                optimizer.step()
                scheduler.step()
                history.append((float(defense.detach()), float(identity.detach())))
        self.token = token.detach()
        last = history[-steps_per_epoch:]
        self.info = {"steps": len(history), "loss/defense": round(sum(h[0] for h in last) / len(last), 5),
                     "loss/identity": round(sum(h[1] for h in last) / len(last), 5)}

    def state(self) -> dict[str, torch.Tensor]:
        return {"token": self.token}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.token = tensors["token"].float()

    @torch.no_grad()
    def text(self, labels, template: str) -> torch.Tensor:
        """The prefixed prompts' embeddings for a label set (computed once per label set and template)."""
        key = (tuple(labels), template)
        if key not in self._text:
            self._text[key] = encode_with_prefix(self.encoder, prefixed(template, labels), self.token)
        return self._text[key]

    def _log_probs(self, images, labels, template):
        return self.encoder.log_probs(self.encoder.encode_images(images), self.text(labels, template))
