"""Prompt wording: a training-free defense that asks the model, in the prompt, to look past the writing.

Each label's text embedding is an ensemble over several templates (open_clip's
``build_zero_shot_classifier`` through :meth:`~poclip.engine.models.ClipEncoder.classifier`: the renormalised
mean of the templates' unit embeddings). The templates are picked from :data:`TEMPLATE_POOL` by greedy forward
selection on the calibration set (:func:`~poclip.engine.defenses.data.calibration_set`, stream
``calibration:7:i``, which no evaluation draws from): start from the single template with the best attacked
accuracy, add the template that raises it most, stop when none does or at ``max_templates``; a set whose clean
accuracy falls more than ``clean_cap`` below the plain template's is never taken. Nothing is trained, so the
build is deterministic and its only output is the chosen wording.
"""

from __future__ import annotations

from poclip.engine.defenses.base import Defense, base_log_probs
from poclip.engine.defenses.data import CALIBRATION_N, CALIBRATION_SEED, calibration_set
from poclip.world.synth import DEFAULT_TEMPLATE

# Wordings that name the object and say there is writing to look past (phrases a CLIP sees in web captions).
TEMPLATE_POOL: tuple[str, ...] = (
    DEFAULT_TEMPLATE,
    "a photo of a {}, ignore the writing.",
    "a photo of a {}, whatever the text says.",
    "a photo of a {} with a misleading word written on it.",
    "a {} with a word written on it.",
    "a photo of a {} with a word written on it.",
    "a {} with some writing on it.",
    "a {} with a label on it.",
    "a {} with text on it.",
    "a drawing of a {}.",
    "a {}.",
    "a {} shape.",
    "a photo of the {} object.",
    "a picture of a real {}, not a sign.",
    "a red {}.", "a blue {}.", "a green {}.", "a yellow {}.", "a purple {}.", "a pink {}.", "an orange {}.",
)


class PromptEnsemble(Defense):
    """Zero-shot classification with a calibrated template ensemble; the scoring template is not used (the
    ensemble replaces it). ``info['templates']`` holds the chosen wording."""

    name = "prompts"

    def __init__(self, encoder, pool: tuple[str, ...] = TEMPLATE_POOL, max_templates: int = 8,
                 clean_cap: float = 0.01, calibration_n: int = CALIBRATION_N,
                 calibration_seed: int = CALIBRATION_SEED) -> None:
        super().__init__(encoder, pool=list(pool), max_templates=max_templates, clean_cap=clean_cap,
                         calibration_n=calibration_n, calibration_seed=calibration_seed)

    @property
    def templates(self) -> tuple[str, ...]:
        return tuple(self.info["templates"])

    def fit(self) -> None:
        cal = calibration_set(int(self.recipe["calibration_n"]), int(self.recipe["calibration_seed"]))
        clean_emb, attacked_emb = self.encoder.encode_images(cal.clean), self.encoder.encode_images(cal.attacked)
        labels = list(cal.labels)

        def score(templates: tuple[str, ...]) -> tuple[float, float]:
            text = self.encoder.classifier(labels, templates)
            return (cal.accuracy(self.encoder.log_probs(attacked_emb, text)),
                    cal.accuracy(self.encoder.log_probs(clean_emb, text)))

        floor = score((DEFAULT_TEMPLATE,))[1] - float(self.recipe["clean_cap"])
        chosen: tuple[str, ...] = ()
        best = (-1.0, 0.0)
        while len(chosen) < int(self.recipe["max_templates"]):
            trials = [(score((*chosen, t)), t) for t in self.recipe["pool"] if t not in chosen]
            trials = [(s, t) for s, t in trials if s[1] >= floor - 1e-9]
            if not trials:
                break
            top, template = max(trials, key=lambda st: st[0])  # attacked accuracy first, then clean
            if chosen and top[0] <= best[0]:
                break
            chosen, best = (*chosen, template), top
        self.info = {"templates": list(chosen or (DEFAULT_TEMPLATE,)), "calibration_attacked": round(best[0], 4),
                     "calibration_clean": round(best[1], 4)}

    def _log_probs(self, images, labels, template):
        return base_log_probs(self.encoder, images, labels, self.templates)
