"""Turning whatever a user uploads into a safe, upright, bounded RGB picture, or a message that says why not.

:func:`open_image` is the app's validator: it runs on the raw file before anything else decodes it, so every
malformed upload gets one of these messages and every valid one the same normalisation (EXIF orientation,
first frame, alpha on white, 16-bit and float pictures scaled to 8 bits, at most :data:`MAX_SIDE`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from poclip.errors import UserError
from poclip.world.decode_budget import DECODE_BUDGET, DecodeBudget

MAX_SIDE = 1024  # larger uploads are downscaled; CLIP sees 224 px or less anyway
MAX_PIXELS = 40_000_000  # refuse decompression bombs well before they reach memory
MAX_FILE_BYTES = 25 * 2**20  # the app also passes this to Gradio as max_file_size
MIN_SIDE = 16  # below this there is nothing to recognise and no room to write a word
MAX_ASPECT = 10.0  # longer side / shorter side; a 1x40000 strip is not a picture of an object
# Raster formats only: Pillow would hand EPS to Ghostscript, and vector or document formats are not photos.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "ICO")  # JPEG includes phones' MPO files
# Deflate (PNG's compression) packs at most 1,032 bytes into one, so a PNG shorter than its raw pixel bytes / 1032
# cannot hold the picture its header declares: a few hundred bytes "declaring" 36 megapixels are refused before
# anything is allocated (Pillow would otherwise allocate it all and fill in whatever the file leaves out).
DEFLATE_MAX_RATIO = 1032
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
Image.init()  # register every plugin, so each name in FORMATS is known when the first upload arrives


class ImageError(UserError):
    """An upload that is not a usable picture; the message is meant for the user."""


def _check_geometry(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"The picture is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); at most "
                         f"{MAX_PIXELS / 1e6:.0f} megapixels are accepted. Scale it down and upload it again.")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"The picture is only {width}x{height} pixels; it needs at least {MIN_SIDE} pixels on "
                         "each side to show an object.")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageError(f"The picture is {width}x{height} pixels, a thin strip; its long side may be at most "
                         f"{MAX_ASPECT:g} times its short side. Crop it to the object.")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greys scaled to 0-255 (converting would clip most of them to white)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else max(float(values.max()), 1e-12)
    else:
        top = 65535.0 if not values.size or values.max() <= 65535 else float(values.max())
    scaled = np.clip(np.nan_to_num(values) / top * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, "L")


def normalize_image(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Upright (EXIF orientation applied), RGB (alpha flattened on white), first frame, at most ``max_side``.

    The picture is downscaled before it is converted, and turned upright in place, so no second full-size
    copy of an upright RGB picture is made (40 megapixels hold 160 MB; each copy would hold as much again). Raises
    :class:`ImageError` for pictures too large, too small or too thin to use.
    """
    _check_geometry(image.width, image.height)
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    ImageOps.exif_transpose(image, in_place=True)  # no copy when upright (most pictures)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    elif image.mode not in ("RGB", "RGBA", "L", "LA"):
        # Modes resampling does not take (or takes badly): palettes, 1-bit, and photos' own colour spaces.
        alpha = image.mode in ("PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
        image = image.convert("RGBA" if alpha else "RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if image.mode in ("RGBA", "LA"):
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image.convert("RGB"), mask=image.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def _not_an_image(data: bytes) -> ImageError:
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return ImageError("This is an SVG drawing, not a picture: export it as PNG or JPEG and upload that.")
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return ImageError("This file is a web page (HTML), not a picture, whatever its name says. Upload a PNG, "
                          "JPEG, WebP or GIF picture.")
    if head.startswith(b"%pdf"):
        return ImageError("This is a PDF document, not a picture: export the page as PNG or JPEG.")
    try:
        data[:4096].decode("utf-8")
        return ImageError("This file contains text, not a picture, whatever its name says. Upload a PNG, JPEG, "
                          "WebP or GIF picture.")
    except UnicodeDecodeError:
        return ImageError(f"This file is not a picture in a format the app reads ({', '.join(FORMATS[:5])}, ...).")


def open_image(source: str | Path | bytes, *, budget: DecodeBudget | None = None,
               client: str | None = None) -> Image.Image:
    """Validate and fully decode an image file or bytes, then :func:`normalize_image` it.

    Nothing else decodes the upload first: the checks below are what protect the app. The size is checked
    from the header before the pixels are decoded (and, for a PNG, against what the file's length can hold),
    and the decode holds that many pixels of ``budget`` (the process-wide
    :data:`~poclip.world.decode_budget.DECODE_BUDGET` by default) for ``client`` (its network address, which
    may hold only a share; None for the app's own files) until the normalised picture is ready, so concurrent
    requests together never decode more than the budget. A JPEG is decoded at the smallest scale (1/2, 1/4,
    1/8) that still leaves twice :data:`MAX_SIDE` for the downscaling, and only that many pixels are held.

    Raises:
        ImageError: empty, over-long, not a supported raster picture, damaged or truncated, too many pixels
            (or more than the file can hold), too small or too thin; the message says which.
        ServerBusy: no room to decode it within the budget's wait (:class:`ClientBusy`: ``client`` already
            holds its share); nothing is wrong with the file.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ImageError("The uploaded file is gone (uploads are kept for a while only): upload it again.")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"The file is {path.stat().st_size / 2**20:.0f} MB; at most "
                             f"{MAX_FILE_BYTES // 2**20} MB are accepted.")
        data = path.read_bytes()
    else:
        data = bytes(source)
    if not data:
        raise ImageError("The file is empty (0 bytes): it holds no picture.")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"The file is {len(data) / 2**20:.0f} MB; at most {MAX_FILE_BYTES // 2**20} MB are accepted.")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as probe:
            width, height = probe.size
            _check_geometry(width, height)
            if probe.format == "PNG":
                _check_png_length(data, width, height)
            probe.verify()
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        longest = max(width, height)  # JPEG only (None elsewhere): decode at a reduced scale
        image.draft(None, (2 * MAX_SIDE * width // longest, 2 * MAX_SIDE * height // longest))
    except ImageError:
        raise
    except Exception as exc:
        if (error := _unreadable(exc, data)) is None:
            raise
        raise error from exc
    with (budget or DECODE_BUDGET).reserve(image.width * image.height, client):  # ServerBusy: no room in time
        try:
            image.load()
        except Exception as exc:
            if (error := _unreadable(exc, data)) is None:
                raise
            raise error from exc
        return normalize_image(image)


def _check_png_length(data: bytes, width: int, height: int) -> None:
    """ImageError when the PNG ``data`` is too short to hold the ``width`` x ``height`` pixels its header declares
    (see :data:`DEFLATE_MAX_RATIO`; a valid PNG never is)."""
    bit_depth, colour_type = data[24], data[25]  # IHDR is the first chunk: 8 + 8 bytes in, after width, height
    raw_bytes = width * height * bit_depth * PNG_CHANNELS.get(colour_type, 1) / 8
    if len(data) * DEFLATE_MAX_RATIO < raw_bytes:
        raise ImageError(f"The file says it holds a {width}x{height} picture ({width * height / 1e6:.0f} "
                         f"megapixels), but {len(data):,} bytes cannot hold that many pixels: it is damaged or made "
                         "to look larger than it is. Save the picture again and upload that.")


def _unreadable(exc: Exception, data: bytes) -> ImageError | None:
    """The user's message for a decoder's exception; None for anything unexpected (a bug: re-raised as is)."""
    if isinstance(exc, Image.DecompressionBombError):
        return ImageError(f"The picture has too many pixels to open safely (at most {MAX_PIXELS / 1e6:.0f} "
                          "megapixels).")
    if isinstance(exc, UnidentifiedImageError):
        return _not_an_image(data)
    if isinstance(exc, OSError | SyntaxError | ValueError | EOFError):
        return ImageError("The picture file is damaged or cut short (truncated); the picture cannot be read. "
                          "Save it again and re-upload it.")
    return None
