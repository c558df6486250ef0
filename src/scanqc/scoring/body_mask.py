"""A cheap body/anatomy mask on a downsampled, windowed copy of a scan.

Every QC check works on the same :class:`CheckData` (built once by :func:`prepare`):

* ``raw``: a strided, downsampled float32 copy ``(N, y, x)`` of the gray data (NaN/Inf
  replaced), at most :data:`MAX_INPLANE` pixels per in-plane axis (:data:`MAX_INPLANE_2D`
  for 2D images) and at most :data:`MAX_SLICES` slices (the first and last slice are
  always kept, so coverage checks see the true ends);
* ``win``: ``raw`` mapped to [0, 1] through :func:`scanqc.io.intensity.normalize` with
  the modality-aware window (CT in HU gets the fixed CT window; everything else a
  percentile window of the non-background values), so 16-bit data is never "divided by
  255";
* ``mask``: the body mask: a modality-aware threshold (``-500 HU`` for CT in Hounsfield
  units, Otsu on the windowed data otherwise), the largest 3D connected components, holes
  filled slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from scanqc.io.intensity import CT_WINDOW, looks_like_hounsfield, normalize, robust_window
from scanqc.io.scan import Scan, luminance
from scanqc.scoring.order_stats import percentile

#: In-plane size (pixels) of the downsampled copy of a volume.
MAX_INPLANE = 64
#: In-plane size (pixels) of the downsampled copy of a 2D image.
MAX_INPLANE_2D = 128
#: Number of slices kept from a volume.
MAX_SLICES = 32
#: Components smaller than this fraction of the largest one are dropped from the mask.
MIN_COMPONENT_FRACTION = 0.1
#: Values used to estimate windows and thresholds.
SAMPLE = 65536
#: CT body threshold in Hounsfield units.
CT_BODY_HU = -500.0
#: A body mask under this fraction of the image is checked for a split taken by a small
#: bright cluster (see :func:`prepare`); the fraction of ``fov.MOSTLY_AIR_FRACTION``.
SMALL_MASK_FRACTION = 0.03
#: The second split counts only when its two classes differ by this much (window units):
#: air noise under a marker differs by ~0.02, anatomy from its background by 0.1 or more.
MIN_SPLIT_CONTRAST = 0.05


def meta_get(scan: Scan, *keys: str, default: Any = None) -> Any:
    """Return the first metadata value found for ``keys`` (case-insensitive).

    Looks in ``scan.metadata`` and in its nested ``"header"`` / ``"dicom"`` dicts, so the
    checks work whatever the reader's layout.
    """
    md = scan.metadata or {}
    pools: list[dict[str, Any]] = [md]
    for sub in ("header", "dicom", "dicom_header"):
        if isinstance(md.get(sub), dict):
            pools.append(md[sub])
    for key in keys:
        low = key.lower()
        for pool in pools:
            for k, v in pool.items():
                if str(k).lower() == low and v not in (None, "", [], ()):
                    return v
    return default


def meta_text(scan: Scan, *keys: str) -> str:
    """Return the values of ``keys`` joined as one lower-case string ("" when absent)."""
    parts = []
    for key in keys:
        v = meta_get(scan, key)
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            parts.append("\\".join(str(x) for x in v))
        else:
            parts.append(str(v))
    return " ".join(parts).lower()


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Return Otsu's threshold of ``values`` (finite floats)."""
    v = np.asarray(values, dtype=np.float32).ravel()
    finite = np.isfinite(v)
    if not finite.all():
        v = v[finite]
    if v.size == 0:
        return 0.0
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo or bins < 2:
        return lo
    idx = np.minimum(((v - lo) * (bins / (hi - lo))).astype(np.int64), bins - 1)
    hist = np.bincount(idx, minlength=bins).astype(np.float64)
    centers = lo + (np.arange(bins) + 0.5) * (hi - lo) / bins
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centers)
    mu0 = m / np.maximum(w0, 1e-12)
    mu1 = (m[-1] - m) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


@dataclass
class CheckData:
    """Downsampled data shared by the checks.

    Attributes:
        raw: Downsampled gray data ``(N, y, x)`` float32, finite.
        win: ``raw`` windowed to [0, 1].
        mask: Body mask, same shape, bool.
        window: The ``(low, high)`` window used for ``win``.
        slice_index: Original slice index of each kept slice.
        stride: In-plane stride used (original pixels per kept pixel).
        hounsfield: True when the data looks like CT in Hounsfield units.
        n_nonfinite: Number of NaN/Inf values in the downsampled copy.
        threshold: The body threshold on the windowed scale.
        extra: Cache for checks sharing intermediate results.
    """

    raw: np.ndarray
    win: np.ndarray
    mask: np.ndarray
    window: tuple[float, float]
    slice_index: np.ndarray
    stride: int
    hounsfield: bool
    n_nonfinite: int = 0
    threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def body_fraction(self) -> float:
        """Fraction of the (downsampled) scan inside the body mask."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def downsample(scan: Scan) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(stack (N, y, x) float32, kept slice indices, in-plane stride)``."""
    data = scan.data
    if scan.rgb:
        step = int(np.ceil(max(data.shape[0], data.shape[1]) / MAX_INPLANE_2D))
        return luminance(data[::step, ::step])[None], np.array([0]), step
    if data.ndim == 2:
        step = int(np.ceil(max(data.shape) / MAX_INPLANE_2D))
        return data[::step, ::step].astype(np.float32)[None], np.array([0]), step
    if data.ndim != 3:
        raise ValueError(f"unsupported data shape {data.shape}")
    n = data.shape[0]
    step = int(np.ceil(max(data.shape[1], data.shape[2]) / MAX_INPLANE))
    zs = int(np.ceil(n / MAX_SLICES))
    idx = np.unique(np.r_[np.arange(0, n, zs), n - 1])
    return data[idx, ::step, ::step].astype(np.float32), idx, step


def _shift_and(a: np.ndarray, axis: int, out: np.ndarray) -> None:
    """``out &= a`` shifted by +1 and by -1 along ``axis`` (outside the array: False)."""
    n = a.shape[axis]
    if n < 2:
        out[...] = False
        return
    lo = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
    lo_t, hi_t = tuple(lo), tuple(hi)
    out[hi_t] &= a[lo_t]
    out[lo_t] &= a[hi_t]
    first = [slice(None)] * a.ndim
    last = [slice(None)] * a.ndim
    first[axis], last[axis] = 0, n - 1
    out[tuple(first)] = False
    out[tuple(last)] = False


def _shift_or(a: np.ndarray, axis: int, out: np.ndarray) -> None:
    """``out |= a`` shifted by +1 and by -1 along ``axis``."""
    n = a.shape[axis]
    if n < 2:
        return
    lo = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
    lo_t, hi_t = tuple(lo), tuple(hi)
    out[hi_t] |= a[lo_t]
    out[lo_t] |= a[hi_t]


def erode_cross(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Binary erosion by the cross over ``axes`` (outside the array counts as False).

    Same result as ``scipy.ndimage.binary_erosion`` with the matching cross structure
    (one iteration), with a few numpy slices instead of a generic filter.
    """
    out = a.copy()
    for ax in axes:
        _shift_and(a, ax, out)
    return out


def dilate_cross(a: np.ndarray, axes: tuple[int, ...], iterations: int = 1) -> np.ndarray:
    """Binary dilation by the cross over ``axes``, ``iterations`` times (border False).

    Same result as ``scipy.ndimage.binary_dilation`` with the matching cross structure.
    """
    out = a
    for _ in range(iterations):
        src, out = out, out.copy()
        for ax in axes:
            _shift_or(src, ax, out)
    return out


def fill_holes_inplane(fg: np.ndarray) -> np.ndarray:
    """Fill holes of a stack ``(N, y, x)`` slice by slice (4-connected background).

    Same result as ``scipy.ndimage.binary_fill_holes`` with an in-plane cross structure:
    background regions that do not reach the in-plane border of their slice become
    foreground. One labelling pass instead of an iterated propagation.
    """
    bg = ~fg
    if not bg.any():
        return fg.copy()
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndi.generate_binary_structure(2, 1)
    lab, n = ndi.label(bg, structure=structure)
    if n == 0:
        return fg.copy()
    edge = np.zeros(n + 1, bool)
    for border in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        edge[border.ravel()] = True
    edge[0] = True  # label 0 is the foreground itself
    return ~edge[lab] | fg


def body_mask(win: np.ndarray, threshold: float) -> np.ndarray:
    """Return the body mask of a windowed stack ``(N, y, x)``.

    Thresholds, removes speckle (in-plane opening), keeps the 3D connected components at
    least :data:`MIN_COMPONENT_FRACTION` of the largest, and fills holes slice by slice.
    The morphology runs on numpy slices (:func:`erode_cross`, :func:`dilate_cross`,
    :func:`fill_holes_inplane`); the results equal those of ``scipy.ndimage``.
    """
    fg = win > threshold
    if not fg.any():
        return fg
    # Remove speckle before labelling (noise in air would otherwise join components).
    fg = dilate_cross(erode_cross(fg, (1, 2)), (1, 2))
    if not fg.any():
        return fg
    lab, n = ndi.label(fg)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        keep = sizes >= MIN_COMPONENT_FRACTION * sizes.max()
        fg = keep[lab]
    # Holes filled within each slice (no z neighbours).
    return fill_holes_inplane(fg)


def _midpoint_threshold(values: np.ndarray) -> float:
    """Body threshold of windowed values: midway between the background and Otsu's split.

    Otsu on data with a large empty background can sit high inside tissue; the midpoint
    between the background level (5th percentile) and Otsu's threshold does not.
    """
    thr = otsu_threshold(values)
    bg = percentile(values, 5)
    return max(bg + 0.5 * (thr - bg), bg + 0.02)


def prepare(scan: Scan) -> CheckData:
    """Build the shared :class:`CheckData` of ``scan`` (downsample, window, mask)."""
    raw, idx, step = downsample(scan)
    n_bad = 0
    if scan.data.dtype.kind not in "iub":  # integer data (and its luminance) is finite
        finite = np.isfinite(raw)
        n_bad = int(raw.size - np.count_nonzero(finite))
    if n_bad:
        fill = float(np.min(raw[finite])) if finite.any() else 0.0
        raw = np.where(finite, raw, np.float32(fill)).astype(np.float32)
    modality = (scan.modality or "").upper()
    sample = raw.ravel()[:: max(1, raw.size // SAMPLE)]
    # Hounsfield units need a 1st percentile at or below -500: a minimum above it rules
    # them out without the percentile
    hu = bool(modality in ("CT", "") and sample.size and float(sample.min()) <= -500
              and looks_like_hounsfield(sample))
    # robust_window(sample, "CT") would test for Hounsfield units again; the modality
    # changes nothing else in it
    # integer data: the same values as integers take robust_window's histogram path
    integer = scan.data.dtype.kind in "iu" and not scan.rgb
    window = CT_WINDOW if hu else robust_window(sample.astype(np.int64) if integer else sample)
    win = normalize(raw, window=window)
    if hu:
        thr = (CT_BODY_HU - window[0]) / (window[1] - window[0])
    else:
        wsample = win.ravel()[:: max(1, win.size // SAMPLE)]
        thr = _midpoint_threshold(wsample)
    mask = body_mask(win, thr) if win.size else np.zeros_like(win, bool)
    if not hu and mask.size and np.count_nonzero(mask) < SMALL_MASK_FRACTION * mask.size:
        # A small bright cluster (a side marker, a label, metal) can take Otsu's split from
        # the anatomy, which then reads as background: split again below it.
        below = wsample[wsample <= thr]
        if below.size >= 64:
            thr2 = _midpoint_threshold(below)
            low, high = below[below <= thr2], below[below > thr2]
            if (low.size and high.size and thr2 < thr
                    and float(high.mean()) - float(low.mean()) >= MIN_SPLIT_CONTRAST):
                mask2 = body_mask(win, thr2)
                if np.count_nonzero(mask2) >= SMALL_MASK_FRACTION * mask.size:
                    mask, thr = mask2, thr2
    return CheckData(
        raw=raw,
        win=win,
        mask=mask,
        window=(float(window[0]), float(window[1])),
        slice_index=idx,
        stride=step,
        hounsfield=hu,
        n_nonfinite=n_bad,
        threshold=float(thr),
    )
