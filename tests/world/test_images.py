"""Uploads: every kind of awkward file becomes a clear error or a clean upright RGB picture."""

import pytest
from upload_corpus import CORPUS, Case

from poclip.world.images import MAX_SIDE, ImageError, open_image

REFUSED = [c for c in CORPUS if c.message]
ACCEPTED = [c for c in CORPUS if c.check]


def test_the_corpus_covers_what_people_upload():
    assert len(CORPUS) >= 20 and len(REFUSED) >= 10 and len(ACCEPTED) >= 10


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
def test_refused_with_a_message_about_the_file(case: Case, tmp_path):
    path = tmp_path / case.filename
    path.write_bytes(case.data())
    with pytest.raises(ImageError, match=case.message) as raised:
        open_image(path)
    assert "Traceback" not in str(raised.value) and str(raised.value)[0].isupper()


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.name)
def test_normalised_to_upright_bounded_rgb(case: Case, tmp_path):
    path = tmp_path / case.filename
    path.write_bytes(case.data())
    picture = open_image(path)
    assert picture.mode == "RGB" and max(picture.size) <= MAX_SIDE
    assert case.check(picture), (case.name, picture.size, picture.getpixel((0, 0)))


def test_bytes_and_paths_are_validated_alike():
    for case in REFUSED[:4]:
        with pytest.raises(ImageError, match=case.message):
            open_image(case.data())
