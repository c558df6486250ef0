"""Contralateral asymmetry maps: where a scan differs from its mirror image more than it should.

Pipeline for a volume (:func:`asymmetry_maps`, :func:`asymmetry_map`):

1. normalise intensities to [0, 1] (:func:`scanqc.io.intensity.normalize`); find the
   mid-sagittal plane from the image (:mod:`scanqc.scoring.midplane`) on the native volume;
   make an analysis copy no finer than ``ANALYSIS_MM`` and mirror it about the plane;
2. where the heatmap may peak (``inner``): the head outline eroded in-plane by ``INNER_MM``,
   without the end slices of the field of view, a band of ``MIDLINE_MM`` around the plane,
   and anything within ``AIR_MM`` of air or cortical bone on either side;
3. detection (``DETECT = "blob"``): the mirror is warped onto the scan with a small smooth
   deformation (demons, ``WARP_*``: natural displacements of gyri, ventricles, skull base);
   the signed log-intensity residual ``r = log(I + eps) - log(mirror + eps)`` outside the
   range the other side reaches within ``TOLERANCE_MM`` is smoothed at lesion scales
   (masked Gaussian means, :mod:`scanqc.scoring.asymmetry_blob`): a lesion is a monopole of
   one sign, a displaced edge a dipole that smoothing cancels;
4. normalisation by the scan's own left-right variability: ``(v - median) / (q90 - median)``
   of each scale's ``|blob|`` within strata of local texture (log-intensity gradient energy),
   so a difference counts more in smooth tissue than where the anatomy is complex; maximum
   over scales, given to both voxels of a mirror pair;
5. Siamese pair distance ``D`` (:mod:`scanqc.models.asymmetry_net`, 32 x 32 patches at
   1.5 mm, slices every ~3 mm, symmetric about the plane), normalised the same way and
   combined by ``COMBINE``. Measured on the development split it added nothing, so by default
   (``COMBINE = "w0"``) the ``siamese`` map equals ``intensity-z`` and the encoder is not run;
   ``"siamese:sum"`` and ``"siamese:w0.25"`` still combine it;
6. side (``SIDE = "projection"``): a lesion brings its own outline. Around the outline of the
   residual blob, the log-intensity steps of each side are projected on the residual's
   gradient; the lesion side carries the step (positive all around), the other side only
   anatomy of random sign. The side weight, averaged over each blob, multiplies the pair
   map. (``"edge"``: the older edge-energy rule; ``"typicality"``: the side whose raw patch
   is atypical among the scan's patches.)
7. resample to the scan's grid. The scan-level score is the maximum of the pair map.

``"intensity"`` is the baseline: the smoothed plain ``|I - mirror(I)|`` in the whole
foreground with the same side rule. ``"intensity-z"`` is steps 1-4 and 6 without the encoder.
:func:`asymmetry_pair` compares two paired 2D images (left and right mammograms of the same
view), mirroring one.

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
from scanqc.scoring.asymmetry_blob import (
    blob_z,
    projection_side,
    region_average,
    signed_tolerant_residual,
    smooth,
)
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
#: Smoothing of the difference maps before normalisation (mm, sigma): integrates a blob's
#: interior and damps thin differences (sulci and gyri that differ between hemispheres).
BLOB_MM = 3.0
#: Demons registration of the mirror onto the scan (see ``_demons``).
WARP_ITERS = 20
WARP_GRID_MM = 2.0
WARP_SIGMA_MM = 6.0
WARP_MAX_MM = 6.0
#: Give both voxels of a mirror pair the larger tolerant difference (the side rule decides).
SYMMETRISE = True
#: Voxel size (mm) of the copy the maps are computed on (finer scans are downsampled).
ANALYSIS_MM = 1.5
#: Sharpness of the side weight.
SIDE_POWER = 4.0
#: Foreground threshold on the normalised image.
FG_THRESHOLD = 0.08
#: In-plane erosion of the foreground (mm) before the heatmap may peak: the outer edges of
#: the head (scalp, skull, field-of-view cut) are naturally asymmetric and would win.
INNER_MM = 8.0
#: Registration slack of the tolerant residual (mm): a voxel's residual is 0 if the other side
#: reaches its value within this distance. 4 mm (2 mm before): on the development split 11
#: lesions >= 10 mm more and 2 fewer localised over seeds 1, 3 and 4; held-out: no gain
#: (14 vs 15 of 36; docs/asymmetry.md).
TOLERANCE_MM = 4.0
#: Smoothing of both sides before the tolerant difference (mm, sigma): noise.
PRESMOOTH_MM = 1.0
#: Strata of the normalisation: intensity quantile bins x local texture quantile bins.
N_LEVEL_BINS = 1
N_TEXTURE_BINS = 4
#: Neighbourhood of the local texture (mm, sigma).
TEXTURE_MM = 4.0
#: Band around the mid-plane left out of the heatmap (mm): there a voxel is compared with
#: itself or its immediate neighbour, and midline structures (falx, sinuses) dominate.
MIDLINE_MM = 6.0
#: Side rule: ``"projection"`` (the side whose log-intensity steps carry the outline of the
#: residual blob, :func:`~scanqc.scoring.asymmetry_blob.projection_side`), ``"edge"`` (the
#: side with more edge energy around the outline), ``"typicality"`` (the side whose patch is
#: atypical among the scan's patches) or ``"both"`` (edge and typicality).
SIDE = "projection"
#: Projection side rule: blob scale and integration window (mm, sigma); the weight is then
#: averaged over each blob of the pair map (``SIDE_REGION_MM``) so a blob gets one side.
SIDE_BLOB_MM = 3.0
SIDE_WINDOW_MM = 8.0
SIDE_REGION_MM = 6.0
#: Detection statistic: ``"blob"`` (signed tolerant log residual after the warp, masked
#: Gaussian means at ``BLOB_SCALES_MM``, each scale normalised by the scan's own variability,
#: maximum over scales) or ``"tolerant"`` (the older unsigned tolerant difference).
DETECT = "blob"
#: Neighbourhood of the edge side rule (mm, sigma).
SIDE_MM = 4.0
#: Offset of the log in the edge side rule and the log-domain difference (normalised units).
LOG_EPS = 0.05
#: Domain of the tolerant difference: ``"log"`` (relative) or ``"linear"``.
DIFF_DOMAIN = "log"
#: The heatmap needs tissue on both sides (smoothed value above this, normalised units):
#: air cavities (sinuses, ear canals) of unequal size are not lesions.
TISSUE_MIN = 0.04
#: Margin (mm) kept from air and cortical bone (values below ``TISSUE_MIN`` on either side).
AIR_MM = 5.0
#: How the normalised Siamese distance and the intensity statistic are combined: ``"sum"``,
#: ``"wX"`` (intensity + X * distance), ``"geomean"`` or ``"distance"``. ``"w0"``: on the
#: development split the distance added nothing (sum: 21 of 72 lesions >= 10 mm localised over
#: seeds 1 and 3, weight 0.25: 24, weight 0: 24; docs/asymmetry.md), so the ``siamese``
#: heatmap is the intensity statistic and the encoder is not run for it.
COMBINE = "w0"
#: Methods of :func:`asymmetry_maps`.
METHODS = ("siamese", "intensity-z", "intensity")


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


def _inner(mask: np.ndarray, sp: Sequence[float], mm: float = INNER_MM) -> np.ndarray:
    """Erode each slice of ``mask`` by ``mm`` (in-plane, mm-aware Euclidean distance).

    Slices within ``mm`` of either end of the array (the field of view's end caps, partial
    volumes at the skull base or vertex) are dropped when the volume is thick enough. A
    single 2D image (one slice) is eroded from the image border too: a radiograph's anatomy
    usually fills the field of view, and where the border cuts it is an outline that the
    mirror side does not match.
    """
    if mm <= 0:
        return mask.copy()
    if mask.shape[0] == 1:
        padded = np.pad(mask[0], 1)
        dist = ndimage.distance_transform_edt(padded, sampling=sp[-2:])[1:-1, 1:-1]
        return (dist > mm)[None]
    out = np.zeros_like(mask)
    for z in range(mask.shape[0]):
        if mask[z].any():
            out[z] = ndimage.distance_transform_edt(mask[z], sampling=sp[-2:]) > mm
    cap = int(np.ceil(mm / max(float(sp[0]), 1e-3)))
    if mask.shape[0] > 4 * cap:
        out[:cap] = False
        out[-cap:] = False
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
        finite = np.isfinite(part)
        # mean over the finite neighbours; a patch without any (small images) gets 0
        n_ok = finite.sum(axis=1).astype(part.dtype)
        total = np.where(finite, part, 0.0).sum(axis=1)  # = np.nanmean's sum and division
        mean = np.divide(total, n_ok, out=np.zeros_like(total), where=n_ok > 0)
        vals[s : s + 2048] = np.sqrt(np.clip(mean, 0, None))
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
    flat = lab.ravel()
    sel = np.flatnonzero(flat)
    vals = vol.ravel()[sel]
    labs = flat[sel]
    order = np.lexsort((-vals, labs))  # by label, highest value first within a label
    first = order[np.r_[True, labs[order][1:] != labs[order][:-1]]]
    maxima = vals[first]
    peaks = sel[first]
    objs = ndimage.find_objects(lab)
    regions = []
    for i in np.argsort(maxima)[::-1][:n]:
        sl = objs[int(labs[first[i]]) - 1]
        p = tuple(int(v) for v in np.unravel_index(int(peaks[i]), vol.shape))
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


def _prepare_analysis(scan: Scan, plane: Midplane | None) -> tuple[_Prepared, tuple[int, ...]]:
    """Like :func:`_prepare_volume` on a copy no finer than ``ANALYSIS_MM`` per axis.

    The plane is found on the native volume; the copy spans the same field of view (first
    and last voxel centres), so the plane's geometry holds for it. Returns the prepared copy
    and the native spatial shape.
    """
    g, sp = _gray_volume(scan)
    sp = _sanitize_spacing(sp)
    norm = normalize(g, scan.modality)
    if plane is None:
        plane = estimate_midplane(norm, sp)
    native = tuple(norm.shape)
    fac = [min(1.0, s / ANALYSIS_MM) if n > 1 else 1.0 for s, n in zip(sp, native, strict=True)]
    if all(f >= 1.0 for f in fac):
        mir = mirror_volume(norm, plane)
        csp = sp
    else:
        norm = ndimage.zoom(norm, fac, order=1, prefilter=False).astype(np.float32)
        csp = tuple(
            s * (n - 1) / max(k - 1, 1) if n > 1 else s
            for s, n, k in zip(sp, native, norm.shape, strict=True)
        )
        csp = _sanitize_spacing(csp)
        mir = mirror_volume(norm, plane, spacing=csp)
    fg = _foreground(norm)
    mfg = mirror_volume(fg.astype(np.float32), plane, spacing=csp, order=0) > 0.5
    return _Prepared(norm, mir, fg & mfg, csp, plane), native


def _to_shape(arr: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample ``arr`` to ``shape`` (corner-aligned, as the analysis copy was made)."""
    if tuple(arr.shape) == tuple(shape):
        return arr
    fac = [n / k for n, k in zip(shape, arr.shape, strict=True)]
    out = ndimage.zoom(arr.astype(np.float32), fac, order=order, prefilter=False)
    if out.shape != tuple(shape):  # zoom's rounding: pad or crop by a voxel
        out = out[tuple(slice(0, n) for n in shape)]
        out = np.pad(out, [(0, n - m) for n, m in zip(shape, out.shape, strict=True)],
                     mode="edge")
    return out.astype(np.float32)


def prepare_pair_volume(scan: Scan, plane: Midplane | None = None) -> PairVolume:
    """Return the training input for one scan: working-resolution volume, mirror, mask."""
    from scanqc.models.asymmetry_train import PairVolume

    prep = _prepare_volume(scan, plane)
    zs = _select_slices(prep.mask, prep.spacing[0])
    work = _to_working(prep.norm[zs], prep.spacing)
    mirw = _to_working(prep.mirror[zs], prep.spacing)
    inner = _inner(prep.mask[zs], prep.spacing)
    mask = _to_working(inner.astype(np.float32), prep.spacing, order=0) > 0.5
    return PairVolume(work=work, mirror=mirw, mask=mask)


# --------------------------------------------------------------------------- maps


def _heat_from_frames(
    work: np.ndarray,
    other: np.ndarray,
    mask_w: np.ndarray,
    zs_mm: np.ndarray,
    model: AsymmetryEncoder | None,
    cancel: CancelToken | None,
    side: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return grid maps ``(D, w)``: pair distance and side weight of ``work`` vs ``other``.

    ``w`` (the typicality side rule) is None when ``side`` is False.
    """
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
    if not side:
        return d, None
    # side rule on raw-intensity patch descriptors for both methods (the same rule, so the
    # methods differ only in the pair distance)
    t_own = _typicality(io_, cmask, zs_mm)
    t_mir = _typicality(im_, cmask, zs_mm)
    w = _side_weight(t_own, t_mir)
    w[~cmask] = 0.0
    return d, w


def _smooth(vol: np.ndarray, sp: Sequence[float], mm: float = SMOOTH_MM) -> np.ndarray:
    return smooth(vol, sp, mm)


def _resolve_model(model: AsymmetryEncoder | str | None) -> AsymmetryEncoder:
    from scanqc.models.asymmetry_net import AsymmetryEncoder, load_bundled, load_model

    if model is None:
        return load_bundled()
    if isinstance(model, AsymmetryEncoder):
        return model.eval()
    return load_model(model)[0]


def _away_from_air(both: np.ndarray, sp: Sequence[float]) -> np.ndarray:
    """Voxels with tissue on both sides within ``AIR_MM`` (box): no air or cortical bone.

    Air cavities (sinuses, mastoid cells, ear canals) and the skull base around them are
    naturally asymmetric at the image level and not where this heatmap should peak.
    """
    size = [max(1, 2 * int(round(AIR_MM / s)) + 1) if n > 1 else 1
            for s, n in zip(sp, both.shape, strict=True)]
    return ndimage.minimum_filter(both, size) > TISSUE_MIN


def _plane_distance(shape: Sequence[int], sp: Sequence[float], plane: Midplane) -> np.ndarray:
    """Signed distance (mm) of every voxel from ``plane`` (float32, ``shape``)."""
    n = np.asarray(plane.normal, dtype=float)
    ctr = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    parts = [
        ((np.arange(shape[i]) - ctr[i]) * sp[i] * n[i]).astype(np.float32) for i in range(3)
    ]
    return (
        parts[0][:, None, None] + parts[1][None, :, None] + parts[2][None, None, :]
        - np.float32(plane.offset_mm)
    )


def _demons(
    fixed: np.ndarray, moving: np.ndarray, sp: Sequence[float]
) -> np.ndarray:
    """Warp ``moving`` onto ``fixed`` with a smooth deformation (Thirion demons).

    The two hemispheres of a normal head are not exact mirror images: gyri, ventricles and
    the skull base are displaced by a few millimetres. A smooth deformation of at most
    ``WARP_MAX_MM`` (Gaussian regularisation ``WARP_SIGMA_MM``) absorbs such displacements;
    a lesion is a change of intensity over a region that no small, smooth displacement can
    explain, so it remains in the difference. Returns the warped ``moving`` (native grid).
    """
    if WARP_ITERS <= 0:
        return moving
    coords = demons_coordinates(fixed, moving, sp)
    return ndimage.map_coordinates(moving, coords, order=1, mode="nearest").astype(np.float32)


def demons_coordinates(
    fixed: np.ndarray, moving: np.ndarray, sp: Sequence[float]
) -> np.ndarray:
    """Sampling coordinates ``(ndim, *fixed.shape)`` of the demons warp of :func:`_demons`.

    Runs on a ``WARP_GRID_MM`` copy; the displacement is interpolated back to the native
    grid. ``map_coordinates(moving, coords)`` is the warped ``moving``; the same coordinates
    warp any other volume on that grid the same way.
    """
    fac = [min(1.0, s / WARP_GRID_MM) if n > 1 else 1.0
           for s, n in zip(sp, fixed.shape, strict=True)]
    f = ndimage.zoom(fixed, fac, order=1, prefilter=False)
    m = ndimage.zoom(moving, fac, order=1, prefilter=False)
    gsp = [s * n / k for s, n, k in zip(sp, fixed.shape, f.shape, strict=True)]
    nd = f.ndim
    grid = np.indices(f.shape, dtype=np.float32)
    u = np.zeros((nd, *f.shape), np.float32)  # displacement in voxels of the coarse grid
    sig = [WARP_SIGMA_MM / s if n > 1 else 0.0 for s, n in zip(gsp, f.shape, strict=True)]
    maxv = np.asarray([WARP_MAX_MM / s for s in gsp], np.float32)
    active = [ax for ax in range(nd) if f.shape[ax] > 1]
    for _ in range(WARP_ITERS):
        mw = ndimage.map_coordinates(m, grid + u, order=1, mode="nearest")
        diff = f - mw
        grads = [np.gradient(mw, axis=ax) for ax in active]
        den = sum(g * g for g in grads) + diff * diff + 1e-6
        for ax, g in zip(active, grads, strict=True):
            u[ax] += diff * g / den
            u[ax] = ndimage.gaussian_filter(u[ax], sig, mode="nearest")
            np.clip(u[ax], -maxv[ax], maxv[ax], out=u[ax])
    # back to the native grid: displacement in native voxels
    out_grid = np.indices(fixed.shape, dtype=np.float32)
    coords = [out_grid[ax] * (f.shape[ax] - 1) / max(fixed.shape[ax] - 1, 1) for ax in range(nd)]
    un = np.empty((nd, *fixed.shape), np.float32)
    for ax in range(nd):
        scale = (fixed.shape[ax] - 1) / max(f.shape[ax] - 1, 1)
        un[ax] = ndimage.map_coordinates(u[ax], coords, order=1, mode="nearest") * scale
    return out_grid + un


def _presmooth(
    norm: np.ndarray, mirror: np.ndarray, sp: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    return _smooth(norm, sp, PRESMOOTH_MM), _smooth(mirror, sp, PRESMOOTH_MM)


def _tolerant_difference(
    norm: np.ndarray, mirror: np.ndarray, sp: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel difference to the other side that a small misregistration cannot explain.

    Both sides are smoothed (``PRESMOOTH_MM``); a voxel's difference is how far its value
    lies outside the range (min..max) of the other side within ``TOLERANCE_MM``. Edges that
    are only slightly displaced between the hemispheres give 0; a lesion's interior does not.

    Returns:
        ``(difference, level)``: the difference and ``max`` of the two smoothed sides (the
        intensity level used to stratify the normalisation; symmetric about the plane).
    """
    a, b = _presmooth(norm, mirror, sp)
    level = np.maximum(a, b)
    if DIFF_DOMAIN == "log":  # relative differences: a lesion changes contrast by a factor
        eps = np.float32(LOG_EPS)
        a = np.log(np.maximum(a, 0) + eps)
        b = np.log(np.maximum(b, 0) + eps)
    size = [
        max(1, 2 * int(round(TOLERANCE_MM / s)) + 1) if n > 1 else 1
        for s, n in zip(sp, norm.shape, strict=True)
    ]
    hi = ndimage.maximum_filter(b, size)
    lo = ndimage.minimum_filter(b, size)
    diff = np.maximum(np.maximum(a - hi, lo - a), 0.0)
    return diff.astype(np.float32), level


def _gradient_energy(vol: np.ndarray, sp: Sequence[float]) -> np.ndarray:
    """Squared gradient magnitude (per mm) of ``vol``."""
    out = np.zeros(vol.shape, np.float32)
    for ax in range(vol.ndim):
        if vol.shape[ax] > 1:
            g = np.gradient(vol, axis=ax) / np.float32(sp[ax])
            out += g * g
    return out


def _edge_side(
    a: np.ndarray, b: np.ndarray, sp: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Side weight from edges: ``w`` near 1 where this side's edges outline the difference.

    Returns ``(w, g_a, g_b)`` (the log-intensity gradient energies are reused).

    A lesion brings its own boundary: around the asymmetric region, the lesion side has an
    edge that the other side lacks; a mere displacement of a structure gives edges on both
    sides (``w`` near 0.5). With ``B`` the gradient magnitude of the smoothed ``|a - b|``
    (high on the outline of the asymmetric region) and ``g = |grad log(. + LOG_EPS)|^2``,
    ``S = G*(B (g_a - g_b)) / G*(B (g_a + g_b))`` in [-1, 1] and ``w = (1 + S) / 2`` sharpened by
    ``SIDE_POWER``. ``S`` is antisymmetric about the plane, so the pair's two sides get
    complementary weights.
    """
    outline = np.sqrt(_gradient_energy(_smooth(np.abs(a - b), sp, 2.0), sp))
    # edges of log intensity: a change of contrast inside a region (a multiplicative
    # lesion, a bias) leaves them unchanged, only the region's outline adds energy
    eps = np.float32(LOG_EPS)
    ga = _gradient_energy(np.log(np.maximum(a, 0) + eps), sp)
    gb = _gradient_energy(np.log(np.maximum(b, 0) + eps), sp)
    num = _smooth(outline * (ga - gb), sp, SIDE_MM)
    den = _smooth(outline * (ga + gb), sp, SIDE_MM)
    s = np.where(den > 1e-12, num / np.maximum(den, 1e-12), 0.0)
    return _side_weight((1.0 + s) / 2.0, (1.0 - s) / 2.0), ga, gb


def _quantile_bins(values: np.ndarray, inner: np.ndarray, n: int, rng) -> np.ndarray:
    idx = np.flatnonzero(inner)
    if len(idx) > 200_000:
        idx = rng.choice(idx, 200_000, replace=False)
    if len(idx) == 0 or n <= 1:
        return np.zeros(values.shape, np.int32)
    cuts = np.quantile(values.ravel()[idx], np.arange(1, n) / n)
    return np.digitize(values, cuts).astype(np.int32)


def _strata(
    inner: np.ndarray, level: np.ndarray, texture: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Label every voxel with its stratum: intensity tertile x local-texture quartile.

    Both are symmetric about the plane (the larger of the two sides), so a voxel and its
    mirror partner share a stratum. Natural asymmetry is common where the anatomy is
    complex (skull base, cortex: high texture) and rare in smooth tissue; a lesion leaves the
    texture of log intensity unchanged inside it, so it does not move its own stratum.
    """
    rng = np.random.default_rng(seed)
    lab = _quantile_bins(level, inner, N_LEVEL_BINS, rng)
    tex = _quantile_bins(texture, inner, N_TEXTURE_BINS, rng)
    return tex * N_LEVEL_BINS + lab, N_LEVEL_BINS * N_TEXTURE_BINS


def _stratified_z(
    values: np.ndarray, inner: np.ndarray, strata: np.ndarray, n_strata: int, seed: int = 0
) -> np.ndarray:
    """``(v - median) / (q90 - median)`` per stratum, from the inner voxels of the scan itself.

    This is the scan's own normal left-right variability: a lesion is a small fraction of a
    stratum, natural asymmetry (where it is common) raises the stratum's scale.
    """
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(inner)
    if len(idx) > 400_000:
        idx = rng.choice(idx, 400_000, replace=False)
    v, st = values.ravel()[idx], strata.ravel()[idx]
    loc = np.zeros(n_strata, np.float32)
    scale = np.ones(n_strata, np.float32)
    glob = np.quantile(v, [0.5, 0.9]) if len(v) else np.array([0.0, 1.0])
    g_scale = max(float(glob[1] - glob[0]), 1e-6)
    for k in range(n_strata):
        vk = v[st == k]
        if len(vk) < 50:
            loc[k], scale[k] = glob[0], g_scale
            continue
        q50, q90 = np.quantile(vk, [0.5, 0.9])
        loc[k], scale[k] = q50, max(float(q90 - q50), 0.5 * g_scale, 1e-6)
    z = (values - loc[strata]) / scale[strata]
    z[~inner] = 0.0
    return z.astype(np.float32)


@dataclass
class _Components:
    """Intermediate maps of one volume (native voxel grid)."""

    prep: _Prepared
    inner: np.ndarray  # bool: where the heatmap may peak
    side_typ: np.ndarray | None  # side weight in [0, 1], typicality rule (if needed)
    side_edge: np.ndarray  # side weight in [0, 1], edge rule
    plain: np.ndarray  # smoothed |I - mirror| in the foreground (baseline)
    z_int: np.ndarray  # stratified z of the tolerant difference (pair-symmetric)
    z_siam: np.ndarray | None  # stratified z of the Siamese pair distance (pair-symmetric)
    zs: np.ndarray
    seconds: dict[str, float]
    native: tuple[int, ...]  # the scan's spatial shape (the maps above are on the copy)
    side_proj: np.ndarray | None = None  # side weight in [0, 1], projection rule


def _components(
    scan: Scan,
    model: AsymmetryEncoder | None,
    plane: Midplane | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> _Components:
    import time

    t = {"start": time.perf_counter()}
    report(progress, 0, 4, "mid-sagittal plane")
    check(cancel)
    prep, native = _prepare_analysis(scan, plane)
    t["prepare"] = time.perf_counter()
    sp = prep.spacing
    shape = prep.norm.shape
    zs = _select_slices(prep.mask, sp[0])
    report(progress, 1, 4, "resampling")
    check(cancel)
    report(progress, 2, 4, "patch distances")
    need_typ = SIDE in ("typicality", "both")
    if model is not None or need_typ:
        work = _to_working(prep.norm[zs], sp)
        mirw = _to_working(prep.mirror[zs], sp)
        mask_w = _to_working(prep.mask[zs].astype(np.float32), sp, order=0) > 0.5
        d, w = _heat_from_frames(work, mirw, mask_w, zs * sp[0], model, cancel, need_typ)
    else:
        d, w = None, None
    t["patches"] = time.perf_counter()
    report(progress, 3, 4, "heatmap")
    check(cancel)
    side_typ = _grid_to_native(w, zs, shape, sp) if w is not None else None
    inner = _inner(prep.mask, sp)
    plain = _smooth(np.abs(prep.norm - prep.mirror) * prep.mask, sp)
    pdist = _plane_distance(shape, sp, prep.plane) if prep.plane is not None else None
    if pdist is not None:
        inner &= np.abs(pdist) >= MIDLINE_MM
    warped = _demons(prep.norm, prep.mirror, sp)
    a, b = _presmooth(prep.norm, prep.mirror, sp)
    inner &= _away_from_air(np.minimum(a, b), sp)
    side_edge, ga, gb = _edge_side(a, b, sp)
    texture = _smooth(np.maximum(ga, gb), sp, TEXTURE_MM)
    eps = np.float32(LOG_EPS)
    la = np.log(np.maximum(a, 0) + eps)
    lbw = np.log(np.maximum(_smooth(warped, sp, PRESMOOTH_MM), 0) + eps)
    side_proj = None
    if SIDE == "projection":
        side_proj = projection_side(la, lbw, prep.mask, sp, SIDE_BLOB_MM, SIDE_WINDOW_MM)
    if DETECT == "blob":
        strata, n_strata = _strata(inner, a, texture)
        resid = signed_tolerant_residual(la, lbw, sp, TOLERANCE_MM)
        diff = blob_z(resid, prep.mask, sp, lambda g: np.maximum(
            _stratified_z(g, inner, strata, n_strata), 0.0))
    else:
        diff, level = _tolerant_difference(prep.norm, warped, sp)
        strata, n_strata = _strata(inner, level, texture)
        diff = _smooth(diff, sp, BLOB_MM)
    if SYMMETRISE and prep.plane is not None:  # one value per pair; the side rule decides
        diff = np.maximum(diff, mirror_volume(diff, prep.plane, spacing=sp))
    z_int = diff * inner if DETECT == "blob" else _stratified_z(diff, inner, strata, n_strata)
    z_siam = None
    if model is not None:
        dn = _grid_to_native(d, zs, shape, sp)
        if prep.plane is not None:  # the pair distance belongs to both sides: symmetrise
            dn = np.maximum(dn, mirror_volume(dn, prep.plane, spacing=sp))
        z_siam = _stratified_z(_smooth(dn, sp, BLOB_MM), inner, strata, n_strata)
    t["maps"] = time.perf_counter()
    secs = {k: round(t[k] - t[p], 3) for p, k in zip(
        ["start", "prepare", "patches"], ["prepare", "patches", "maps"], strict=True)}
    return _Components(prep, inner, side_typ, side_edge, plain, z_int, z_siam, zs, secs, native,
                       side_proj)


def _combine(comp: _Components, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(symmetric map, restriction mask)`` of ``method`` from the components."""
    if method == "intensity":  # baseline: plain smoothed difference, whole foreground
        return comp.plain, comp.prep.mask
    zi = np.maximum(comp.z_int, 0.0)
    if method == "intensity-z" or comp.z_siam is None:
        return zi, comp.inner
    zd = np.maximum(comp.z_siam, 0.0)
    how = method.split(":", 1)[1] if ":" in method else COMBINE
    if how == "sum":
        return (zi + zd).astype(np.float32), comp.inner
    if how.startswith("w"):  # development: "siamese:w0.25" = zi + 0.25 zd
        return (zi + float(how[1:]) * zd).astype(np.float32), comp.inner
    if how == "distance":
        return zd, comp.inner
    if how == "geomean":
        return np.sqrt(zi * zd).astype(np.float32), comp.inner
    raise ValueError(f"unknown combination {how!r}")


def _result(scan: Scan, comp: _Components, method: str) -> AsymmetryResult:
    sym, where = _combine(comp, method)
    sym = (sym * where).astype(np.float32)
    if SIDE == "projection" and comp.side_proj is not None:
        side = region_average(comp.side_proj, sym, comp.prep.spacing, SIDE_REGION_MM)
        side = _side_weight(side, 1.0 - side)
    elif SIDE == "typicality":
        side = comp.side_typ
    elif SIDE == "both":
        side = _side_weight(comp.side_typ * comp.side_edge,
                            (1 - comp.side_typ) * (1 - comp.side_edge), 1.0)
    else:
        side = comp.side_edge
    heat = _to_shape(sym * side, comp.native)
    sym = _to_shape(sym, comp.native)
    if scan.spatial_ndim == 2:
        heat, sym = heat[0], sym[0]
    prep = comp.prep
    return AsymmetryResult(
        heatmap=heat,
        score=float(sym.max()) if sym.size else 0.0,
        top_regions=top_regions(heat),
        plane=prep.plane,
        symmetric_map=sym,
        method=method,
        info={
            "analysis_spacing": [float(v) for v in prep.spacing],
            "plane": prep.plane.to_dict() if prep.plane is not None else None,
            "seconds": comp.seconds,
        },
    )


def asymmetry_maps(
    scan: Scan,
    model: AsymmetryEncoder | str | None = None,
    methods: Sequence[str] = METHODS,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    *,
    plane: Midplane | None = None,
) -> dict[str, AsymmetryResult]:
    """Several heatmaps of one scan that share the plane, mirror and side rule.

    Args:
        scan: See :func:`asymmetry_map`.
        model: Encoder, model directory or None (bundled); only loaded when ``"siamese"`` is
            among ``methods``.
        methods: Any of ``"siamese"`` (the full method), ``"intensity-z"`` (the normalised
            tolerant difference without the encoder) and ``"intensity"`` (the plain
            mirrored-difference baseline); ``"siamese:sum"``, ``"siamese:geomean"`` and
            ``"siamese:distance"`` choose how the Siamese distance is combined (development).
        progress: ``(done, total, message)`` callback.
        cancel: Cancel token.
        plane: A known mid-sagittal plane (skips the search).

    Returns:
        ``{method: result}``.
    """
    unknown = {m for m in methods if m.split(":")[0] not in METHODS}
    if unknown:
        raise ValueError(f"unknown asymmetry method(s): {sorted(unknown)}")
    enc = _resolve_model(model) if any(_uses_encoder(m) for m in methods) else None
    comp = _components(scan, enc, plane, progress, cancel)
    out = {m: _result(scan, comp, m) for m in methods}
    report(progress, 4, 4, "done")
    return out


def _uses_encoder(method: str) -> bool:
    """Whether ``method`` needs the Siamese distance (not with weight 0)."""
    if not method.startswith("siamese"):
        return False
    how = method.split(":", 1)[1] if ":" in method else COMBINE
    return not (how.startswith("w") and float(how[1:]) == 0.0)


def _volume_map(
    scan: Scan,
    model: AsymmetryEncoder | None,
    plane: Midplane | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    method: str,
) -> AsymmetryResult:
    comp = _components(scan, model, plane, progress, cancel)
    report(progress, 4, 4, "done")
    return _result(scan, comp, method)


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
    enc = _resolve_model(model) if _uses_encoder("siamese") else None
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


#: Paired 2D images: the two-sided foreground is eroded by this much (mm), so that the
#: outline (a mammogram's skin line), where a small misalignment of the two outlines
#: dominates any difference, cannot hold the peak.
PAIR_INNER_MM = 8.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D mask (film labels and markers dropped)."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def pair_mask(a: np.ndarray, b_mirrored: np.ndarray, sp: Sequence[float]) -> np.ndarray:
    """Where a paired heatmap may be non-zero: ``(1, Y, X)`` bool.

    The largest foreground component of each image (the anatomy, not film labels or
    markers), intersected, then eroded by :data:`PAIR_INNER_MM`.
    """
    fg_a = _largest_component(_foreground(a[None])[0])
    fg_b = _largest_component(_foreground(b_mirrored[None])[0])
    # one slice: _inner erodes from the image border too (anatomy cut by the field of view)
    return _inner((fg_a & fg_b)[None], (1.0, float(sp[0]), float(sp[1])), PAIR_INNER_MM)


def _pair_side(
    a: np.ndarray, b_mirrored: np.ndarray, sp: tuple[float, float], model: AsymmetryEncoder,
    cancel: CancelToken | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Heat for image ``a`` against its aligned, mirrored partner; returns (heat, sym)."""
    sp3 = (1.0, sp[0], sp[1])
    mask = pair_mask(a, b_mirrored, sp)
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

    The right image is mirrored left-right and the box of its largest foreground component
    (the anatomy, without film labels) is resampled onto the left image's box (and vice
    versa for the right heatmap); the heatmaps are limited to :func:`pair_mask`. Pair images by
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
    box_l = _bbox(_largest_component(_foreground(ln[None])[0]))
    box_r = _bbox(_largest_component(_foreground(rn[None])[0]))
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
