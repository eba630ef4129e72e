"""Uploads: every kind of awkward file becomes a clear error or a clean upright RGB picture."""

import io

import numpy as np
import pytest
from PIL import Image

from poclip.world.images import MAX_SIDE, ImageError, open_image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_bad_files_get_clear_errors():
    with pytest.raises(ImageError, match="empty"):
        open_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        open_image(b"this is plain text, not a picture")
    png = encode(Image.new("RGB", (64, 64), "red"))
    with pytest.raises(ImageError, match="damaged or truncated"):
        open_image(png[: len(png) // 2])


def test_decompression_bomb_is_refused():
    bomb = encode(Image.new("1", (9000, 9000)), "PNG")  # tiny file, 81 megapixels
    with pytest.raises(ImageError, match="too large"):
        open_image(bomb)


def test_modes_become_rgb():
    cmyk = open_image(encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.size == (40, 30)
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    flat = open_image(encode(rgba))
    assert flat.getpixel((5, 5)) == (255, 255, 255)  # transparent -> white, not black
    deep = Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16))
    grey = open_image(encode(deep))
    assert grey.mode == "RGB" and 150 < grey.getpixel((0, 0))[0] < 160  # scaled, not clipped to white


def test_exif_rotation_is_applied_and_big_images_are_bounded():
    img = Image.new("RGB", (60, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright = open_image(encode(img, "JPEG", exif=exif))
    assert upright.size == (20, 60)
    big = open_image(encode(Image.new("RGB", (3000, 1500), "green"), "JPEG"))
    assert max(big.size) == MAX_SIDE


def test_animated_image_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "lime", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    first = open_image(buf.getvalue())
    r, g, b = first.getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50
