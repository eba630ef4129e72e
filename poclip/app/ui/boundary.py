"""The one error boundary of the UI: errors a person can fix become ``gr.Error`` and one log line.

Every event handler goes through :func:`user_errors`. A person's mistake (a file that is not a picture, a
missing label, a refused vote) is shown in the page as the app's own message and logged as one line without
a traceback; anything else is a bug and keeps its traceback. The boundary also tells the service where the
request came from (:func:`poclip.app.limits.request_origin`), for the per-address limits.
"""

from __future__ import annotations

import functools
import logging
from contextlib import AbstractContextManager

import gradio as gr
from gradio.context import LocalContext

from annotation_db import StorageError
from poclip.app.limits import RequestOrigin, request_origin
from poclip.errors import UserError

log = logging.getLogger("poclip.app.ui")

USER_ERRORS = (UserError,)


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


def origin_of(request: gr.Request | None) -> RequestOrigin | None:
    """The peer address and ``X-Forwarded-For`` header of a Gradio request (None outside a request)."""
    if request is None:
        return None
    client = getattr(request, "client", None)
    headers = getattr(request, "headers", None) or {}
    return RequestOrigin(getattr(client, "host", None), headers.get("x-forwarded-for"))


def as_requested() -> AbstractContextManager[None]:
    """Within the block, the service sees the origin of the Gradio event being processed in this thread (for
    handlers that report their own refusals instead of going through :func:`user_errors`)."""
    return request_origin(origin_of(LocalContext.request.get(None)))


def user_errors(fn):
    """Wrap an event handler: user errors -> ``gr.Error`` with the app's message, logged on one line.

    While the handler runs, the service sees the request's origin. Gradio sets the request of the event
    being processed in ``LocalContext.request`` in the handler's own thread (what ``gr.Request`` parameters
    are filled from), so handlers need no extra parameter for it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with as_requested():
                return fn(*args, **kwargs)
        except gr.Error as exc:
            exc.print_exception = False
            log.info("%s refused: %s", fn.__name__, exc.message)
            raise
        except USER_ERRORS as exc:
            message = refused(fn.__name__, exc)
        # Raised after the user error was handled, not inside its handler: the gr.Error then keeps no link to it
        # (``__context__``), nor to the frames of its traceback and what they held (an upload's bytes, the
        # picture), which Gradio keeps for a while with the event's error.
        raise gr.Error(message, print_exception=False)

    return wrapper


def store_errors_shown(outputs: int):
    """Wrap a refresh the page runs on its own (a timer, a tab opening) that fills ``outputs`` components: when the
    store cannot be read (its file deleted or replaced under the app), the first shows the app's message and the
    others stay as they are, where an error would pop up every few seconds."""

    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except StorageError as exc:
                return (f"**{refused(fn.__name__, exc)}**", *[gr.update()] * (outputs - 1))

        return wrapper

    return wrap
