"""Does the process give memory back after a burst of large uploads? Resident memory before, during and after.

A fresh process, with torch loaded as the app has it, decodes a burst of uploads through the app's validator
(:func:`poclip.world.images.open_image`, the process's decode budget at its default) in many threads at once, as
concurrent visitors' uploads are: PNGs of 6320x6320 (40 megapixels, the most one upload may have), 4000x3008 and
3200x2000, and a 6000x4000 JPEG. It reports resident memory (``VmRSS``) when idle (after one warm-up upload of
each), the highest seen during the burst, and half a second after it, with nothing of the burst kept.
``--compare`` runs it once more with glibc's allocator left as it is (no fixed mapping threshold, no trim:
:mod:`poclip.world.heap` switched off). Usage::

    python bench/uploads.py [--uploads 36] [--threads 32] [--compare] [--json]

``rss_mb_over_idle_after_uploads`` is the after-burst figure less the idle one (the bar: at most 300 MB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import io, sys, threading, time
import numpy as np
import torch  # noqa: F401 - the app's allocations at idle
from poclip.world import heap

uploads, n_threads, allocator = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if allocator == "glibc-defaults":  # before the decode budget is imported: it sets the threshold then
    heap.map_large_blocks = heap.give_back = lambda *args: False
from PIL import Image
from poclip.world.images import open_image

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

def encoded(size, fmt, seed):
    # A smooth picture with mild noise in 16 px squares: compressible enough to stay under the upload size limit.
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    ramp = ramp + np.linspace(0, 60, h, dtype=np.float32)[:, None, None]
    noise = np.kron(rng.integers(0, 24, (h // 16, w // 16, 3), dtype=np.uint8), np.ones((16, 16, 1), dtype=np.uint8))
    out = io.BytesIO()
    Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8)).save(out, format=fmt)
    return out.getvalue()

files = [encoded((6320, 6320), "PNG", 0), encoded((4000, 3008), "PNG", 1), encoded((3200, 2000), "PNG", 2),
         encoded((6000, 4000), "JPEG", 3)]
for data in files:  # warm up the decoders: idle is measured from here
    open_image(data)
time.sleep(0.5)
idle = rss_mb()
peak = [idle]
done = threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.01)

refused = []
todo = list(range(uploads))
lock = threading.Lock()

def visitor():
    while True:
        with lock:
            if not todo:
                return
            i = todo.pop()
        try:
            open_image(files[i % len(files)])
        except Exception as exc:  # ServerBusy: counted, as a visitor would see it
            refused.append(type(exc).__name__)

sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
threads = [threading.Thread(target=visitor) for _ in range(n_threads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
seconds = time.perf_counter() - start
time.sleep(0.5)
done.set()
sampler.join()
print(round(idle), round(peak[0]), round(rss_mb()), round(seconds, 1), len(refused))
"""


def run(uploads: int, threads: int, allocator: str = "app") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(uploads), str(threads), allocator], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    idle, peak, after, seconds, refused = (float(v) for v in out)
    return {"allocator": allocator, "idle_rss_mb": idle, "peak_rss_mb": peak, "after_rss_mb": after,
            "rss_mb_over_idle_after_uploads": after - idle, "seconds": seconds, "refused_busy": int(refused)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=36)
    parser.add_argument("--threads", type=int, default=32, help="uploads in flight at once (the app's predict slots)")
    parser.add_argument("--compare", action="store_true", help="also run with glibc's allocator as it is")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    args = parser.parse_args()
    result = {"uploads": args.uploads, "threads": args.threads,
              "pictures": "PNG 6320x6320, 4000x3008, 3200x2000 and JPEG 6000x4000, in turn",
              **run(args.uploads, args.threads)}
    if args.compare:
        result["glibc_defaults"] = run(args.uploads, args.threads, "glibc-defaults")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
