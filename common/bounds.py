"""Bounding one client's influence against the round's median.

A statistic that clients report (an update's norm, the mass of an importance
vector, the distance of a gate vector from the server's) is compared with the
median over the round's clients, and a client above ``factor`` times it is scaled
down to exactly that:

    s_c = min(1, factor * median_c' x_c' / x_c)        (s_c = 1 when x_c = 0)

While fewer than half of the clients are hostile the median lies between two
honest clients' figures, so after scaling a hostile client counts for at most
``factor`` times the largest honest one, whatever it sent. An honest client below
``factor`` times the median is left exactly as it was (s_c = 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def median_clip_scales(sizes: Sequence[float], factor: float) -> np.ndarray:
    """The scale s_c of each client's statistic, from its size x_c >= 0 (float64)."""
    x = np.asarray(sizes, dtype=np.float64)
    if x.size == 0:
        return x
    bound = factor * float(np.median(x))
    scales = np.ones_like(x)
    over = x > bound
    scales[over] = bound / x[over]
    return scales
