"""Argument types of the command line: each checks one value as it is parsed, before anything is loaded.

A type raises :class:`argparse.ArgumentTypeError`; :class:`Parser` turns every usage error into a
:class:`~poclip.errors.UserError`, which the command line prints as one ``error: ...`` line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from poclip.errors import UserError

DATA_FORMS = "synth, distill-wild, imagefolder:DIR, disk:DIR (datasets.save_to_disk) or hf:NAME"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are :class:`UserError`: one ``error: ...`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def at_least(low: int | float, parse: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse``, then refuse a value below ``low``."""
    def read(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {text}")
        return value

    return read


def positive(text: str) -> float:
    """An argparse ``type``: a number above 0."""
    value = at_least(0, float)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def existing_file(text: str) -> str:
    """An argparse ``type``: a path to a file that exists."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist or is not a file")
    return text


def template(text: str) -> str:
    """An argparse ``type``: a prompt template with one ``{}`` for the label."""
    if text.count("{}") != 1:
        raise argparse.ArgumentTypeError(f"{text!r} needs exactly one {{}} where the label goes")
    return text


class DataSource(NamedTuple):
    """A ``--data`` value, parsed once: ``kind`` (synth, distill-wild, imagefolder, disk, hf) and ``where``."""

    kind: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.where}" if self.where else self.kind


def data_source(text: str) -> DataSource:
    """An argparse ``type`` for ``--data``: one of :data:`DATA_FORMS`, with its folder existing."""
    if text in ("synth", "distill-wild"):
        return DataSource(text)
    kind, _, where = text.partition(":")
    if kind not in ("imagefolder", "disk", "hf") or not where:
        raise argparse.ArgumentTypeError(f"{text!r}: use {DATA_FORMS}")
    if kind != "hf" and not Path(where).is_dir():
        raise argparse.ArgumentTypeError(f"{where} is not a folder")
    return DataSource(kind, where)
