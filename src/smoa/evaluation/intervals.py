"""Uncertainty of accuracies measured on a finite number of examples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_accuracy_half_width(accuracies: Sequence[float], totals: Sequence[int], z: float = 1.96) -> float:
    """Half-width of the normal-approximation interval of the unweighted mean of per-set accuracies.

    With accuracy ``p_s`` (a fraction) on ``n_s`` independent examples in each of the ``S`` sets::

        half_width = z · sqrt(Σ_s p_s (1 − p_s) / n_s) / S

    (``z = 1.96``: a 95 % interval). Returned in the unit of ``accuracies``' scale × 100 when they are fractions,
    i.e. percentage points.
    """
    if not accuracies or len(accuracies) != len(totals) or any(n <= 0 for n in totals):
        raise ValueError("one accuracy and a positive example count per set are needed")
    variance = sum(p * (1 - p) / n for p, n in zip(accuracies, totals, strict=True))
    return 100 * z * math.sqrt(variance) / len(accuracies)
