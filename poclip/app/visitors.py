"""Who a request acts for, and whether its network address may act now.

The one place that turns what a page sends (a typed handle, a server-signed token, a Hugging Face login) into
the annotator handle the store records, and that counts the request against the per-address limits
(:mod:`poclip.app.limits`). Comparisons and annotation both ask it before they write anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from annotation_db import NotFoundError, Repository
from poclip.app.identity import Identity, IdentityError, check_display_name, name_key
from poclip.app.limits import ClientLimits, RequestOrigin, current_origin
from poclip.errors import UserError

log = logging.getLogger(__name__)


class Visitors:
    """Resolves and admits the person behind a request.

    Args:
        identity: signs and checks anonymous tokens (the server secret stays inside it).
        limits: the per-address limits on labels and on new annotators.
        repo: the store, asked whether a handle is new.
    """

    def __init__(self, identity: Identity, limits: ClientLimits, repo: Repository) -> None:
        self.identity = identity
        self.limits = limits
        self.repo = repo
        self._warned_without_proxy = False

    def annotator_token(self, stored: str | None) -> str:
        """The browser's stored anonymous token if this server signed it, else a new one (page load)."""
        try:
            self.identity.verify(stored or "")
            return stored  # type: ignore[return-value]
        except IdentityError:
            return self.identity.issue()

    def who(self, annotator: str, hf_username: str | None = None) -> str:
        """The handle acting: ``hf:<user>`` when logged in, the id of a valid anonymous token, or (in-process
        callers only: public endpoints pass signed tokens, see :mod:`poclip.app.ui.identity`) a checked name.
        A bare or forged ``anon-`` id, a typed ``hf:`` or a reserved name raises UserError
        (:class:`~poclip.app.identity.IdentityError`) with the reason."""
        return self.identity.resolve(annotator, hf_username)

    def check_name(self, annotator: str, typed: str) -> str:
        """Refuse (UserError) a display name ``annotator`` may not show, writing nothing: see :meth:`name`.

        Returns:
            The cleaned display name.
        """
        shown = check_display_name(typed)
        self.repo.check_display_name_free(self.who(annotator), name_key(shown))
        return shown

    def name(self, annotator: str, typed: str) -> str:
        """Show ``typed`` as the display name of the existing annotator ``annotator`` (a signed token). The
        name never acts: undo, answers and trust stay with ``annotator``.

        The name is checked and cleaned (:func:`~poclip.app.identity.check_display_name`: NFKC, invisible
        characters removed, reserved look-alikes and blank names refused) and compared by its confusable
        skeleton (:func:`~poclip.app.identity.name_key`): a name whose skeleton another identity already shows
        is refused (UserError), and nothing changes. O(1): indexed look-ups, and a write only when it changes.

        Returns:
            The cleaned display name.
        """
        shown = check_display_name(typed)
        self.repo.set_display_name(self.who(annotator), shown, name_key(shown))
        return shown

    def display_name(self, annotator: str) -> str | None:
        """The name shown for ``annotator`` (what they typed), or None when they never typed one or are new."""
        try:
            return self.repo.get_annotator(self.who(annotator)).display_name
        except NotFoundError:
            return None

    def client(self) -> str | None:
        """The network address the request in flight comes from (the key of its per-address limits and of its
        share of shared pools); None for direct calls from Python."""
        return self.limits.client(current_origin())

    def admit_prediction(self, *, count: bool = True) -> None:
        """Count one prediction against the request's address (``count=False``: only check, before the work a
        prediction starts, such as decoding its upload); :class:`~poclip.app.limits.ClientLimited` when over."""
        self.limits.admit_prediction(current_origin(), count=count)

    @contextmanager
    def admitted(self, annotator: str, *, judgment: bool) -> Iterator[None]:
        """Count the request in flight against its address while the block does its work: a handle this database has
        not seen yet counts as a new annotator, and ``judgment`` counts one label.
        :class:`~poclip.app.limits.ClientLimited` (a UserError) when the address is over a limit, before the block.

        A new annotator is charged only when the request makes one: when the block fails and the handle is still
        unknown (a refused label, a full disk, the judgment limit), the new-name budget is given back, so an honest
        visitor's failed first requests do not use up the address's names.

        O(1): indexed look-ups of the handle and one in-memory entry per address. Requests without an origin (direct
        calls from Python) are not limited per address.
        """
        origin = current_origin()
        if origin is None:
            yield
            return
        self._warn_without_proxy(origin)
        new = self.limits.new_annotators is not None and not self._known(annotator)
        if new:
            self.limits.admit_new_annotator(origin)
        try:
            if judgment:
                self.limits.admit_judgment(origin)
            yield
        except BaseException:
            if new and not self._known(annotator, failing=True):
                self.limits.refund_new_annotator(origin)
            raise

    def _known(self, annotator: str, *, failing: bool = False) -> bool:
        try:
            self.repo.get_annotator(annotator)
            return True
        except NotFoundError:
            return False
        except UserError:
            if failing:  # the store itself failed (e.g. its file is gone): nothing was made
                return False
            raise

    def _warn_without_proxy(self, origin: RequestOrigin) -> None:
        # A proxy always sends X-Forwarded-For; a request without it means none is in front, and then any client
        # picks its own address by sending the header: the per-address limits would not hold.
        if self.limits.proxy_hops > 0 and not origin.forwarded_for and not self._warned_without_proxy:
            self._warned_without_proxy = True
            log.warning("POCLIP_PROXY_HOPS is %d, but a request from %s came without X-Forwarded-For: is a proxy "
                        "in front of the app? Without one, every client picks its own address by sending that "
                        "header, and the per-address limits do not hold; set POCLIP_PROXY_HOPS=0. (A request from "
                        "inside the machine, such as a health check, also comes without it.)",
                        self.limits.proxy_hops, origin.host)
