"""Prediction service behind the app: one image-tower pass, zero-shot probabilities over a label set."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from poclip.attacks import TextAttack, render
from poclip.images import normalize_image
from poclip.labels import DEFAULT_TEMPLATE, check_template, parse_labels
from poclip.models import ClipEncoder


@dataclass(frozen=True)
class Prediction:
    """What the model answered for one picture."""

    image: Image.Image  # the picture the model saw (attacked, if text was written)
    labels: list[str]
    probs: list[float]

    def top(self, k: int = 5) -> dict[str, float]:
        """The ``k`` most likely labels with their probabilities, best first."""
        ranked = sorted(zip(self.labels, self.probs, strict=True), key=lambda lp: -lp[1])[:k]
        return dict(ranked)

    @property
    def label(self) -> str:
        return max(zip(self.probs, self.labels, strict=True))[1]


class Predictor:
    """Wraps a :class:`ClipEncoder` for the app: validate, write the attack, predict."""

    def __init__(self, encoder: ClipEncoder) -> None:
        self.encoder = encoder

    @property
    def model_info(self) -> str:
        return f"{self.encoder.description} — spec `{self.encoder.spec}` on {self.encoder.device.type}"

    def predict(
        self,
        image: Image.Image,
        labels: str | list[str],
        attack: TextAttack | None = None,
        template: str = DEFAULT_TEMPLATE,
    ) -> Prediction:
        """Normalise ``image``, write ``attack`` on it (if any) and classify it among ``labels``.

        p(y|x) = softmax_y(s * <img(x), txt(template.format(y))>).
        Raises ``LabelSetError``, ``AttackError`` or ``ImageError`` with a user-facing message.
        """
        label_list = parse_labels(labels)
        template = check_template(template)
        picture = normalize_image(image)
        if attack is not None:
            picture = render(picture, attack)
        probs = self.encoder.predict([picture], label_list, (template,))[0]
        return Prediction(picture, label_list, [round(float(p), 6) for p in probs])
