"""What the store offers before anyone labels: the label sets, the items to annotate, and the gold among them.

The bundled model gets a fixed stream of synthetic attacked pictures (:func:`annotation_item`), their writing
drawn in turn from the attack families (``POCLIP_ANNOTATE_FAMILIES``: several words, label patches, the true
word, neutral words, upper case, low opacity and the paper's style by default); any other
backbone gets the real photos (:mod:`poclip.world.photos`). A keyed hash of each item (the deployment secret)
makes about one in ten of them *gold*: the gold pseudo-annotator (:data:`GOLD_HANDLE`) holds its
reference answer, and nobody outside the server can tell from ids which items those are.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import random
import threading

from annotation_db import Repository, ValidationError
from poclip.engine.models import ClipEncoder
from poclip.settings import Settings
from poclip.world import synth
from poclip.world.attacks import TextAttack
from poclip.world.images import open_image
from poclip.world.labels import DEFAULT_TEMPLATE, PRESETS
from poclip.world.styles import StyledText, check_families, family_attack

SYNTH_LABEL_SET = "Synthetic shapes"
GOLD_SHARE = 0.1
GOLD_HANDLE = "poclip-gold"  # the pseudo-annotator that holds gold answers; not a person
# The families annotation items are written in, in turn: ``POCLIP_ANNOTATE_FAMILIES``'s default.
ANNOTATE_FAMILIES: tuple[str, ...] = Settings.annotate_families


def annotation_text(index: int, families: tuple[str, ...] = ANNOTATE_FAMILIES) -> tuple[synth.Scene, StyledText]:
    """Item ``index`` of the synthetic annotation stream: a scene and the writing on it, of family
    ``families[index % len(families)]`` (the paper's style alone gives the stream it always gave)."""
    rng = random.Random(f"annotate:{index}")
    scene = synth.sample_scene(rng)
    family = families[index % len(families)]
    return scene, family_attack(family, synth.SHAPES, scene.shape, rng, held_out=False)


def annotation_item(index: int, families: tuple[str, ...] = ANNOTATE_FAMILIES) -> tuple[synth.Scene, TextAttack]:
    """Item ``index`` of the synthetic annotation stream: a scene and the attack written on it."""
    scene, text = annotation_text(index, families)
    return scene, text.attack


def misleading_label(index: int, scene: synth.Scene, text: StyledText) -> str:
    """The wrong label item ``index``'s writing argues for: the first wrong label written, or (for the true word
    or a neutral word) a wrong label picked by the index. The rejected label of a gold item's reference answer."""
    if text.wrong:
        return text.wrong[0]
    return random.Random(f"gold-rejected:{index}").choice([s for s in synth.SHAPES if s != scene.shape])


def photo_png(photo) -> bytes:
    """The photo as stored: normalised by the app's validator, as PNG bytes (deterministic)."""
    png = io.BytesIO()
    open_image(photo.path).save(png, format="PNG")
    return png.getvalue()


class Seeding:
    """Puts the label sets and annotation items in the store, idempotently, and knows which items are gold.

    Args:
        repo: the store.
        encoder: the backbone (the bundled model gets synthetic items, any other the real photos).
        secret: the deployment secret that keys gold placement.
        n_items: how many synthetic items to offer (``POCLIP_SEED_ITEMS``).
        families: the attack families their writing takes turns in (``POCLIP_ANNOTATE_FAMILIES``).
    Raises:
        UserError: no family, or one an annotation item cannot have (:func:`~poclip.world.styles.check_families`).
    """

    def __init__(self, repo: Repository, encoder: ClipEncoder, secret: bytes, n_items: int,
                 families: tuple[str, ...] = ANNOTATE_FAMILIES) -> None:
        self.repo = repo
        self.encoder = encoder
        self.n_items = n_items
        self.families = check_families(families, "POCLIP_ANNOTATE_FAMILIES")
        self._secret = secret
        self._lock = threading.Lock()
        self.gold_items = 0  # gold reference answers seeded (see seed_items); counts leave them out

    # ----- label sets -------------------------------------------------------------------------------------------

    def ensure_label_sets(self) -> None:
        for name, labels in PRESETS.items():
            self.repo.ensure_label_set(name, list(labels), DEFAULT_TEMPLATE)

    def label_set_for(self, labels: list[str], template: str) -> str:
        """The stored label set with exactly these labels and template (created on first use)."""
        for name, preset in PRESETS.items():
            if list(preset) == labels and template == DEFAULT_TEMPLATE:
                return name
        digest = hashlib.sha256("\x00".join([template, *labels]).encode()).hexdigest()[:12]
        name = f"custom-{digest}"
        self.repo.ensure_label_set(name, labels, template)
        return name

    # ----- gold placement ----------------------------------------------------------------------------------------

    def is_gold_item(self, index: int | str) -> bool:
        """Which seeded items are gold: a keyed hash of the index (or a photo's name; server secret), so a share
        of GOLD_SHARE that nobody outside the server can predict from ids."""
        digest = hmac.new(self._secret, f"gold:{index}".encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") < GOLD_SHARE * 2**64

    def is_gold_photo(self, photo) -> bool:
        """Gold photos: attack photos of objects that exactly one label names, picked by the keyed hash."""
        return (photo.kind == "attack" and len(photo.right) == 1 and photo.word in photo.labels
                and self.is_gold_item(f"photo:{photo.object_key}/{photo.note}"))

    # ----- items ---------------------------------------------------------------------------------------------------

    def seed_items(self, n: int | None = None) -> int:
        """Offer synthetic attacked pictures for annotation (bundled model), a share of them gold items; any
        other backbone gets the real photos instead (:meth:`seed_photo_items`, when ``n`` > 0).

        Idempotent: the pictures and attacks are a fixed stream, and samples are unique by image and attack.

        Returns:
            How many items were offered (0 when they all were already).
        """
        n = self.n_items if n is None else n
        if n <= 0:
            return 0
        if self.encoder.model_spec.name != "bundled":
            return self.seed_photo_items()
        self.gold_items = sum(self.is_gold_item(i) for i in range(n))
        with self._lock:
            if self.repo.counts()["samples"] >= n:
                return 0
            gold = self.repo.ensure_annotator(GOLD_HANDLE)
            for i in range(n):
                scene, text = annotation_text(i, self.families)
                image = self.repo.store_image(synth.draw_scene(scene, 224), source="synthetic")
                sample = self.repo.add_sample(image.sha256, SYNTH_LABEL_SET, text.attack.to_dict())
                if self.is_gold_item(i):
                    try:
                        self.repo.record_judgment(sample.id, gold.handle, scene.shape, misleading_label(i, scene, text),
                                                  kind="gold", enforce_rate_limit=False)
                    except ValidationError:
                        pass  # already recorded on an earlier start
            return n

    def seed_photo_items(self) -> int:
        """Offer the real photos (:mod:`poclip.world.photos`) for annotation; returns how many were added.

        Each blank-note and attack-note photo is an item with its object's label set and the note's word as a
        ``physical`` attack, so the usual rejected label is the written word. Photos whose note names the object
        itself are left out (their written word is a right answer). Gold items are a keyed share
        (:data:`GOLD_SHARE`) of the attack photos of objects that exactly one label names (a gold answer is one
        label; "Granny Smith" and "apple" would both be right for the apple), answered with the object's class
        over the written word.

        Idempotent and cheap on a restart: items are stored in order, so when the last one exists all do (one
        read; the last item is stored again only when it is gold, in case its gold answer did not make it).
        """
        from poclip.world import photos

        items = [p for p in photos.photos() if p.kind != "own"]
        self.gold_items = sum(self.is_gold_photo(p) for p in items)
        with self._lock:
            last, attack = items[-1], photos.note_attack(items[-1])
            done = self.repo.find_sample(hashlib.sha256(photo_png(last)).hexdigest(),
                                         photos.label_set_name(last), attack.to_dict() if attack else None)
            if done is not None:
                if self.is_gold_photo(last):
                    self._seed_photo(last)
                return 0
            for photo in items:
                self._seed_photo(photo)
            return len(items)

    def _seed_photo(self, photo) -> None:
        """Store one photo item (and its gold answer when it is gold); idempotent."""
        from poclip.world import photos

        name, attack = photos.label_set_name(photo), photos.note_attack(photo)
        self.repo.ensure_label_set(name, list(photos.app_labels(photo)), DEFAULT_TEMPLATE)
        image = self.repo.store_image(photo_png(photo), source="example")
        sample = self.repo.add_sample(image.sha256, name, attack.to_dict() if attack else None)
        if self.is_gold_photo(photo):
            gold = self.repo.ensure_annotator(GOLD_HANDLE)
            try:
                self.repo.record_judgment(sample.id, gold.handle, photo.right[0], photo.word, kind="gold",
                                          enforce_rate_limit=False)
            except ValidationError:
                pass  # already recorded on an earlier start
