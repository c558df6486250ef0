"""Turn a :class:`~scanqc.io.scan.Scan` into a stack of model-ready 2D slices.

No torch at import time (the widgets import this module's callers at start-up).

Every slice goes through the same steps, at inference and in training:

1. gray data (luminance for RGB), windowed to [0, 1] by :func:`scanqc.io.intensity.normalize`
   with ONE window per volume (so dark edge slices stay dark);
2. resized so that the longer *physical* side (pixel count x spacing) fills ``size`` pixels,
   keeping the physical aspect ratio (anisotropic pixels are not distorted), with
   antialiasing;
3. padded with zeros, centred, to ``size x size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanqc.io.intensity import normalize, robust_window
from scanqc.io.scan import Scan

#: Input size of the bundled encoder.
DEFAULT_SIZE = 128


def subsample_indices(n: int, max_slices: int | None) -> np.ndarray:
    """Return at most ``max_slices`` evenly spaced indices into ``range(n)`` (ends kept)."""
    if max_slices is None or max_slices <= 0 or n <= max_slices:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, int(max_slices))).astype(np.int64))


def _target_shape(h: int, w: int, pixel_spacing: Sequence[float], size: int) -> tuple[int, int]:
    sy, sx = (float(s) if s and np.isfinite(s) and s > 0 else 1.0 for s in pixel_spacing)
    ext_h, ext_w = h * sy, w * sx
    scale = size / max(ext_h, ext_w)
    return max(1, min(size, round(ext_h * scale))), max(1, min(size, round(ext_w * scale)))


def resize_and_pad(
    stack: np.ndarray, pixel_spacing: Sequence[float] = (1.0, 1.0), size: int = DEFAULT_SIZE
) -> np.ndarray:
    """Resize a ``(N, H, W)`` stack to ``(N, size, size)`` keeping the physical aspect.

    Args:
        stack: Slices, float values (already windowed).
        pixel_spacing: ``(row spacing, column spacing)`` in mm; non-positive or missing
            values count as 1.
        size: Output side in pixels.

    Returns:
        float32 array ``(N, size, size)``, zero padded, centred.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch convention

    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim == 2:
        stack = stack[None]
    n, h, w = stack.shape
    th, tw = _target_shape(h, w, pixel_spacing, size)
    out = np.zeros((n, size, size), dtype=np.float32)
    if n == 0:
        return out
    if (th, tw) == (h, w):
        resized = stack
    else:
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(stack))[:, None]
            antialias = th < h or tw < w
            t = F.interpolate(t, size=(th, tw), mode="bilinear", align_corners=False,
                              antialias=antialias)
            resized = t[:, 0].numpy()
    y0, x0 = (size - th) // 2, (size - tw) // 2
    out[:, y0:y0 + th, x0:x0 + tw] = np.clip(resized, 0.0, 1.0)
    return out


def scan_to_slices(
    scan: Scan, size: int = DEFAULT_SIZE, max_slices: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the scan as model input slices.

    Args:
        scan: A scan read by :func:`scanqc.io.load.load_scan`; a volume is cut along data
            axis 0 (its acquisition plane), a 2D image gives one slice.
        size: Output side in pixels.
        max_slices: Keep at most this many slices, evenly spaced (``None``: all).

    Returns:
        ``(slices, slice_index)``: float32 ``(N, size, size)`` in [0, 1] and the int64 index
        of each kept slice in the scan.
    """
    # integer data stays integer: robust_window takes its histogram path (the same window,
    # several times faster than partitioning a float copy) and only the kept slices are
    # converted, by normalize (the same float32 values as converting everything first)
    integer = not scan.rgb and scan.data.dtype.kind in "iu"
    gray = scan.data if integer else scan.gray()
    if gray.ndim == 2:
        gray = gray[None]
    if gray.ndim != 3:
        raise ValueError(f"{scan.path or scan.name}: cannot cut {gray.ndim}D data into slices")
    idx = subsample_indices(gray.shape[0], max_slices)
    window = robust_window(gray, scan.modality)
    picked = normalize(gray[idx], scan.modality, window=window)
    spacing = tuple(scan.spacing or ())
    pixel_spacing = spacing[-2:] if len(spacing) >= 2 else (1.0, 1.0)
    return resize_and_pad(picked, pixel_spacing, size), idx


def volume_planes(
    gray: np.ndarray,
    spacing: Sequence[float],
    window: tuple[float, float],
    size: int,
    per_plane: int,
) -> list[np.ndarray]:
    """Cut a windowed volume ``(Z, Y, X)`` along all three axes (used for training data).

    Args:
        gray: Volume, raw values.
        spacing: ``(sz, sy, sx)`` in mm.
        window: Intensity window applied with :func:`scanqc.io.intensity.normalize`.
        size: Output side in pixels.
        per_plane: Evenly spaced slices per plane, from the central 80 % of each axis.

    Returns:
        Three arrays ``(n, size, size)``: axis-0, axis-1 and axis-2 slices.
    """
    sz, sy, sx = (list(spacing) + [1.0, 1.0, 1.0])[:3]
    out = []
    for axis, pix in ((0, (sy, sx)), (1, (sz, sx)), (2, (sz, sy))):
        n = gray.shape[axis]
        lo, hi = int(0.1 * n), max(int(0.1 * n) + 1, int(np.ceil(0.9 * n)))
        idx = lo + subsample_indices(hi - lo, per_plane)
        sl = np.take(gray, idx, axis=axis)
        sl = np.moveaxis(sl, axis, 0)
        out.append(resize_and_pad(normalize(sl, window=window), pix, size))
    return out
