"""The one error boundary of the UI: errors a person can fix become ``gr.Error`` and one log line.

Every event handler goes through :func:`user_errors`. A person's mistake (a file that is not a picture, a
missing label, a refused vote) is shown in the page as the app's own message and logged as one line without
a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging

import gradio as gr

from annotation_db import AnnotationDBError
from poclip.app.comparisons import ComparisonExpired
from poclip.app.service import UserError
from poclip.engine.policy import HeadError
from poclip.world.attacks import AttackError
from poclip.world.images import ImageError
from poclip.world.labels import LabelSetError

log = logging.getLogger("poclip.app.ui")

USER_ERRORS = (AttackError, ImageError, LabelSetError, UserError, AnnotationDBError, HeadError, ComparisonExpired)


def message_of(exc: BaseException) -> str:
    """The person-facing message, starting with a capital letter (the store's messages start lower case)."""
    text = str(exc).strip() or type(exc).__name__
    return text[0].upper() + text[1:]


# Events that may refuse: the message appears as a toast; without this Gradio also stamps a bare red "Error" on
# every output component of the event.
QUIET = {"show_progress": "hidden"}


def refused(action: str, exc: BaseException) -> str:
    """Log a refusal on one line (no traceback) and return the message for the page."""
    message = message_of(exc)
    log.info("%s refused: %s", action, message)
    return message


def user_errors(fn):
    """Wrap an event handler: user errors -> ``gr.Error`` with the app's message, logged on one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as exc:
            exc.print_exception = False
            log.info("%s refused: %s", fn.__name__, exc.message)
            raise
        except USER_ERRORS as exc:
            raise gr.Error(refused(fn.__name__, exc), print_exception=False) from None

    return wrapper
