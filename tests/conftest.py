"""Shared fixtures. Tests never touch the network: the model hub is switched off before anything imports it.

System services the suite needs beyond Python (PostgreSQL for tests/annotation_db, Debian's Chromium for the browser
tests) are skipped locally with the reason printed, and required when ``CI`` is set (``.ci/run`` sets it).
"""

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_MISSING = "Debian's chromium is not installed (apt-get install chromium); the browser tests need it"


def pytest_report_header(config: pytest.Config) -> str:
    if CHROMIUM:
        return f"browser tests: {CHROMIUM}"
    return f"browser tests {'FAIL (CI is set)' if IN_CI else 'are skipped'}: {CHROMIUM_MISSING}"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium: skipped without it locally, a failure in CI."""
    if not CHROMIUM:
        if IN_CI:
            pytest.fail(f"CI must run the browser tests. {CHROMIUM_MISSING}")
        pytest.skip(CHROMIUM_MISSING)
    return CHROMIUM


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
