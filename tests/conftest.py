"""Shared fixtures. Tests never touch the network: the model hub is switched off before anything imports it."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def bundled():
    from poclip.engine.models import load_model

    return load_model("bundled", device=torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny():
    """A random-init open_clip model, loaded through the same code path as real ones."""
    from poclip.engine.models import load_model

    torch.manual_seed(0)
    return load_model("poclip-tiny-rn", device=torch.device("cpu"))
