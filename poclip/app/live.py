"""The live head: the aligned version serving predictions, owned here and nowhere else.

The app's service and the worker process each hold one :class:`LiveHead`; both follow the database's active
version: the trainer's loop syncs it on every pass, and a serving process that does not train follows it
from a thread of its own (:meth:`LiveHead.follow`). Serving imports this module, never the trainer.

The active version is a trained head, or one of the named versions an admin rolled back to: the starter head
(this process's shipped one) or the base model (no head). With no active version the starter head serves.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from annotation_db import Repository, VersionInfo, VersionKind
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import HeadError, Policy, load_head

log = logging.getLogger(__name__)

STARTER_LABEL = "starter head (trained on synthetic pairs; no version trained here yet)"
NO_STARTER = "this process has no starter head (POCLIP_STARTER_HEAD is off, or none was shipped for its backbone)"


@dataclass(frozen=True)
class LiveModel:
    """The head serving predictions; replaced as a whole, so a request that took it keeps using it."""

    version: VersionInfo | None
    policy: Policy | None

    @property
    def ref(self) -> tuple[str, str | None]:
        """What serves, as a small picklable key another process can load it from (:meth:`LiveHead.policy_for`):
        ``("base", None)``, ``("starter", None)`` or ``("file", head_path)``."""
        if self.policy is None:
            return ("base", None)
        if self.version is None or self.version.kind == VersionKind.STARTER:
            return ("starter", None)
        return ("file", str(self.version.head_path))

    @property
    def label(self) -> str:
        """What serves, in words: ``version 4``, the starter head or the base model, and why."""
        if self.version is None:
            return "base model (no aligned version yet)" if self.policy is None else STARTER_LABEL
        if self.version.kind == VersionKind.BASE:
            return "base model (no aligned head: an admin rolled back to it)"
        if self.version.kind == VersionKind.STARTER:
            return "starter head (an admin rolled back to it)"
        return self.version.name


class LiveHead:
    """Follows the database's active version: loads its head when it changes, serves the base model when it
    cannot be loaded (another backbone, a missing file), and says why."""

    def __init__(self, repo: Repository, encoder: ClipEncoder, fallback: Policy | None = None) -> None:
        """``fallback``: what serves while no version is active (the shipped starter head), else the base."""
        self.repo = repo
        self.encoder = encoder
        self.fallback = fallback
        self._live = LiveModel(None, fallback)
        self._unloadable: dict[int, str] = {}  # active versions this process cannot load, with the reason
        self._lock = threading.Lock()  # one loader at a time; readers never wait (they take self._live)
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._loaded: tuple[tuple[str, str | None], Policy] | None = None  # policy_for's last load

    @property
    def current(self) -> LiveModel:
        return self._live

    def sync(self) -> LiveModel:
        """Load the database's active version if it is not the one serving; returns the live model.

        One indexed read of the active version (the partial unique index on status) when nothing changed.
        """
        active = self.repo.active_version()
        with self._lock:
            current = self._live
            if (active is None and current.version is None) or (
                active is not None and current.version is not None and active.id == current.version.id
            ):
                return current
            if active is None:
                self._live = LiveModel(None, self.fallback)
                return self._live
            if active.id in self._unloadable:
                return current
            try:
                policy = self._policy_of(active)
            except HeadError as exc:
                # e.g. the version was trained on another backbone (auto fell back to bundled on an earlier
                # start): serve the base model rather than fail, and say why.
                log.warning("cannot serve version %s: %s", active.id, exc)
                self._unloadable[active.id] = str(exc)
                self._live = LiveModel(None, None)
                return self._live
            self._live = LiveModel(active, policy)  # one assignment: in-flight requests keep the old one
            log.info("live head is now %s", active.name)
            return self._live

    def policy_for(self, ref: tuple[str, str | None]) -> Policy | None:
        """The head :attr:`LiveModel.ref` names: the serving one when it is that, else loaded here (the last one
        kept). A ZeroGPU worker is a fork of the app that may outlive a promotion: the app names what serves with
        each call, and the worker loads it when its own copy is older."""
        live = self._live
        if live.ref == ref:
            return live.policy
        kind, path = ref
        if kind == "base":
            return None
        if kind == "starter":
            if self.fallback is None:
                raise HeadError(NO_STARTER)
            return self.fallback
        if self._loaded is None or self._loaded[0] != ref:
            self._loaded = (ref, load_head(path, self.encoder))
        return self._loaded[1]

    def _policy_of(self, version: VersionInfo) -> Policy | None:
        """The head a version serves: its file, this process's starter head, or none (the base model)."""
        if version.kind == VersionKind.BASE:
            return None
        if version.kind == VersionKind.STARTER:
            if self.fallback is None:
                raise HeadError(NO_STARTER)
            return self.fallback
        return load_head(version.head_path, self.encoder)

    def follow(self, interval_s: float = 2.0) -> None:
        """Sync every ``interval_s`` seconds from a daemon thread until :meth:`close`, for a process that serves
        but does not train (``POCLIP_TRAINER=off``: a worker process promotes, this one follows)."""
        if self._follower is not None and self._follower.is_alive():
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.sync()
                except Exception:  # a database hiccup: keep serving the current head, try again next period
                    log.exception("following the active version failed")

        self._follower = threading.Thread(target=loop, name="poclip-live-follow", daemon=True)
        self._follower.start()

    def close(self) -> None:
        """Stop following (a no-op when :meth:`follow` was never called)."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=30)
