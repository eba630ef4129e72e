"""A corpus of awkward uploads: files that must be refused with a clear message, and odd but valid pictures
that must come out upright, RGB, bounded and faithful. Shared by the validator, service and browser tests."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@dataclass(frozen=True)
class Case:
    """``message``: a regex the refusal must match; ``check``: what a normalised picture must satisfy."""

    name: str
    filename: str
    data: Callable[[], bytes]
    message: str | None = None
    check: Callable[[Image.Image], bool] | None = None


def _animated() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "lime", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _rotated(size: tuple[int, int] = (60, 20)) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to display
    return encode(Image.new("RGB", size, "blue"), "JPEG", exif=exif)


def lying_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels while its data holds four rows (Pillow would
    allocate them all and fill in the rest)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _palette(transparent: bool) -> bytes:
    img = Image.new("P", (32, 32), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0 red, 1 blue
    img.paste(0, (0, 0, 16, 32))
    return encode(img, "PNG", transparency=0) if transparent else encode(img, "PNG")


def _png() -> bytes:
    return encode(Image.new("RGB", (64, 64), "red"))


def _is(rgb: tuple[int, int, int], at: tuple[int, int] = (8, 8), tol: int = 8) -> Callable[[Image.Image], bool]:
    return lambda im: all(abs(a - b) <= tol for a, b in zip(im.getpixel(at), rgb, strict=True))


CORPUS: list[Case] = [
    # refused, each with the app's own message
    Case("0 bytes", "empty.png", lambda: b"", message="empty"),
    Case("truncated PNG", "cut.png", lambda: _png()[:120], message="damaged or cut short"),
    Case("truncated JPEG", "cut.jpg", lambda: encode(Image.effect_noise((256, 256), 60).convert("RGB"),
                                                     "JPEG")[:2000], message="damaged or cut short"),
    Case("CSV named .png", "table.png", lambda: b"shape,colour\nstar,red\ncircle,blue\n", message="contains text"),
    Case("HTML named .jpg", "page.jpg", lambda: b"<!DOCTYPE html><html><body>hi</body></html>",
         message="web page"),
    Case("SVG drawing", "drawing.svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
         b'<rect width="10" height="10"/></svg>', message="SVG"),
    Case("PDF document", "doc.pdf", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", message="PDF"),
    Case("EPS (Ghostscript is never run)", "art.eps", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
         message="contains text"),
    Case("random bytes", "noise.bin", lambda: bytes(np.random.default_rng(0).integers(128, 256, 600, dtype=np.uint8)),
         message="not a picture in a format"),
    Case("decompression bomb", "bomb.png", lambda: encode(Image.new("1", (9000, 9000))), message="megapixels"),
    Case("150-byte PNG declaring 36 megapixels", "liar.png", lambda: lying_png(6000, 6000),
         message="cannot hold that many pixels"),
    Case("20000x20000 PNG", "huge.png", lambda: encode(Image.new("1", (20000, 20000))), message="megapixels"),
    Case("1 pixel", "dot.png", lambda: encode(Image.new("RGB", (1, 1), "red")), message="only 1x1 pixels"),
    Case("1x40000 strip", "strip.png", lambda: encode(Image.new("L", (1, 40000))), message="only 1x40000 pixels"),
    Case("40x2000 thin strip", "thin.png", lambda: encode(Image.new("L", (40, 2000))), message="thin strip"),
    # odd but valid: normalised, never clipped or shown with hidden colours
    Case("CMYK JPEG", "cmyk.jpg", lambda: encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
         check=lambda im: im.size == (40, 30) and _is((255, 0, 0), tol=40)(im)),
    Case("16-bit grey PNG", "deep.png",
         lambda: encode(Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16))),
         check=lambda im: 150 < im.getpixel((0, 0))[0] < 160),  # 40000/65535 of white, not white
    Case("fully transparent PNG", "clear.png", lambda: encode(Image.new("RGBA", (32, 32), (255, 0, 0, 0))),
         check=_is((255, 255, 255))),
    Case("grey + alpha PNG", "la.png", lambda: encode(Image.new("LA", (32, 32), (0, 0))), check=_is((255, 255, 255))),
    Case("palette with transparency", "pal-t.png", lambda: _palette(True),
         check=lambda im: _is((255, 255, 255), (4, 4))(im) and _is((0, 0, 255), (24, 4))(im)),
    Case("palette", "pal.png", lambda: _palette(False), check=_is((255, 0, 0), (4, 4))),
    Case("animated GIF", "anim.gif", _animated, check=_is((255, 0, 0), tol=50)),
    Case("EXIF-rotated JPEG", "turned.jpg", _rotated, check=lambda im: im.size == (20, 60)),
    Case("huge but valid JPEG", "big.jpg", lambda: encode(Image.new("RGB", (6000, 4000), "green"), "JPEG"),
         check=lambda im: im.size == (1024, 683)),
    Case("32-bit float TIFF", "float.tif",
         lambda: encode(Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32)), "TIFF"),
         check=lambda im: 120 < im.getpixel((0, 0))[0] < 135),
    Case("JPEG named .png", "really-jpeg.png", lambda: encode(Image.new("RGB", (48, 48), "blue"), "JPEG"),
         check=_is((0, 0, 255), tol=10)),
    Case("WebP", "pic.webp", lambda: encode(Image.new("RGB", (48, 48), "yellow"), "WEBP"),
         check=_is((255, 255, 0), tol=10)),
    Case("1-bit PNG", "bits.png", lambda: encode(Image.new("1", (32, 32), 1)), check=_is((255, 255, 255))),
    # large ones: shrunk before they are turned upright or flattened, with the same result
    Case("large EXIF-rotated JPEG", "turned-big.jpg", lambda: _rotated((3000, 1000)),
         check=lambda im: im.size == (341, 1024) and _is((0, 0, 255), tol=10)(im)),
    Case("large transparent PNG", "clear-big.png", lambda: encode(Image.new("RGBA", (2400, 1200), (255, 0, 0, 0))),
         check=lambda im: im.size == (1024, 512) and _is((255, 255, 255))(im)),
]
