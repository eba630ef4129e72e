"""The head spec: which part of the model an alignment head trains, parsed once into a small value.

A spec is written ``linear``, ``projection`` or ``last_blocks:K`` (settings, the command line, a training config,
a checkpoint's metadata). :meth:`HeadSpec.parse` reads that text at the boundary; everything past it passes the
:class:`HeadSpec` and asks it (``spec.is_linear``, ``spec.blocks``) instead of splitting the string again.
``str(spec)`` is the canonical text, the one checkpoints store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from poclip.engine import tower
from poclip.errors import UserError

if TYPE_CHECKING:
    from poclip.engine.models import ClipEncoder

HEAD_KINDS = ("linear", "projection", "last_blocks")


class HeadError(UserError):
    """A head spec or checkpoint that cannot be used; the message says why."""


@dataclass(frozen=True)
class HeadSpec:
    """An alignment head's kind and, for ``last_blocks``, how many residual blocks of the image tower it trains.

    Attributes:
        kind: ``linear`` (a d x d matrix on both modalities), ``projection`` (the image tower's projection) or
            ``last_blocks`` (the tower's last ``blocks`` residual blocks plus its projection).
        blocks: the tail's residual blocks: ``K >= 1`` for ``last_blocks``, 0 for the other kinds.
    """

    kind: str
    blocks: int = 0

    def __post_init__(self) -> None:
        tail = self.kind == "last_blocks"
        if self.kind not in HEAD_KINDS or (self.blocks >= 1) != tail or self.blocks < 0:
            raise HeadError(f"unknown head {self._text()!r}; choose linear, projection or last_blocks:K (K >= 1)")

    @classmethod
    def parse(cls, text: str | HeadSpec) -> HeadSpec:
        """The spec written as ``text`` (surrounding spaces ignored); a :class:`HeadSpec` is returned as is.

        Raises :class:`HeadError` naming the choices for anything else.
        """
        if isinstance(text, HeadSpec):
            return text
        text = text.strip()
        name, colon, k = text.partition(":")
        if not colon and name in ("linear", "projection"):
            return cls(name)
        if name == "last_blocks" and k.isascii() and k.isdigit():  # isdigit alone takes "²"
            return cls(name, int(k))
        raise HeadError(f"unknown head {text!r}; choose linear, projection or last_blocks:K (K >= 1)")

    def _text(self) -> str:
        return f"{self.kind}:{self.blocks}" if self.kind == "last_blocks" else str(self.kind)

    def __str__(self) -> str:
        return self._text()

    @property
    def is_linear(self) -> bool:
        """The linear head works on cached embeddings and changes both modalities."""
        return self.kind == "linear"

    @property
    def is_tower(self) -> bool:
        """Tower heads (``projection``, ``last_blocks:K``) train a tail of the image tower on cached activations."""
        return not self.is_linear


def check_head(encoder: ClipEncoder, head: HeadSpec | str) -> HeadSpec:
    """The spec of ``head``, if ``encoder``'s image tower can take it; :class:`HeadError` with the reason if not.

    Cheap: nothing is copied.
    """
    spec = HeadSpec.parse(head)
    if spec.is_tower:
        try:
            tower.split(encoder.model.visual, spec.blocks)
        except tower.TowerError as exc:
            raise HeadError(str(exc)) from exc
    return spec
