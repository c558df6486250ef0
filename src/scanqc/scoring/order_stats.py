"""Percentiles of finite samples from one partial sort.

``np.percentile`` checks for NaN (an extra partition index), validates its arguments and
builds its result through several array operations: on the small samples of the QC checks
(a few thousand to 16,384 values) that overhead is about twice the partition itself, and
the checks take several such statistics per scan. :func:`percentiles` partitions once and
interpolates with numpy's own linear-method arithmetic
(:func:`scanqc.io.intensity.percentile_positions` and ``percentile_lerp``, shared with the
histogram window): on float64 data it returns the same values as ``np.percentile``; float32
data is interpolated in float64 (numpy stays in float32), a difference below 1e-7 relative.

The values must be finite: the checks work on finite copies
(:func:`scanqc.scoring.body_mask.prepare`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanqc.io.intensity import percentile_lerp, percentile_positions


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
    if v.size == 0:
        raise ValueError("percentiles of an empty sample")
    prev_i, next_i, gamma = percentile_positions(v.size, q)
    part = np.partition(v, np.unique(np.concatenate([prev_i, next_i])))
    return percentile_lerp(part[prev_i], part[next_i], gamma)


def percentile(values: np.ndarray, q: float) -> float:
    """One percentile (see :func:`percentiles`)."""
    return percentiles(values, [q])[0]


def median(values: np.ndarray) -> float:
    """The median of finite ``values`` (see :func:`percentiles`; ``np.median`` to 1e-7)."""
    return percentiles(values, [50.0])[0]
