"""How the page words a count: "1 label", "2 labels", "1 person", "3 people"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None, *, bold: bool = False) -> str:
    """``n`` and the noun in the number that ``n`` needs.

    Args:
        n: the count.
        noun: the singular noun ("label").
        plural: the plural when it is not ``noun + "s"`` ("people" for "person").
        bold: the number in Markdown bold ("**2** labels").
    Returns:
        e.g. ``"1 label"``, ``"0 labels"``, ``"**3** people"``.
    """
    number = f"**{n}**" if bold else str(n)
    return f"{number} {noun if n == 1 else plural or noun + 's'}"
