"""Runtime settings. Every environment variable the project reads is read here, and only here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
ASSETS_DIR = REPO_DIR / "assets"


STORAGE_MODES = ("snapshots", "bucket")
BUCKET_MOUNT = Path("/data")


def _bucket_mounted() -> bool:
    # A Space with a storage bucket mounted as a volume at /data (the documented mount point).
    return BUCKET_MOUNT.is_dir() and os.access(BUCKET_MOUNT, os.W_OK)


def _default_data_dir() -> Path:
    # Durable files go to the bucket when one is mounted; elsewhere keep state beside the checkout.
    return BUCKET_MOUNT / "poclip" if _bucket_mounted() else REPO_DIR / "data"


@dataclass(frozen=True)
class Settings:
    """Where state lives and which model is served.

    Attributes:
        data_dir: the durable folder (``POCLIP_DATA_DIR``; default ``/data/poclip`` when a bucket is mounted at
            ``/data``, else ``./data``): images, heads, embedding cache, database snapshots, and the SQLite
            database itself unless ``local_dir`` says otherwise.
        storage: where the SQLite database lives (``POCLIP_STORAGE``): ``snapshots`` (default) keeps it in
            ``local_dir`` in WAL mode and copies consistent snapshots into ``data_dir/backups``, restoring the
            newest at start when the local file is missing or empty; ``bucket`` keeps it in ``data_dir``
            itself with a DELETE journal, an exclusive lock and one connection (for a bucket that takes no
            WAL and no second writer). Images and heads are always written to ``data_dir`` before the row
            that names them.
        local_dir: the live database's folder in ``snapshots`` mode (``POCLIP_LOCAL_DIR``; default: the
            checkout's ``data/`` when a bucket is mounted at ``/data``, so the database is on the machine's
            own disk, else ``data_dir``).
        database_url: SQLAlchemy URL (``DATABASE_URL``); default a SQLite file as ``storage`` says.
        model_spec: backbone spec (``POCLIP_MODEL``), see :func:`poclip.engine.models.load_model`.
        hub_timeout_s: how long a hub download may take to start before we give up (``POCLIP_HUB_TIMEOUT``).
        admin_token: shared secret for admin actions (``POCLIP_ADMIN_TOKEN``); empty disables token login.
        sqlite_journal_mode: ``WAL`` normally; ``DELETE`` on network file systems (``POCLIP_SQLITE_JOURNAL``).
        server_host, server_port: where ``python app.py`` listens (``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``;
            a Space sets the host to 0.0.0.0).
        admin_org: members of this Hugging Face organisation are admins when logged in (``POCLIP_ADMIN_ORG``).
        hf_token: token for pushing exported datasets to the Hub (``HF_TOKEN``).
        export_repo: default Hub dataset repository for exports, ``user/name`` (``POCLIP_EXPORT_REPO``).
        trainer: ``thread`` runs the background trainer inside the app; ``off`` leaves training to a
            standalone ``python -m poclip worker`` against the same database (``POCLIP_TRAINER``).
        retrain_every_pairs: the scheduler queues a retrain once this many new pairs exist; 0 disables
            (``POCLIP_RETRAIN_EVERY_PAIRS``).
        retrain_every_minutes: and at most this often, when there is anything new; 0 disables the timer
            (``POCLIP_RETRAIN_EVERY_MINUTES``).
        head: the head kind the trainer trains (``POCLIP_HEAD``: ``linear``, ``projection`` or
            ``last_blocks:K``); empty = the engine's default, chosen on the generalization table. A retrain
            refines the live head when it is of this kind, else it starts from the base model.
        gate_eval_n: size of the held-out synthetic set the promotion gate evaluates on (``POCLIP_GATE_N``).
        rate_limit: judgments per annotator per window, ``COUNT/SECONDS`` or ``off`` (``POCLIP_RATE_LIMIT``).
        client_rate_limit: judgments per client network address per window, whatever handles it uses,
            ``COUNT/SECONDS`` or ``off`` (``POCLIP_CLIENT_RATE_LIMIT``); see :mod:`poclip.app.limits`.
        client_new_annotators: new annotators (handles, anonymous ids) one address may create per window
            (``POCLIP_CLIENT_NEW_ANNOTATORS``).
        proxy_hops: trusted reverse proxies in front of the app (``POCLIP_PROXY_HOPS``; default 1 on a Space,
            else 0): the client's address is then read from ``X-Forwarded-For`` instead of the connection.
        min_gold_seen: a person's labels count towards training only after they answered this many gold items
            (``POCLIP_MIN_GOLD_SEEN``; 0 counts everyone's from the first label).
        max_annotator_share: the largest share of a training set's items one annotator's votes may decide
            (``POCLIP_MAX_ANNOTATOR_SHARE``; 1 disables the cap).
        decode_budget_mp, decode_wait_s: megapixels all concurrent uploads may hold decoded at once, and how
            long an upload waits for room before it is refused as "server busy" (``POCLIP_DECODE_BUDGET_MP``,
            ``POCLIP_DECODE_WAIT_S``); see :mod:`poclip.world.decode_budget`.
        backup_keep, backup_every_minutes: SQLite snapshots kept, and how often one is taken (0 = only on
            demand) (``POCLIP_BACKUP_KEEP``, ``POCLIP_BACKUP_EVERY_MINUTES``).
        seed_items: synthetic attacked items offered to annotators when the bundled model is live
            (``POCLIP_SEED_ITEMS``).
        augment_attacks: extra pairs the trainer derives from each typographic judgment by writing other
            wrong labels on the same picture (``POCLIP_AUGMENT``; 0 trains on the judgments alone).
        replay_pairs: synthetic pairs, and as many clean synthetic pictures, mixed into every retrain: the
            starter head's own kind of data, so that a few hundred crowd labels refine what it learned instead of
            wearing it away (``POCLIP_REPLAY_PAIRS``; 0 trains on the crowd's pairs alone).
        starter_head: serve the shipped starter head (``assets/heads``) until a version is promoted, so a fresh
            app already shows the aligned model (``POCLIP_STARTER_HEAD``; 0 serves the base model instead).
        space_id: set by Hugging Face Spaces (``SPACE_ID``); enables the Hugging Face login button.
    """

    data_dir: Path = field(default_factory=_default_data_dir)
    storage: str = "snapshots"
    local_dir: Path | None = None
    database_url: str = ""
    model_spec: str = "auto"
    hub_timeout_s: float = 8.0
    admin_token: str = ""
    sqlite_journal_mode: str = "WAL"
    server_host: str = "127.0.0.1"
    server_port: int = 7860
    admin_org: str = ""
    hf_token: str = ""
    export_repo: str = ""
    trainer: str = "thread"
    retrain_every_pairs: int = 50
    retrain_every_minutes: float = 0.0
    head: str = ""
    gate_eval_n: int = 500
    rate_limit: str = "120/60"
    client_rate_limit: str = "300/60"
    client_new_annotators: str = "20/3600"
    proxy_hops: int = 0
    min_gold_seen: int = 3
    max_annotator_share: float = 0.25
    decode_budget_mp: float = 100.0
    decode_wait_s: float = 10.0
    backup_keep: int = 10
    backup_every_minutes: float = 5.0
    space_id: str = ""
    seed_items: int = 600
    augment_attacks: int = 4
    replay_pairs: int = 1000
    starter_head: bool = True

    def __post_init__(self) -> None:
        if self.storage not in STORAGE_MODES:
            raise ValueError(f"POCLIP_STORAGE must be one of {', '.join(STORAGE_MODES)}, got {self.storage!r}")
        if not 0 < self.max_annotator_share <= 1:
            raise ValueError(f"POCLIP_MAX_ANNOTATOR_SHARE must be in (0, 1], got {self.max_annotator_share!r}")
        if self.min_gold_seen < 0 or self.proxy_hops < 0 or self.replay_pairs < 0:
            raise ValueError("POCLIP_MIN_GOLD_SEEN, POCLIP_PROXY_HOPS and POCLIP_REPLAY_PAIRS must be 0 or more")
        if not self.decode_budget_mp > 0 or not self.decode_wait_s >= 0:
            raise ValueError("POCLIP_DECODE_BUDGET_MP must be positive and POCLIP_DECODE_WAIT_S 0 or more")

    @property
    def database_dir(self) -> Path:
        """The SQLite database's folder: ``data_dir`` in bucket mode, else ``local_dir`` (default ``data_dir``)."""
        if self.storage == "bucket":
            return self.data_dir
        return self.local_dir if self.local_dir is not None else self.data_dir

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.database_dir / 'poclip.db'}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        defaults = cls()
        if env.get("POCLIP_LOCAL_DIR"):
            local_dir: Path | None = Path(env["POCLIP_LOCAL_DIR"])
        else:
            local_dir = REPO_DIR / "data" if _bucket_mounted() else None
        return cls(
            data_dir=Path(env["POCLIP_DATA_DIR"]) if env.get("POCLIP_DATA_DIR") else defaults.data_dir,
            storage=env.get("POCLIP_STORAGE", defaults.storage).strip().lower(),
            local_dir=local_dir,
            database_url=env.get("DATABASE_URL", ""),
            model_spec=env.get("POCLIP_MODEL", defaults.model_spec),
            hub_timeout_s=float(env.get("POCLIP_HUB_TIMEOUT", defaults.hub_timeout_s)),
            admin_token=env.get("POCLIP_ADMIN_TOKEN", ""),
            sqlite_journal_mode=env.get("POCLIP_SQLITE_JOURNAL", defaults.sqlite_journal_mode).upper(),
            server_host=env.get("GRADIO_SERVER_NAME", defaults.server_host),
            server_port=int(env.get("GRADIO_SERVER_PORT", defaults.server_port)),
            admin_org=env.get("POCLIP_ADMIN_ORG", ""),
            hf_token=env.get("HF_TOKEN", ""),
            export_repo=env.get("POCLIP_EXPORT_REPO", ""),
            trainer=env.get("POCLIP_TRAINER", defaults.trainer).lower(),
            retrain_every_pairs=int(env.get("POCLIP_RETRAIN_EVERY_PAIRS", defaults.retrain_every_pairs)),
            retrain_every_minutes=float(env.get("POCLIP_RETRAIN_EVERY_MINUTES", defaults.retrain_every_minutes)),
            head=env.get("POCLIP_HEAD", defaults.head).strip(),
            gate_eval_n=int(env.get("POCLIP_GATE_N", defaults.gate_eval_n)),
            rate_limit=env.get("POCLIP_RATE_LIMIT", defaults.rate_limit),
            client_rate_limit=env.get("POCLIP_CLIENT_RATE_LIMIT", defaults.client_rate_limit),
            client_new_annotators=env.get("POCLIP_CLIENT_NEW_ANNOTATORS", defaults.client_new_annotators),
            # A Space's app sits behind the Hub's reverse proxy, which the client's address comes through.
            proxy_hops=int(env.get("POCLIP_PROXY_HOPS", 1 if env.get("SPACE_ID") else defaults.proxy_hops)),
            min_gold_seen=int(env.get("POCLIP_MIN_GOLD_SEEN", defaults.min_gold_seen)),
            max_annotator_share=float(env.get("POCLIP_MAX_ANNOTATOR_SHARE", defaults.max_annotator_share)),
            decode_budget_mp=float(env.get("POCLIP_DECODE_BUDGET_MP", defaults.decode_budget_mp)),
            decode_wait_s=float(env.get("POCLIP_DECODE_WAIT_S", defaults.decode_wait_s)),
            backup_keep=int(env.get("POCLIP_BACKUP_KEEP", defaults.backup_keep)),
            backup_every_minutes=float(env.get("POCLIP_BACKUP_EVERY_MINUTES", defaults.backup_every_minutes)),
            space_id=env.get("SPACE_ID", ""),
            seed_items=int(env.get("POCLIP_SEED_ITEMS", defaults.seed_items)),
            augment_attacks=int(env.get("POCLIP_AUGMENT", defaults.augment_attacks)),
            replay_pairs=int(env.get("POCLIP_REPLAY_PAIRS", defaults.replay_pairs)),
            starter_head=env.get("POCLIP_STARTER_HEAD", "1").strip().lower() not in ("0", "false", "off", "no"),
        )
