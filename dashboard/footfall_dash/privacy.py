"""k-anonymity suppression of visitor counts.

Policy (also shown in the app's help text, see ``POLICY``):

1. Primary suppression: a cell (a bar, a heatmap cell, a table value, an export row) counting
   1 to k-1 visitors is not shown; it reads ``<k``. Zero stays zero (it describes nobody).
2. Complementary suppression: inside every group of cells whose total is shown elsewhere in the
   same view (a camera's series over time vs that camera's total, the age bands of one gender vs
   the gender share, the cameras vs the headline total, ...), if suppressed cells could be
   recovered by subtracting the shown cells from the total, more cells are suppressed (the
   smallest first) until at least two cells are hidden and together they hold at least k visitors.
3. Figures derived from a suppressed count (shares, mean age, change vs the previous period) are
   suppressed with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

POLICY = """\
**Privacy (k-anonymity, k = {k}).** Any figure built from fewer than {k} visitors is hidden and \
shown as `<{k}`: bars, heatmap cells, table values and rows of the CSV export. Zero is shown as \
zero. Where a hidden value could be worked out by subtracting the shown values from a total in the \
same view (for example a camera's total in the comparison table), further small values in the \
same group are hidden too, until at least two are hidden and together they count at least {k} \
visitors. Shares, mean ages and changes that would reveal a hidden count are hidden with it. \
Stacked charts draw the sum of a period's hidden values as a grey "hidden" band only where that sum \
is at least {k}, so stacks keep their true height and shares are taken of the full total. \
Suppression is applied per chart: comparing several charts at a fine time resolution can still \
narrow a small count down, so share exports at the coarsest resolution that answers the question. \
Attributes switched off in the settings (race unless enabled, emotion when disabled) are never \
read, shown or exported."""


def suppressed_label(k: int) -> str:
    """How a suppressed value reads in tables, hovers and exports.

    >>> suppressed_label(5)
    '<5'
    """
    return f"<{k}"


def is_small(count, k: int):
    """True for a count that primary suppression hides (1 to k-1 visitors); elementwise on arrays.

    >>> is_small(0, 5), is_small(4, 5), is_small(5, 5)
    (False, True, False)
    >>> is_small(np.array([0.0, 3.0, 7.0]), 5).tolist()
    [False, True, False]
    """
    return (count > 0) & (count < k)  # `&`, not a chained comparison: it must work on arrays too


def _complement(values: np.ndarray, hidden: np.ndarray, k: int) -> None:
    """Hide more cells of one group (in place) until the hidden ones cannot be recovered from its total."""
    while True:
        count = int(hidden.sum())
        if count == 0 or (count >= 2 and values[hidden].sum() >= k):
            return
        candidates = np.flatnonzero(~hidden & (values > 0))
        if candidates.size == 0:  # nothing left to hide: the whole group is hidden or zero
            return
        hidden[candidates[np.argmin(values[candidates])]] = True


def suppress(frame: pd.DataFrame, k: int, value: str = "visitors",
             within: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Copy of ``frame`` with a boolean ``suppressed`` column and ``value`` set to NaN where hidden.

    ``within`` names the column(s) whose groups have a total shown elsewhere (complementary
    suppression runs per group); ``None`` treats the whole frame as one group.

    >>> f = pd.DataFrame({"cam": list("abcd"), "visitors": [100, 3, 40, 0]})
    >>> suppress(f, 5)[["cam", "visitors", "suppressed"]].values.tolist()
    [['a', 100.0, False], ['b', nan, True], ['c', nan, True], ['d', 0.0, False]]
    """
    out = frame.reset_index(drop=True).copy()
    values = out[value].to_numpy(dtype=float)
    hidden = is_small(values, k)
    if within is None:
        groups = [np.arange(len(out))]
    else:
        keys = [within] if isinstance(within, str) else list(within)
        groups = list(out.groupby(keys, sort=False, dropna=False).indices.values()) if len(out) else []
    for positions in groups:
        group_hidden = hidden[positions]
        if not group_hidden.any():
            continue
        _complement(values[positions], group_hidden, k)
        hidden[positions] = group_hidden
    out[value] = np.where(hidden, np.nan, values)
    out["suppressed"] = hidden
    return out


def shown(value: float, suppressed: bool, k: int, decimals: int = 0) -> str:
    """The text a (possibly suppressed) number is shown as.

    >>> shown(1234, False, 5), shown(float("nan"), True, 5), shown(12.345, False, 5, 1)
    ('1,234', '<5', '12.3')
    """
    if suppressed:
        return suppressed_label(k)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:,.{decimals}f}"
