"""Hugging Face ZeroGPU: GPUs lent to a Space one function call at a time.

On ZeroGPU hardware (``SPACES_ZERO_GPU`` set by the platform) a process sees CUDA only inside functions decorated
with ``spaces.GPU``. Each call runs in a worker process forked from the app (kept for later calls while it is
idle): arguments and results cross by pickling, so they are CPU objects, and anything the worker loads stays in
the worker. The call asks for a duration up front; the platform refuses one over the tier's cap and bills the
requested time against the quota of the visitor who triggered it. So here:

- a ``/predict`` request's model work (the tower's pass and both heads) is one short call (:data:`PREDICT_S`);
- a retrain is one call made by the admin's click, its duration computed from what it trains on
  (:func:`retrain_seconds`), and it returns the head's tensors on the CPU for the app to save and swap in;
- nothing trains in the background: no thread can hold a GPU between calls.

Off ZeroGPU :func:`gpu_task` returns the function unchanged (``spaces.GPU`` itself is inert there too), so the
same code serves on a laptop, a CPU Space or a dedicated GPU. This module must not import torch: on ZeroGPU
``spaces`` patches torch's CUDA calls and has to be imported first (:func:`import_first`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

ZERO_GPU_ENV = "SPACES_ZERO_GPU"
PREDICT_S = 15  # one /predict's GPU call: a tower pass and two head passes take well under a second
# A retrain's call: start-up, the pictures not yet cached, then the steps. The per-item costs are deliberately
# generous estimates for a ViT-B/32-sized tower until bench/gpu.py has measured a GPU: a call that runs past its
# duration is cut off, one that asks for too much only costs quota.
RETRAIN_BASE_S = 20.0
EMBED_S_PER_PICTURE = 0.01
TRAIN_S_PER_PAIR_EPOCH = 0.004

F = TypeVar("F", bound=Callable[..., Any])


def detected(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on ZeroGPU hardware (the platform sets ``SPACES_ZERO_GPU``)."""
    value = (os.environ if env is None else env).get(ZERO_GPU_ENV, "")
    return value.strip().lower() in ("1", "t", "true")


def import_first() -> None:
    """Import ``spaces`` before anything imports torch, as ZeroGPU requires; a no-op elsewhere."""
    if detected():
        import spaces  # noqa: F401 - imported for its patching of torch


def gpu_task(fn: F, duration: int | Callable[..., int]) -> F:
    """``fn`` as a ZeroGPU task asking for ``duration`` seconds (or ``duration(*args, **kwargs)``) on ZeroGPU;
    ``fn`` itself elsewhere."""
    if not detected():
        return fn
    import spaces

    return spaces.GPU(duration=duration)(fn)


def retrain_seconds(pairs: int, epochs: int, uncached: int, cap: int) -> int:
    """The duration a retrain's call asks for: start-up, ``uncached`` pictures through the tower, ``pairs`` pairs
    for ``epochs`` epochs; at most ``cap`` (the platform refuses longer calls, and a retrain that needs more is
    better cut short by its own deadline than refused outright)."""
    need = RETRAIN_BASE_S + EMBED_S_PER_PICTURE * uncached + TRAIN_S_PER_PAIR_EPOCH * pairs * max(1, epochs)
    return int(min(cap, math.ceil(need)))
