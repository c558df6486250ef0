"""Realistic, seeded corruptions of a real :class:`~scanqc.io.scan.Scan` (benchmarks, tests).

Every function returns a **new** ``Scan`` (the input's array, metadata and warnings are
never modified) with a new ``scan_id``; the same ``seed`` gives the same output. MR
artefacts use TorchIO (``RandomMotion``, ``RandomGhosting``, ``RandomSpike``,
``RandomBiasField``) under a forked, seeded torch RNG; the rest is numpy. Integer data
is returned in its original dtype (clipped to the dtype's range); RGB images are
corrupted on their luminance and returned as single-channel images.

Bad-data categories (Belton et al.): no anatomy (:func:`blank`, :func:`noise_only`),
no relevant anatomy (:func:`wrong_plane`, :func:`wrong_region`), anatomy out of view
(:func:`fov_miss`); plus acquisition artefacts (:func:`motion`, :func:`ghosting`,
:func:`spikes`, :func:`bias_field`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from scanqc.io.intensity import normalize
from scanqc.io.scan import Scan, make_scan_id

#: Corruptions applicable to any scan with ``(scan, seed)``, by name.
CORRUPTIONS: dict[str, Callable[..., Scan]] = {}


def _register(fn: Callable[..., Scan]) -> Callable[..., Scan]:
    CORRUPTIONS[fn.__name__] = fn
    return fn


def _new_scan(scan: Scan, data: np.ndarray, tag: str, seed: int, **changes) -> Scan:
    """Return a copy of ``scan`` with ``data`` and a new id; metadata copied, not shared."""
    return dataclasses.replace(
        scan,
        data=data,
        rgb=changes.pop("rgb", False if data.ndim == len(scan.spatial_shape) else scan.rgb),
        scan_id=make_scan_id(f"{scan.scan_id or scan.path}:{tag}:{seed}"),
        metadata=dict(scan.metadata),
        warnings=list(scan.warnings),
        affine=np.array(changes.pop("affine", scan.affine), dtype=float, copy=True),
        **changes,
    )


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float ``values`` to ``dtype``, clipping and rounding for integer types."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return values > 0.5
    return values.astype(dtype)


def _gray(scan: Scan) -> np.ndarray:
    return scan.gray().astype(np.float32, copy=True)


def _out_dtype(scan: Scan) -> np.dtype:
    return np.dtype(scan.data.dtype)


def _in_plane_axes(scan: Scan) -> tuple[int, ...]:
    """TorchIO spatial axes of the image plane: ghosts along the slice axis are invisible."""
    return (0, 1) if scan.spatial_ndim == 2 else (1, 2)


def _torchio(scan: Scan, transform_factory: Callable[[], object], seed: int) -> np.ndarray:
    """Apply a TorchIO transform to the gray data (2D as a one-slice volume), seeded."""
    import torch
    import torchio as tio

    g = _gray(scan)
    vol = g[None, :, :, None] if g.ndim == 2 else g[None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        transform = transform_factory()
        img = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(vol)))
        out = transform(img).data.numpy()[0]
    return out[:, :, 0] if g.ndim == 2 else out


@_register
def motion(scan: Scan, seed: int = 0, severity: float = 1.0) -> Scan:
    """Rigid-motion artefact (k-space mixing of moved copies; ``tio.RandomMotion``)."""
    import torchio as tio

    out = _torchio(
        scan,
        lambda: tio.RandomMotion(
            degrees=10 * severity, translation=10 * severity, num_transforms=2 + int(severity)
        ),
        seed,
    )
    return _new_scan(scan, _cast_like(out, _out_dtype(scan)), "motion", seed)


@_register
def ghosting(scan: Scan, seed: int = 0, severity: float = 1.0) -> Scan:
    """Ghosting along an in-plane (phase-encoding) axis (``tio.RandomGhosting``)."""
    import torchio as tio

    out = _torchio(
        scan,
        lambda: tio.RandomGhosting(
            num_ghosts=(4, 10),
            axes=_in_plane_axes(scan),
            intensity=(0.6 * severity, min(1.0, 1.0 * severity)),
        ),
        seed,
    )
    return _new_scan(scan, _cast_like(out, _out_dtype(scan)), "ghosting", seed)


@_register
def spikes(scan: Scan, seed: int = 0, severity: float = 1.0) -> Scan:
    """Herringbone / k-space spike artefact (``tio.RandomSpike``)."""
    import torchio as tio

    out = _torchio(
        scan,
        lambda: tio.RandomSpike(num_spikes=(1, 3), intensity=(1.0 * severity, 3.0 * severity)),
        seed,
    )
    return _new_scan(scan, _cast_like(out, _out_dtype(scan)), "spikes", seed)


@_register
def bias_field(scan: Scan, seed: int = 0, severity: float = 1.0) -> Scan:
    """Smooth multiplicative intensity inhomogeneity (``tio.RandomBiasField``)."""
    import torchio as tio

    g = _gray(scan)
    lo = float(g.min())
    shifted = dataclasses.replace(scan, data=g - lo, rgb=False)  # field multiplies intensities
    out = _torchio(shifted, lambda: tio.RandomBiasField(coefficients=0.8 * severity), seed) + lo
    return _new_scan(scan, _cast_like(out, _out_dtype(scan)), "bias_field", seed)


@_register
def blank(scan: Scan, seed: int = 0) -> Scan:
    """No anatomy: every pixel zero (``seed`` only enters the new id)."""
    return _new_scan(scan, np.zeros(scan.spatial_shape, dtype=_out_dtype(scan)), "blank", seed)


@_register
def noise_only(scan: Scan, seed: int = 0) -> Scan:
    """No anatomy: Gaussian noise with the original's mean and standard deviation."""
    g = _gray(scan)
    rng = np.random.default_rng(seed)
    out = rng.normal(float(g.mean()), float(g.std()) or 1.0, size=g.shape)
    return _new_scan(scan, _cast_like(out, _out_dtype(scan)), "noise_only", seed)


@_register
def fov_miss(scan: Scan, seed: int = 0, keep: float = 0.15) -> Scan:
    """Field of view that misses the anatomy: keep only the emptiest edge slab.

    Candidate slabs are the first/last ``keep`` fraction along each in-plane axis (and
    the slice axis of volumes with at least 8 slices); the one with the least foreground
    (windowed intensity > 0.2) is kept, ties broken by ``seed``. The affine is shifted
    so the kept voxels stay where they were in patient space.
    """
    g = _gray(scan)
    n = g.ndim
    w = normalize(g, scan.modality)
    axes = list(range(n)) if (n == 3 and g.shape[0] >= 8) else list(range(n - 2, n))
    rng = np.random.default_rng(seed)
    cands = []
    for ax in axes:
        width = max(1, int(round(keep * g.shape[ax])))
        for side in (0, 1):
            start = 0 if side == 0 else g.shape[ax] - width
            sl = [slice(None)] * n
            sl[ax] = slice(start, start + width)
            cands.append((float((w[tuple(sl)] > 0.2).mean()), rng.random(), ax, start, width))
    _, _, ax, start, width = min(cands)
    sl = [slice(None)] * n
    sl[ax] = slice(start, start + width)
    data = np.array(scan.data[tuple(sl)] if not scan.rgb else g[tuple(sl)], order="C", copy=True)
    aff = np.array(scan.affine, dtype=float)
    offset = np.zeros(3)  # index (z, y, x) for volumes, (y, x, 0) for images
    offset[ax] = start
    aff[:3, 3] = (aff @ np.r_[offset, 1.0])[:3]
    data = data if not scan.rgb else _cast_like(data, _out_dtype(scan))
    return _new_scan(scan, data, "fov_miss", seed, affine=aff)


def wrong_plane(scan: Scan, seed: int = 0, plane: str | None = None) -> Scan:
    """Reslice a volume into another plane but keep the original's labels.

    The ``(Z, Y, X)`` volume is resliced along ``Y`` (``"coronal"`` for axial input) or
    ``X`` (``"sagittal"``); ``plane=None`` picks one with ``seed``. Name, description and
    modality still say the original plane (the "coronal series filed as sagittal" case);
    spacing and affine are permuted consistently, so the geometry stays true.

    Raises:
        ValueError: For 2D images.
    """
    if not scan.is_volume:
        raise ValueError("wrong_plane needs a volume")
    if plane is None:
        plane = ("coronal", "sagittal")[int(np.random.default_rng(seed).integers(2))]
    if plane not in ("coronal", "sagittal"):
        raise ValueError(f"plane must be 'coronal' or 'sagittal', got {plane!r}")
    order = (1, 0, 2) if plane == "coronal" else (2, 0, 1)
    src = scan.gray() if scan.rgb else scan.data
    data = np.array(np.transpose(src, order), order="C", copy=True)
    aff = np.array(scan.affine, dtype=float)
    aff[:, :3] = aff[:, list(order)]
    spacing = tuple(scan.spacing[i] for i in order) if len(scan.spacing) == 3 else scan.spacing
    return _new_scan(scan, data, f"wrong_plane_{plane}", seed, affine=aff, spacing=spacing)


def wrong_region(scan: Scan, other: Scan, seed: int = 0) -> Scan:
    """Pixels and geometry of ``other`` (another body region) under ``scan``'s labels."""
    return dataclasses.replace(
        scan,
        data=np.array(other.data, copy=True),
        spacing=tuple(other.spacing),
        affine=np.array(other.affine, dtype=float, copy=True),
        kind=other.kind,
        rgb=other.rgb,
        scan_id=make_scan_id(f"{scan.scan_id or scan.path}:wrong_region:{other.scan_id}:{seed}"),
        metadata=dict(scan.metadata),
        warnings=list(scan.warnings),
    )


def apply(name: str, scan: Scan, seed: int = 0, **kwargs) -> Scan:
    """Apply the corruption called ``name`` (a key of :data:`CORRUPTIONS` or ``wrong_plane``)."""
    fn = CORRUPTIONS.get(name) or {"wrong_plane": wrong_plane}.get(name)
    if fn is None:
        raise ValueError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
    return fn(scan, seed=seed, **kwargs)
