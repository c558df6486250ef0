"""Percentiles and medians of the finite samples the QC checks take.

``np.percentile`` checks for NaN, validates its arguments, builds its result through
several array operations and partitions with several ranks, which is slow on samples with
many ties: on the small samples of the QC checks (a few thousand to 16,384 values), taken
several times per scan, that cost more than the statistic itself.
:func:`scanqc.io.intensity.percentiles` sorts once and interpolates with numpy's own
linear-method arithmetic: on float64 data it returns the same values as ``np.percentile``;
float32 data is interpolated in float64 (numpy stays in float32), a difference below 1e-7
relative.

The values must be finite: the checks work on finite copies
(:func:`scanqc.scoring.body_mask.prepare`).
"""

from __future__ import annotations

import numpy as np

from scanqc.io.intensity import percentiles

__all__ = ["median", "percentile", "percentiles"]


def percentile(values: np.ndarray, q: float) -> float:
    """One percentile (see :func:`scanqc.io.intensity.percentiles`)."""
    return percentiles(values, [q])[0]


def median(values: np.ndarray) -> float:
    """The median of finite ``values`` (``np.median`` to 1e-7 relative)."""
    return percentiles(values, [50.0])[0]
