"""The app when its storage fails under it: the database file deleted or replaced while it runs, a full disk.

Every endpoint answers with the app's own message and never a server path; ``/status`` still answers (a health
check must), saying what is wrong; a vote on a full disk says so and writes nothing.
"""

import random
import subprocess
from pathlib import Path

import gradio as gr
import pytest
from apphelpers import ADMIN_TOKEN, footprint, free_port, make_service
from sqlite_files import checkpoint, checkpoint_often

from poclip.app.ui.boundary import user_errors
from poclip.app.ui.compare import vote_handler
from poclip.world import synth
from poclip.world.attacks import TextAttack

REPO_DIR = Path(__file__).resolve().parents[2]
DELETED = "The database file was deleted while the app was running"


def star():
    return synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)


@pytest.mark.slow
def test_with_the_database_file_gone_every_endpoint_answers_with_the_apps_message(tmp_path, bundled):
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from poclip.app.ui import build_demo

    data = tmp_path / "data"
    service = make_service(data, bundled)
    demo = build_demo(service)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        client = Client(url, verbose=False)
        picture = handle_file(str(REPO_DIR / "assets" / "examples" / "synthetic_star.png"))
        comparison_id = client.predict(picture=picture, text="circle", share=True, api_name="/predict")[5]
        (data / "poclip.db").unlink()

        # A health check still gets its answer, with HTTP 200: the model serving, and what is wrong with the store.
        response = httpx.post(f"{url}gradio_api/run/status", json={"data": []}, timeout=60)
        assert response.status_code == 200
        status = client.predict(api_name="/status")
        assert status["database"].startswith(DELETED[0].lower() + DELETED[1:]), status
        assert status["backbone"] == "bundled" and status["labels"] is None and status["trainer"] is None

        admin = {"token": ADMIN_TOKEN}
        calls = {
            "/vote": {"comparison_id": comparison_id, "verdict": "left"}, "/next_item": {},
            "/answer": {"sample_id": 1, "label": "star"}, "/skip": {}, "/undo": {}, "/retrain": admin,
            "/promote": {**admin, "version_id": 1}, "/rollback": admin, "/export": admin,
            "/push_to_hub": {**admin, "repo_id": "someone/pairs"}, "/backup": admin,
        }
        for endpoint, kwargs in calls.items():
            with pytest.raises(AppError) as refusal:
                client.predict(**kwargs, api_name=endpoint)
            message = str(refusal.value)
            assert message.startswith(DELETED), (endpoint, message)
            assert str(tmp_path) not in message and "poclip.db" not in message, (endpoint, message)
        assert not (data / "poclip.db").exists()  # no request made a new, empty database in its place
        # What needs no store still works: a prediction.
        assert client.predict(picture=picture, text="circle", api_name="/predict")[1]["label"]
    finally:
        demo.close()
        service.close()


def test_with_the_database_file_gone_the_pages_own_refreshes_show_the_message(tmp_path, bundled):
    from poclip.app.ui import build_demo

    service = make_service(tmp_path, bundled)
    try:
        demo = build_demo(service)
        refreshes = {f.name: f.fn for f in demo.fns.values() if f.name in ("refresh_training", "refresh")}
        assert set(refreshes) == {"refresh_training", "refresh"}
        (tmp_path / "poclip.db").unlink()
        # The timers that refresh the Train and Data tabs every few seconds: the message where the figures were.
        model_line, *kept = refreshes["refresh_training"]()
        assert model_line.startswith(f"**{DELETED}") and all(k == gr.update() for k in kept)
        summary, *kept = refreshes["refresh"]("")
        assert summary.startswith(f"**{DELETED}") and str(tmp_path) not in summary and len(kept) == 4
    finally:
        service.close()




def test_an_older_copy_put_in_place_is_refused_and_status_says_so(tmp_path, bundled):
    service = make_service(tmp_path, bundled)
    try:
        checkpoint_often(service.repo)
        db_file = tmp_path / "poclip.db"
        someone = service.identity.issue()
        for _ in range(3):
            item = service.annotation.next_item(someone)
            service.annotation.answer_item(someone, item.sample.id, item.labels[0])
        checkpoint(db_file)
        subprocess.run(["cp", str(db_file), str(tmp_path / "old.db")], check=True)
        for _ in range(3):
            item = service.annotation.next_item(someone)
            service.annotation.answer_item(someone, item.sample.id, item.labels[0])
        assert service.status()["labels"] == 6
        subprocess.run(["cp", str(tmp_path / "old.db"), str(db_file)], check=True)  # three labels behind

        status = service.status()
        assert status["database"].startswith("the database file was replaced while the app was running")
        assert status["labels"] is None  # not the old copy's 3
        shown = service.comparisons.predict(star(), list(synth.SHAPES), TextAttack("circle", size=0.15),
                                            source="synthetic")
        with pytest.raises(gr.Error) as refusal:
            user_errors(vote_handler)(service, shown.id, "both", None, "", someone)
        assert refusal.value.message.startswith("The database file was replaced while the app was running")
        assert str(tmp_path) not in refusal.value.message
    finally:
        service.close()


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MB file system, mounted for the test (needs the right to mount: root in a container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({mounted.stderr.strip()}); the full-disk test needs "
                    "the right to mount (root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full (a real ENOSPC)."""
    block = b"\0" * (1 << 16)
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError:
            pass


def test_a_vote_on_a_full_disk_says_so_and_writes_nothing(small_disk, bundled):
    service = make_service(small_disk / "data", bundled)
    try:
        shown = service.comparisons.predict(star(), list(synth.SHAPES), TextAttack("circle", size=0.15),
                                            source="synthetic")
        before = footprint(service)
        filler = small_disk / "filler"
        fill(filler)
        with pytest.raises(gr.Error) as refusal:
            user_errors(vote_handler)(service, shown.id, "left", None, "", service.identity.issue())
        assert refusal.value.message == "The server's disk is full: nothing was saved; tell the maintainer (free " \
                                        "space, then retry)"
        filler.unlink()
        assert footprint(service) == before  # no picture, row or annotator
        assert not any(p.name.endswith(".tmp") for p in (small_disk / "data" / "images").rglob("*"))
        stored = user_errors(vote_handler)(service, shown.id, "left", None, "", service.identity.issue())
        assert stored["chosen"] == "circle" and footprint(service)["judgments"] == before["judgments"] + 1
    finally:
        service.close()
