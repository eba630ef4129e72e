"""On-disk caches of what the frozen image tower computes, so a retrain only runs it on pictures it has not seen.

:class:`EmbeddingCache` holds the tower's unit-norm embeddings (what the linear head trains on);
:class:`ActivationCache` holds the activations at a tower head's cut (:mod:`poclip.engine.tower`), so a
tower head trains only its tail. An entry is keyed by (picture content hash, attack parameters JSON or
``none``), within a folder per backbone fingerprint and cut. The backbone fingerprint hashes the spec, the
architecture's input size and every weight, so a changed model never reads stale entries. Layout::

    ROOT/<backbone fingerprint>/<shard>.safetensors          embeddings: tensor "emb" [n, d], metadata "keys"
    ROOT/<backbone fingerprint>/<cut>/<shard>.safetensors    activations at the cut, same format

Each call that embeds new pictures writes one shard (temp file, then ``os.replace``), so concurrent
writers never clash and a crash never leaves a half-written file. ``root=None`` keeps entries in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from poclip.engine import tower
from poclip.engine.models import ClipEncoder
from poclip.world.attacks import TextAttack, render
from poclip.world.images import open_image

log = logging.getLogger(__name__)

_fingerprints: dict[int, tuple[weakref.ref, str]] = {}
_fingerprint_lock = threading.Lock()


def backbone_fingerprint(encoder: ClipEncoder) -> str:
    """A short hash of the backbone: spec, input size and all weights (memoised per model object)."""
    model = encoder.model
    with _fingerprint_lock:
        hit = _fingerprints.get(id(model))
        if hit is not None and hit[0]() is model:
            return hit[1]
    digest = hashlib.sha256(f"{encoder.model_spec.name}|{encoder.image_size}".encode())
    for name, value in model.state_dict().items():
        digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    fingerprint = digest.hexdigest()[:20]
    with _fingerprint_lock:
        _fingerprints[id(model)] = (weakref.ref(model), fingerprint)
    return fingerprint


def image_hash(image: Image.Image) -> str:
    """sha256 of a picture's decoded RGB pixels and size (file format and metadata do not matter)."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}|".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredPicture:
    """A picture on disk known by its stored content hash: caches key it by ``sha256`` and open ``path`` only
    on a miss, so a retrain over stored pictures reads none that are cached."""

    sha256: str
    path: Path

    def open(self) -> Image.Image:
        return open_image(Path(self.path))


Picture = Image.Image | StoredPicture


def entry_key(image: Picture | str, attack: TextAttack | None = None) -> str:
    """Cache key of a picture (or its content hash, or a stored picture's hash) with an optional attack."""
    if isinstance(image, StoredPicture):
        content = image.sha256
    else:
        content = image if isinstance(image, str) else image_hash(image)
    params = attack.to_json() if attack is not None else "none"
    return hashlib.sha256(f"{content}|{params}".encode()).hexdigest()[:32]


def as_image(picture: Picture) -> Image.Image:
    """The PIL picture of ``picture`` (opening a :class:`StoredPicture`)."""
    return picture.open() if isinstance(picture, StoredPicture) else picture


def backbone_dir(encoder: ClipEncoder, root: str | Path) -> Path:
    """The folder under ``root`` of what is computed with ``encoder``: named by its weights (and by its tower's
    reduced precision: CUDA activations are kept apart from float32 ones, same data dir, other numbers)."""
    amp = encoder.amp_dtype
    fingerprint = backbone_fingerprint(encoder)
    return Path(root) / (fingerprint if amp is None else f"{fingerprint}-{str(amp).removeprefix('torch.')}")


class EmbeddingCache:
    """Embeddings of one backbone, kept in memory and (with ``root``) on disk.

    ``hits`` and ``misses`` count look-ups since creation, so callers can show what a retrain re-embedded.
    Subclasses cache other tensors by overriding :attr:`namespace` and :meth:`compute`.
    """

    namespace = ""  # the subfolder of the backbone's folder (embeddings live in the folder itself)

    def __init__(self, encoder: ClipEncoder, root: str | Path | None = None) -> None:
        self.encoder = encoder
        self.fingerprint = backbone_fingerprint(encoder)
        self.root = Path(root) if root is not None else None
        self.dir = None
        if root is not None:
            self.dir = backbone_dir(encoder, root)
            if self.namespace:
                self.dir = self.dir / self.namespace.replace(":", "-")
        self._entries: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if self.dir is not None and self.dir.is_dir():
            for shard in sorted(self.dir.glob("*.safetensors")):
                self._read_shard(shard)

    def _read_shard(self, shard: Path) -> None:
        try:
            with safe_open(str(shard), framework="pt") as f:
                keys = json.loads((f.metadata() or {})["keys"])
                emb = f.get_tensor("emb")
        except Exception as exc:  # a damaged shard costs a re-embed, never a failed training run
            log.warning("ignoring unreadable embedding shard %s: %s", shard, exc)
            return
        self._entries.update(zip(keys, emb, strict=True))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def compute(self, pictures: list[Image.Image]) -> torch.Tensor:
        """What this cache stores, for rendered pictures: unit-norm embeddings ``[N, d]``."""
        return self.encoder.encode_images(pictures)

    def put(self, embeddings: dict[str, torch.Tensor]) -> None:
        """Store embeddings by key (one new shard on disk)."""
        new = {k: v.detach().float().cpu() for k, v in embeddings.items() if k not in self._entries}
        if not new:
            return
        with self._lock:
            self._entries.update(new)
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp, final = self.dir / f".{name}.tmp", self.dir / f"{name}.safetensors"
        try:
            save_file({"emb": torch.stack(list(new.values())).contiguous()}, str(tmp),
                      metadata={"keys": json.dumps(list(new)), "backbone": self.encoder.model_spec.name})
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def embed(
        self,
        images: Sequence[Picture | str],
        attacks: Sequence[TextAttack | None] | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """The cached tensors (embeddings ``[N, d]``) of pictures, each optionally with an attack written on it.

        An item may also be a cache key (a string from :func:`entry_key`, attack ``None``), which must be
        cached already, or a :class:`StoredPicture`, opened only on a miss. Only pictures not in the cache
        run through the image tower.
        """
        attacks = list(attacks) if attacks is not None else [None] * len(images)
        if len(attacks) != len(images):
            raise ValueError(f"{len(images)} pictures but {len(attacks)} attacks")
        keys: list[str] = []
        todo: dict[str, tuple[Image.Image, TextAttack | None]] = {}
        for image, attack in zip(images, attacks, strict=True):
            if isinstance(image, str):
                if attack is not None:
                    raise ValueError("a cache key already includes its attack; pass attack=None with a key")
                key = image
                if key not in self._entries:
                    raise KeyError(f"embedding {key!r} is not in the cache; pass the picture instead of its key")
            else:
                key = entry_key(image, attack)
                if key not in self._entries and key not in todo:
                    todo[key] = (image, attack)
            keys.append(key)
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        if todo:
            pending = list(todo.items())
            new: dict[str, torch.Tensor] = {}
            for start in range(0, len(pending), batch_size):
                chunk = pending[start : start + batch_size]
                pictures = [render(as_image(img), atk) if atk is not None else as_image(img)
                            for _, (img, atk) in chunk]
                new.update(zip([k for k, _ in chunk], self.compute(pictures), strict=True))
            self.put(new)
        return torch.stack([self._entries[k] for k in keys])

    def embed_known(self, keys: Sequence[str], pictures: Sequence[Picture],
                    attacks: Sequence[TextAttack | None]) -> torch.Tensor:
        """:meth:`embed` for pictures whose keys (:func:`entry_key`) are known: what is cached is looked up by key,
        and only a missing entry's picture is taken from ``pictures`` (which may draw or open it on demand)."""
        items = [key if key in self._entries else pictures[i] for i, key in enumerate(keys)]
        return self.embed(items, [None if key in self._entries else attack
                                  for key, attack in zip(keys, attacks, strict=True)])


class ActivationCache(EmbeddingCache):
    """The frozen trunk's activations at a tower head's cut (:func:`poclip.engine.tower.split`), per picture.

    ``blocks`` is the head's tail length (0 = projection only). ``tail(cached) == tower(picture)``, so a tower
    head trains on these exactly as on pixels, running only its tail per step.
    """

    def __init__(self, encoder: ClipEncoder, root: str | Path | None = None, blocks: int = 0) -> None:
        self.blocks = blocks
        self.namespace = tower.split(encoder.model.visual, blocks).cut
        super().__init__(encoder, root)

    @torch.inference_mode()
    def compute(self, pictures: list[Image.Image]) -> torch.Tensor:
        return self.encoder.trunk_activations(self.encoder.pixels(pictures), self.blocks)
