"""Mid-sagittal plane of a head (or any bilaterally symmetric) volume, found from the image.

The plane is searched, not assumed at the array centre: over a left-right offset and two small
rotations (yaw in the axial plane, roll in the coronal plane), the score is the correlation
between the volume and its mirror image about the candidate plane. The search runs coarse to
fine on downsampled copies (a grid on about 6 mm voxels, then Powell refinement on about
3 mm voxels).

Geometry is in millimetres relative to the array centre, in data-axis order. For scanqc's
NIfTI volumes the data axes are (S, P, L), so the plane normal is close to ``(0, 0, 1)``.
A 2D image ``(Y, X)`` is handled as a one-slice volume (yaw only: a symmetry line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize


@dataclass(frozen=True)
class Midplane:
    """A symmetry plane ``normal . x = offset_mm``.

    ``x`` is a position in millimetres relative to the array centre, in data-axis order
    (``(z, y, x)`` scaled by ``spacing``); for 2D images ``normal[0]`` is 0.

    Attributes:
        normal: Unit normal (3,), in data-axis order, pointing towards +x (axis 2).
        offset_mm: Signed distance of the plane from the array centre along ``normal``.
        spacing: Voxel size (mm) of the volume the plane was fitted to, ``(sz, sy, sx)``.
        shape: Spatial shape of that volume, ``(nz, ny, nx)``.
        yaw_deg: Rotation of the plane about axis 0 (in the axial plane), degrees.
        roll_deg: Rotation of the plane about axis 1 (in the coronal plane), degrees.
        correlation: Correlation between the volume and its mirror about the plane.
    """

    normal: tuple[float, float, float]
    offset_mm: float
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    yaw_deg: float = 0.0
    roll_deg: float = 0.0
    correlation: float = float("nan")

    @property
    def offset_vox(self) -> float:
        """Offset from the array centre in voxels along the left-right axis (axis 2)."""
        return self.offset_mm / float(self.spacing[2])

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-friendly dict."""
        return {
            "normal": [float(v) for v in self.normal],
            "offset_mm": float(self.offset_mm),
            "offset_vox": float(self.offset_vox),
            "yaw_deg": float(self.yaw_deg),
            "roll_deg": float(self.roll_deg),
            "correlation": float(self.correlation),
        }

    def point_lr_index(self, z: float, y: float) -> float:
        """Return the axis-2 index where the plane crosses row ``(z, y)`` (voxel units)."""
        sp = np.asarray(self.spacing, dtype=float)
        ctr = (np.asarray(self.shape, dtype=float) - 1.0) / 2.0
        n = np.asarray(self.normal, dtype=float)
        pz, py = (z - ctr[0]) * sp[0], (y - ctr[1]) * sp[1]
        px = (self.offset_mm - n[0] * pz - n[1] * py) / n[2]
        return float(px / sp[2] + ctr[2])


def plane_normal(yaw_deg: float, roll_deg: float) -> np.ndarray:
    """Return the unit normal for a yaw (about axis 0) and roll (about axis 1), in degrees."""
    yaw, roll = np.deg2rad(yaw_deg), np.deg2rad(roll_deg)
    return np.array(
        [np.sin(roll), np.cos(roll) * np.sin(yaw), np.cos(roll) * np.cos(yaw)], dtype=float
    )


def _as3d(volume: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    vol = np.asarray(volume, dtype=np.float32)
    sp = np.asarray([float(s) for s in spacing], dtype=float)
    if vol.ndim == 2:
        vol = vol[None]
        sp = np.r_[1.0, sp[-2:]] if sp.size >= 2 else np.ones(3)
    if vol.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array, got shape {vol.shape}")
    if sp.size != 3 or not np.all(sp > 0):
        sp = np.ones(3)
    return vol, sp


def _mirror_matrix(
    normal: np.ndarray, offset_mm: float, spacing: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(matrix, offset)`` for ``affine_transform`` mirroring index space."""
    n = normal / np.linalg.norm(normal)
    h = np.eye(3) - 2.0 * np.outer(n, n)
    d = np.diag(spacing)
    dinv = np.diag(1.0 / spacing)
    ctr = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    mat = dinv @ h @ d
    # v' = D^-1 (H D (v - c) + 2 o n) + c
    off = ctr - mat @ ctr + dinv @ (2.0 * offset_mm * n)
    return mat, off


def mirror_volume(
    volume: np.ndarray,
    plane: Midplane,
    spacing: Sequence[float] | None = None,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Mirror ``volume`` about ``plane`` (``scipy.ndimage.affine_transform``).

    The mirror is its own inverse, so mirroring twice gives the input back (up to
    interpolation). ``volume`` may be a 2D image when the plane came from one.

    Args:
        volume: Array with the geometry the plane was fitted to (or a resampled copy when
            ``spacing`` gives its own voxel size and it spans the same field of view).
        plane: The symmetry plane.
        spacing: Voxel size of ``volume`` if it differs from ``plane.spacing``.
        order: Spline order (1 = linear).
        cval: Value outside the field of view.

    Returns:
        float32 array with the shape of ``volume``.
    """
    is2d = np.asarray(volume).ndim == 2
    sp_in = plane.spacing if spacing is None else spacing
    vol, sp = _as3d(volume, sp_in if not is2d else tuple(sp_in)[-2:])
    if spacing is None and tuple(vol.shape) != tuple(plane.shape):
        raise ValueError(f"volume shape {vol.shape} differs from the plane's {plane.shape}")
    mat, off = _mirror_matrix(np.asarray(plane.normal), plane.offset_mm, sp, vol.shape)
    if is2d:
        out = ndimage.affine_transform(
            vol[0], mat[1:, 1:], offset=off[1:], order=order, cval=cval, mode="constant"
        )
        return out.astype(np.float32, copy=False)
    out = ndimage.affine_transform(vol, mat, offset=off, order=order, cval=cval, mode="constant")
    return out.astype(np.float32, copy=False)


def mirror_index(plane: Midplane, index: Sequence[float]) -> np.ndarray:
    """Return the voxel index that mirrors ``index`` (z, y, x) about ``plane``."""
    sp = np.asarray(plane.spacing, dtype=float)
    mat, off = _mirror_matrix(np.asarray(plane.normal), plane.offset_mm, sp, plane.shape)
    return mat @ np.asarray(index, dtype=float) + off


def _downsample(
    vol: np.ndarray, sp: np.ndarray, target_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    factors = np.minimum(1.0, sp / float(target_mm))
    if vol.shape[0] == 1:
        factors[0] = 1.0
    # at least one voxel per axis (a 3-slice volume at 1 mm would otherwise zoom to 0 slices)
    factors = np.maximum(factors, 1.0 / np.maximum(np.asarray(vol.shape, dtype=float), 1.0))
    if np.allclose(factors, 1.0):
        return vol, sp.copy()
    small = ndimage.zoom(vol, factors, order=1, prefilter=False)
    new_sp = sp * np.asarray(vol.shape, dtype=float) / np.asarray(small.shape, dtype=float)
    return small.astype(np.float32, copy=False), new_sp


def _score(vol: np.ndarray, sp: np.ndarray, yaw: float, roll: float, off_mm: float) -> float:
    n = plane_normal(yaw, roll)
    mat, off = _mirror_matrix(n, off_mm, sp, vol.shape)
    if vol.shape[0] == 1:
        mir = ndimage.affine_transform(vol[0], mat[1:, 1:], offset=off[1:], order=1, cval=0.0)
        a, b = vol[0].ravel(), mir.ravel()
    else:
        mir = ndimage.affine_transform(vol, mat, offset=off, order=1, cval=0.0)
        a, b = vol.ravel(), mir.ravel()
    if a.size == 0:
        return -1.0
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else -1.0


def estimate_midplane(
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    max_angle_deg: float = 20.0,
    max_offset_mm: float | None = None,
    coarse_mm: float = 6.0,
    fine_mm: float = 3.0,
) -> Midplane:
    """Estimate the mid-sagittal (left-right symmetry) plane of ``volume`` from its content.

    Args:
        volume: ``(Z, Y, X)`` volume with axis 2 left-right (scanqc NIfTI order (S, P, L)),
            or a 2D ``(Y, X)`` image with X left-right. Any intensity scale.
        spacing: Voxel size in mm, data-axis order.
        max_angle_deg: Largest yaw/roll searched.
        max_offset_mm: Largest offset searched around the intensity centre of mass (default:
            a quarter of the left-right field of view).
        coarse_mm: Voxel size of the coarse grid search.
        fine_mm: Voxel size of the refinement.

    Returns:
        The plane with the highest mirror correlation.
    """
    vol, sp = _as3d(volume, spacing)
    is2d = vol.shape[0] == 1
    vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(vol, [1.0, 99.5])
    if not hi > lo:
        return Midplane((0.0, 0.0, 1.0), 0.0, tuple(sp), tuple(vol.shape), correlation=0.0)
    vol = np.clip((vol - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    # centre of mass along left-right: the start point of the offset search
    prof = vol.sum(axis=(0, 1))
    ctr_x = (vol.shape[2] - 1) / 2.0
    com = float((prof * np.arange(prof.size)).sum() / max(prof.sum(), 1e-9))
    com_mm = (com - ctr_x) * sp[2]
    span = max_offset_mm if max_offset_mm is not None else 0.25 * vol.shape[2] * sp[2]

    coarse, csp = _downsample(vol, sp, coarse_mm)
    angles = np.arange(-max_angle_deg, max_angle_deg + 1e-6, 5.0)
    rolls = [0.0] if is2d else list(angles)
    step = max(csp[2], 2.0)
    offs = com_mm + np.arange(-span, span + 1e-6, step)
    best = (-np.inf, 0.0, 0.0, com_mm)
    # yaw x offset at roll 0, then roll x offset at the best yaw (separable coarse search)
    for yaw in angles:
        for o in offs:
            s = _score(coarse, csp, yaw, 0.0, o)
            if s > best[0]:
                best = (s, yaw, 0.0, o)
    for roll in rolls:
        for o in offs:
            s = _score(coarse, csp, best[1], roll, o)
            if s > best[0]:
                best = (s, best[1], roll, o)

    fine, fsp = _downsample(vol, sp, fine_mm)
    x0 = np.array([best[1], best[2], best[3]], dtype=float)

    def cost(p: np.ndarray) -> float:
        yaw, roll, o = p
        if is2d:
            roll = 0.0
        if abs(yaw) > max_angle_deg + 5 or abs(roll) > max_angle_deg + 5:
            return 2.0
        return -_score(fine, fsp, yaw, roll, o)

    res = optimize.minimize(
        cost,
        x0,
        method="Powell",
        options={"xtol": 0.05, "ftol": 1e-5, "maxfev": 400},
    )
    p = res.x if res.fun <= cost(x0) else x0
    yaw, roll, o = float(p[0]), (0.0 if is2d else float(p[1])), float(p[2])
    corr = -float(min(res.fun, cost(x0)))
    n = plane_normal(yaw, roll)
    return Midplane(
        normal=(float(n[0]), float(n[1]), float(n[2])),
        offset_mm=o,
        spacing=(float(sp[0]), float(sp[1]), float(sp[2])),
        shape=(int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2])),
        yaw_deg=yaw,
        roll_deg=roll,
        correlation=corr,
    )
