"""How the page words a count: "1 label", "2 labels", "1 person", "3 people"; and the pair figures."""

from __future__ import annotations

from poclip.app.pair_counts import PairCounts


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


def pairs_text(counts: PairCounts) -> str:
    """The pair figures as Annotate and Data both word them: crowd pairs, replay pairs, the next retrain.

    e.g. ``"**12** crowd pairs (an item gives one once people's labels on it agree) · **1000** replay pairs
    (synthetic, in the last retrain) · next retrain after **38** more crowd pairs"``.
    """
    crowd = counted(counts.crowd_pairs, "crowd pair", bold=True)
    text = (f"{crowd if counts.complete else 'at least ' + crowd} (an item gives one once people's labels on it "
            f"agree) · {counted(counts.replay_pairs, 'replay pair', bold=True)} (synthetic, in the last retrain)")
    if counts.more_needed is not None:
        text += f" · next retrain after {counted(counts.more_needed, 'more crowd pair', bold=True)}"
    return text
