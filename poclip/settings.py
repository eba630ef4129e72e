"""Runtime settings. Every environment variable the project reads is read here, and only here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
ASSETS_DIR = REPO_DIR / "assets"


def _default_data_dir() -> Path:
    # A Space mounts persistent storage at /data; elsewhere keep state beside the checkout.
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/poclip")
    return REPO_DIR / "data"


@dataclass(frozen=True)
class Settings:
    """Where state lives and which model is served.

    Attributes:
        data_dir: images, checkpoints, embedding cache and the SQLite database (``POCLIP_DATA_DIR``).
        database_url: SQLAlchemy URL (``DATABASE_URL``); default a SQLite file in ``data_dir``.
        model_spec: backbone spec (``POCLIP_MODEL``), see :func:`poclip.models.load_model`.
        hub_timeout_s: how long a hub download may take to start before we give up (``POCLIP_HUB_TIMEOUT``).
        admin_token: shared secret for admin actions (``POCLIP_ADMIN_TOKEN``); empty disables token login.
        sqlite_journal_mode: ``WAL`` normally; ``DELETE`` on network file systems (``POCLIP_SQLITE_JOURNAL``).
        server_host, server_port: where ``python app.py`` listens (``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``;
            a Space sets the host to 0.0.0.0).
    """

    data_dir: Path = field(default_factory=_default_data_dir)
    database_url: str = ""
    model_spec: str = "auto"
    hub_timeout_s: float = 8.0
    admin_token: str = ""
    sqlite_journal_mode: str = "WAL"
    server_host: str = "127.0.0.1"
    server_port: int = 7860

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'poclip.db'}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        defaults = cls()
        return cls(
            data_dir=Path(env["POCLIP_DATA_DIR"]) if env.get("POCLIP_DATA_DIR") else defaults.data_dir,
            database_url=env.get("DATABASE_URL", ""),
            model_spec=env.get("POCLIP_MODEL", defaults.model_spec),
            hub_timeout_s=float(env.get("POCLIP_HUB_TIMEOUT", defaults.hub_timeout_s)),
            admin_token=env.get("POCLIP_ADMIN_TOKEN", ""),
            sqlite_journal_mode=env.get("POCLIP_SQLITE_JOURNAL", defaults.sqlite_journal_mode).upper(),
            server_host=env.get("GRADIO_SERVER_NAME", defaults.server_host),
            server_port=int(env.get("GRADIO_SERVER_PORT", defaults.server_port)),
        )
