"""Visitors of a running PO-CLIP app, through its public API (``gradio_client`` or plain HTTP), for the benchmarks.

What ``serve.py``, ``replicas.py`` and ``app_loop.py`` share: starting an app as its own process and waiting
until it answers; concurrent clients calling ``/predict`` (latency percentiles, throughput, errors, and what
one request cost in CPU); and a careful annotator who answers ``/next_item`` items truthfully.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder for one benchmark run's data and server logs. Removed when the run ends; kept, and
    named on stderr, when the run raises, so that its server logs can be read."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    except BaseException:
        print(f"kept {work}: the run failed, its server logs are there", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_app(name: str, cmd: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO,
              timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """Start ``cmd`` (an app that reads ``GRADIO_SERVER_PORT``) on a free port, logging to ``log_dir/name.log``;
    returns the process and its URL once ``/gradio_api/info`` answers. Raises with the log's tail when the
    process exits first or does not answer within ``timeout_s``."""
    port = free_port()
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115 - kept open for the process's lifetime
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "GRADIO_SERVER_PORT": str(port),
                                                "GRADIO_SERVER_NAME": "127.0.0.1"},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "gradio_api/info", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{name} did not start within {timeout_s:g} s")


def stop(proc: subprocess.Popen) -> None:
    """Terminate one process this benchmark started (killed when it does not stop within 30 s)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (``VmRSS``, Linux ``/proc``; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``; [] elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_database(server_url: str, prefix: str = "poclip_bench") -> str:
    """A new, empty database on the PostgreSQL server at ``server_url``; returns its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, url: str) -> None:
    """Remove the database at ``url`` (made by :func:`create_database`), whoever is still connected."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


class ApiCaller:
    """Calls a running app's endpoints as the page does: Gradio's two-step HTTP call (``POST
    /gradio_api/call/NAME``, then the event stream of its result), over one kept-alive connection and in one
    Gradio session. ``address``: the loopback source address the connections come from (``127.0.0.2`` and up
    are separate clients to the app's per-address limits, with no proxy header to trust); None: the default."""

    def __init__(self, url: str, address: str | None = None, timeout_s: float = 120) -> None:
        import httpx

        transport = httpx.HTTPTransport(local_address=address) if address else None
        self.url, self.address = url.rstrip("/"), address
        self.http = httpx.Client(timeout=timeout_s, transport=transport)
        self.session = secrets.token_hex(6)

    def upload(self, name: str, content: bytes) -> dict:
        """Upload one file (``/gradio_api/upload``); returns the file reference endpoints take."""
        response = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (name, content)})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api_name: str, data: Sequence) -> list:
        """One call of ``/api_name`` with the positional inputs ``data``; returns its outputs. Raises
        :class:`CallRefused` with the app's message when the endpoint ends in an error event."""
        response = self.http.post(f"{self.url}/gradio_api/call/{api_name}",
                                  json={"data": list(data), "session_hash": self.session})
        response.raise_for_status()
        event_id = response.json()["event_id"]
        event, outputs = None, None
        with self.http.stream("GET", f"{self.url}/gradio_api/call/{api_name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    outputs = json.loads(line.split(":", 1)[1])
                    break
        if event != "complete" or not isinstance(outputs, list):
            raise CallRefused(f"/{api_name} ended with {event!r}: {str(outputs)[:300]}")
        return outputs

    def fetch(self, file: dict) -> bytes:
        """The bytes of a file an endpoint returned (as the page then shows it)."""
        response = self.http.get(file["url"])
        response.raise_for_status()
        return response.content

    def close(self) -> None:
        self.http.close()


class CallRefused(RuntimeError):
    """An endpoint answered with an error event (a refusal, with the app's message, or a failure)."""


class BrowserVisitor(ApiCaller):
    """One visitor as the page behaves: the picture is uploaded once (``/gradio_api/upload``) when it is chosen,
    then every Predict is one :class:`ApiCaller` call followed by fetching the returned picture, over one
    kept-alive connection and in one Gradio session (a page load has one; a call without one opens a new
    session, whose state the server keeps).

    ``gradio_client`` instead uploads the picture again on every call and does several times the client-side
    work; both share this machine's cores with the server, so the lean visitor is what measures the server.
    """

    def __init__(self, url: str, picture: Path, address: str | None = None) -> None:
        super().__init__(url, address)
        self.picture = self.upload(picture.name, picture.read_bytes())

    def predict(self, args: Sequence) -> list:
        """One /predict with the uploaded picture and ``args``; returns the outputs (raises on an error event)."""
        outputs = self.call("predict", [self.picture, *args])
        shown = outputs[0]
        if isinstance(shown, dict) and shown.get("url"):  # the page then shows the returned picture
            self.fetch(shown)
        return outputs


def batch_counts(url: str) -> dict | None:
    """The app's image-batch counters from /status (None for apps without them: the floor, older code)."""
    from gradio_client import Client

    try:
        return Client(url, verbose=False).predict(api_name="/status").get("image_batches")
    except Exception:  # no /status endpoint
        return None


def predict_load(url: str, clients: int, requests: int, call: Callable[[int], tuple[Path, Sequence]],
                 server_pid: int | None = None, client: str = "gradio_client", pause_s: float = 0.0,
                 until: Callable[[], bool] | None = None) -> dict:
    """``clients`` threads, each one visitor sending ``requests`` /predict calls.

    ``call(k)`` gives client ``k``'s picture file and the other /predict inputs (word, font, size, fill, outline,
    x, y, opacity, rotation, label set, custom labels, strength t, arena mode, share). ``client``: ``gradio_client``
    (the picture uploaded with every call, as a script does) or ``browser`` (:class:`BrowserVisitor`). A visitor
    waits ``pause_s`` after each answer (a person looking at it; 0: at once); with ``until``, it keeps sending
    until ``until()`` is true (at least one call each) instead of ``requests`` calls. Returns requests, errors,
    requests/s, p50 and p95 latency, a few error messages, the CPU one request cost this process (the clients)
    and, given ``server_pid``, the server, and the mean image batch when the app reports it.
    """
    if client == "browser":
        pool = [BrowserVisitor(url, call(k)[0]) for k in range(clients)]
        send = lambda k, _picture, args: pool[k].predict(args)  # noqa: E731
    elif client == "gradio_client":
        from gradio_client import Client, handle_file

        pool = [Client(url, verbose=False) for _ in range(clients)]
        send = lambda k, picture, args: pool[k].predict(handle_file(str(picture)), *args,  # noqa: E731
                                                        api_name="/predict")
    else:
        raise ValueError(f"client must be gradio_client or browser, not {client!r}")
    picture, args = call(0)
    send(0, picture, args)  # warm-up, not counted
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(k: int) -> None:
        picture, args = call(k)
        start.wait()
        sent = 0
        while (until is None and sent < requests) or (until is not None and (sent == 0 or not until())):
            if sent and pause_s:
                time.sleep(pause_s)
            sent += 1
            t = time.perf_counter()
            try:
                send(k, picture, args)
                with lock:
                    latencies.append(time.perf_counter() - t)
            except Exception as exc:  # counted and reported, never hidden
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    before = batch_counts(url)
    server_cpu, client_cpu = cpu_seconds(server_pid) if server_pid else None, time.process_time()
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - client_cpu
    if server_cpu is not None:
        server_cpu = cpu_seconds(server_pid) - server_cpu
    after = batch_counts(url)
    if client == "browser":
        for visitor in pool:
            visitor.close()
    sent = max(1, len(latencies) + len(errors))
    row = {
        "client": client, "clients": clients, "requests": len(latencies) + len(errors), "errors": len(errors),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "error_examples": sorted(set(errors))[:3],
        "client_cpu_ms_per_request": round(1000 * client_cpu / sent, 1),
    }
    if server_cpu is not None:
        row["server_cpu_ms_per_request"] = round(1000 * server_cpu / sent, 1)
    if before and after and after["batches"] > before["batches"]:
        row["mean_image_batch"] = round((after["pictures"] - before["pictures"])
                                        / (after["batches"] - before["batches"]), 2)
    return row


# ----- a careful annotator -------------------------------------------------------------------------------------


def seeded_truth(n: int, families: tuple[str, ...] | None = None) -> dict[str, str]:
    """attack JSON -> true shape for the app's first ``n`` seeded annotation items (written in ``families``, the
    app's default when None): what a careful person answers."""
    from poclip.app.seeding import ANNOTATE_FAMILIES, annotation_item

    items = (annotation_item(i, families or ANNOTATE_FAMILIES) for i in range(n))
    return {attack.to_json(): scene.shape for scene, attack in items}


class Annotator:
    """One person labelling through ``/next_item`` and ``/answer``, answering the true shape of each item.

    ``repo`` (an open annotation_db repository on the app's database) tells the script which item it was served;
    ``truth`` is :func:`seeded_truth`.
    """

    def __init__(self, url: str, who: str, repo, truth: dict[str, str]) -> None:
        from gradio_client import Client

        self.client, self.who, self.repo, self.truth = Client(url, verbose=False), who, repo, truth
        self.sample_id: int | None = None
        self.anonymous_id = ""  # the signed id the server issues on the first call; passed back to stay one person

    def next_item(self) -> int | None:
        """Ask for the next item; returns its sample id (None when nothing is left)."""
        self.sample_id = self._sample_id(self.client.predict(self.who, self.anonymous_id, api_name="/next_item"))
        return self.sample_id

    def answer(self) -> int:
        """Answer the item on screen truthfully (the next one comes back with it); returns the answered id."""
        from poclip.world.attacks import TextAttack

        answered = self.sample_id
        sample = self.repo.get_sample(int(answered))
        label = self.truth[TextAttack.from_dict(sample.attack).to_json()]
        self.sample_id = self._sample_id(self.client.predict(int(answered), label, self.who, self.anonymous_id,
                                                             api_name="/answer"))
        return int(answered)

    def _sample_id(self, outputs: tuple) -> int | None:
        # /next_item and /answer return (picture, sample id, label set, prompt, counters, anonymous id).
        self.anonymous_id = outputs[-1]
        return None if outputs[1] is None else int(outputs[1])
