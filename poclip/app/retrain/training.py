"""Step 2 of a retrain: the run's training config, and training the candidate head with the engine.

The recipe is the engine's default (:class:`~poclip.engine.train.TrainConfig`) for the trainer's head; a run
may ask for another loss or seed. With replayed pairs the epochs shrink (:func:`replay_epochs`) so a retrain
takes the steps its larger part alone would, and a retrain that refines the live head takes half of those.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from poclip.app.retrain.data import TrainingData
from poclip.engine.config import TrainConfig
from poclip.engine.heads import HeadSpec
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy
from poclip.engine.train import Progress, TrainResult, train_head


def replay_epochs(epochs: int, crowd: int, replay: int) -> int:
    """Epochs for a retrain on ``crowd`` pairs plus ``replay`` synthetic ones: the steps ``epochs`` would take
    over the larger part alone, so replay does not double a retrain's time.

    Measured on the bundled model with 200 simulated labels (1,000 crowd pairs with the augmentation), from the
    shipped starter head (held-out paper-style typographic accuracy 0.976): the crowd pairs alone for 8 epochs
    wore it down to 0.955; with 1,000 replayed pairs for 4 epochs, the same 125 steps, it kept 0.975, and every
    other attack family within a point. From a starter trained on 2,000 pairs (0.916), the same two retrains
    gave 0.919 and 0.934.
    """
    if replay <= 0 or crowd <= 0:
        return epochs
    return max(1, round(epochs * max(crowd, replay) / (crowd + replay)))


# A retrain that refines the live head (the starter head at first) takes this share of the epochs: it starts where
# a run from the base model ends. Measured on the bundled model, from the shipped starter head, 200 simulated labels
# (1,000 pairs with the augmentation) and 1,000 replayed pairs, each of 9 attack families on 500 held-out pictures:
# 1, 2 and 4 epochs (26, 52 and 104 steps) left every family within a point of the starter (mean -0.29, -0.22 and
# -0.20 points, worst -1.0, -0.6 and -0.8), so two epochs, half the training time.
REFINE_SHARE = 0.5


def run_config(head: HeadSpec, requested: dict[str, Any], data: TrainingData, refines: bool = False) -> TrainConfig:
    """The config of a run: the default recipe for ``head``, the run's ``loss`` (default ``dpo``) and ``seed``
    (default 0), and the epochs :func:`replay_epochs` gives for ``data``'s judged and replayed pairs, times
    :data:`REFINE_SHARE` when the run ``refines`` a live head of the same kind."""
    config = TrainConfig(head=str(head), loss=str(requested.get("loss", "dpo")), seed=int(requested.get("seed", 0)))
    epochs = replay_epochs(config.resolved_epochs, data.judged_pairs, data.replay_pairs)
    return replace(config, epochs=max(1, round(epochs * REFINE_SHARE)) if refines else epochs)


def train_candidate(encoder: ClipEncoder, data: TrainingData, config: TrainConfig, out: Path | None,
                    cache_dir: Path, start: Policy | None, progress: Progress | None) -> TrainResult:
    """Train the candidate head on ``data`` and write it to ``out`` (None: kept in memory only).

    ``start``: the serving head (the starter head at first), which crowd pairs refine rather than start over;
    the reference, and so the KL anchor, stays the base model. ``progress(step, total, metrics)`` is called after
    every optimizer step; an exception from it stops training and leaves no checkpoint.
    """
    return train_head(encoder, data.prefs, data.clean, out, config, cache_dir=cache_dir, progress=progress,
                      start=start)
