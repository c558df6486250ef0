"""MR artefact measures: k-space line roughness, background signal, ghosts, slice direction.

Cheap, reference-free measures that :func:`scanqc.scoring.quality.quality_metrics` adds
to its result (see ``docs/scoring.md``):

* ``kspace_roughness`` (:func:`line_power_roughness`): the image is Fourier transformed
  along each in-plane axis and the power of every k-space line (summed over the other
  axes) is taken on a log scale. The spectrum of an anatomical image decays smoothly
  from the centre of k-space, so the log line power changes smoothly from line to line.
  Ghosting is an inconsistency between k-space lines along the phase-encoding axis (in
  EPI, odd and even lines: Nyquist N/2 ghosts; more generally every n-th line, which
  puts ghosts at multiples of FOV/n); it makes the log line power jagged. The measure is
  the mean absolute second difference of the log10 line power, the larger of the two
  in-plane axes (the phase-encoding axis is usually unknown). About 0.01-0.05 for clean
  images, 0.1 and more with visible ghosts.
* ``air_floor_fraction`` and ``air_signal_fraction`` (:func:`air_fractions`): the state
  of the background (air: outside the body mask dilated by :data:`AIR_MARGIN` pixels).
  Artefacts that spread signal outside the body (ghosts, motion ringing, spikes, noise)
  fill it. ``air_floor_fraction`` is the fraction of the air at the image minimum (many
  archived scans have a zero-filled background: vendor masking, defacing, resampling
  padding); ``air_signal_fraction`` is MRIQC's QI1 idea for backgrounds with noise: the
  fraction of the air brighter than the background floor by more than
  :data:`AIR_NOISE_K` noise standard deviations (estimated from neighbour differences,
  which smooth artefacts barely affect) or :data:`AIR_SIGNAL_TOL` of the foreground
  level, whichever is larger.
* ``gsr`` (:func:`ghost_to_signal_ratio`): MRIQC's ghost-to-signal ratio: the mean
  signal in the "ghost band" (the body mask shifted by N/2 along an in-plane axis,
  outside the body) minus the mean of the rest of the background, over the median
  foreground; the larger of the two in-plane axes.
* ``slice_dir_r``, ``slice_dir_a``, ``slice_dir_s`` (:func:`slice_direction`): the
  absolute RAS direction cosines of the slice normal from the affine (a 2D image's plane
  normal). A series acquired in another plane than the references (a coronal series
  filed among axial ones) differs from every reference here.

The background measures and the ghost-to-signal ratio use the downsampled copy the
other checks share (:class:`~scanqc.scoring.body_mask.CheckData`). The k-space measure
runs on at most :data:`MAX_SLICES` evenly spaced slices of the full-resolution data,
each block-averaged to at most :data:`MAX_SIZE` pixels along the transformed axis and
sub-sampled along the other (which only drops k-space lines from the sum). All of it
costs a few milliseconds for a 256 x 256 x 16 volume.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from scanqc.io.scan import Scan
from scanqc.scoring.body_mask import CheckData
from scanqc.scoring.order_stats import median, percentile

#: Slices of a volume used for the k-space measure (evenly spaced).
MAX_SLICES = 8
#: Largest size (pixels) along the transformed axis; bigger images are block-averaged.
MAX_SIZE = 256
#: Largest number of k-space lines summed per slice (the other axis is sub-sampled).
MAX_LINES = 128
#: Smallest in-plane size (pixels) for which the k-space measure is defined.
MIN_SIZE = 16

#: Pixels (of the downsampled copy) between the body mask and the air, in-plane.
AIR_MARGIN = 2
#: Fewest air pixels for the background measures.
MIN_AIR = 16
#: Air within this fraction of the foreground level of the image minimum is "at the floor".
AIR_FLOOR_TOL = 0.001
#: Air brighter than the background floor by more than this many noise standard
#: deviations (or :data:`AIR_SIGNAL_TOL` of the foreground level) is signal.
AIR_NOISE_K = 5.0
#: Smallest excess over the background floor, as a fraction of the foreground level, that
#: counts as signal in the air.
AIR_SIGNAL_TOL = 0.01

ARTIFACT_KEYS: tuple[str, ...] = (
    "kspace_roughness", "air_floor_fraction", "air_signal_fraction", "gsr",
    "slice_dir_r", "slice_dir_a", "slice_dir_s",
)


def _planes(scan: Scan, max_slices: int = MAX_SLICES) -> np.ndarray:
    """Up to ``max_slices`` evenly spaced slices ``(S, Y, X)`` (``(S, Y, X, 3)`` for RGB).

    The stored dtype is kept (a view for 2D images); :func:`_axis_lines` converts only the
    sub-sampled part to floats.
    """
    data = scan.data
    if scan.spatial_ndim == 3:
        n = data.shape[0]
        idx = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
        return data[idx]
    return data[None]


def _axis_lines(planes: np.ndarray, axis: int, max_size: int, max_lines: int) -> np.ndarray:
    """Prepare ``planes`` for an FFT along ``axis`` (1 or 2), as float32 ``(S, Y', X')``.

    Sub-sampled along the other in-plane axis to at most ``max_lines`` lines (first, so
    that only those are converted), converted to gray (luminance for a trailing colour
    axis) with non-finite values set to 0, then block-averaged along ``axis`` to at most
    ``max_size`` pixels.
    """
    other = 3 - axis
    step_o = max(1, math.ceil(planes.shape[other] / max_lines))
    sl = [slice(None)] * planes.ndim
    sl[other] = slice(None, None, step_o)
    x = planes[tuple(sl)]
    integer = x.dtype.kind in "iub"
    if x.ndim == 4:
        x = x[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        x = x.astype(np.float32)
    if not integer and not np.isfinite(x).all():  # integers are finite
        x = np.where(np.isfinite(x), x, np.float32(0.0))
    f = max(1, math.ceil(x.shape[axis] / max_size))
    if f > 1:
        n = (x.shape[axis] // f) * f
        sl = [slice(None)] * 3
        sl[axis] = slice(0, n)
        x = x[tuple(sl)]
        shape = list(x.shape)
        shape[axis:axis + 1] = [n // f, f]
        x = x.reshape(shape).mean(axis=axis + 1)
    return x


def line_power_roughness(
    planes: np.ndarray, max_size: int = MAX_SIZE, max_lines: int = MAX_LINES
) -> float:
    """Jaggedness of the k-space line power: high with ghosting (see the module docstring).

    Args:
        planes: ``(S, Y, X)`` slices, ``(S, Y, X, 3)`` colour slices (reduced to
            luminance) or one ``(Y, X)`` image; any numeric dtype.
        max_size: Largest size along the transformed axis (block-averaged above it).
        max_lines: Largest number of lines summed per slice.

    Returns:
        The mean ``|L[k] - (L[k-1] + L[k+1]) / 2|`` over ``k = 2 .. K-2`` of the log10
        line power ``L``, the larger over the two in-plane axes; NaN when both axes are
        shorter than :data:`MIN_SIZE` or the image is constant.
    """
    p = np.asarray(planes)
    if p.ndim == 2:
        p = p[None]
    best = math.nan
    for axis in (1, 2):
        if p.shape[axis] < MIN_SIZE:
            continue
        x = _axis_lines(p, axis, max_size, max_lines)
        x -= np.float32(x.mean(dtype=np.float64))
        # scipy's pocketfft in float32: half the time of numpy's float64 transform (numpy's
        # own float32 transform is slower still); the log power differs by about 1e-6
        spec = scipy.fft.rfft(x, axis=axis)
        power = (spec.real**2 + spec.imag**2).sum(axis=(0, 3 - axis), dtype=np.float64)
        top = float(power.max())
        if not top > 0 or len(power) < 5:
            continue
        log_p = np.log10(power + top * 1e-12)
        rough = np.abs(log_p[2:-1] - 0.5 * (log_p[1:-2] + log_p[3:]))
        value = float(rough.mean())
        best = value if math.isnan(best) else max(best, value)
    return best


def air_mask(mask: np.ndarray, margin: int = AIR_MARGIN) -> np.ndarray:
    """The air: outside the body mask dilated in-plane by ``margin`` pixels (``(N, y, x)``).

    The dilation is by a diamond of radius ``margin`` (``margin`` iterations of the
    4-connected cross), done with array slices.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return ~m
    grown = m.copy()
    ny, nx = m.shape[-2:]
    for dy in range(-margin, margin + 1):
        for dx in range(abs(dy) - margin, margin - abs(dy) + 1):
            if (dy, dx) == (0, 0) or abs(dy) >= ny or abs(dx) >= nx:
                continue
            grown[..., max(dy, 0):ny + min(dy, 0), max(dx, 0):nx + min(dx, 0)] |= m[
                ..., max(-dy, 0):ny + min(-dy, 0), max(-dx, 0):nx + min(-dx, 0)]
    return ~grown


def _sample(values: np.ndarray, n: int = 16384) -> np.ndarray:
    """A strided subsample of at most about ``n`` values (for medians)."""
    return values[:: max(1, values.size // n)]


def _stack(raw: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, mask)`` as ``(N, y, x)`` stacks.

    float32 and float64 are kept (the statistics are taken in float64 on the values they
    use); other dtypes are converted to float64.
    """
    raw = np.asarray(raw)
    if raw.dtype not in (np.float32, np.float64):
        raw = raw.astype(np.float64)
    mask = np.asarray(mask, dtype=bool)
    if raw.ndim == 2:
        raw, mask = raw[None], mask[None]
    return raw, mask


def air_fractions(raw: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(air_floor_fraction, air_signal_fraction)`` of a stack (see the module docstring).

    * Floor: the fraction of the air within :data:`AIR_FLOOR_TOL` of the foreground level
      of the image minimum.
    * Signal (QI1-like): the fraction of the air brighter than the background floor ``b``
      (5th percentile of the air) by more than ``max(AIR_NOISE_K * sigma, AIR_SIGNAL_TOL *
      level)``. ``sigma`` is the noise standard deviation from the differences between
      in-plane neighbours inside the air (``1.4826 * median|d| / sqrt(2)``): white noise
      is fully in it, smooth structured signal such as ghosts hardly at all, so the
      threshold holds even when artefacts fill most of the air; ``level`` is the median
      foreground above ``b``.

    Args:
        raw: ``(N, y, x)`` intensities.
        mask: Body mask of the same shape.

    Returns:
        Both fractions in [0, 1]; NaN without a body, with fewer than :data:`MIN_AIR` air
        pixels, or when the foreground is not brighter than the air.
    """
    nan = (math.nan, math.nan)
    raw, mask = _stack(raw, mask)
    if not mask.any():
        return nan
    in_air = air_mask(mask)
    # the statistics are taken in float64; only the values they use are converted
    air = raw[in_air].astype(np.float64)
    if air.size < MIN_AIR:
        return nan
    flat = raw.ravel()
    floor = float(flat.min())
    base = percentile(_sample(air), 5)
    level = median(flat[_sample(np.flatnonzero(mask))].astype(np.float64)) - base
    if not level > 0:
        return nan
    at_floor = float(np.mean(air <= floor + AIR_FLOOR_TOL * (level + base - floor)))
    # neighbour differences inside the air, only at the sampled pairs: pair p of a row of
    # nx - 1 pairs starts at pixel p + p // (nx - 1) of the flattened stack
    pairs = _sample(np.flatnonzero(in_air[:, :, 1:] & in_air[:, :, :-1]))
    if pairs.size:
        start = pairs + pairs // (raw.shape[2] - 1)
        diff = np.abs(flat[start + 1].astype(np.float64) - flat[start])
        sigma = 1.4826 * median(diff) / math.sqrt(2.0)
    else:
        sigma = 0.0
    signal = float(np.mean(air - base > max(AIR_NOISE_K * sigma, AIR_SIGNAL_TOL * level)))
    return at_floor, signal


def ghost_to_signal_ratio(raw: np.ndarray, mask: np.ndarray) -> float:
    """MRIQC's ghost-to-signal ratio, the larger over the two in-plane axes.

    ``(mean(ghost band) - mean(other background)) / median(foreground)``, where the ghost
    band is the body mask rolled by half the field of view along the axis, minus the
    body.

    Args:
        raw: ``(N, Y, X)`` intensities.
        mask: Body mask of the same shape.

    Returns:
        The ratio (NaN without a body, or without ghost band or background pixels).
    """
    raw, mask = _stack(raw, mask)
    if not mask.any():
        return math.nan
    signal = median(raw[mask])  # interpolated in float64
    if signal == 0:
        return math.nan
    # sums in float64 of the background, and of the ghost band per axis: the rest of the
    # background is their difference
    outside = ~mask
    n_out = int(np.count_nonzero(outside))
    sum_out = float(raw[outside].sum(dtype=np.float64))
    best = math.nan
    for axis in (1, 2):
        ghost = np.roll(mask, mask.shape[axis] // 2, axis=axis) & outside
        n_ghost = int(np.count_nonzero(ghost))
        if n_ghost < 4 or n_out - n_ghost < 4:
            continue
        sum_ghost = float(raw[ghost].sum(dtype=np.float64))
        rest = (sum_out - sum_ghost) / (n_out - n_ghost)
        value = (sum_ghost / n_ghost - rest) / signal
        best = value if math.isnan(best) else max(best, value)
    return best


def slice_direction(scan: Scan) -> tuple[float, float, float]:
    """Absolute RAS direction cosines ``(|r|, |a|, |s|)`` of the slice (plane) normal.

    The normal is the cross product of the affine's two in-plane columns (data axes 1
    and 2 of a volume, 0 and 1 of a 2D image). NaN when the affine is not finite or the
    columns are parallel.
    """
    nan = (math.nan, math.nan, math.nan)
    aff = np.asarray(scan.affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        return nan
    cols = (1, 2) if scan.spatial_ndim == 3 else (0, 1)
    normal = np.cross(aff[:3, cols[0]], aff[:3, cols[1]])
    norm = float(np.linalg.norm(normal))
    if not norm > 0:
        return nan
    r, a, s = (float(v) for v in np.abs(normal) / norm)
    return r, a, s


def applies_to(scan: Scan) -> bool:
    """Whether the k-space, background and ghost measures are computed for ``scan``.

    They describe MR acquisition artefacts (ghosting, motion ringing, spikes) and the
    background of a tomographic volume: computed for MR (by DICOM Modality) and for every
    volume of more than one slice (NIfTI has no modality). A 2D projection radiograph
    (CR, DX, MG, a PNG or JPEG) has no k-space and usually no air background: its values
    are NaN, which the quality distance ignores, and its checks are about 1 ms cheaper.
    """
    if (scan.modality or "").upper() == "MR":
        return True
    return scan.is_volume and scan.spatial_shape[0] > 1


def artifact_metrics(scan: Scan, data: CheckData) -> dict[str, float]:
    """The measures of :data:`ARTIFACT_KEYS` for ``scan`` (NaN where undefined).

    Only the slice direction is computed when :func:`applies_to` is false.

    Args:
        scan: The scan (full-resolution data for the k-space measure, affine).
        data: Its shared downsampled :class:`CheckData` (background measures and the
            ghost-to-signal ratio).
    """
    m: dict[str, float] = {}
    if not applies_to(scan):
        m["kspace_roughness"] = m["air_floor_fraction"] = m["air_signal_fraction"] = math.nan
        m["gsr"] = math.nan
        m["slice_dir_r"], m["slice_dir_a"], m["slice_dir_s"] = slice_direction(scan)
        return {k: (float(v) if v == v else math.nan) for k, v in m.items()}
    try:
        m["kspace_roughness"] = line_power_roughness(_planes(scan))
    except (ValueError, MemoryError):
        m["kspace_roughness"] = math.nan
    if data.raw.size:
        m["air_floor_fraction"], m["air_signal_fraction"] = air_fractions(data.raw, data.mask)
        m["gsr"] = ghost_to_signal_ratio(data.raw, data.mask)
    else:
        m["air_floor_fraction"] = m["air_signal_fraction"] = m["gsr"] = math.nan
    m["slice_dir_r"], m["slice_dir_a"], m["slice_dir_s"] = slice_direction(scan)
    # one NaN object, so that equal metric dicts compare equal
    return {k: (float(v) if v == v else math.nan) for k, v in m.items()}
