"""Turning whatever a user uploads into a safe, upright, bounded RGB picture."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 1024  # larger uploads are downscaled; CLIP sees 224 px or less anyway
MAX_PIXELS = 40_000_000  # refuse decompression bombs well before they reach memory
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """An upload that is not a usable picture; the message is meant for the user."""


def normalize_image(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Upright (EXIF orientation applied), RGB (alpha flattened on white), first frame, at most ``max_side``."""
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"The image has {image.width}x{image.height} pixels; at most {MAX_PIXELS:,} are accepted.")
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greys: scale to 8 bits instead of clipping everything above 255 to white.
        image = image.point(lambda v: v / 256).convert("L").convert("RGB")
    else:
        image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def open_image(source: str | Path | bytes) -> Image.Image:
    """Open and fully decode an image file or bytes, then :func:`normalize_image` it.

    Raises :class:`ImageError` for empty, truncated, non-image or oversized input.
    """
    data = Path(source).read_bytes() if isinstance(source, str | Path) else source
    if not data:
        raise ImageError("The file is empty (0 bytes).")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"The image is too large to open safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("This file is not an image Pillow can read (try PNG, JPEG or WebP).") from exc
    except (OSError, SyntaxError) as exc:
        raise ImageError(f"The image file is damaged or truncated: {exc}") from exc
    return normalize_image(image)
