"""Shared fixtures. Tests never touch the network: the model hub is switched off before anything imports it.

System services the suite needs beyond Python (PostgreSQL for tests/annotation_db, Debian's Chromium for the
browser tests, Debian's Tesseract for the OCR defense) are skipped locally with the reason printed, and required
when ``CI`` is set (``.ci/run`` sets it).
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
TESSERACT = shutil.which("tesseract")
TESSERACT_MISSING = "Tesseract is not installed (apt-get install tesseract-ocr); the OCR defense's tests need it"


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for what, found, missing in (("browser tests", CHROMIUM, CHROMIUM_MISSING), ("OCR tests", TESSERACT,
                                                                                 TESSERACT_MISSING)):
        lines.append(f"{what}: {found}" if found else
                     f"{what} {'FAIL (CI is set)' if IN_CI else 'are skipped'}: {missing}")
    return lines


def _system_tool(path: str | None, missing: str) -> str:
    """A system program the test needs: skipped without it locally, a failure in CI."""
    if not path:
        if IN_CI:
            pytest.fail(f"CI must run these tests. {missing}")
        pytest.skip(missing)
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium."""
    return _system_tool(CHROMIUM, CHROMIUM_MISSING)


@pytest.fixture(scope="session")
def tesseract() -> str:
    """The path of Debian's Tesseract (the OCR defense)."""
    return _system_tool(TESSERACT, TESSERACT_MISSING)


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
