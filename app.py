"""PO-CLIP web app: ``python app.py`` serves the page (on a Space, this is the app_file)."""

from __future__ import annotations

import logging

import gradio as gr

from poclip.inference import Predictor
from poclip.models import load_model
from poclip.settings import Settings
from poclip.ui import build_demo

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

# Reload mode (`gradio app.py`) re-runs this file on every edit; load the model only once.
if gr.NO_RELOAD:
    settings = Settings.from_env()
    predictor = Predictor(load_model(settings.model_spec, settings))

demo = build_demo(predictor)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(server_name=settings.server_host, server_port=settings.server_port)
