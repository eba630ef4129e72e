"""PO-CLIP web app: ``python app.py`` serves the page (on a Space, this is the app_file)."""

from __future__ import annotations

import logging
import sys

from poclip import zerogpu

zerogpu.import_first()  # on ZeroGPU hardware `spaces` must come before torch

import gradio as gr  # noqa: E402

from poclip.app.batching import SWITCH_INTERVAL_S  # noqa: E402
from poclip.app.service import AppService  # noqa: E402
from poclip.app.ui import build_demo, launch_kwargs  # noqa: E402
from poclip.settings import Settings  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
# The image tower's thread gets the GIL back quickly from request threads (see poclip.app.batching).
sys.setswitchinterval(SWITCH_INTERVAL_S)

# Reload mode (`gradio app.py`) re-runs this file on every edit: open the database, load the model and
# start the background trainer only once.
if gr.NO_RELOAD:
    settings = Settings.from_env()
    service = AppService.create(settings)
    if settings.trainer == "thread":
        # A thread schedules retrains and runs each in a child process at lower CPU priority; this process only
        # loads the head a run promotes. They talk through the store (the Train tab queues runs there and reads
        # the heartbeat); the thread's loop also follows promotions made elsewhere.
        from poclip.app.child_trainer import ChildTrainer

        ChildTrainer(settings, service.repo, service.live_head).start(train=True)
    else:
        if settings.trainer == "zerogpu":  # a retrain runs when an admin clicks, as one ZeroGPU call
            from poclip.app.zerogpu_trainer import ZeroGpuTrainer, require_zerogpu

            require_zerogpu()

            service.training.executor = ZeroGpuTrainer(settings, service.repo, service.encoder,
                                                        service.live_head).execute
        # else POCLIP_TRAINER=off: a `python -m poclip worker` process trains, promotes and backs up
        service.live_head.follow()

demo = build_demo(service)

if __name__ == "__main__":
    # Many visitors at once: requests queue (bounded) instead of failing, and up to 8 run in parallel.
    demo.queue(default_concurrency_limit=8, max_size=256).launch(
        server_name=settings.server_host, server_port=settings.server_port, **launch_kwargs()
    )
