"""On-disk cache of image embeddings, so a retrain only runs the image tower on pictures it has not seen.

An entry is keyed by (picture content hash, attack parameters JSON or ``none``, backbone fingerprint).
The backbone fingerprint hashes the spec, the architecture's input size and every weight, so a changed
model never reads stale embeddings. Layout::

    ROOT/<backbone fingerprint>/<shard>.safetensors    tensor "emb" [n, d], metadata "keys" (JSON list)

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
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from poclip.engine.models import ClipEncoder
from poclip.world.attacks import TextAttack, render

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
    digest = hashlib.sha256(f"{encoder.spec.removeprefix('auto -> ')}|{encoder.image_size}".encode())
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


def entry_key(image: Image.Image | str, attack: TextAttack | None = None) -> str:
    """Cache key of a picture (or its content hash) with an optional attack written on it."""
    content = image if isinstance(image, str) else image_hash(image)
    params = attack.to_json() if attack is not None else "none"
    return hashlib.sha256(f"{content}|{params}".encode()).hexdigest()[:32]


class EmbeddingCache:
    """Embeddings of one backbone, kept in memory and (with ``root``) on disk.

    ``hits`` and ``misses`` count look-ups since creation, so callers can show what a retrain re-embedded.
    """

    def __init__(self, encoder: ClipEncoder, root: str | Path | None = None) -> None:
        self.encoder = encoder
        self.fingerprint = backbone_fingerprint(encoder)
        self.dir = Path(root) / self.fingerprint if root is not None else None
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

    def get(self, key: str) -> torch.Tensor | None:
        return self._entries.get(key)

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
                      metadata={"keys": json.dumps(list(new)), "backbone": self.encoder.spec})
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def embed(
        self,
        images: Sequence[Image.Image | str],
        attacks: Sequence[TextAttack | None] | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Unit-norm embeddings ``[N, d]`` of pictures, each optionally with an attack written on it.

        An item may also be a cache key (a string from :func:`entry_key` or :meth:`key`, attack ``None``);
        it must be cached already. Only pictures not in the cache run through the image tower.
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
                pictures = [render(img, atk) if atk is not None else img for _, (img, atk) in chunk]
                new.update(zip([k for k, _ in chunk], self.encoder.encode_images(pictures), strict=True))
            self.put(new)
        return torch.stack([self._entries[k] for k in keys])

    def key(self, image: Image.Image | str, attack: TextAttack | None = None) -> str:
        """The cache key of a picture (or content hash) and attack; see :func:`entry_key`."""
        return entry_key(image, attack)
