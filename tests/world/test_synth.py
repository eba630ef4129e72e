from collections import Counter

import numpy as np

from poclip.world import synth


def test_same_seed_same_pictures_and_captions():
    a, b = synth.pretrain_example(5, 123), synth.pretrain_example(5, 123)
    assert a == b
    assert np.array_equal(np.asarray(synth.draw_scene(a.scene, 96)), np.asarray(synth.draw_scene(b.scene, 96)))
    assert synth.pretrain_example(6, 123) != a


def test_world_size_and_caption_vocabulary():
    assert len(synth.SHAPES) >= 10 and len(synth.COLOURS) >= 6
    examples = [synth.pretrain_example(0, i) for i in range(3000)]
    kinds = Counter(
        "sign" if not e.scene.show_object else ("object+word" if e.scene.text else "object") for e in examples
    )
    for kind, share in synth.PRETRAIN_MIX.items():
        assert abs(kinds[kind] / 3000 - share) < 0.04
    shapes = Counter(e.scene.shape for e in examples)
    assert min(shapes.values()) > 0.7 * 300
    # Signs are captioned as the thing they name, as web captions are.
    signs = [e for e in examples if not e.scene.show_object and e.scene.text.text.lower() in synth.SHAPES]
    assert all(e.scene.text.text.lower() in e.caption for e in signs)


def test_eval_set_is_balanced_and_clean_matches_attacked_picture():
    items = synth.eval_set(50, seed=11, attack="random")
    assert Counter(it.label for it in items) == Counter({s: 5 for s in synth.SHAPES})
    clean_only = synth.eval_set(50, seed=11, attack="none")
    for it, plain in zip(items, clean_only, strict=True):
        assert np.array_equal(np.asarray(it.clean), np.asarray(plain.clean))
        assert it.attack.text != it.label and it.attack.text in synth.SHAPES
        diff = np.any(np.asarray(it.clean) != np.asarray(it.attacked), axis=-1)
        assert 50 < diff.sum() < 0.5 * diff.size  # only the words changed


def test_every_shape_draws_a_visible_object():
    import random

    for shape in synth.SHAPES:
        scene = synth.sample_scene(random.Random(1), shape=shape)
        img = np.asarray(synth.draw_scene(scene, 128))
        colour = np.array(synth.COLOURS[scene.colour])
        assert (np.abs(img - colour).sum(axis=-1) == 0).sum() > 300, shape
