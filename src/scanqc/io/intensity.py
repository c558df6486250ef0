"""Intensity windows that respect modality and bit depth (never "divide by 255").

Used by the napari reader (contrast limits), by model preprocessing and by the
image-quality checks, so every part of scanqc looks at the same windowed data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: CT window used for display and checks when values look like Hounsfield units.
CT_WINDOW = (-1000.0, 1000.0)

_MAX_SAMPLE = 2_000_000


def _sample(data: np.ndarray, max_n: int = _MAX_SAMPLE) -> np.ndarray:
    """Return a flat, finite sample of ``data`` with at most ``max_n`` values."""
    flat = np.asarray(data).ravel()
    if flat.size > max_n:
        step = int(np.ceil(flat.size / max_n))
        flat = flat[::step]
    if flat.dtype.kind in "iub":  # integers are always finite: no filtering copy
        return flat.astype(np.float64)
    flat = flat.astype(np.float64, copy=False)
    return flat[np.isfinite(flat)]


def looks_like_hounsfield(data: np.ndarray) -> bool:
    """True when values span air (about -1000) to soft tissue, as CT in HU does."""
    s = _sample(data, 200_000)
    if s.size == 0:
        return False
    lo, hi = percentiles(s, [1, 99])
    return lo <= -500 and -200 < hi < 4000


def robust_window(
    data: np.ndarray, modality: str = "", lower: float = 0.5, upper: float = 99.5
) -> tuple[float, float]:
    """Return a ``(low, high)`` display window for ``data``.

    CT whose values look like Hounsfield units gets :data:`CT_WINDOW`; everything else
    gets a percentile window of the non-background values (background = the minimum
    value, which fills air in MR and the outside of radiographs). The window is always
    non-degenerate (``high > low``).

    Args:
        data: Pixel array of any dtype (8, 12, 16 bit, float).
        modality: DICOM modality if known.
        lower: Lower percentile.
        upper: Upper percentile.
    """
    if modality.upper() != "CT":
        fast = _integer_window(data, lower, upper)
        if fast is not None:
            return fast
    s = _sample(data)
    if s.size == 0:
        return 0.0, 1.0
    if modality.upper() == "CT" and looks_like_hounsfield(s):
        return CT_WINDOW
    vmin = float(s.min())
    fg = s[s > vmin]
    if fg.size < 0.01 * s.size:
        fg = s
    lo, hi = percentiles(fg, [lower, upper])
    if not hi > lo:
        lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def percentile_positions(
    n: int, q: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lower rank, upper rank, weight)`` of ``np.percentile``'s linear method.

    numpy's own arithmetic for ``n`` sorted values (``(n - 1) * q / 100``); combine the
    two order statistics with :func:`percentile_lerp` to get numpy's float64 result.
    """
    virtual = (n - 1) * np.true_divide(np.asarray(q, dtype=np.float64), 100)
    prev = np.floor(virtual)
    above = virtual >= n - 1
    prev_i = np.where(above, n - 1, prev).astype(np.intp)
    next_i = np.where(above, n - 1, prev + 1).astype(np.intp)
    gamma = virtual - np.where(above, -1, prev)
    return prev_i, next_i, gamma


def percentile_lerp(a: np.ndarray, b: np.ndarray, gamma: np.ndarray) -> list[float]:
    """Two-sided linear interpolation between order statistics ``a`` and ``b`` (numpy's)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    diff = b - a
    out = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return [float(v) for v in out]


def percentiles(values: np.ndarray, q: Sequence[float]) -> list[float]:
    """``np.percentile(values, q)`` (linear method) of finite ``values`` as floats.

    The order statistics come from one full sort: numpy's vectorised sort is faster than
    its partition with several ranks (2x on 2M random values, 5-15x on 16k-100k values
    with many ties, as in images), and a sorted array gives the same order statistics.
    The interpolation is numpy's own (:func:`percentile_positions`,
    :func:`percentile_lerp`): on float64 data the values equal ``np.percentile``'s;
    float32 data is interpolated in float64 (numpy stays in float32), a difference below
    1e-7 relative.

    Args:
        values: Any shape; flattened. Must be finite (NaN sorts last) and not empty.
        q: Percentiles in [0, 100].

    Raises:
        ValueError: ``values`` is empty.
    """
    v = np.sort(np.asarray(values).ravel())
    if v.size == 0:
        raise ValueError("percentiles of an empty sample")
    prev_i, next_i, gamma = percentile_positions(v.size, q)
    return percentile_lerp(v[prev_i], v[next_i], gamma)


def _count_percentiles(counts: np.ndarray, offset: int, q: Sequence[float]) -> list[float]:
    """``np.percentile(values, q)`` (linear method) of the integers counted in ``counts``.

    ``counts[i]`` is how many values equal ``offset + i``. The order statistics come from
    the cumulative counts instead of a partition; the interpolation is numpy's own
    (:func:`percentile_positions`, :func:`percentile_lerp`), so the result is the same
    float64 value.
    """
    cum = np.cumsum(counts)
    prev_i, next_i, gamma = percentile_positions(int(cum[-1]), q)
    a = offset + np.searchsorted(cum, prev_i, side="right")
    b = offset + np.searchsorted(cum, next_i, side="right")
    return percentile_lerp(a, b, gamma)


#: Largest value span counted with a histogram by :func:`_integer_window`.
_MAX_SPAN = 1 << 16


def _count_small_integers(flat: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """``(counts, vmin, vmax)`` of 8- or 16-bit integers, ``counts[i]`` = #(vmin + i).

    One counting pass over all 256 or 65536 possible values; the minimum and maximum come
    from the counts (no separate passes, no shifted copy). Signed values are counted as
    unsigned with the sign bit flipped (the same order). None for other dtypes.
    """
    if flat.dtype.kind not in "iu" or flat.dtype.itemsize > 2:
        return None
    if flat.dtype.kind == "i":
        unsigned = np.dtype(f"u{flat.dtype.itemsize}")
        offset = -(1 << (8 * flat.dtype.itemsize - 1))
        flat = flat.view(unsigned) ^ unsigned.type(1 << (8 * flat.dtype.itemsize - 1))
    else:
        offset = 0
    counts = np.bincount(flat, minlength=1 << (8 * flat.dtype.itemsize))
    present = np.flatnonzero(counts)
    lo, hi = int(present[0]), int(present[-1])
    return counts[lo:hi + 1], lo + offset, hi + offset


def _integer_window(data: np.ndarray, lower: float, upper: float) -> tuple[float, float] | None:
    """:func:`robust_window` of integer data from a histogram (None: not applicable).

    Same sample, same background rule and the same percentiles as the generic path (see
    :func:`_count_percentiles`), without converting the sample to float64 and partitioning
    it. Used for integer data whose value span is at most :data:`_MAX_SPAN` (8-16 bit).
    """
    flat = np.asarray(data).ravel()
    if flat.dtype.kind not in "iub" or flat.size == 0:
        return None
    if flat.size > _MAX_SAMPLE:
        flat = flat[:: int(np.ceil(flat.size / _MAX_SAMPLE))]
    counted = _count_small_integers(flat)
    if counted is not None:
        counts, vmin, vmax = counted
    else:
        vmin, vmax = int(flat.min()), int(flat.max())
        if vmax - vmin > _MAX_SPAN:
            return None
        # one pass: the cast and the shift together
        shifted = (np.subtract(flat, vmin, dtype=np.intp) if flat.dtype.kind != "b"
                   else flat.astype(np.intp))
        counts = np.bincount(shifted, minlength=vmax - vmin + 1)
    n_fg = flat.size - int(counts[0])
    if n_fg < 0.01 * flat.size or n_fg == 0:
        lo, hi = _count_percentiles(counts, vmin, [lower, upper])
    else:
        lo, hi = _count_percentiles(counts[1:], vmin + 1, [lower, upper])
    if not hi > lo:
        lo, hi = float(vmin), float(vmax)
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def normalize(
    data: np.ndarray,
    modality: str = "",
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map ``data`` through a window to float32 in [0, 1] (NaN/Inf become 0)."""
    lo, hi = window if window is not None else robust_window(data, modality)
    data = np.asarray(data)
    scale = np.float32(hi - lo)
    with np.errstate(invalid="ignore", over="ignore"):  # Inf data and huge spans: see below
        out = np.subtract(data, np.float32(lo), dtype=np.float32)
        out /= scale
    # clip maps +Inf to 1 and -Inf to 0 as nan_to_num would; only NaN needs a pass, and
    # integer data divided by a finite non-zero width has none
    np.clip(out, 0.0, 1.0, out=out)
    if data.dtype.kind not in "iub" or not (np.isfinite(scale) and scale != 0
                                            and np.isfinite(np.float32(lo))):
        out[np.isnan(out)] = 0.0
    return out
