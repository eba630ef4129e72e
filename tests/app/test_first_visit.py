"""The first visit: on a fresh data directory the live aligned head already resists the words people try first."""

import pytest
from apphelpers import make_service
from PIL import Image

from poclip.app.ui.compare import EXAMPLES_DIR
from poclip.engine.starter import STARTER_HEAD
from poclip.world import synth
from poclip.world.attacks import TextAttack


def example_cases():
    """The six example pictures, each with every wrong shape name written as the Compare tab writes it."""
    for path in sorted(EXAMPLES_DIR.glob("synthetic_*.png")):
        truth = path.stem.removeprefix("synthetic_")
        for word in synth.SHAPES:
            if word != truth:
                # The Compare tab's default text: bold sans, 15% of the picture high, white on black, centred.
                yield path, truth, TextAttack(word, size=0.15)


@pytest.mark.slow
def test_a_fresh_app_already_answers_all_54_example_cases(tmp_path, bundled):
    """The shipped starter head (last_blocks:2 on 8,000 synthetic pairs) answers all 54; the one trained on 2,000
    pairs answered 50 (it missed the hexagon under "triangle", "diamond" and "crescent" and the heart under
    "crescent"), the last_blocks:1 one 49, the linear one 37, the base model 1."""
    assert STARTER_HEAD.is_file(), "the starter head is shipped in assets/heads (python -m poclip starter)"
    cases = list(example_cases())
    assert len(cases) == 54
    service = make_service(tmp_path, bundled, seed_items=0, starter_head=True)  # the product default
    try:
        live = service.live_head.current
        assert live.version is None and live.policy is not None  # nothing trained here yet
        base_right = aligned_right = 0
        for path, truth, attack in cases:
            result = service.comparisons.compare(Image.open(path), list(synth.SHAPES), attack)
            base_right += result.base.label == truth
            aligned_right += result.aligned.label == truth
        assert base_right <= 5  # the base model falls for nearly all of them
        assert aligned_right == 54, aligned_right
    finally:
        service.close()
