"""Concurrent predictions share image-tower batches.

Each Gradio worker thread that needs an image embedding hands its preprocessed picture to one
:class:`ImageBatcher` and waits. A single encoding thread takes everything that is waiting (up to
``max_batch``), runs the tower once on the stack, and hands each caller its row. While a batch runs the next
one gathers, so under load batches grow by themselves; a lone request waits at most ``max_wait_s`` for
company (default 2 ms), which is noise next to the tower's own time.

Why not Gradio's ``batch=True``: the Compare event has 14 inputs and 6 outputs, arena mode draws a side per
request, and errors are per request (one bad label set must not fail the others). Batching at the one place
where the cost is, the image tower, keeps every handler a plain per-request function.

The encoding thread needs the GIL for a moment between the tower's hundreds of operations. With CPython's
default switch interval (5 ms) it waits behind Gradio's request threads at each of them: on 2 cores, a
ViT-B-32 batch of 8 took 1.5-1.9x as long while 8 threads did light Python work beside it, and 1.0-1.2x with
the interval at 0.2 ms. The server therefore runs with :data:`SWITCH_INTERVAL_S` (``app.py``; a process-wide
setting, so the library never changes it by itself).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

SWITCH_INTERVAL_S = 0.0002  # sys.setswitchinterval for a serving process (see the module docstring)


@dataclass
class BatchStats:
    """How the batcher has been used (for benchmarks and the log)."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)


class ImageBatcher:
    """Stack concurrent single-picture requests into one forward pass of the image tower.

    Args:
        encode: maps a batch of preprocessed pixels ``[N, 3, H, W]`` to unit-norm embeddings ``[N, d]``
            (:meth:`poclip.engine.models.ClipEncoder.encode_pixels`).
        max_batch: most pictures per forward pass.
        max_wait_s: how long the first picture of a batch waits for others when no one else is queued.
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32,
                 max_wait_s: float = 0.002) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: queue.Queue[tuple[torch.Tensor, Future]] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poclip-image-batcher", daemon=True)
        self._thread.start()

    def encode(self, pixels: torch.Tensor, timeout: float | None = 120.0) -> torch.Tensor:
        """The embedding ``[d]`` of one preprocessed picture ``[3, H, W]``, computed in a shared batch."""
        if self._closed.is_set():
            raise RuntimeError("the image batcher is closed")
        future: Future = Future()
        self._queue.put((pixels, future))
        return future.result(timeout)

    def close(self) -> None:
        """Stop the encoding thread once the queue is empty; later calls raise."""
        self._closed.set()
        self._queue.put((torch.empty(0), Future()))  # wakes the thread
        self._thread.join(timeout=30)

    def _gather(self) -> list[tuple[torch.Tensor, Future]]:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = [(p, f) for p, f in self._gather() if p.numel()]
            if batch:
                self._encode_batch(batch)
            if self._closed.is_set() and self._queue.empty():
                return

    def _encode_batch(self, batch: list[tuple[torch.Tensor, Future]]) -> None:
        # Pictures of one backbone share a shape; group anyway, so a caller with an odd size cannot fail others.
        groups: dict[tuple[int, ...], list[tuple[torch.Tensor, Future]]] = {}
        for pixels, future in batch:
            if future.set_running_or_notify_cancel():
                groups.setdefault(tuple(pixels.shape), []).append((pixels, future))
        for group in groups.values():
            try:
                out = self._encode(torch.stack([p for p, _ in group]))
            except Exception as exc:  # every caller of the failed pass gets the error
                for _, future in group:
                    future.set_exception(exc)
                continue
            for row, (_, future) in zip(out, group, strict=True):
                future.set_result(row)
            self.stats.batches += 1
            self.stats.items += len(group)
            self.stats.largest = max(self.stats.largest, len(group))
            self.stats.sizes[len(group)] = self.stats.sizes.get(len(group), 0) + 1
