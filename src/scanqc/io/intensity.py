"""Intensity windows that respect modality and bit depth (never "divide by 255").

Used by the napari reader (contrast limits), by model preprocessing and by the
image-quality checks, so every part of scanqc looks at the same windowed data.
"""

from __future__ import annotations

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
    flat = flat.astype(np.float64, copy=False)
    return flat[np.isfinite(flat)]


def looks_like_hounsfield(data: np.ndarray) -> bool:
    """True when values span air (about -1000) to soft tissue, as CT in HU does."""
    s = _sample(data, 200_000)
    if s.size == 0:
        return False
    lo, hi = np.percentile(s, [1, 99])
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
    s = _sample(data)
    if s.size == 0:
        return 0.0, 1.0
    if modality.upper() == "CT" and looks_like_hounsfield(s):
        return CT_WINDOW
    vmin = float(s.min())
    fg = s[s > vmin]
    if fg.size < 0.01 * s.size:
        fg = s
    lo, hi = (float(v) for v in np.percentile(fg, [lower, upper]))
    if not hi > lo:
        lo, hi = float(s.min()), float(s.max())
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
    out = (np.asarray(data, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)
