"""Freed memory goes back to the system when the last piece of a burst of work ends."""

from __future__ import annotations

import threading

from poclip.world import heap


def test_a_burst_gives_memory_back_once_when_its_last_piece_ends(monkeypatch):
    given = []
    monkeypatch.setattr(heap, "give_back", lambda: given.append(threading.current_thread().name) or True)
    burst = heap.Burst()
    inside, release = threading.Barrier(4), threading.Event()

    def work():
        with burst.running():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=work, name=f"w{k}") for k in range(3)]
    for th in threads:
        th.start()
    inside.wait()  # all three in flight
    assert given == []
    release.set()
    for th in threads:
        th.join()
    assert len(given) == 1  # only the last one out
    with burst.running():
        pass
    assert len(given) == 2  # a lone piece is its own burst
