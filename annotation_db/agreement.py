"""Inter-annotator agreement: Krippendorff's alpha for nominal data. Pure functions, no database."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal values, with any number of coders per unit (missing values allowed).

    Each unit is the list of values the coders gave it (here: a sample and the labels people chose).
    Units with fewer than two values are not pairable and are skipped. With the coincidence matrix
    o_ck = sum_u (number of c-k pairs of values in u) / (m_u - 1), n_c = sum_k o_ck and n = sum_c n_c:

        alpha = 1 - D_o / D_e = 1 - (n - 1) * (n - sum_c o_cc) / (n^2 - sum_c n_c^2)

    where o_cc = sum_u n_uc (n_uc - 1) / (m_u - 1) counts the agreeing pairs. 1 is perfect agreement,
    0 agreement at chance level, below 0 systematic disagreement.

    Args:
        units: per unit, the values given to it.
    Returns:
        alpha, or None when it is undefined: fewer than two pairable values, or all values identical
        (no variation, so expected disagreement is zero).
    """
    n = 0.0
    agreeing = 0.0  # sum_c o_cc
    totals: Counter[Hashable] = Counter()  # n_c
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        counts = Counter(unit)
        agreeing += sum(c * (c - 1) for c in counts.values()) / (m - 1)
        totals.update(counts)
        n += m
    expected = n * n - sum(v * v for v in totals.values())
    if n < 2 or expected == 0:
        return None
    return 1.0 - (n - 1) * (n - agreeing) / expected
