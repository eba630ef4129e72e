"""Where the memory of bench/abuse.py's two floods goes: the same predictions and uploads through the app's own code,
in this process, without the web server.

    python bench/predict_memory.py --json

An app back end (bundled model, default shares, no prediction rate) on a fresh data folder; the flooding address
and the visitors are set as each request's origin, as the web server sets it, so every per-address share holds.
Steps, as in ``bench/abuse.py``: one address predicts a 1024-px picture from 4 threads (120 predictions), 15
visitors predict a small picture, then one address sends 40-megapixel PNGs from 8 threads (2 each) while 4
visitors send three 12-megapixel photos each. Printed: resident memory over idle after the floods, what the kept
comparisons hold (``/status``'s figure) and the rest. Beside ``bench/abuse.py``'s figure for the launched app,
the difference is what the web server's request handling keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from abuse import address, picture  # noqa: E402
from visitors import REPO  # noqa: E402

sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from poclip.app.limits import RequestOrigin, request_origin  # noqa: E402
from poclip.app.service import AppService  # noqa: E402
from poclip.app.ui.compare import Controls, predict_handler, shown_file, upload_handler  # noqa: E402
from poclip.settings import Settings  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="poclip-predict-memory-") as work:
        work = Path(work)
        settings = Settings(data_dir=work / "data", model_spec="bundled", trainer="off", seed_items=0,
                            backup_every_minutes=0, client_predictions="off", peers=())
        service = AppService.create(settings)
        files = {name: work / name for name in ("big.png", "huge.png", "photo.jpg", "small.png")}
        files["big.png"].write_bytes(picture(1024, 1024, seed=1))
        files["huge.png"].write_bytes(picture(6320, 6320, seed=3))
        files["photo.jpg"].write_bytes(picture(4000, 3000, "JPEG", seed=10))
        files["small.png"].write_bytes(picture(224, 224, seed=2))
        errors: list[str] = []

        def predict(name: str, word: str, client: int) -> None:
            with request_origin(RequestOrigin(address(client))):
                try:  # what PublicApi.predict does, as a request from that address
                    shown = predict_handler(service, upload_handler(str(files[name]), service.visitors.client()),
                                            Controls(text=word, share=True))
                    shown_file(shown.seen)
                except Exception as exc:  # refusals (an address over its decode share) are counted, not hidden
                    errors.append(type(exc).__name__)

        def together(jobs: list[tuple[str, int, int]]) -> None:
            """One thread per job (picture, client address number, predictions), all at once."""
            def run(job: int, name: str, client: int, reps: int) -> None:
                for i in range(reps):
                    predict(name, f"w{job}-{i}", client)  # a new word: a new comparison each time

            threads = [threading.Thread(target=run, args=(j, *job)) for j, job in enumerate(jobs)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()

        predict("small.png", "warm", 1)
        time.sleep(1)
        idle = rss_mb()
        together([("big.png", 10, 30)] * 4 + [("small.png", 20 + v, 1) for v in range(15)])
        together([("huge.png", 11, 2)] * 8 + [("photo.jpg", 40 + v, 3) for v in range(4)])
        time.sleep(3)
        after = rss_mb()
        kept = service.status()["comparisons"]
        service.close()
    result = {"idle_mb": round(idle, 1), "rss_mb_over_idle": round(after - idle, 1), "kept_comparisons": kept,
              "rest_mb": round(after - idle - kept["mb"], 1), "refused_or_failed": len(errors),
              "refusals": sorted(set(errors))}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
