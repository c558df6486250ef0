"""Percentiles of finite samples from one partial sort.

``np.percentile`` checks for NaN (an extra partition index), validates its arguments and
builds its result through several array operations: on the small samples of the QC checks
(a few thousand to 16,384 values) that overhead is about twice the partition itself, and
the checks take several such statistics per scan. :func:`percentiles` partitions once and
interpolates with numpy's own linear-method arithmetic (``(n - 1) * q / 100`` and its
two-sided lerp): on float64 data it returns the same values as ``np.percentile``; float32
data is interpolated in float64 (numpy stays in float32), a difference below 1e-7 relative.

The values must be finite: the checks work on finite copies
(:func:`scanqc.scoring.body_mask.prepare`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(values: np.ndarray, q: Sequence[float]) -> list[float]:
    """``np.percentile(values, q)`` (linear method) of finite ``values`` as floats.

    Args:
        values: Any shape; flattened. Must be finite and not empty.
        q: Percentiles in [0, 100].

    Returns:
        One float per percentile.

    Raises:
        ValueError: ``values`` is empty.
    """
    v = np.asarray(values).ravel()
    n = v.size
    if n == 0:
        raise ValueError("percentiles of an empty sample")
    virtual = (n - 1) * np.true_divide(np.asarray(q, dtype=np.float64), 100)
    prev = np.floor(virtual)
    above = virtual >= n - 1
    prev_i = np.where(above, n - 1, prev).astype(np.intp)
    next_i = np.where(above, n - 1, prev + 1).astype(np.intp)
    gamma = virtual - np.where(above, -1, prev)
    part = np.partition(v, np.unique(np.concatenate([prev_i, next_i])))
    a = part[prev_i].astype(np.float64)
    b = part[next_i].astype(np.float64)
    diff = b - a
    out = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return [float(x) for x in out]


def percentile(values: np.ndarray, q: float) -> float:
    """One percentile (see :func:`percentiles`)."""
    return percentiles(values, [q])[0]
