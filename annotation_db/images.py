"""Images: normalised PNGs stored once by content hash, written before the row that names them."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
from sqlalchemy.dialects import postgresql, sqlite

from annotation_db.counters import bump
from annotation_db.errors import NotFoundError, StorageError, ValidationError
from annotation_db.models import HANDLE_MAX, Image, ImageSource
from annotation_db.store import StoreBase
from annotation_db.validation import check_choice, check_optional_text, check_sha256


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    path: Path  # absolute
    width: int
    height: int
    n_bytes: int
    source: str


class ImagesMixin(StoreBase):
    """Images by content hash (the uploader, when one is named, must be a known annotator)."""

    def store_image(
        self, image: bytes | PIL.Image.Image, source: str = "upload", uploader: str | None = None
    ) -> ImageInfo:
        """Store a normalised PNG once, by content hash, and record it.

        The file goes to ``data_dir/images/<first two hex>/<sha256>.png`` through a temporary file and a
        rename, so a crash never leaves a truncated image behind; the row is inserted only after the file
        is in place, and storing the same bytes again returns the existing row.

        Args:
            image: PNG bytes (already normalised by the caller), or a PIL image that is encoded to PNG here.
            source: ``upload``, ``synthetic`` or ``example``.
            uploader: handle of the annotator who uploaded it, if any.
        Returns:
            The stored image; ``sha256`` is its identity everywhere else in the API.
        """
        data = self._png_bytes(image)
        source_value = check_choice(source, ImageSource, "image source")
        uploader = check_optional_text(uploader, "uploader", HANDLE_MAX)
        width, height = self._probe_png(data)

        uploader_id = None
        if uploader is not None:
            with self.db.reading() as s:
                uploader_id = self._annotator(s, uploader).id

        sha = hashlib.sha256(data).hexdigest()
        relative = Path("images") / sha[:2] / f"{sha}.png"
        self._write_atomically(self.data_dir / relative, data)

        values = dict(
            sha256=sha,
            path=relative.as_posix(),
            width=width,
            height=height,
            n_bytes=len(data),
            source=source_value,
            uploader_id=uploader_id,
            created_at=self.now(),
        )
        with self.db.writing() as s:
            insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
            added = s.scalar(
                insert(Image).values(**values).on_conflict_do_nothing(index_elements=["sha256"]).returning(Image.sha256)
            )
            if added is not None:  # RETURNING, not rowcount: drivers disagree on rowcount for upserts
                bump(s, images=1)
            row = s.get_one(Image, sha)
            return self._image_info(row)

    @staticmethod
    def _probe_png(data: bytes) -> tuple[int, int]:
        """(width, height) of PNG bytes; ValidationError when they are not a readable PNG."""
        try:
            with PIL.Image.open(io.BytesIO(data)) as probe:
                if probe.format != "PNG":
                    raise ValidationError(f"image must be PNG bytes, got {probe.format}")
                width, height = probe.size
                probe.verify()
        except ValidationError:
            raise
        except Exception as exc:  # PIL raises many types for corrupt data; all mean the same to the user
            raise ValidationError(f"not a readable PNG image: {exc}") from exc
        return width, height

    def get_image(self, sha256: str) -> ImageInfo:
        """The stored image with this hash; :class:`NotFoundError` if unknown."""
        sha256 = check_sha256(sha256)
        with self.db.reading() as s:
            row = s.get(Image, sha256)
            if row is None:
                raise NotFoundError(f"unknown image {sha256[:12]}...")
            return self._image_info(row)

    def _image_info(self, row: Image) -> ImageInfo:
        return ImageInfo(
            row.sha256, self.data_dir / row.path, row.width, row.height, row.n_bytes, row.source.value
        )

    def _png_bytes(self, image: Any) -> bytes:
        if isinstance(image, PIL.Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
        if isinstance(image, bytearray | memoryview):
            image = bytes(image)
        if not isinstance(image, bytes):
            raise ValidationError(f"image must be PNG bytes or a PIL image, got {type(image).__name__}")
        if not image:
            raise ValidationError("image is empty")
        if len(image) > self.config.max_image_bytes:
            raise ValidationError(
                f"image is too large: {len(image):,} bytes, at most {self.config.max_image_bytes:,}"
            )
        return image

    @staticmethod
    def _write_atomically(path: Path, data: bytes) -> bool:
        """Write ``data`` to ``path`` through a temporary file and a rename; False when it was already there.

        Raises:
            StorageError: the disk is full or read-only (nothing is left behind).
        """
        if path.exists() and path.stat().st_size == len(data):
            return False  # content-addressed: same name, same bytes
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            mapped = StorageError.of_os_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            tmp.unlink(missing_ok=True)
        return True
