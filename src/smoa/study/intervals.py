"""Intervals valid for few seeds: the paired t-interval of per-seed differences.

With ``n`` seeds and per-seed differences ``d_1 … d_n`` (same seed = same data for both arms), the interval is
``mean(d) ± t_{n−1, 0.975} · sd(d) / √n``. A percentile bootstrap over 3 seeds is not a 95 % interval: drawing one
seed three times has probability 1/27 > 2.5 %, so its ends are just the smallest and largest difference.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def paired_t_interval(differences: Sequence[float], level: float = 0.95) -> dict[str, float | int | None]:
    """``{"mean", "low", "high", "sd", "n", "df", "t"}`` of per-seed paired differences; ``low``/``high`` are None
    with fewer than 2 seeds (no spread to estimate)."""
    from scipy.stats import t as student_t

    values = [float(d) for d in differences]
    n = len(values)
    if n == 0:
        raise ValueError("a paired interval needs at least one per-seed difference")
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "sd": None, "n": n, "df": 0, "t": None}
    sd = statistics.stdev(values)
    quantile = float(student_t.ppf(0.5 + level / 2, n - 1))
    half = quantile * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n, "df": n - 1, "t": quantile}
