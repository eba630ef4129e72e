"""Load CLIP backbones from a model spec and wrap them as a batched, unit-norm encoder.

Model specs:
    ``bundled``            the small CLIP in ``assets/models/bundled`` (offline, trained on the synthetic world)
    ``NAME:TAG``           an open_clip architecture and pretrained tag, e.g. ``ViT-B-32:openai`` (model hub)
    ``NAME:PATH``          an open_clip architecture with a local checkpoint file
    ``local-dir:PATH``     a folder with ``open_clip_config.json`` and weights
    ``PATH``               a checkpoint file inside such a folder
    ``NAME``               an open_clip architecture with random weights (tests, benchmarks)
    ``auto``               ``ViT-B-32:openai`` if it can be loaded, else ``bundled`` (the reason is logged)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from PIL import Image

from poclip import zerogpu
from poclip.engine import tower
from poclip.errors import UserError
from poclip.settings import ASSETS_DIR, PACKAGE_DIR, Settings
from poclip.world.synth import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

BUNDLED_DIR = ASSETS_DIR / "models" / "bundled"
AUTO_HUB_SPEC = "ViT-B-32:openai"
DEFAULT_TEMPLATES: tuple[str, ...] = (DEFAULT_TEMPLATE,)
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

# Our own architectures (the bundled model's) become known to open_clip by name.
open_clip.add_model_config(PACKAGE_DIR / "model_configs")


class ModelUnavailable(UserError):
    """A model spec that cannot be loaded here; the message says what to do instead."""


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``POCLIP_DEVICE`` names: ``auto`` is CUDA when torch sees a GPU, else the CPU. Raises
    :class:`ModelUnavailable` for a CUDA device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelUnavailable(f"POCLIP_DEVICE={name}, but torch sees no CUDA GPU here (torch {torch.__version__}, "
                                   f"built for CUDA {torch.version.cuda or 'none'}); use auto or cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelUnavailable(f"POCLIP_DEVICE={name}, but this machine has {torch.cuda.device_count()} CUDA "
                                   "GPU(s), numbered from 0.")
    return device


def default_device() -> torch.device:
    return resolve_device("auto")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The reduced precision the frozen image tower runs in on ``device`` (None: float32). Only CUDA: bfloat16
    where the GPU has it (float32's range, so no overflow in CLIP's activations), else float16."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if zerogpu.detected():  # no GPU to ask outside a ZeroGPU call; the platform's GPUs (H200 slices) have bfloat16
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class ModelSpec:
    """Which backbone is loaded: ``name`` is the spec that loaded it (``bundled``, ``ViT-B-32:openai``, ...),
    ``weights`` says where its weights came from, ``resolved_from`` the spec asked for when it differs
    (``auto``). Parsed once by :func:`load_model`; nothing re-parses the display string."""

    name: str
    weights: str
    resolved_from: str | None = None

    def __str__(self) -> str:
        return f"{self.resolved_from} -> {self.name}" if self.resolved_from else self.name


@dataclass
class ClipEncoder:
    """A CLIP backbone with batched, unit-norm image and text encoders.

    ``encode_texts`` and ``classifier`` cache their results, so a label set's prompts are embedded once.
    Safe to call from several threads (Gradio's workers). ``model_spec`` says which backbone this is;
    ``spec`` is its display string (e.g. ``auto -> bundled``).
    """

    model_spec: ModelSpec
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device
    amp_dtype: torch.dtype | None = None
    _text_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def spec(self) -> str:
        return str(self.model_spec)

    @property
    def description(self) -> str:
        return self.model_spec.weights

    @property
    def logit_scale(self) -> float:
        """s = exp(logit_scale), the inverse temperature of the CLIP softmax."""
        return float(self.model.logit_scale.detach().exp().clamp(max=100).item())

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") else int(
            self.encode_texts(["x"]).shape[1]
        )

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for inference through the frozen image tower (:func:`autocast_dtype`); a no-op on the
        CPU and with ``POCLIP_PRECISION=fp32``. Heads, text features and every loss stay float32, and base and
        aligned answers share the tower's pass, so strength 0 is still exactly the base model."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Preprocess PIL images into a normalised batch tensor (on the CPU: the passes that take it move it to the
        model's device, so it can be stacked with others or handed to another process first)."""
        return torch.stack([self.preprocess(img.convert("RGB")) for img in images])

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings, unit norm, float32 on CPU, for an already preprocessed batch."""
        with self.autocast():
            return self.model.encode_image(pixels.to(self.device), normalize=True).float().cpu()

    @torch.no_grad()
    def trunk_activations(self, pixels: torch.Tensor, blocks: int) -> torch.Tensor:
        """A tower head's inputs for preprocessed ``pixels``: the frozen image tower's activations at the cut of a
        tail of ``blocks`` residual blocks (:func:`poclip.engine.tower.trunk`; float32, CPU)."""
        with self.autocast():
            return tower.trunk(self.model.visual, pixels.to(self.device), blocks).float().cpu()

    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """Unit-norm image embeddings, shape ``[len(images), d]`` (float32, CPU)."""
        if not images:
            raise ValueError("encode_images needs at least one image")
        chunks = [
            self.encode_pixels(self.pixels(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings, shape ``[len(texts), d]``; each distinct text is embedded once."""
        if not texts:
            raise ValueError("encode_texts needs at least one text")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            with torch.inference_mode():
                tokens = self.tokenizer(missing).to(self.device)
                emb = self.model.encode_text(tokens, normalize=True).float().cpu()
            with self._lock:
                self._text_cache.update(zip(missing, emb, strict=True))
        with self._lock:
            return torch.stack([self._text_cache[t] for t in texts])

    def classifier(
        self, labels: list[str] | tuple[str, ...], templates: tuple[str, ...] = DEFAULT_TEMPLATES
    ) -> torch.Tensor:
        """Prompt embeddings for a label set, shape ``[len(labels), d]``, unit norm.

        With several templates each label's embedding is the renormalised mean over templates
        (open_clip's prompt ensembling).
        """
        if not labels:
            raise ValueError("the label set is empty")
        if len(templates) == 1:
            return self.encode_texts([templates[0].format(label) for label in labels])
        key = "\x00".join(("ensemble", *templates, "\x01", *labels))
        with self._lock:
            cached = self._text_cache.get(key)
        if cached is None:
            weights = open_clip.build_zero_shot_classifier(
                self.model, self.tokenizer, list(labels), list(templates), device=self.device
            )
            cached = weights.T.float().cpu()
            with self._lock:
                self._text_cache[key] = cached
        return cached

    def log_probs(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """log pi(y|x) = log_softmax_y(s * <img(x), txt(y)>), shape ``[N, L]``."""
        return torch.log_softmax(self.logit_scale * image_emb @ text_emb.T, dim=-1)


def _hub_endpoint() -> tuple[str, int]:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout_s: float) -> tuple[bool, str]:
    """Whether the model hub answers a TCP connection within ``timeout_s`` (DNS included)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False, "HF_HUB_OFFLINE is set"
    host, port = _hub_endpoint()
    result: dict[str, str | bool] = {"ok": False, "why": f"no answer from {host}:{port} within {timeout_s:.0f} s"}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.update(ok=True, why="")
        except OSError as exc:
            result.update(ok=False, why=f"cannot reach {host}:{port} ({exc})")

    # getaddrinfo ignores socket timeouts, so bound the whole probe from outside.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result["ok"]), str(result["why"])


class _HubOffline:
    """Make huggingface_hub use only its local cache while we load (no network attempts)."""

    _lock = threading.Lock()

    def __enter__(self) -> None:
        from huggingface_hub import constants

        self._lock.acquire()
        self._saved = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True

    def __exit__(self, *exc: object) -> None:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = self._saved
        self._lock.release()


def _create(name: str, pretrained: str | None, device: torch.device):
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    return model, preprocess, tokenizer


def _load_hub(name: str, tag: str, device: torch.device, settings: Settings):
    reachable, why = hub_reachable(settings.hub_timeout_s)
    try:
        if reachable:
            return _create(name, tag, device)
        with _HubOffline():
            return _create(name, tag, device)
    except Exception as exc:  # open_clip and huggingface_hub raise many types for "not there"
        if reachable:
            raise ModelUnavailable(f"Could not load {name}:{tag} from the model hub: {exc}") from exc
        raise ModelUnavailable(
            f"{name}:{tag} is not in the local model cache and the model hub cannot be reached ({why}). "
            "Connect this machine to the internet once so the weights download, point HF_HOME at a cache "
            "that holds them, or use --model bundled (the small offline model)."
        ) from exc


def _local_dir_spec(path: Path) -> str:
    if not (path / "open_clip_config.json").is_file():
        raise ModelUnavailable(f"{path} has no open_clip_config.json; it is not a model folder open_clip can load.")
    return f"local-dir:{path}"


def load_model(spec: str = "auto", settings: Settings | None = None, device: torch.device | None = None) -> ClipEncoder:
    """Load the backbone named by ``spec`` (see the module docstring) as a :class:`ClipEncoder`.

    Raises :class:`ModelUnavailable` with advice when the spec cannot be loaded; a hub spec with no
    network fails within ``settings.hub_timeout_s`` plus the time to look in the local cache.
    """
    settings = settings or Settings.from_env()
    device = device or resolve_device(settings.device)
    spec = spec.strip()
    started = time.perf_counter()
    if spec == "auto":
        try:
            encoder = load_model(AUTO_HUB_SPEC, settings, device)
        except ModelUnavailable as exc:
            log.warning("auto: using the bundled model because %s", exc)
            encoder = load_model("bundled", settings, device)
        encoder.model_spec = ModelSpec(encoder.model_spec.name, encoder.model_spec.weights, resolved_from="auto")
        return encoder
    if spec == "bundled":
        if not (BUNDLED_DIR / "open_clip_config.json").is_file():
            raise ModelUnavailable(
                f"The bundled model is missing from {BUNDLED_DIR}; run `python -m poclip pretrain --out {BUNDLED_DIR}`."
            )
        model, preprocess, tokenizer = _create(f"local-dir:{BUNDLED_DIR}", None, device)
        description = "bundled (small CLIP trained on the synthetic world)"
    elif spec.startswith("local-dir:"):
        model, preprocess, tokenizer = _create(_local_dir_spec(Path(spec.removeprefix("local-dir:"))), None, device)
        description = spec
    elif Path(spec).suffix in _CHECKPOINT_SUFFIXES and ":" not in spec.split("/")[0]:
        path = Path(spec)
        if not path.is_file():
            raise ModelUnavailable(f"Checkpoint file {path} does not exist.")
        # A bare checkpoint needs its architecture: from open_clip_config.json beside it.
        model, preprocess, tokenizer = _create(_local_dir_spec(path.parent), None, device)
        description = f"checkpoint {path}"
    else:
        name, _, tag = spec.partition(":")
        if name not in open_clip.list_models():
            raise ModelUnavailable(f"Unknown model spec {spec!r}: {name!r} is not an open_clip architecture.")
        if not tag:
            model, preprocess, tokenizer = _create(name, None, device)
            description = f"{name} (random weights)"
        elif Path(tag).suffix in _CHECKPOINT_SUFFIXES or Path(tag).exists():
            if not Path(tag).is_file():
                raise ModelUnavailable(f"Checkpoint file {tag} does not exist.")
            model, preprocess, tokenizer = _create(name, tag, device)
            description = f"{name} with checkpoint {tag}"
        else:
            if tag not in open_clip.list_pretrained_tags_by_model(name):
                known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
                raise ModelUnavailable(f"{name} has no pretrained tag {tag!r}; known tags: {known}.")
            model, preprocess, tokenizer = _load_hub(name, tag, device, settings)
            description = f"{name}:{tag} (open_clip pretrained)"
    log.info("loaded %s in %.1f s on %s", spec, time.perf_counter() - started, device)
    return ClipEncoder(ModelSpec(spec, description), model, preprocess, tokenizer, device,
                       autocast_dtype(device, settings.precision))
