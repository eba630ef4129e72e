"""Declared options: each option is one dataclass field whose metadata says everything about it.

As in TRL, an option is declared once (``x: int = option(3, help=..., low=0)``); what people read and what the
program checks is generated from the declaration, so they cannot drift apart:

- :func:`check` validates an instance against the declared bounds and choices (:class:`~poclip.errors.UserError`
  naming the option, e.g. ``POCLIP_REPLAY_PAIRS must be 0 or more, got -1``);
- :func:`read_env` builds the keyword arguments of a settings class from environment variables, and
  :func:`write_env` the variables that give an instance back (for a child process);
- :func:`add_flags` adds command-line flags for chosen fields to an :class:`argparse.ArgumentParser`;
- :func:`markdown_table` renders the fields as a Markdown table (variable, default, meaning) for the README.

Metadata keys (all optional but ``help``): ``env`` (environment variable), ``flag`` (command-line flag),
``parse`` (text to value), ``low``/``high`` (inclusive bounds; ``low_open``/``high_open`` make them exclusive),
``choices``, ``default_doc`` (how the default reads where it is not a plain value), ``env_default`` (a function
of the environment giving the default when the variable is unset, for defaults that depend on the machine).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from poclip.errors import UserError

# What a parser's failure is called in a message ("POCLIP_GATE_N must be a whole number, got 'many'").
_KIND = {int: "a whole number", float: "a number"}


def option(default: Any = dataclasses.MISSING, *, help: str, env: str | None = None, flag: str | None = None,
           parse: Callable[[str], Any] = str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, choices: Sequence[Any] | None = None,
           default_doc: str | None = None, env_default: Callable[[Mapping[str, str]], Any] | None = None,
           default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field declaring one option.

    Args:
        default, default_factory: the field's default, as for :func:`dataclasses.field`.
        help: what the option means, one sentence or a few, for help text and the README.
        env: the environment variable it is read from (settings), if any.
        flag: its command-line flag (``--lambda``), if it has one.
        parse: turns the variable's or flag's text into the value (``int``, ``float``, a custom function).
        low, high, low_open, high_open: allowed range; a bound is exclusive when its ``*_open`` is set.
        choices: the allowed values, if a fixed set.
        default_doc: how the default reads when it is not a plain value (per head, per loss, per machine).
        env_default: the default when ``env`` is unset, computed from the environment.
    Returns:
        A :func:`dataclasses.field` carrying the metadata.
    """
    metadata = {"help": help, "env": env, "flag": flag, "parse": parse, "low": low, "high": high,
                "low_open": low_open,
                "high_open": high_open, "choices": tuple(choices) if choices is not None else None,
                "default_doc": default_doc, "env_default": env_default}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def allowed(meta: Mapping[str, Any]) -> str:
    """The allowed values of a field as words ("0 or more", "more than 0 and at most 1", "one of a, b"); ""
    when anything goes."""
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    parts = []
    if meta.get("low") is not None:
        parts.append(f"more than {meta['low']:g}" if meta["low_open"] else f"{meta['low']:g} or more")
    if meta.get("high") is not None:
        parts.append(f"less than {meta['high']:g}" if meta["high_open"] else f"at most {meta['high']:g}")
    return " and ".join(parts)


def problem(name: str, value: Any, meta: Mapping[str, Any]) -> str | None:
    """Why ``value`` is not allowed for the option called ``name``, or None if it is (None always is: it
    stands for "the default for the head or loss")."""
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"{name} must be {allowed(meta)}, got {value!r}"
    low, high = meta.get("low"), meta.get("high")
    too_low = low is not None and (value <= low if meta["low_open"] else value < low)
    too_high = high is not None and (value >= high if meta["high_open"] else value > high)
    if too_low or too_high:
        return f"{name} must be {allowed(meta)}, got {value!r}"
    return None


def check(obj: Any, name: Callable[[dataclasses.Field], str]) -> None:
    """Raise :class:`UserError` for the first field of dataclass instance ``obj`` outside its bounds or choices.

    Args:
        obj: a dataclass instance whose fields were declared with :func:`option`.
        name: what the message calls a field (its environment variable, its flag).
    """
    for f in dataclasses.fields(obj):
        if "help" in f.metadata and (message := problem(name(f), getattr(obj, f.name), f.metadata)):
            raise UserError(message)


def parse_text(name: str, text: str, meta: Mapping[str, Any]) -> Any:
    """``text`` parsed by the field's ``parse``; a :class:`UserError` naming ``name`` if it does not parse."""
    parse = meta.get("parse", str)
    try:
        return parse(text)
    except ValueError as exc:
        kind = _KIND.get(parse)
        raise UserError(f"{name} must be {kind}, got {text!r}" if kind else f"{name}: {exc}") from None


def read_env(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from the environment ``env``.

    A variable that is unset or empty leaves its field to ``env_default(env)`` when declared, else to the class's
    default. Returns:
        ``{field name: value}`` for every field that has a value from ``env`` or ``env_default``.
    """
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("env"):
            continue
        text = env.get(meta["env"], "")
        if text.strip():
            values[f.name] = parse_text(meta["env"], text, meta)
        elif meta.get("env_default") is not None:
            values[f.name] = meta["env_default"](env)
    return values


def write_env(obj: Any) -> dict[str, str]:
    """The environment variables that make :func:`read_env` give dataclass instance ``obj``'s values back:
    ``{variable: text}`` for every field that reads one (``None`` as an empty text: the default; booleans as
    ``1`` or ``0``; numbers exactly; tuples of names comma-separated, an empty one as ``off``, which a field that
    may be empty reads as none)."""
    env = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("env"):
            value = getattr(obj, f.name)
            env[f.metadata["env"]] = ("" if value is None else str(int(value)) if isinstance(value, bool)
                                      else repr(value) if isinstance(value, float)
                                      else (",".join(map(str, value)) or "off") if isinstance(value, tuple)
                                      else str(value))
    return env


def default_text(f: dataclasses.Field) -> str:
    """The default of field ``f`` as a reader should see it: ``default_doc``, else the value itself."""
    if f.metadata.get("default_doc"):
        return f.metadata["default_doc"]
    value = f.default
    if value is None or value == "":
        return "(empty)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def meaning(f: dataclasses.Field) -> str:
    """A field's help and, when restricted, its allowed values ("... Allowed: 0 or more.")."""
    rule = allowed(f.metadata)
    text = f.metadata["help"]
    return f"{text.rstrip('.')}. Allowed: {rule}." if rule else text


def help_text(f: dataclasses.Field) -> str:
    """A field's help line: its meaning, its allowed values and its default."""
    return f"{meaning(f).rstrip('.')}. Default: {default_text(f)}."


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that declare a command-line flag, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag")]


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of ``cls`` that declares one (``dest`` = the field's name, default None = unset).

    Bounds and choices are checked as the command line is parsed, so a bad value ends the command before it
    loads anything; an unset flag leaves the field to its declared default."""
    for f in flag_fields(cls):
        meta = f.metadata
        parser.add_argument(meta["flag"], dest=f.name, default=None, help=help_text(f).replace("%", "%%"),
                            type=_checked(meta["flag"], meta),
                            metavar=None if meta["choices"] else f.name.upper(),
                            choices=meta["choices"])


def _checked(name: str, meta: Mapping[str, Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        # argparse names the flag itself ("argument --lr: must be a number, got 'x'").
        try:
            value = parse_text(name, text, meta)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name} ")) from None
        # Choices are argparse's to check (it lists them in the message).
        if (message := problem(name, value, {**meta, "choices": None})) is not None:
            raise argparse.ArgumentTypeError(message.removeprefix(f"{name} "))
        return value

    parse.__name__ = name  # argparse names the type in its message
    return parse


def set_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags of ``cls`` that were given on the command line, as ``{field name: value}``."""
    return {f.name: getattr(args, f.name) for f in flag_fields(cls) if getattr(args, f.name, None) is not None}


def markdown_table(cls: type, rows: Iterable[dataclasses.Field] | None = None) -> str:
    """The fields of ``cls`` that read an environment variable, as a Markdown table: variable, default,
    meaning (with the allowed values). Returns the table's lines joined with newlines, no trailing newline."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in rows if rows is not None else dataclasses.fields(cls):
        if not f.metadata.get("env"):
            continue
        lines.append(f"| `{f.metadata['env']}` | {_code(default_text(f))} | {meaning(f)} |")
    return "\n".join(lines)


def _code(text: str) -> str:
    # Plain values read as code; a sentence ("1 on a Space, else 0") stays prose.
    return text if " " in text or text == "(empty)" else f"`{text}`"
