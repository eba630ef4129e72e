"""The one user-facing error type.

Every error a person can cause (a bad upload, an unknown label, a refused vote, a missing model, a wrong
argument on the command line) is a :class:`UserError`: its message is written for that person and is shown as
it is, in the page or as one line on the command line, without a traceback. Anything else is a bug.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the person can fix; the message says what."""
