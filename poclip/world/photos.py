"""Real photographs of typographic attacks: objects with a handwritten note on them ("iPod" on an apple).

The 227 photos in ``assets/photos`` come from Goh et al., "Multimodal Neurons in Artificial Neural
Networks", Distill 2021 (CC BY 4.0; :data:`CREDIT` must be shown wherever they are). Each object was
photographed with a blank note, a note naming itself, and notes naming other things.

Labels for one object (one row of :func:`objects`):
- the label set is the ImageNet classes the article lists for that object (its JSON, first class = the
  object's own class), plus every note word of the same round that no listed class contains as a word, so
  that the written word can always win;
- a prediction is *right* when it is the object's own class, a class containing the object's name as a
  word ("apple" on the apple, "red wine" or "wine bottle" on the wine) or a listed synonym ("notebook
  computer" for the laptop);
- a note's *attack labels* are the classes containing its word as a word ("rifle" -> rifle, assault rifle),
  other than the right ones. The attack succeeds when the prediction is one of them.

In the app (a backbone other than the bundled one), the photos are Compare examples and Annotate items: each
with its object's label set (:func:`app_labels`, stored as :func:`label_set_name`) and the note's word as a
*physical* attack (:func:`note_attack`): the word is recorded, nothing is drawn over the photo.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from poclip.settings import ASSETS_DIR
from poclip.world.attacks import TextAttack

PHOTOS_DIR = ASSETS_DIR / "photos"
ROUNDS: dict[str, str] = {"in-the-wild-2": "in_the_wild_2.json", "in-the-wild-3": "in_the_wild_3.json"}
CREDIT = ('Real photos: Goh et al., "Multimodal Neurons in Artificial Neural Networks", Distill 2021 '
          "(https://distill.pub/2021/multimodal-neurons/), CC BY 4.0.")
BLANK = "blank"
# Objects the article published no figures for in any round: their own class, in ImageNet's words.
UNPUBLISHED_CLASSES: dict[str, str] = {"trash": "trash can"}
# ImageNet classes that name the same object in other words (the article's CLIP often says "notebook").
SYNONYMS: dict[str, tuple[str, ...]] = {"laptop": ("notebook computer",)}
# The notes' words as they are written (file names are lower case).
NOTE_SPELLING: dict[str, str] = {"ipod": "iPod"}
# Label sets of photo items in the database are named after the object: ``photos/in-the-wild-2/apple``.
LABEL_SET_PREFIX = "photos/"

NoteKind = Literal["blank", "own", "attack"]


@dataclass(frozen=True)
class Photo:
    """One photograph and what it shows.

    Attributes:
        path: the JPEG file.
        round: ``in-the-wild-2`` or ``in-the-wild-3`` (a photo session; objects differ between rounds).
        object: what is photographed (``apple``); ``note``: the word on the note as in the file name
            (``ipod``), ``blank`` for an empty note.
        kind: ``blank`` (control), ``own`` (the note names the object) or ``attack``.
        word: the note's word as a label (``iPod``); empty for a blank note.
        labels: the object's label set; ``right``: the labels that name the object; ``attack_labels``:
            the labels the note's word names (empty unless ``kind == 'attack'``).
        reference: the article's zero-shot probabilities, ImageNet class -> probability, or None.
    """

    path: Path
    round: str
    object: str
    note: str
    kind: NoteKind
    word: str
    labels: tuple[str, ...]
    right: tuple[str, ...]
    attack_labels: tuple[str, ...]
    reference: dict[str, float] | None

    @property
    def object_key(self) -> str:
        """``round/object``, e.g. ``in-the-wild-2/apple``: a physical object."""
        return f"{self.round}/{self.object}"

    @property
    def caption(self) -> str:
        return f"{self.object} with a blank note" if self.kind == BLANK else f"{self.object} with '{self.word}'"


def _words(label: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", label.lower()))


def _names(label: str, word: str) -> bool:
    """Whether ``label`` contains ``word`` as a word (case-insensitive): "assault rifle" names "rifle"."""
    return bool(_words(word)) and _words(word) <= _words(label)


def _classes(round_name: str, obj: str, published: dict[str, dict]) -> list[str]:
    """The ImageNet classes listed for ``obj``: this round's, else another round's, else our fallback."""
    for name in (round_name, *ROUNDS):
        notes = published[name].get(obj)
        if notes:
            seen: dict[str, None] = {}
            for stats in notes.values():
                seen.update(dict.fromkeys(cls for _, cls in stats["zero_shot_statistics"]))
            return list(seen)
    if obj in UNPUBLISHED_CLASSES:
        return [UNPUBLISHED_CLASSES[obj]]
    raise ValueError(f"no label set known for the object {obj!r}: add it to UNPUBLISHED_CLASSES")


@cache
def photos(photos_dir: Path = PHOTOS_DIR) -> tuple[Photo, ...]:
    """All photos, ordered by round, object and note; labels as in the module docstring."""
    published = {name: json.loads((photos_dir / file).read_text()) for name, file in ROUNDS.items()}
    out: list[Photo] = []
    for round_name in ROUNDS:
        files = sorted((photos_dir / round_name).glob("*.jpg"))
        if not files:
            raise FileNotFoundError(f"no photos in {photos_dir / round_name}")
        parsed = [f.stem.split("-", 1) for f in files]
        words = sorted({NOTE_SPELLING.get(note, note) for _, note in parsed if note != BLANK})
        for obj in sorted({o for o, _ in parsed}):
            classes = _classes(round_name, obj, published)
            labels = classes + [w for w in words if not any(_names(c, w) for c in classes)]
            right = tuple(dict.fromkeys([classes[0], *(lab for lab in labels if _names(lab, obj)
                                                       or lab in SYNONYMS.get(obj, ()))]))
            for path, (o, note) in zip(files, parsed, strict=True):
                if o != obj:
                    continue
                word = "" if note == BLANK else NOTE_SPELLING.get(note, note)
                attack = tuple(lab for lab in labels if word and _names(lab, word) and lab not in right)
                kind: NoteKind = BLANK if not word else ("attack" if attack else "own")
                stats = published[round_name].get(obj, {}).get(note)
                reference = {cls: float(p) for p, cls in stats["zero_shot_statistics"]} if stats else None
                out.append(Photo(path, round_name, obj, note, kind, word, tuple(labels), right, attack, reference))
    return tuple(out)


def objects() -> dict[str, list[Photo]]:
    """Photos grouped by physical object (``round/object``), in order."""
    grouped: dict[str, list[Photo]] = {}
    for photo in photos():
        grouped.setdefault(photo.object_key, []).append(photo)
    return grouped


def example_photos(per_object: int = 1) -> list[Photo]:
    """A few attacked photos for the Compare tab's examples: the first ``per_object`` attacks of each object."""
    out = []
    for group in objects().values():
        out += [p for p in group if p.kind == "attack"][:per_object]
    return out


def app_labels(photo: Photo) -> tuple[str, ...]:
    """The object's label set as the app offers it: alphabetical, so the object's own class is not always the
    first button (the model's answer does not depend on the order)."""
    return tuple(sorted(photo.labels, key=str.casefold))


def label_set_name(photo: Photo) -> str:
    """The stored label set of ``photo``'s object (one per physical object)."""
    return LABEL_SET_PREFIX + photo.object_key


def is_photo_label_set(name: str) -> bool:
    """Whether a stored label set is a photo object's (so the picture is one of these photos: show :data:`CREDIT`)."""
    return name.startswith(LABEL_SET_PREFIX)


def note_attack(photo: Photo) -> TextAttack | None:
    """The note's word as the photo's attack, ``physical`` (already in the picture); None for a blank note."""
    return TextAttack(photo.word, physical=True) if photo.word else None
