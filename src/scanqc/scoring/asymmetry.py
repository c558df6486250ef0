"""Contralateral asymmetry maps: Siamese patch distances between a scan and its mirror image.

Pipeline for a volume (:func:`asymmetry_map`):

1. normalise intensities to [0, 1] (:func:`scanqc.io.intensity.normalize`);
2. find the mid-sagittal plane from the image (:mod:`scanqc.scoring.midplane`) and mirror the
   volume about it;
3. resample both to ``PIXEL_MM`` in-plane and embed every 32 x 32 patch of the selected axial
   slices (about every 3 mm) on a 4-pixel grid with the Siamese encoder
   (:mod:`scanqc.models.asymmetry_net`); the pair distance ``D`` at a grid cell compares a patch
   with the location-matched patch of the other side, so ``D`` is symmetric about the plane;
4. localise within the patch: the heatmap is ``D`` times the smoothed voxel-wise absolute
   difference ``|I - mirror(I)|`` (the patch distance gates, the voxel difference places);
5. decide the side: a lesion patch is atypical among the scan's *other* patches, its mirror
   partner is not. The typicality ``T`` of a patch is the mean distance of its raw-intensity
   descriptor (8 x 8 block means) to its k nearest patches of the same scan outside its own
   neighbourhood (the same rule for the Siamese map and the baseline); the side weight is
   ``w = T_own^p / (T_own^p + T_mirror^p)``, and the heatmap is multiplied by ``w``;
6. map the grid back to the scan's voxels, smooth (Gaussian, ``SMOOTH_MM``), mask to the
   foreground.

The scan-level score is the maximum of the smoothed symmetric distance map ``D``.
:func:`intensity_difference_map` is the baseline: the smoothed absolute difference between the
normalised volume and its mirror about the same plane (with the same side rule on raw
intensity patches). :func:`asymmetry_pair` compares two paired 2D images (left and right
mammograms of the same view), mirroring one.

torch is imported inside functions only (the widgets import this module at start-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from scanqc.io.intensity import normalize
from scanqc.io.scan import Scan
from scanqc.progress import CancelToken, ProgressCallback, check, report
from scanqc.scoring.midplane import Midplane, estimate_midplane, mirror_volume

if TYPE_CHECKING:  # pragma: no cover
    from scanqc.models.asymmetry_net import AsymmetryEncoder
    from scanqc.models.asymmetry_train import PairVolume

#: Working in-plane pixel size (mm); must match the encoder's training resolution.
PIXEL_MM = 1.5
#: Patch side and grid stride in working pixels (see ``scanqc.models.asymmetry_net``).
PATCH = 32
STRIDE = 4
#: Target distance between analysed slices (mm).
SLICE_STEP_MM = 3.0
#: Gaussian smoothing of the heatmap (mm, sigma).
SMOOTH_MM = 3.0
#: Sharpness of the side weight.
SIDE_POWER = 4.0
#: Foreground threshold on the normalised image.
FG_THRESHOLD = 0.08


@dataclass
class Region:
    """A connected high-asymmetry region.

    Attributes:
        slices: Inclusive slice range ``(first, last)`` (``(0, 0)`` for a 2D image).
        bbox: ``(y0, x0, y1, x1)`` in-plane bounding box, inclusive-exclusive.
        value: Peak heatmap value inside the region.
        peak: Voxel index of the peak (``(z, y, x)``; ``(y, x)`` for 2D).
    """

    slices: tuple[int, int]
    bbox: tuple[int, int, int, int]
    value: float
    peak: tuple[int, ...]

    def describe(self) -> str:
        """One-line text, e.g. ``"slices 10-14, y 40-60, x 20-35 (0.81)"``."""
        y0, x0, y1, x1 = self.bbox
        return (
            f"slices {self.slices[0]}-{self.slices[1]}, y {y0}-{y1 - 1}, x {x0}-{x1 - 1} "
            f"({self.value:.3f})"
        )


@dataclass
class AsymmetryResult:
    """Result of :func:`asymmetry_map` (or one side of :func:`asymmetry_pair`).

    Attributes:
        heatmap: float32, same spatial shape as the scan data; high = asymmetric, on the side
            judged abnormal.
        score: Scan-level asymmetry score (max of the smoothed symmetric distance map).
        top_regions: Up to 3 regions, highest first.
        plane: The mid-sagittal plane used (None for image pairs).
        symmetric_map: The smoothed pair-distance map before the side weight (same shape).
        method: ``"siamese"`` or ``"intensity"``.
        info: Extra details (slices analysed, timings, model provenance).
    """

    heatmap: np.ndarray
    score: float
    top_regions: list[Region]
    plane: Midplane | None
    symmetric_map: np.ndarray | None = None
    method: str = "siamese"
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- geometry helpers


def _gray_volume(scan: Scan) -> tuple[np.ndarray, tuple[float, float, float]]:
    g = scan.gray()
    sp = tuple(float(s) for s in scan.spacing) if scan.spacing else ()
    if g.ndim == 2:
        sp2 = sp[-2:] if len(sp) >= 2 else (1.0, 1.0)
        return g[None], (1.0, *sp2)
    if g.ndim != 3:
        raise ValueError(f"{scan.path or scan.name}: expected 2D or 3D data, got {g.shape}")
    sp3 = sp[-3:] if len(sp) >= 3 else (1.0, 1.0, 1.0)
    return g, sp3  # type: ignore[return-value]


def _sanitize_spacing(sp: Sequence[float]) -> tuple[float, float, float]:
    out = [float(s) if np.isfinite(s) and float(s) > 0 else 1.0 for s in sp]
    return out[0], out[1], out[2]


def _to_working(vol: np.ndarray, sp: Sequence[float], order: int = 1) -> np.ndarray:
    """Resample axes 1-2 to ``PIXEL_MM`` (working pixel ``q`` = native ``q * PIXEL_MM / sp``)."""
    fy, fx = PIXEL_MM / sp[1], PIXEL_MM / sp[2]
    ny = max(1, int(np.ceil(vol.shape[1] / fy)))
    nx = max(1, int(np.ceil(vol.shape[2] / fx)))
    out = np.empty((vol.shape[0], ny, nx), np.float32)
    for z in range(vol.shape[0]):
        out[z] = ndimage.affine_transform(
            vol[z], np.diag([fy, fx]), output_shape=(ny, nx), order=order, mode="nearest"
        )
    return out


def _interp_axis(arr: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``arr`` along ``axis`` at fractional ``coords`` (clamped)."""
    n = arr.shape[axis]
    c = np.clip(np.asarray(coords, dtype=np.float64), 0, n - 1)
    i0 = np.floor(c).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (c - i0).astype(np.float32)
    a0 = np.take(arr, i0, axis=axis)
    a1 = np.take(arr, i1, axis=axis)
    shape = [1] * arr.ndim
    shape[axis] = len(c)
    w = w.reshape(shape)
    return a0 * (1 - w) + a1 * w


def _grid_to_native(
    grid: np.ndarray, zs: np.ndarray, shape: Sequence[int], sp: Sequence[float]
) -> np.ndarray:
    """Map a ``(len(zs), gy, gx)`` grid (cell centres at working pixel 4i) to native voxels."""
    zf = np.interp(np.arange(shape[0]), zs, np.arange(len(zs))) if len(zs) > 1 else np.zeros(
        shape[0]
    )
    out = _interp_axis(grid.astype(np.float32), 0, zf)
    yg = np.arange(shape[1]) * sp[1] / PIXEL_MM / STRIDE
    out = _interp_axis(out, 1, yg)
    xg = np.arange(shape[2]) * sp[2] / PIXEL_MM / STRIDE
    return _interp_axis(out, 2, xg).astype(np.float32)


def _foreground(norm: np.ndarray) -> np.ndarray:
    fg = norm > FG_THRESHOLD
    out = np.zeros_like(fg)
    for z in range(fg.shape[0]):
        out[z] = ndimage.binary_fill_holes(ndimage.binary_opening(fg[z], iterations=1))
    return out


def _select_slices(mask: np.ndarray, sz: float) -> np.ndarray:
    step = max(1, int(round(SLICE_STEP_MM / max(sz, 1e-3))))
    area = mask.reshape(mask.shape[0], -1).sum(1)
    keep = np.flatnonzero(area >= max(16, 0.05 * area.max())) if area.max() > 0 else []
    if len(keep) == 0:
        return np.arange(0, mask.shape[0], step)
    zs = np.arange(keep[0], keep[-1] + 1, step)
    if zs[-1] != keep[-1]:
        zs = np.r_[zs, keep[-1]]
    return zs


def _pad_for_grid(slices: np.ndarray) -> np.ndarray:
    """Pad ``(N, H, W)`` by ``PATCH/2`` (+ to a multiple of ``STRIDE``) for dense patches."""
    h, w = slices.shape[1:]
    half = PATCH // 2
    ph = (-(h + 2 * half)) % STRIDE
    pw = (-(w + 2 * half)) % STRIDE
    return np.pad(slices, ((0, 0), (half, half + ph), (half, half + pw)))


# --------------------------------------------------------------------------- features


def _siamese_features(
    model: AsymmetryEncoder, slices: np.ndarray, cancel: CancelToken | None, batch: int = 8
) -> np.ndarray:
    """Dense embeddings ``(N, gy, gx, dim)`` of ``(N, H, W)`` working slices."""
    import torch

    padded = _pad_for_grid(slices)
    dev = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for i in range(0, len(padded), batch):
            check(cancel)
            t = torch.from_numpy(np.ascontiguousarray(padded[i : i + batch, None])).to(dev)
            outs.append(model.dense(t).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(outs, 0)


def _intensity_features(slices: np.ndarray) -> np.ndarray:
    """Raw-intensity patch descriptors ``(N, gy, gx, 64)``: 8 x 8 block means of each patch."""
    padded = _pad_for_grid(slices)
    n, h, w = padded.shape
    blocks = padded.reshape(n, h // STRIDE, STRIDE, w // STRIDE, STRIDE).mean(axis=(2, 4))
    k = PATCH // STRIDE
    win = np.lib.stride_tricks.sliding_window_view(blocks, (k, k), axis=(1, 2))
    return win.reshape(*win.shape[:3], k * k).astype(np.float32)


def _typicality(
    feats: np.ndarray,
    mask: np.ndarray,
    zs_mm: np.ndarray,
    k: int = 5,
    bank_size: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Mean distance of each masked cell's feature to its k nearest cells outside its patch.

    Args:
        feats: ``(N, gy, gx, D)``.
        mask: ``(N, gy, gx)`` cells to use (queries and bank).
        zs_mm: Slice positions in mm (N,).
        k: Neighbours averaged.
        bank_size: Cells kept as the reference bank (random, seeded).
        seed: Seed of the bank draw.

    Returns:
        ``(N, gy, gx)`` float32, 0 outside ``mask``.
    """
    idx = np.argwhere(mask)
    out = np.zeros(mask.shape, np.float32)
    if len(idx) < k + 2:
        return out
    rng = np.random.default_rng(seed)
    bank_idx = idx if len(idx) <= bank_size else idx[rng.choice(len(idx), bank_size, False)]
    q = feats[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float32)
    b = feats[bank_idx[:, 0], bank_idx[:, 1], bank_idx[:, 2]].astype(np.float32)
    cell_mm = PIXEL_MM * STRIDE
    excl = 0.5 * PATCH * PIXEL_MM  # patches closer than this share most of their pixels
    qpos = np.c_[zs_mm[idx[:, 0]], idx[:, 1] * cell_mm, idx[:, 2] * cell_mm]
    bpos = np.c_[zs_mm[bank_idx[:, 0]], bank_idx[:, 1] * cell_mm, bank_idx[:, 2] * cell_mm]
    qpos = qpos.astype(np.float32)
    bpos = bpos.astype(np.float32)
    b2 = (b * b).sum(1)
    vals = np.empty(len(idx), np.float32)
    for s in range(0, len(idx), 2048):
        qq = q[s : s + 2048]
        d2 = (qq * qq).sum(1)[:, None] + b2[None, :] - 2.0 * qq @ b.T
        qp = qpos[s : s + 2048]
        near = np.abs(qp[:, None, 0] - bpos[None, :, 0]) < excl
        near &= np.abs(qp[:, None, 1] - bpos[None, :, 1]) < excl
        near &= np.abs(qp[:, None, 2] - bpos[None, :, 2]) < excl
        d2[near] = np.inf
        kk = min(k, d2.shape[1] - 1)
        part = np.partition(d2, kk, axis=1)[:, :kk]
        part[~np.isfinite(part)] = np.nan
        vals[s : s + 2048] = np.sqrt(np.clip(np.nanmean(part, axis=1), 0, None))
    vals = np.nan_to_num(vals, nan=0.0)
    out[idx[:, 0], idx[:, 1], idx[:, 2]] = vals
    return out


def _side_weight(t_own: np.ndarray, t_mir: np.ndarray, power: float = SIDE_POWER) -> np.ndarray:
    a = np.power(np.maximum(t_own, 0), power)
    b = np.power(np.maximum(t_mir, 0), power)
    den = a + b
    w = np.full(t_own.shape, 0.5, np.float32)
    ok = den > 1e-12
    w[ok] = a[ok] / den[ok]
    return w


# --------------------------------------------------------------------------- regions


def top_regions(heatmap: np.ndarray, n: int = 3, rel: float = 0.5) -> list[Region]:
    """Return up to ``n`` connected regions above ``rel * max`` of ``heatmap``, highest first."""
    h = np.asarray(heatmap)
    vol = h[None] if h.ndim == 2 else h
    peak = float(vol.max()) if vol.size else 0.0
    if not peak > 0:
        return []
    lab, nlab = ndimage.label(vol >= rel * peak)
    if nlab == 0:
        return []
    maxima = ndimage.maximum(vol, lab, index=np.arange(1, nlab + 1))
    pos = ndimage.maximum_position(vol, lab, index=np.arange(1, nlab + 1))
    objs = ndimage.find_objects(lab)
    order = np.argsort(maxima)[::-1][:n]
    regions = []
    for i in order:
        sl = objs[i]
        p = tuple(int(v) for v in pos[i])
        regions.append(
            Region(
                slices=(int(sl[0].start), int(sl[0].stop - 1)),
                bbox=(int(sl[1].start), int(sl[2].start), int(sl[1].stop), int(sl[2].stop)),
                value=float(maxima[i]),
                peak=p if h.ndim == 3 else p[1:],
            )
        )
    return regions


# --------------------------------------------------------------------------- preparation


@dataclass
class _Prepared:
    norm: np.ndarray  # (Z, Y, X) native
    mirror: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    plane: Midplane | None


def _prepare_volume(scan: Scan, plane: Midplane | None) -> _Prepared:
    g, sp = _gray_volume(scan)
    sp = _sanitize_spacing(sp)
    norm = normalize(g, scan.modality)
    if plane is None:
        plane = estimate_midplane(norm, sp)
    mir = mirror_volume(norm, plane)
    fg = _foreground(norm)
    mfg = mirror_volume(fg.astype(np.float32), plane, order=0) > 0.5
    return _Prepared(norm, mir, fg & mfg, sp, plane)


def prepare_pair_volume(scan: Scan, plane: Midplane | None = None) -> PairVolume:
    """Return the training input for one scan: working-resolution volume, mirror, mask."""
    from scanqc.models.asymmetry_train import PairVolume

    prep = _prepare_volume(scan, plane)
    zs = _select_slices(prep.mask, prep.spacing[0])
    work = _to_working(prep.norm[zs], prep.spacing)
    mirw = _to_working(prep.mirror[zs], prep.spacing)
    mask = _to_working(prep.mask[zs].astype(np.float32), prep.spacing, order=0) > 0.5
    return PairVolume(work=work, mirror=mirw, mask=mask)


# --------------------------------------------------------------------------- maps


def _heat_from_frames(
    work: np.ndarray,
    other: np.ndarray,
    mask_w: np.ndarray,
    zs_mm: np.ndarray,
    model: AsymmetryEncoder | None,
    cancel: CancelToken | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return grid maps ``(D, w)``: pair distance and side weight of ``work`` vs ``other``."""
    io_, im_ = _intensity_features(work), _intensity_features(other)
    if model is not None:
        fo = _siamese_features(model, work, cancel)
        check(cancel)
        fm = _siamese_features(model, other, cancel)
    else:
        fo, fm = io_, im_
    gy, gx = fo.shape[1:3]
    cm = mask_w[:, : gy * STRIDE : STRIDE, : gx * STRIDE : STRIDE]
    cmask = np.zeros((len(work), gy, gx), bool)
    cmask[:, : cm.shape[1], : cm.shape[2]] = cm
    d = np.linalg.norm(fo - fm, axis=-1).astype(np.float32)
    d[~cmask] = 0.0
    check(cancel)
    # side rule on raw-intensity patch descriptors for both methods (the same rule, so the
    # methods differ only in the pair distance)
    t_own = _typicality(io_, cmask, zs_mm)
    t_mir = _typicality(im_, cmask, zs_mm)
    w = _side_weight(t_own, t_mir)
    w[~cmask] = 0.0
    return d, w


def _smooth(vol: np.ndarray, sp: Sequence[float], mm: float = SMOOTH_MM) -> np.ndarray:
    sig = [mm / s if vol.shape[i] > 1 else 0.0 for i, s in enumerate(sp)]
    return ndimage.gaussian_filter(vol, sig, mode="constant").astype(np.float32)


def _resolve_model(model: AsymmetryEncoder | str | None) -> AsymmetryEncoder:
    from scanqc.models.asymmetry_net import AsymmetryEncoder, load_bundled, load_model

    if model is None:
        return load_bundled()
    if isinstance(model, AsymmetryEncoder):
        return model.eval()
    return load_model(model)[0]


def _volume_map(
    scan: Scan,
    model: AsymmetryEncoder | None,
    plane: Midplane | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    method: str,
) -> AsymmetryResult:
    report(progress, 0, 4, "mid-sagittal plane")
    check(cancel)
    prep = _prepare_volume(scan, plane)
    sp = prep.spacing
    zs = _select_slices(prep.mask, sp[0])
    report(progress, 1, 4, "resampling")
    check(cancel)
    work = _to_working(prep.norm[zs], sp)
    mirw = _to_working(prep.mirror[zs], sp)
    mask_w = _to_working(prep.mask[zs].astype(np.float32), sp, order=0) > 0.5
    report(progress, 2, 4, "patch distances")
    d, w = _heat_from_frames(work, mirw, mask_w, zs * sp[0], model, cancel)
    report(progress, 3, 4, "heatmap")
    check(cancel)
    shape = prep.norm.shape
    wn = _grid_to_native(w, zs, shape, sp)
    fine = _smooth(np.abs(prep.norm - prep.mirror) * prep.mask, sp)
    if model is None:  # baseline: voxel-wise absolute difference
        sym = fine
    else:  # Siamese patch distance, localised within the patch by the voxel difference
        dn = _grid_to_native(d, zs, shape, sp)
        if prep.plane is not None:  # the pair distance belongs to both sides: symmetrise
            dn = np.maximum(dn, mirror_volume(dn, prep.plane))
        sym = _smooth(dn * prep.mask, sp)
    heat = fine * wn if model is None else sym * fine * wn
    heat *= prep.mask
    sym *= prep.mask
    is2d = scan.spatial_ndim == 2
    if is2d:
        heat, sym = heat[0], sym[0]
    report(progress, 4, 4, "done")
    return AsymmetryResult(
        heatmap=heat.astype(np.float32),
        score=float(sym.max()) if sym.size else 0.0,
        top_regions=top_regions(heat),
        plane=prep.plane,
        symmetric_map=sym.astype(np.float32),
        method=method,
        info={"slices_analysed": [int(z) for z in zs], "plane": prep.plane.to_dict()},
    )


def asymmetry_map(
    scan: Scan,
    model: AsymmetryEncoder | str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    *,
    plane: Midplane | None = None,
) -> AsymmetryResult:
    """Siamese left-right asymmetry heatmap of a volume (or a single 2D image).

    Args:
        scan: A volume with axis 2 left-right (scanqc NIfTI order (S, P, L)); a 2D image
            is treated as one slice with a vertical symmetry line.
        model: An :class:`~scanqc.models.asymmetry_net.AsymmetryEncoder`, a model
            directory, or None for the bundled model.
        progress: ``(done, total, message)`` callback.
        cancel: Cancel token.
        plane: A known mid-sagittal plane (skips the search).

    Returns:
        The heatmap (same spatial shape as ``scan.data``), score, top regions and plane.
    """
    enc = _resolve_model(model)
    return _volume_map(scan, enc, plane, progress, cancel, "siamese")


def intensity_difference_map(
    scan: Scan,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    *,
    plane: Midplane | None = None,
) -> AsymmetryResult:
    """Baseline: smoothed ``|I - mirror(I)|`` about the estimated plane (same side rule).

    ``symmetric_map`` holds the plain two-sided difference map.
    """
    return _volume_map(scan, None, plane, progress, cancel, "intensity")


def _image2d(scan: Scan) -> tuple[np.ndarray, tuple[float, float]]:
    g = scan.gray()
    if g.ndim == 3 and g.shape[0] == 1:
        g = g[0]
    if g.ndim != 2:
        raise ValueError(f"{scan.path or scan.name}: expected a 2D image, got shape {g.shape}")
    sp = tuple(float(s) for s in scan.spacing)[-2:] if scan.spacing else (1.0, 1.0)
    if len(sp) != 2 or not all(np.isfinite(s) and s > 0 for s in sp):
        sp = (1.0, 1.0)
    return g, sp  # type: ignore[return-value]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0, 0, mask.shape[0], mask.shape[1]
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def _align(src: np.ndarray, src_box: Sequence[int], dst_shape: Sequence[int],
           dst_box: Sequence[int]) -> np.ndarray:
    """Resample ``src`` so that its box ``src_box`` lands on ``dst_box`` of a new grid."""
    sy = (src_box[2] - src_box[0]) / max(dst_box[2] - dst_box[0], 1)
    sx = (src_box[3] - src_box[1]) / max(dst_box[3] - dst_box[1], 1)
    off = (src_box[0] - dst_box[0] * sy, src_box[1] - dst_box[1] * sx)
    return ndimage.affine_transform(
        src, np.diag([sy, sx]), offset=off, output_shape=tuple(dst_shape), order=1, cval=0.0
    ).astype(np.float32)


def _pair_side(
    a: np.ndarray, b_mirrored: np.ndarray, sp: tuple[float, float], model: AsymmetryEncoder,
    cancel: CancelToken | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Heat for image ``a`` against its aligned, mirrored partner; returns (heat, sym)."""
    sp3 = (1.0, sp[0], sp[1])
    fg_a = _foreground(a[None])
    fg_b = _foreground(b_mirrored[None])
    mask = fg_a & fg_b
    work = _to_working(a[None], sp3)
    oth = _to_working(b_mirrored[None], sp3)
    mask_w = _to_working(mask.astype(np.float32), sp3, order=0) > 0.5
    d, w = _heat_from_frames(work, oth, mask_w, np.zeros(1), model, cancel)
    dn = _grid_to_native(d, np.zeros(1, int), (1, *a.shape), sp3) * mask
    wn = _grid_to_native(w, np.zeros(1, int), (1, *a.shape), sp3)
    fine = _smooth((np.abs(a - b_mirrored) * mask[0])[None], sp3)
    sym = _smooth(dn, sp3) * mask
    return (sym * fine * wn * mask)[0], sym[0]


def asymmetry_pair(
    left_scan: Scan,
    right_scan: Scan,
    model: AsymmetryEncoder | str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[AsymmetryResult, AsymmetryResult]:
    """Asymmetry between paired left and right 2D images (e.g. L and R MLO mammograms).

    The right image is mirrored left-right and its foreground box is resampled onto the
    left image's box (and vice versa for the right heatmap). Pair images by
    ``ImageLaterality`` and ``ViewPosition`` before calling.

    Returns:
        ``(left_result, right_result)``: each heatmap has its own image's shape; both
        carry the same pair-level score.
    """
    enc = _resolve_model(model)
    la, sp_l = _image2d(left_scan)
    ra, sp_r = _image2d(right_scan)
    ln = normalize(la, left_scan.modality)
    rn = np.ascontiguousarray(normalize(ra, right_scan.modality)[:, ::-1])
    box_l = _bbox(_foreground(ln[None])[0])
    box_r = _bbox(_foreground(rn[None])[0])
    report(progress, 0, 2, "left side")
    r_on_l = _align(rn, box_r, ln.shape, box_l)
    heat_l, sym_l = _pair_side(ln, r_on_l, sp_l, enc, cancel)
    report(progress, 1, 2, "right side")
    check(cancel)
    l_on_r = _align(ln, box_l, rn.shape, box_r)
    heat_r, sym_r = _pair_side(rn, l_on_r, sp_r, enc, cancel)
    heat_r, sym_r = heat_r[:, ::-1].copy(), sym_r[:, ::-1].copy()
    score = float(max(sym_l.max(), sym_r.max()))
    report(progress, 2, 2, "done")
    return (
        AsymmetryResult(heat_l, score, top_regions(heat_l), None, sym_l, "siamese-pair"),
        AsymmetryResult(heat_r, score, top_regions(heat_r), None, sym_r, "siamese-pair"),
    )


def fine_tune_on_scans(
    scans: Sequence[Scan],
    model: AsymmetryEncoder | str | None = None,
    *,
    steps: int = 200,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> AsymmetryEncoder:
    """Fine-tune the encoder (default: bundled) on the user's scans; returns a new model."""
    from scanqc.models.asymmetry_train import fine_tune

    enc = _resolve_model(model)
    vols = []
    for i, s in enumerate(scans):
        check(cancel)
        report(progress, i, len(scans), "preparing pairs")
        vols.append(prepare_pair_volume(s))
    tuned, _ = fine_tune(enc, vols, steps=steps, seed=seed, progress=progress, cancel=cancel)
    return tuned
