"""PO-CLIP's own alignment heads as defenses: the shipped starter head, and a retrain on PO-CLIP's budget.

Both adapt a :class:`~poclip.engine.policy.Policy` to the :class:`~poclip.engine.defenses.base.Defense`
interface: the head's tensors are the build, ``log pi(y|x)`` is the aligned policy's at strength 1.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from poclip.engine.config import TrainConfig
from poclip.engine.defenses.base import Defense
from poclip.engine.defenses.data import CLEAN, PAIRS, SEED, training_data
from poclip.engine.policy import Policy
from poclip.engine.starter import STARTER_HEAD, load_starter
from poclip.engine.train import train


class PolicyDefense(Defense):
    """A :class:`~poclip.engine.policy.Policy` scored as a defense (``policy`` is set by :meth:`fit`)."""

    name = "policy"
    policy: Policy | None = None

    def state(self) -> dict[str, torch.Tensor]:
        return self.policy.head_state()

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.policy = Policy(self.encoder, str(self.recipe["head"]))
        self.policy.load_head_state(tensors)

    def _log_probs(self, images, labels, template):
        text = self.encoder.classifier(list(labels), (template,))
        return torch.log_softmax(self.policy.logits(self.policy.inputs(images), text), dim=-1)


class Starter(PolicyDefense):
    """The shipped starter head (:mod:`poclip.engine.starter`); it exists for the bundled backbone only.

    It is built offline and shipped, so :meth:`fit` only loads it and ``info['shipped']`` says so; its
    build cost is in its module's docstring.
    """

    name = "starter"

    def __init__(self, encoder, path=STARTER_HEAD) -> None:
        super().__init__(encoder, path=str(path), head=TrainConfig().head)

    def fit(self) -> None:
        policy = load_starter(self.encoder, self.recipe["path"])
        if policy is None:
            raise LookupError(f"no starter head for backbone {self.encoder.spec}")
        if policy.head != self.recipe["head"]:
            raise LookupError(f"the starter head is a {policy.head} head, not {self.recipe['head']}")
        self.policy = policy
        self.info = {"shipped": True, "pairs": int(policy.metadata.get("n_pairs", 0))}


class Retrain(PolicyDefense):
    """The default head and recipe (:class:`~poclip.engine.train.TrainConfig`) trained with
    :func:`~poclip.engine.train.train` on ``pairs`` synthetic pairs and ``clean`` clean pictures (``seed``):
    what one crowd retrain of 1,000 pairs gives."""

    name = "retrain"

    def __init__(self, encoder, pairs: int = PAIRS, clean: int = CLEAN, seed: int = SEED,
                 config: TrainConfig | None = None) -> None:
        cfg = config or TrainConfig(seed=seed)
        super().__init__(encoder, pairs=pairs, clean=clean, seed=seed, head=cfg.head,
                         config={k: v for k, v in asdict(cfg).items() if k != "show_progress"})
        self.config = cfg

    def fit(self) -> None:
        prefs, clean = training_data(int(self.recipe["pairs"]), int(self.recipe["clean"]), int(self.recipe["seed"]))
        result = train(self.encoder, prefs, clean, self.config)
        self.policy = result.policy
        self.info = {"steps": result.steps, "train_seconds": result.train_seconds}
