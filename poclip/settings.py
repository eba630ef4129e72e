"""Runtime settings. Every environment variable the project reads is declared here, once, and read only here.

Each setting is one field of :class:`Settings` declared with :func:`poclip.options.option`: its variable, default,
meaning and allowed values. :meth:`Settings.from_env`, the validation and the README's table
(:func:`settings_table`, printed by ``python -m poclip settings``) are generated from those fields.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from poclip import zerogpu
from poclip.options import check, markdown_table, option, read_env, write_env

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
ASSETS_DIR = REPO_DIR / "assets"


STORAGE_MODES = ("snapshots", "bucket")
TRAINER_MODES = ("thread", "off", "zerogpu")
PRECISIONS = ("auto", "fp32")
BUCKET_MOUNT = Path("/data")
PEER_NAMES = ("prompts", "ablation", "prefix", "ocr_mask", "paint")
# POCLIP_STARTER_HEAD set to one of these serves the base model.
FALSE_WORDS = ("0", "false", "off", "no")


def _names(text: str) -> tuple[str, ...]:
    # A comma-separated list of names ("a, b,c" -> ("a", "b", "c")).
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _names_or_off(text: str) -> tuple[str, ...]:
    # _names, or none for "off".
    return () if text.strip().lower() == "off" else _names(text)


def _bucket_mounted() -> bool:
    # A Space with a storage bucket mounted as a volume at /data (the documented mount point).
    return BUCKET_MOUNT.is_dir() and os.access(BUCKET_MOUNT, os.W_OK)


def _default_data_dir() -> Path:
    # Durable files go to the bucket when one is mounted; elsewhere keep state beside the checkout.
    return BUCKET_MOUNT / "poclip" if _bucket_mounted() else REPO_DIR / "data"


def _default_local_dir(env: Mapping[str, str]) -> Path | None:
    # With a bucket mounted, the live database stays on the machine's own disk (the checkout's data/).
    return REPO_DIR / "data" if _bucket_mounted() else None


def _default_proxy_hops(env: Mapping[str, str]) -> int:
    # A Space's app sits behind the Hub's reverse proxy, which the client's address comes through.
    return 1 if env.get("SPACE_ID") else 0


def _default_train_threads() -> int:
    # The cores this process may run on (a container's CPU set), not the host's: threads beyond them only wait.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _default_trainer(env: Mapping[str, str]) -> str:
    # On ZeroGPU no background thread can hold the GPU: a retrain runs when the admin clicks.
    return "zerogpu" if zerogpu.detected(env) else "thread"


def _default_peers(env: Mapping[str, str]) -> tuple[str, ...]:
    # Peers are built by child processes, which get no GPU on ZeroGPU.
    return () if zerogpu.detected(env) else PEER_NAMES


def _device(text: str) -> str:
    name = text.strip().lower()
    if name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise ValueError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")
    return name


def _word(text: str) -> str:
    return text.strip().lower()


def _upper(text: str) -> str:
    return text.strip().upper()


def _stripped(text: str) -> str:
    return text.strip()


def _switch(text: str) -> bool:
    return text.strip().lower() not in FALSE_WORDS


@dataclass(frozen=True)
class Settings:
    """Where state lives, which model is served, and the app's limits: one field per environment variable.

    Construct it with keyword arguments (tests) or from the environment (:meth:`from_env`); either way every
    value is checked against its declared bounds and choices (:class:`~poclip.errors.UserError` naming the
    variable). The fields' metadata is the documentation: see :func:`settings_table`.
    """

    model_spec: str = option("auto", env="POCLIP_MODEL", parse=_stripped,
                             help="model spec: `auto`, `bundled`, an open_clip `name:pretrained` tag or a local "
                                  "checkpoint (see Models)")
    data_dir: Path = option(
        env="POCLIP_DATA_DIR", parse=Path, default_factory=_default_data_dir,
        default_doc="`/data/poclip` when a bucket is mounted at `/data`, else `./data`",
        help="durable folder: images, heads, embedding cache, snapshots, and the SQLite database unless "
             "`POCLIP_LOCAL_DIR` puts it elsewhere")
    storage: str = option(
        "snapshots", env="POCLIP_STORAGE", parse=_word, choices=STORAGE_MODES,
        help="`snapshots`: live WAL database in `POCLIP_LOCAL_DIR`, consistent snapshots copied to the data "
             "dir's `backups/` and the newest restored at start when the local file is missing or empty; "
             "`bucket`: SQLite in the data dir with DELETE journal, exclusive lock, one writer. Images and heads "
             "are always written to the data dir before the row that names them")
    local_dir: Path | None = option(
        None, env="POCLIP_LOCAL_DIR", parse=Path, env_default=_default_local_dir,
        default_doc="`./data` when a bucket is mounted at `/data`, else the data dir",
        help="the live database's folder in `snapshots` mode")
    database_url: str = option("", env="DATABASE_URL", default_doc="SQLite file `poclip.db` in the database's "
                               "folder (see `POCLIP_STORAGE`)",
                               help="SQLAlchemy URL; `postgresql+psycopg://user:pw@host:5432/db` to scale out")
    sqlite_journal_mode: str = option(
        "WAL", env="POCLIP_SQLITE_JOURNAL", parse=_upper,
        help="SQLite journal: `WAL`; `DELETE` on network file systems, where WAL does not work "
             "(`POCLIP_STORAGE=bucket` sets DELETE and an exclusive lock itself)")
    hub_timeout_s: float = option(8.0, env="POCLIP_HUB_TIMEOUT", parse=float, low=0, low_open=True,
                                  help="seconds a model hub download may take to start before falling back")
    server_host: str = option("127.0.0.1", env="GRADIO_SERVER_NAME",
                              help="where `python app.py` listens (a Space sets 0.0.0.0)")
    server_port: int = option(7860, env="GRADIO_SERVER_PORT", parse=int, low=0, high=65535,
                              help="the port `python app.py` listens on")
    admin_token: str = option("", env="POCLIP_ADMIN_TOKEN", default_doc="(empty: token login off)",
                              help="shared secret that unlocks admin actions")
    admin_org: str = option("", env="POCLIP_ADMIN_ORG",
                            help="Hugging Face organisation whose members are admins when logged in")
    hf_token: str = option("", env="HF_TOKEN", help="token for pushing exported datasets to the Hub")
    export_repo: str = option("", env="POCLIP_EXPORT_REPO",
                              help="default Hub dataset repository for exports, `user/name`")
    device: str = option("auto", env="POCLIP_DEVICE", parse=_device,
                         help="where models compute: `auto` (CUDA when torch sees a GPU, else the CPU), `cpu`, `cuda` "
                              "or `cuda:N`; asking for CUDA where there is none stops the app with the reason")
    precision: str = option("auto", env="POCLIP_PRECISION", parse=_word, choices=PRECISIONS,
                            help="`auto`: on CUDA the frozen image tower runs in bfloat16 (float16 on GPUs without "
                                 "it) while heads train and serve in float32; `fp32`: float32 throughout. The CPU "
                                 "always computes in float32")
    trainer: str = option("thread", env="POCLIP_TRAINER", parse=_word, choices=TRAINER_MODES,
                          env_default=_default_trainer,
                          default_doc="`zerogpu` on ZeroGPU hardware (`SPACES_ZERO_GPU` set), else `thread`",
                          help="`thread`: a thread of the app schedules retrains and runs each in a child process "
                               "at lower CPU priority, whose head the app then loads; `off` leaves training to a "
                               "standalone `python -m poclip worker` against the same database; `zerogpu`: no "
                               "schedule, a retrain runs when an admin clicks Retrain, inside a ZeroGPU call "
                               "whose length follows the pair count (see \"Hardware: CPU, GPU or ZeroGPU\"); only "
                               "on ZeroGPU hardware, since elsewhere it would train inside the serving process")
    zerogpu_max_s: int = option(
        120, env="POCLIP_ZEROGPU_MAX_S", parse=int, low=10,
        help="the longest ZeroGPU call a retrain may ask for (the per-call cap of the tier that pays: the "
             "admin's account; a longer request is refused by the platform)")
    train_threads: int = option(
        env="POCLIP_TRAIN_THREADS", parse=int, low=1, default_factory=_default_train_threads,
        default_doc="the cores the app may use",
        help="torch threads a training process uses (the app's child and `python -m poclip worker`). The app's "
             "child also runs at lower CPU priority, so serving comes first on every core; a 200-label retrain's "
             "training takes about 43 s of CPU, so on one thread the whole run cannot finish within a minute (see "
             "\"The loop, measured\")")
    retrain_every_pairs: int = option(50, env="POCLIP_RETRAIN_EVERY_PAIRS", parse=int, low=0,
                                      help="the scheduler queues a retrain once the crowd pairs grew by this "
                                           "many since the last run, or by a fifth of that run's crowd pairs if "
                                           "more; each rejected run in a row doubles it (up to 8 times), a "
                                           "promotion resets it (`0`: never by count)")
    retrain_every_minutes: float = option(0.0, env="POCLIP_RETRAIN_EVERY_MINUTES", parse=float, low=0,
                                          help="and at most this often, when at least 10 new crowd pairs exist "
                                               "(`0`: no timer)")
    head: str = option(
        "", env="POCLIP_HEAD", parse=_stripped,
        help="the head the trainer trains: `linear`, `projection` or `last_blocks:K`; empty = the measured "
             "default, `last_blocks:2`, except `projection` for a real-size backbone (ViT-B-32 and up) on the "
             "CPU, where the last two blocks would take some 20 minutes per retrain on two cores (see "
             "\"Hardware: CPU, GPU or ZeroGPU\"). A retrain refines the live head when it is of this kind, else it "
             "starts from the base model")
    gate_eval_n: int = option(500, env="POCLIP_GATE_N", parse=int, low=1,
                              help="held-out synthetic pictures the promotion gate evaluates on")
    gate_families: tuple[str, ...] = option(
        ("paper", "upper_case", "several_words", "true_word", "neutral_word", "low_opacity", "small_text",
         "label_patch"),
        env="POCLIP_GATE_FAMILIES", parse=_names, default_doc="all but `held_out_font`",
        help="comma-separated attack families the gate writes on its pictures (the names of "
             "`POCLIP_ANNOTATE_FAMILIES`); its typographic accuracy is their mean, and none may fall more than 2 "
             "points. Each family embeds `POCLIP_GATE_N` more pictures once (about 8 s per 500 on the bundled "
             "model); `paper` alone judges the paper's style only")
    held_out_share: float = option(
        0.2, env="POCLIP_HELD_OUT_SHARE", parse=float, low=0, high=0.5,
        help="share of the annotation items (chosen by a keyed hash of the picture and its attack; gold items "
             "never) whose judgments are never trained on: the promotion gate scores crowd agreement on them")
    rate_limit: str = option("120/60", env="POCLIP_RATE_LIMIT",
                             help="judgments per annotator per window, `COUNT/SECONDS`, or `off`")
    client_rate_limit: str = option(
        "300/60", env="POCLIP_CLIENT_RATE_LIMIT",
        help="judgments per client network address per window, whatever handles it uses, `COUNT/SECONDS`, or `off`")
    client_new_annotators: str = option(
        "20/3600", env="POCLIP_CLIENT_NEW_ANNOTATORS",
        help="new annotators (signed anonymous ids; a typed name is only a display name) one address may create "
             "per window, or `off`")
    proxy_hops: int = option(
        0, env="POCLIP_PROXY_HOPS", parse=int, low=0, env_default=_default_proxy_hops,
        default_doc="1 on a Space (`SPACE_ID` set), else 0",
        help="trusted reverse proxies in front of the app; the client's address is then read from "
             "`X-Forwarded-For` (the one the outermost proxy saw) instead of the connection. Only with a proxy in "
             "front: without one, each client picks its own address by sending that header and the per-address "
             "limits do not hold (the app logs a warning when a request comes without the header)")
    min_gold_seen: int = option(3, env="POCLIP_MIN_GOLD_SEEN", parse=int, low=0,
                                help="gold items a person must have answered before their labels count towards "
                                     "training (`0`: from the first)")
    max_annotator_share: float = option(0.25, env="POCLIP_MAX_ANNOTATOR_SHARE", parse=float, low=0, low_open=True,
                                        high=1, help="largest share of a training set's items one annotator's "
                                                     "votes may decide (`1`: no cap)")
    client_predictions: str = option(
        "60/60", env="POCLIP_CLIENT_PREDICTIONS",
        help="predictions (`/predict` calls and Predict presses) per client network address per window, "
             "`COUNT/SECONDS`, or `off`; the default never stops one press a second")
    client_record_share: float = option(
        0.125, env="POCLIP_CLIENT_RECORD_SHARE", parse=float, low=0, low_open=True, high=1,
        help="share of the kept comparisons (512 records, 512 MB) one client network address may hold: past it, its "
             "own oldest go first, so a flood of predictions never expires another visitor's comparison")
    decode_budget_mp: float = option(
        100.0, env="POCLIP_DECODE_BUDGET_MP", parse=float, low=0, low_open=True,
        help="megapixels all concurrent uploads may hold decoded at once (about 4.5 bytes each, 8 with "
             "transparency: 0.45-0.8 GB); eight concurrent 128 KB PNGs of 6320x6320 grew the process's peak by "
             "1,262 MB without the budget and 173 MB with it, in the same time (`python bench/decode_budget.py`, one "
             "run, busy shared 2-core machine)")
    client_decode_share: float = option(
        0.5, env="POCLIP_CLIENT_DECODE_SHARE", parse=float, low=0, low_open=True, high=1,
        help="share of the decode budget one client network address may hold, decoding or waiting; past it, its "
             "next upload is refused at once (\"wait until yours are open\"), and waiting uploads are served "
             "lightest address first. An address holding nothing may always open one picture")
    decode_wait_s: float = option(10.0, env="POCLIP_DECODE_WAIT_S", parse=float, low=0,
                                  help="how long an upload waits for decoding room before \"server busy, try "
                                       "again\"")
    backup_keep: int = option(10, env="POCLIP_BACKUP_KEEP", parse=int, low=1, help="SQLite snapshots kept")
    backup_every_minutes: float = option(5.0, env="POCLIP_BACKUP_EVERY_MINUTES", parse=float, low=0,
                                         help="how often a SQLite snapshot is taken (`0`: only on demand)")
    space_id: str = option("", env="SPACE_ID",
                           help="set by Hugging Face Spaces; enables the Hugging Face login button")
    seed_items: int = option(600, env="POCLIP_SEED_ITEMS", parse=int, low=0,
                             help="synthetic attacked items offered to annotators with the bundled model; with any "
                                  "other backbone a positive value offers the 212 real photos instead, 0 none")
    annotate_families: tuple[str, ...] = option(
        ("paper", "several_words", "label_patch", "true_word", "neutral_word", "upper_case", "low_opacity"),
        env="POCLIP_ANNOTATE_FAMILIES", parse=_names, default_doc="all but `small_text`",
        help="comma-separated attack families the synthetic items' writing takes turns in: `paper`, "
             "`several_words`, `label_patch`, `true_word`, `neutral_word`, `upper_case`, `low_opacity`, "
             "`small_text`; e.g. `several_words` to have the crowd teach what the served head gets wrong most "
             "(items seeded earlier keep their writing)")
    augment_attacks: int = option(4, env="POCLIP_AUGMENT", parse=int, low=0,
                                  help="extra pairs per typographic judgment (other text from the style family on "
                                       "the same picture; `0`: the judgments alone)")
    replay_pairs: int = option(
        1000, env="POCLIP_REPLAY_PAIRS", parse=int, low=0,
        help="synthetic pairs (the starter's own, and as many clean synthetic pictures) mixed into every retrain, "
             "so that a few hundred crowd labels refine what the starter head learned instead of wearing it away; "
             "the retrain then runs the steps of its larger part alone; `0`: the crowd's pairs only (see \"The "
             "loop, measured\"). The first retrain computes their 4,000 trunk activations once (cached after); "
             "measured on the bundled model only")
    peers: tuple[str, ...] = option(
        PEER_NAMES, env="POCLIP_PEERS", parse=_names_or_off, env_default=_default_peers,
        default_doc="`prompts,ablation,prefix,ocr_mask,paint`; none on ZeroGPU",
        help="the defenses a visitor may put beside PO-CLIP on the Compare tab and meet blind in arena mode "
             "(`off`: none). Each is built once per backbone by a child process at lower CPU priority, cached in "
             "the data dir's `defenses/`, and offered once ready (on the bundled model all five take about 90 s "
             "of CPU; `ocr_mask` needs Tesseract)")
    starter_head: bool = option(True, env="POCLIP_STARTER_HEAD", parse=_switch, default_doc="1",
                                help="serve the shipped starter head (`assets/heads`) until a version is promoted, "
                                     "so a fresh app already shows the aligned model (`0`, `false`, `off` or "
                                     "`no`: the base model)")

    def __post_init__(self) -> None:
        check(self, lambda f: f.metadata["env"])

    @property
    def database_dir(self) -> Path:
        """The SQLite database's folder: ``data_dir`` in bucket mode, else ``local_dir`` (default ``data_dir``)."""
        if self.storage == "bucket":
            return self.data_dir
        return self.local_dir if self.local_dir is not None else self.data_dir

    def to_env(self) -> dict[str, str]:
        """The environment variables that give these settings back through :meth:`from_env` (a child process's)."""
        return write_env(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment describes (``os.environ`` by default).

        An unset or empty variable keeps its default. Raises:
            UserError: a value that does not parse or is outside its declared range, naming the variable.
        """
        return cls(**read_env(cls, os.environ if env is None else env))


def settings_table() -> str:
    """Every setting as a Markdown table (variable, default, meaning): the README's "Settings" table."""
    return markdown_table(Settings, fields(Settings))
