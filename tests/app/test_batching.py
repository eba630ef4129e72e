"""Concurrent predictions share image-tower batches, and each caller gets its own answer."""

import random
import threading

import pytest
import torch
from apphelpers import all_at_once, make_service

from poclip.app.batching import ImageBatcher
from poclip.world import synth


def test_callers_waiting_while_the_tower_runs_form_the_next_batch():
    first_pass_started, release = threading.Event(), threading.Event()
    sizes = []

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        sizes.append(len(pixels))
        if len(sizes) == 1:
            first_pass_started.set()
            release.wait(30)  # the tower is busy: everyone else queues meanwhile
        return pixels.flatten(1) * 2

    batcher = ImageBatcher(encode, max_batch=32, max_wait_s=0.0)
    results: dict[int, torch.Tensor] = {}

    def call(k: int) -> None:
        results[k] = batcher.encode(torch.full((3, 2, 2), float(k)))

    lone = threading.Thread(target=call, args=(0,))
    lone.start()
    assert first_pass_started.wait(30)
    crowd = [threading.Thread(target=call, args=(k,)) for k in range(1, 9)]
    for th in crowd:
        th.start()
    while batcher._queue.qsize() < 8:  # all eight are queued behind the running pass
        threading.Event().wait(0.001)
    release.set()
    for th in [lone, *crowd]:
        th.join(30)
    batcher.close()
    assert sizes == [1, 8]  # one pass for the lone caller, one for the eight that waited
    assert batcher.stats.batches == 2 and batcher.stats.largest == 8
    for k in range(9):
        assert torch.equal(results[k], torch.full((12,), 2.0 * k))  # every caller got its own row


def test_a_failed_pass_fails_its_callers_only():
    calls = []

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        calls.append(len(pixels))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return pixels.flatten(1)

    batcher = ImageBatcher(encode)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.encode(torch.zeros(3, 2, 2))
    assert torch.equal(batcher.encode(torch.ones(3, 2, 2)), torch.ones(12))
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.encode(torch.ones(3, 2, 2))


def test_batched_predictions_equal_one_at_a_time(tmp_path, bundled):
    service = make_service(tmp_path, bundled, seed_items=0)
    try:
        pictures = [synth.draw_scene(synth.sample_scene(random.Random(k)), 224) for k in range(12)]
        alone = [service.comparisons.compare(p, list(synth.SHAPES)).base.probs for p in pictures]
        compare = service.comparisons.compare
        together = all_at_once(lambda k: compare(pictures[k], list(synth.SHAPES)).base.probs, len(pictures))
        for k, probs in enumerate(alone):
            assert together[k].keys() == probs.keys()
            assert max(abs(together[k][label] - p) for label, p in probs.items()) < 1e-4
        assert service.comparisons.batcher.stats.items == 2 * len(pictures)
    finally:
        service.close()


def test_a_tower_head_shares_trunk_batches_and_answers_as_it_does_alone(tmp_path, bundled):
    # The shipped starter head is a tower head: concurrent requests share the trunk's pass, then each runs the
    # tail at base and at aligned weights; answers equal the head's own one-picture forward.
    service = make_service(tmp_path, bundled, seed_items=0, starter_head=True)
    try:
        policy = service.live_head.current.policy
        assert policy is not None and policy.linear is None
        pictures = [synth.draw_scene(synth.sample_scene(random.Random(k)), 224) for k in range(8)]
        compare = service.comparisons.compare
        compared = all_at_once(lambda k: compare(pictures[k], list(synth.SHAPES), t=0.5), len(pictures))
        together = {k: (c.base.probs, c.aligned.probs) for k, c in compared.items()}
        for k, picture in enumerate(pictures):
            base, aligned = policy.predict([picture], list(synth.SHAPES), t=0.5)
            for got, want in zip(together[k], (base[0], aligned[0]), strict=True):
                assert max(abs(got[label] - float(p)) for label, p in zip(synth.SHAPES, want, strict=True)) < 1e-4
        trunk = service.comparisons.batcher_for(policy).stats
        embeddings = service.comparisons.batcher.stats
        assert trunk.items == len(pictures) and embeddings.items == 0  # the trunk batcher did the work
    finally:
        service.close()
