"""Step 1 of a retrain: the preference data, from the crowd's judgments and the synthetic world.

The crowd's pairs come from :meth:`annotation_db.Repository.training_pairs` (consensus per sample, held-out
items excluded). Each typographic judgment is expanded into more pairs with other text on the same picture
(:func:`text_invariance_pairs`); ``POCLIP_REPLAY_PAIRS`` synthetic pairs are replayed so crowd pairs refine
the starter head's skills instead of wearing them down; the judged pictures, the replayed scenes and, up to
:data:`MIN_CLEAN`, more synthetic scenes are the clean pictures of the KL regularizer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from annotation_db import Repository, TrainingPair
from poclip.engine.embed_cache import StoredPicture
from poclip.engine.preferences import CleanImage, Preference, styled_preference, synth_clean, synth_preferences
from poclip.engine.starter import SEED as STARTER_SEED
from poclip.world.attacks import TextAttack

MIN_PAIRS = 10
MIN_CLEAN = 300  # top the clean regularization set up to this many pictures with synthetic scenes
REPLAY_SEED = STARTER_SEED  # replayed synthetic pairs are the starter head's own (the first of them)


class NotEnoughData(RuntimeError):
    """Too few pairs to train on; the run fails with this message."""


@dataclass
class TrainingData:
    """What a retrain trains on.

    Attributes:
        prefs: the pairs from judgments with their augmentation, then the replayed synthetic pairs.
        clean: the clean regularization pictures.
        crowd_pairs: the crowd pairs the run uses (people's consensus pairs, :attr:`TrainingPair.from_people`),
            trained and held out: the figure the schedule compares (see :mod:`poclip.app.pair_counts`).
        judged_pairs: how many of ``prefs`` come from judgments (gold answers and augmentation included).
        replay_pairs: how many of ``prefs`` are replayed synthetic pairs.
        watermark: the newest judgment the pairs were built from (None: no judgments yet).
        held_out: the held-out crowd items' consensus pairs, never trained on (the gate scores them).
    """

    prefs: list[Preference]
    clean: list[CleanImage]
    crowd_pairs: int
    judged_pairs: int
    replay_pairs: int
    watermark: int | None
    held_out: list[TrainingPair]


def text_invariance_pairs(pref: Preference, sample_id: int, k: int) -> list[Preference]:
    """``k`` more pairs from one typographic judgment: the same picture with other text written on it.

    A person who says the object is ``chosen`` despite the word on the picture has said so for any writing:
    the object does not change with it. Each extra pair draws its text from the text-style family
    (:mod:`poclip.world.styles`: other wrong words, the true word, neutral words, several words, other looks;
    seeded by the sample), so "the written class is never the answer" cannot fit the data. Judgments on
    pictures without writing are not expanded.
    """
    if pref.attack is None or k <= 0 or len(pref.labels) < 2:
        return []
    return [styled_preference(pref.image, pref.chosen, pref.labels, random.Random(f"invariance:{sample_id}:{j}"),
                              template=pref.template) for j in range(k)]


def synthetic(replay_pairs: int, crowd_clean: int = 0) -> tuple[list[Preference], list[CleanImage]]:
    """The synthetic part of a retrain: ``replay_pairs`` replayed pairs and as many clean pictures, then clean
    scenes topping the crowd's ``crowd_clean`` pictures and those up to :data:`MIN_CLEAN`.

    Every run draws prefixes of the same streams, so their head inputs are computed once: with ``crowd_clean=0``
    this is everything any run can draw (:meth:`poclip.app.worker.Trainer.prepare`).
    """
    prefs, clean = (synth_preferences(replay_pairs, REPLAY_SEED), synth_clean(replay_pairs, REPLAY_SEED)) \
        if replay_pairs > 0 else ([], [])
    short = MIN_CLEAN - crowd_clean - len(clean)
    return prefs, clean + (synth_clean(short, seed=1) if short > 0 else [])


def collect(repo: Repository, record_watermark: Callable[[int], None], *, augment_attacks: int,
            replay_pairs: int, held_out: Callable[[TrainingPair], bool] | None = None) -> TrainingData:
    """The crowd's pairs (with ``augment_attacks`` extra pairs per typographic judgment), ``replay_pairs``
    synthetic pairs and as many synthetic clean pictures, and the clean pictures topped up to :data:`MIN_CLEAN`.

    Args:
        repo: the preference store.
        record_watermark: called with the judgment watermark before anything can fail, so the run's row says
            which judgments it saw even when it fails.
        augment_attacks: ``POCLIP_AUGMENT``; replay_pairs: ``POCLIP_REPLAY_PAIRS``.
        held_out: which items are held out (:class:`poclip.app.retrain.crowd.HeldOutSplit`); their pairs are
            kept apart for the gate and never trained on. None: nothing is held out.
    Raises:
        NotEnoughData: fewer than :data:`MIN_PAIRS` crowd pairs.
    """
    batch = repo.training_pairs(None, held_out=held_out)
    if batch.watermark:
        record_watermark(batch.watermark)
    if len(batch.pairs) < MIN_PAIRS:
        raise NotEnoughData(f"only {len(batch.pairs)} training pairs; at least {MIN_PAIRS} are needed")
    # Pictures are named by their stored hash: the trainer's cache opens a file only for what it has not seen.
    pictures: dict[str, StoredPicture] = {}
    prefs, clean = [], []
    for pair in batch.pairs:
        if pair.image_sha256 not in pictures:
            pictures[pair.image_sha256] = StoredPicture(pair.image_sha256, Path(pair.image_path))
            clean.append(CleanImage(pictures[pair.image_sha256], tuple(pair.labels), pair.prompt_template))
        attack = TextAttack.from_dict(pair.attack) if pair.attack else None
        prefs.append(Preference(pictures[pair.image_sha256], pair.chosen, pair.rejected, tuple(pair.labels),
                                pair.prompt_template, attack))
        prefs += text_invariance_pairs(prefs[-1], pair.sample_id, augment_attacks)
    judged = len(prefs)
    replay_prefs, synth_clean_pictures = synthetic(replay_pairs, len(clean))
    crowd = sum(pair.from_people for pair in batch.pairs + batch.held_out)
    return TrainingData(prefs + replay_prefs, clean + synth_clean_pictures, crowd, judged, len(replay_prefs),
                        batch.watermark, batch.held_out)
