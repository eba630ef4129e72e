"""Memory of concurrent large uploads, with and without the process-wide decoded-pixel budget.

Each run is a fresh process that decodes N copies of a small PNG holding a 6320x6320 picture (40 megapixels,
the most one upload may have) in N threads at once, through the app's validator, and reports how much its peak
resident memory grew. Usage::

    python bench/decode_budget.py [--uploads 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import io, resource, sys, threading, time
from PIL import Image
from poclip.world import images
from poclip.world.decode_budget import DecodeBudget

n, megapixels = int(sys.argv[1]), float(sys.argv[2])
out = io.BytesIO()
Image.new("RGB", (6320, 6320), (200, 30, 30)).save(out, format="PNG")
data = out.getvalue()
budget = DecodeBudget(megapixels, wait_s=600)
images.open_image(data[:], budget=budget)  # warm up the decoders, then measure from here
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
threads = [threading.Thread(target=images.open_image, args=(data,), kwargs={"budget": budget}) for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
seconds = time.perf_counter() - start
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(len(data), round(grew), round(seconds, 2), budget.peak)
"""


def run(n: int, megapixels: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(megapixels)], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    size, grew, seconds, peak = int(out[0]), int(out[1]), float(out[2]), int(out[3])
    return {"file_kb": round(size / 1024), "peak_rss_growth_mb": grew, "seconds": seconds,
            "peak_megapixels_decoding": round(peak / 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=8)
    parser.add_argument("--budget-mp", type=float, default=100.0, help="the budget measured (the app's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    args = parser.parse_args()
    unbounded = run(args.uploads, 1e9)
    bounded = run(args.uploads, args.budget_mp)
    print(json.dumps({"uploads": args.uploads, "picture": "6320x6320 PNG", "budget_megapixels": args.budget_mp,
                      "without_budget": unbounded, "with_budget": bounded,
                      "memory_ratio": round(bounded["peak_rss_growth_mb"] / max(unbounded["peak_rss_growth_mb"], 1),
                                            2)}, indent=2))


if __name__ == "__main__":
    main()
