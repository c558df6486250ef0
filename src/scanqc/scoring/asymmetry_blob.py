"""Blob-scale statistics of the left-right log-intensity residual (used by ``asymmetry``).

``r = log(I + eps) - log(warped mirror + eps)`` outside the range the other side reaches
within a small tolerance (:func:`signed_tolerant_residual`) is signed: a lesion gives a
monopole of one sign, a slightly displaced edge a dipole (+ on one side of the edge, - on
the other). Smoothing at lesion scales (:func:`blob_z`) keeps monopoles and cancels dipoles.
``r`` is antisymmetric about the mid-plane, so ``|blob|`` peaks at a lesion and at its mirror
image alike; :func:`projection_side` decides which of the two carries the lesion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

#: Gaussian scales (mm, sigma) of the blob statistic; the maximum over scales is used.
BLOB_SCALES_MM = (4.5, 6.0, 8.0)
#: Below this fraction of mask weight in the Gaussian window, the normalised convolution is 0.
MIN_SUPPORT = 0.2


def smooth(vol: np.ndarray, sp: Sequence[float], mm: float) -> np.ndarray:
    """Gaussian smoothing with sigma ``mm`` (per-axis voxel size ``sp``; constant 0 outside)."""
    sig = [mm / s if vol.shape[i] > 1 else 0.0 for i, s in enumerate(sp)]
    return ndimage.gaussian_filter(vol, sig, mode="constant").astype(np.float32)


def masked_smooth(vol: np.ndarray, mask: np.ndarray, sp: Sequence[float], mm: float) -> np.ndarray:
    """Normalised convolution: the Gaussian mean of ``vol`` over ``mask`` only."""
    num = smooth(vol * mask, sp, mm)
    den = smooth(mask.astype(np.float32), sp, mm)
    return np.where(den > MIN_SUPPORT, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def signed_tolerant_residual(
    log_a: np.ndarray, log_b: np.ndarray, sp: Sequence[float], tolerance_mm: float
) -> np.ndarray:
    """``log_a`` minus the nearest value of ``log_b``'s range within ``tolerance_mm`` (signed).

    0 where ``log_a`` lies between the minimum and maximum of the other side in a box of
    half-width ``tolerance_mm`` (a slightly displaced edge); the signed excess otherwise.
    """
    size = [max(1, 2 * int(round(tolerance_mm / s)) + 1) if n > 1 else 1
            for s, n in zip(sp, log_a.shape, strict=True)]
    hi = ndimage.maximum_filter(log_b, size)
    lo = ndimage.minimum_filter(log_b, size)
    return (log_a - np.clip(log_a, lo, hi)).astype(np.float32)


def blob_z(
    resid: np.ndarray,
    mask: np.ndarray,
    sp: Sequence[float],
    normalise: Callable[[np.ndarray], np.ndarray],
    scales: Sequence[float] = BLOB_SCALES_MM,
) -> np.ndarray:
    """Maximum over ``scales`` of ``|normalise(|G_s * resid|)|`` (masked Gaussian means).

    ``normalise`` turns a blob response into the scan's own units (e.g. a robust z within
    strata); normalising each scale separately makes the scales comparable.
    """
    out = np.zeros(resid.shape, np.float32)
    for s in scales:
        g = np.abs(masked_smooth(resid, mask, sp, s))
        np.maximum(out, np.abs(normalise(g)), out=out)
    return out


def _grads(vol: np.ndarray, sp: Sequence[float]) -> list[np.ndarray]:
    return [np.gradient(vol, axis=ax) / np.float32(sp[ax]) if vol.shape[ax] > 1
            else np.zeros_like(vol) for ax in range(vol.ndim)]


def projection_side(
    log_a: np.ndarray,
    log_b: np.ndarray,
    mask: np.ndarray,
    sp: Sequence[float],
    blob_mm: float,
    window_mm: float,
) -> np.ndarray:
    """Weight in [0, 1]: the share of the residual's outline that this side's edges carry.

    With ``R`` the residual ``log_a - log_b`` smoothed at ``blob_mm``, ``grad R`` crosses the
    outline of an asymmetric blob. A lesion on side A puts a step of log intensity on that
    outline in A only: ``grad log_a . grad R`` is then positive all around the outline, while
    ``-grad log_b . grad R`` only holds anatomy of random sign, which averages out (unlike
    edge energy, which anatomy always adds to). The two sums (Gaussian window
    ``window_mm``) add up to ``|grad R|^2``; the weight is A's positive share. Antisymmetric
    about the plane up to the warp: the mirror location gets about ``1 - w``.
    """
    r = masked_smooth(log_a - log_b, mask, sp, blob_mm)
    g_r = _grads(r, sp)
    s_a = sum(x * y for x, y in zip(_grads(log_a, sp), g_r, strict=True))
    s_b = -sum(x * y for x, y in zip(_grads(log_b, sp), g_r, strict=True))
    s_a = np.maximum(smooth(s_a * mask, sp, window_mm), 0.0)
    s_b = np.maximum(smooth(s_b * mask, sp, window_mm), 0.0)
    den = s_a + s_b
    w = np.full(r.shape, 0.5, np.float32)
    ok = den > 1e-12
    w[ok] = s_a[ok] / den[ok]
    return w


def region_average(
    w: np.ndarray, weight: np.ndarray, sp: Sequence[float], mm: float
) -> np.ndarray:
    """``weight``-weighted local mean of ``w`` (Gaussian ``mm``): one side weight per blob."""
    num = smooth(w * weight, sp, mm)
    den = smooth(weight, sp, mm)
    return np.where(den > 1e-9, num / np.maximum(den, 1e-9), 0.5).astype(np.float32)
