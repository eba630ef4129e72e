"""OCR + masking: find the writing with Tesseract, paint it out, then ask the unchanged base model.

Tesseract (the Debian package ``tesseract-ocr``, driven through ``pytesseract``) returns word boxes; each box
with a confident, at least two-character word is grown by ``pad`` of its height and filled with the median
colour of the pixels just around it (a one-colour inpaint: the synthetic backgrounds are flat or finely
textured, and a blur leaves the letters' colours in place). The base model then scores the masked picture
with the plain template.

Building calibrates the OCR settings (page segmentation mode and upscaling, :data:`OCR_SETTINGS`) on
``calibration_n`` texted calibration pictures (stream ``calibration:7:i``, which no evaluation draws from): the
setting whose masked pictures the base model reads right most often wins. ``info['detection_rate']`` is the
share of those pictures on which Tesseract found the written word (a box whose text matches a written word
to at least :data:`MATCH_RATIO`), for the chosen setting and for each one tried.
"""

from __future__ import annotations

import difflib
import re
import statistics

from PIL import Image, ImageDraw

from poclip.engine.defenses.base import Defense, base_log_probs
from poclip.engine.defenses.data import CALIBRATION_SEED, calibration_set
from poclip.errors import UserError

# (page segmentation mode, upscale): 11 = sparse text anywhere, 6 = one block; small words read better at 2x.
OCR_SETTINGS: tuple[tuple[int, int], ...] = ((11, 1), (11, 2), (6, 2))
MATCH_RATIO = 0.6
INSTALL = ("Install Tesseract: `apt-get install tesseract-ocr` on Debian or Ubuntu (on a Hugging Face Space, list "
           "tesseract-ocr in packages.txt), and `pip install pytesseract`.")


class OcrUnavailable(UserError):
    """Tesseract or pytesseract is missing; the message says how to install them."""


def _tesseract():
    try:
        import pytesseract
    except ImportError as exc:
        raise OcrUnavailable(f"The OCR defense needs the pytesseract package. {INSTALL}") from exc
    try:
        pytesseract.get_tesseract_version()
    except (pytesseract.TesseractNotFoundError, OSError) as exc:
        raise OcrUnavailable(f"The OCR defense needs the tesseract program, which is not installed. {INSTALL}") from exc
    return pytesseract


def word_boxes(picture: Image.Image, psm: int = 11, scale: int = 1, min_conf: float = 0.0
               ) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Tesseract's words on ``picture`` as ``(text, (left, top, right, bottom))`` in the picture's pixels.

    Only words with at least two letters or digits and a confidence above ``min_conf`` are kept.
    """
    pytesseract = _tesseract()
    image = picture.convert("RGB")
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)
    data = pytesseract.image_to_data(image, config=f"--psm {psm}", output_type=pytesseract.Output.DICT)
    boxes = []
    for text, conf, left, top, width, height in zip(data["text"], data["conf"], data["left"], data["top"],
                                                    data["width"], data["height"], strict=True):
        if len(re.sub(r"[^0-9A-Za-z]", "", text)) >= 2 and float(conf) > min_conf:
            boxes.append((text, (left // scale, top // scale, -(-(left + width) // scale),
                                 -(-(top + height) // scale))))
    return boxes


def mask_boxes(picture: Image.Image, boxes, pad: float = 0.3) -> Image.Image:
    """A copy of ``picture`` with each box (grown by ``pad`` of its height) filled with its surroundings' median
    colour."""
    out = picture.convert("RGB")
    draw = ImageDraw.Draw(out)
    for _, (left, top, right, bottom) in boxes:
        grow = max(2, round(pad * (bottom - top)))
        box = (max(0, left - grow), max(0, top - grow), min(out.width - 1, right + grow),
               min(out.height - 1, bottom + grow))
        ring = _ring(out, box)
        fill = tuple(int(statistics.median(c)) for c in zip(*ring, strict=True)) if ring else (127, 127, 127)
        draw.rectangle(box, fill=fill)
    return out


def _ring(image: Image.Image, box: tuple[int, int, int, int], width: int = 2) -> list[tuple[int, ...]]:
    left, top, right, bottom = box
    pixels = image.load()
    ring = []
    for x in range(max(0, left - width), min(image.width, right + width + 1)):
        for y in (*range(max(0, top - width), top), *range(bottom + 1, min(image.height, bottom + width + 1))):
            ring.append(pixels[x, y])
    for y in range(top, bottom + 1):
        for x in (*range(max(0, left - width), left), *range(right + 1, min(image.width, right + width + 1))):
            ring.append(pixels[x, y])
    return ring


def found_word(boxes, written: str) -> bool:
    """Whether any box's text matches a word of ``written`` (case and spacing ignored) to :data:`MATCH_RATIO`."""
    words = {w.lower() for w in re.split(r"\s+", written) if w}
    words.add(re.sub(r"\s+", "", written).lower())
    seen = [re.sub(r"[^0-9a-z]", "", text.lower()) for text, _ in boxes]
    return any(difflib.SequenceMatcher(None, w, s).ratio() >= MATCH_RATIO for w in words for s in seen if s)


class OcrMask(Defense):
    """Mask what Tesseract reads, then the base model (module docstring); a build is the chosen OCR setting."""

    name = "ocr_mask"

    def __init__(self, encoder, calibration_n: int = 60, calibration_seed: int = CALIBRATION_SEED,
                 pad: float = 0.3, min_conf: float = 0.0) -> None:
        super().__init__(encoder, calibration_n=calibration_n, calibration_seed=calibration_seed, pad=pad,
                         min_conf=min_conf, settings=[list(s) for s in OCR_SETTINGS])

    def mask(self, picture: Image.Image, psm: int | None = None, scale: int | None = None) -> Image.Image:
        """``picture`` with the words Tesseract finds painted out (the chosen setting unless given)."""
        psm = int(self.info["psm"]) if psm is None else psm
        scale = int(self.info["scale"]) if scale is None else scale
        return mask_boxes(picture, word_boxes(picture, psm, scale, float(self.recipe["min_conf"])),
                          float(self.recipe["pad"]))

    def fit(self) -> None:
        _tesseract()
        cal = calibration_set(int(self.recipe["calibration_n"]), int(self.recipe["calibration_seed"]))
        tried = {}
        for psm, scale in self.recipe["settings"]:
            boxes = [word_boxes(p, psm, scale, float(self.recipe["min_conf"])) for p in cal.attacked]
            masked = [mask_boxes(p, b, float(self.recipe["pad"])) for p, b in zip(cal.attacked, boxes, strict=True)]
            accuracy = cal.accuracy(base_log_probs(self.encoder, masked, cal.labels, ("a photo of a {}.",)))
            detected = sum(found_word(b, w) for b, w in zip(boxes, cal.written, strict=True)) / cal.n
            tried[f"psm {psm}, x{scale}"] = {"psm": psm, "scale": scale, "attacked_accuracy": round(accuracy, 4),
                                             "detection_rate": round(detected, 4)}
        best = max(tried.values(), key=lambda t: (t["attacked_accuracy"], t["detection_rate"]))
        self.info = {**best, "tried": tried}

    def load_state(self, tensors) -> None:
        _tesseract()  # a stored build still needs the program to run

    def _log_probs(self, images, labels, template):
        return base_log_probs(self.encoder, [self.mask(p) for p in images], labels, (template,))
