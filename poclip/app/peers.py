"""The defenses a visitor may put beside PO-CLIP on the Compare tab: built once per backbone, offered when ready.

Each peer (:data:`poclip.engine.defenses.PEERS`) is built by a child process, ``python -m poclip defenses
--only NAME`` at lower CPU priority, so that training a prefix token or a PAINT fine-tune never slows the
people using the app; the child writes the build to the cache (``DATA_DIR/defenses``) and this process then
loads it from there. A build already cached (an earlier start, the same backbone and recipe) is loaded at once.
Peers are built one at a time, cheapest first, in one background thread; until a peer is ready it is not
offered, and a peer whose build failed says why (:meth:`PeerDefenses.states`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from poclip.engine.models import ClipEncoder
from poclip.errors import UserError
from poclip.settings import REPO_DIR

log = logging.getLogger(__name__)

BUILD_NICE = 10  # the child's niceness: serving comes first on every core
TITLES = {"prompts": "Prompt wording", "ablation": "Ablation", "prefix": "Defense-Prefix", "ocr_mask": "OCR + mask",
          "paint": "PAINT"}  # as the page names them


class PeerNotReady(UserError):
    """The peer asked for is not built (yet, or at all); the message says which and why."""


class PeerDefenses:
    """The peers named in ``names`` on ``encoder``, built in the background (:meth:`start`).

    Args:
        encoder: the app's backbone; its spec is what the child builds on.
        cache_dir: where builds are kept, per backbone and recipe.
        names: peers to offer (``POCLIP_PEERS``), a subset of :data:`~poclip.engine.defenses.PEERS`, built in
            that registry's order (cheapest first); none by default.
    Raises:
        UserError: a name that is no peer, naming ``POCLIP_PEERS``.
    """

    def __init__(self, encoder: ClipEncoder, cache_dir: Path | None = None, names: Sequence[str] = ()) -> None:
        self.encoder = encoder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if names:
            from poclip.engine.defenses import PEERS

            unknown = [n for n in names if n not in PEERS]
            if unknown:
                raise UserError(f"POCLIP_PEERS names {', '.join(map(repr, unknown))}: choose from "
                                f"{', '.join(PEERS)}, or off")
            if self.cache_dir is None:
                raise ValueError("peers need a cache folder")
            names = [n for n in PEERS if n in names]
        self.names = tuple(names)
        self._state = dict.fromkeys(self.names, "waiting")
        self._why: dict[str, str] = {}
        self._ready: dict[str, object] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._child: subprocess.Popen | None = None

    def start(self) -> None:
        """Build (or load) every peer in the background; returns at once."""
        if self.names and self._thread is None:
            self._thread = threading.Thread(target=self._build_all, name="peer-defenses", daemon=True)
            self._thread.start()

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until every peer is ready or failed (tests, scripts)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        """Stop building: the child in flight is killed (its build is not cached half-written)."""
        with self._lock:  # a child spawned after this would not be killed: _run_child checks under the same lock
            self._stop.set()
            child = self._child
        if child is not None and child.poll() is None:
            child.kill()
        if self._thread is not None:
            self._thread.join(30)

    # ----- what the page and the API read ----------------------------------------------------------------------

    def ready(self) -> list[str]:
        """The peers that can answer now, in build order."""
        with self._lock:
            return [n for n in self.names if n in self._ready]

    def states(self) -> dict[str, str]:
        """Each peer's state: ``waiting``, ``building``, ``ready`` or ``failed: why``."""
        with self._lock:
            return {n: f"failed: {self._why[n]}" if self._state[n] == "failed" else self._state[n]
                    for n in self.names}

    def require(self, name: str):
        """Peer ``name``'s built defense; :class:`PeerNotReady` saying why when it cannot answer now."""
        with self._lock:
            defense = self._ready.get(name)
            state = self._state.get(name)
        if defense is None:
            if state is None:
                raise PeerNotReady(f"{name!r} is not a defense this app offers (it offers "
                                   f"{', '.join(self.names) or 'none'}).")
            why = f": {self._why[name]}" if state == "failed" else " yet (it is built once, in the background)"
            raise PeerNotReady(f"The {TITLES.get(name, name)} defense is not ready{why}; pick another model.")
        return defense

    def probs(self, name: str, picture: Image.Image, labels: Sequence[str], template: str) -> dict[str, float]:
        """Peer ``name``'s probabilities over ``labels`` for ``picture`` (as the models saw it)."""
        lp = self.require(name).log_probs([picture], list(labels), template)[0]
        return {label: round(float(p), 6) for label, p in zip(labels, lp.exp(), strict=True)}

    # ----- building --------------------------------------------------------------------------------------------

    def _set(self, name: str, state: str, why: str = "") -> None:
        with self._lock:
            self._state[name] = state
            if why:
                self._why[name] = why

    def _build_all(self) -> None:
        from poclip.engine.defenses import PEERS

        for name in self.names:
            if self._stop.is_set():
                return
            defense = PEERS[name](self.encoder)
            path = defense.cache_path(self.cache_dir)
            try:
                if not path.is_file():
                    self._set(name, "building")
                    self._run_child(name)
                if not path.is_file():  # never fit in this process: that is the child's job
                    raise RuntimeError("the build wrote no file")
                defense.build(self.cache_dir)  # a load
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("the %s defense could not be built: %s", name, exc)
                self._set(name, "failed", str(exc)[:300])
                continue
            with self._lock:
                self._ready[name] = defense
                self._state[name] = "ready"
            log.info("the %s defense is ready (built in %s s)", name, defense.seconds_to_build)

    def _run_child(self, name: str) -> None:
        cmd = [sys.executable, "-m", "poclip", "defenses", "--model", self.encoder.spec, "--cache-dir",
               str(self.cache_dir), "--only", name, "--nice", str(BUILD_NICE), "--json"]
        path = os.pathsep.join(p for p in (str(REPO_DIR), os.environ.get("PYTHONPATH", "")) if p)
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("the app is closing")
            self._child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": path})
        out, err = self._child.communicate()
        code, self._child = self._child.returncode, None
        if code != 0:
            last = next((line for line in reversed(err.splitlines()) if line.strip()), f"exit status {code}")
            raise RuntimeError(last.removeprefix("error: "))
        del out

