"""Errors a caller can cause. Each carries a message that the app can show to a person as it is."""

from __future__ import annotations

import errno

from poclip.errors import UserError


class AnnotationDBError(UserError):
    """Base class of every error raised on purpose by :mod:`annotation_db`."""


class ValidationError(AnnotationDBError, ValueError):
    """Bad input (unknown label, wrong type, over-long text, ...). Nothing was written."""


class NotFoundError(ValidationError):
    """The referenced annotator, sample, image, label set, run or version does not exist."""


class DuplicateJudgmentError(ValidationError):
    """The annotator has already judged this sample (one judgment per sample and annotator)."""


class RateLimitedError(ValidationError):
    """The annotator sent more judgments than the configured rate allows; retry later."""


class RunnerBusyError(AnnotationDBError):
    """Another training run holds the single-runner lock and its heartbeat is fresh."""


class RunLostError(AnnotationDBError):
    """The run is no longer running (e.g. another process marked it failed for a stale heartbeat)."""


class InvalidTransitionError(ValidationError):
    """A model version or training run cannot move to the requested status from its current one."""


class BackupError(AnnotationDBError):
    """A snapshot could not be taken or restored (e.g. the database is not a SQLite file)."""


class HubError(AnnotationDBError):
    """The dataset could not be pushed to the Hugging Face Hub (e.g. no token configured)."""


class StorageError(AnnotationDBError):
    """The database cannot take writes: the disk is full or the store is read-only. Nothing was written."""

    FULL = "the server's disk is full: nothing was saved; tell the maintainer (free space, then retry)"
    READ_ONLY = "the {what} is read-only on this server: nothing was saved; tell the maintainer"

    @classmethod
    def of_os_error(cls, exc: OSError) -> StorageError | None:
        """The error to show for a file write that failed for lack of space or on a read-only file system; None
        for any other failure (a bug, not a message for people)."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return cls(cls.FULL)
        if exc.errno == errno.EROFS:
            return cls(cls.READ_ONLY.format(what="data folder"))
        return None


class DatabaseGoneError(StorageError):
    """The SQLite file was deleted or replaced while the app ran; writes are refused until a restart."""
