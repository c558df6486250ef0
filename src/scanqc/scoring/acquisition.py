"""How a scan was acquired, compared with the references: the named "unlike" warnings.

The Siamese score says *that* a scan is unlike the user's references; these checks say
*why*, when the reason is in the geometry or the header: another modality, a 2D image
among volumes (or a 4D series among 3D ones), another acquisition plane, much coarser or
finer voxels, a much shorter coverage. Each rule fires only when the scan is unlike
**every** reference (or, for sizes, outside the references' range by a clear factor), so
a reference set that mixes protocols widens what counts as alike.

A scan's :class:`AcquisitionProfile` is a handful of numbers and words read from the
scan in the worker that reads it (:func:`acquisition_profile`); the engine keeps the
references' profiles and calls :func:`unlike_references` for every scored scan. These
warnings are ``warn``: the scan may be fine for another purpose, but not like the
references the user chose. Runs without references compare each scan with the dataset's
typical scans instead (:func:`typical_profiles`, :func:`unlike_dataset`): the same rules
with codes ending in ``_unlike_dataset``, as ``info``, without the coverage rule.

=============================== ============================================================
code                            rule
=============================== ============================================================
``modality_unlike_references``  the scan's modality (CR/DX/RG/DR count as one, XR) is none
                                of the references' (all references must name one)
``dimension_unlike_references`` a 2D image when every reference is a volume, a volume when
                                every reference is 2D, a 4D series when none is
``plane_unlike_references``     a volume whose acquisition plane (axial, coronal, sagittal)
                                is none of the reference volumes' planes
``resolution_unlike_references`` in-plane pixel size (geometric mean; of a volume: of its
                                two smallest voxel sides) outside the references' range by
                                more than :data:`INPLANE_FACTOR`, or slice spacing (a
                                volume's largest voxel side) by more than
                                :data:`SLICE_FACTOR`
``short_coverage``              extent along the slice axis below
                                :data:`~scanqc.scoring.fov.REFERENCE_EXTENT_FRACTION` of
                                the references' median (the reference form of the check)
=============================== ============================================================

Sizes are compared only when the scan and at least :data:`MIN_KNOWN` references of its
dimension (2D with 2D, volumes with volumes) carry a real spacing (a PNG's 1.0 "pixel"
spacing is not one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scanqc.io.scan import Scan, ScanWarning, Severity
from scanqc.scoring.fov import acquisition_plane, short_against_references

#: Pixel size outside [smallest reference / F, largest reference x F] is unlike.
INPLANE_FACTOR = 1.5
#: Slice spacing outside [smallest reference / F, largest reference x F] is unlike.
SLICE_FACTOR = 2.0
#: Fewest references with a known value for a size comparison.
MIN_KNOWN = 2
#: Reader warnings that mean the spacing is a placeholder.
NO_SPACING_CODES = frozenset({"no_spacing", "missing_spacing"})
#: Modalities of projection radiography, compared as one.
RADIOGRAPHY = frozenset({"CR", "DX", "DR", "RG", "XR"})
#: Share of a dataset's scans (where known) that makes a value typical (runs without
#: references, :func:`typical_profiles`).
DATASET_MAJORITY = 0.9
#: Fewest scans (with a known value) for a dataset comparison.
MIN_DATASET = 20
#: Modalities that say nothing about the acquisition.
UNKNOWN_MODALITIES = frozenset({"", "OT", "SC"})


@dataclass(frozen=True)
class AcquisitionProfile:
    """What is compared with the references (NaN or "" when unknown).

    Attributes:
        modality: Modality group (``XR`` for CR/DX/DR/RG), "" when unknown.
        dims: ``"2d"`` or ``"3d"``.
        n_volumes: Volumes in the file (> 1 for a 4D series, of which one is scored).
        plane: ``axial``, ``coronal``, ``sagittal``, ``oblique`` or "".
        inplane_mm: Geometric mean of the in-plane pixel sizes (of a volume: of its two
            smallest voxel sides).
        slice_mm: Slice spacing of a volume (its largest voxel side).
        extent_mm: Extent of a volume along data axis 0 (slices x spacing; head-foot for
            NIfTI, the slice normal for DICOM series), as ``short_coverage`` measures it.
    """

    modality: str = ""
    dims: str = "2d"
    n_volumes: int = 1
    plane: str = ""
    inplane_mm: float = math.nan
    slice_mm: float = math.nan
    extent_mm: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (pickles and serialises anywhere)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AcquisitionProfile | None:
        """The profile of :meth:`to_dict` (None for None or an unreadable dict)."""
        if not d:
            return None
        try:
            return cls(modality=str(d.get("modality") or ""), dims=str(d.get("dims") or "2d"),
                       n_volumes=int(d.get("n_volumes") or 1), plane=str(d.get("plane") or ""),
                       inplane_mm=_num(d.get("inplane_mm")), slice_mm=_num(d.get("slice_mm")),
                       extent_mm=_num(d.get("extent_mm")))
        except (TypeError, ValueError):
            return None


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) and f > 0 else math.nan


def modality_group(modality: str) -> str:
    """``XR`` for projection radiography, "" for unknown, else the modality."""
    m = (modality or "").strip().upper()
    if m in UNKNOWN_MODALITIES:
        return ""
    return "XR" if m in RADIOGRAPHY else m


def acquisition_profile(scan: Scan) -> AcquisitionProfile:
    """Read the profile of ``scan`` (header and geometry only: no pixel is touched)."""
    codes = {w.code for w in scan.warnings}
    n_vol = max([int(w.value or 1) for w in scan.warnings if w.code == "4d_first_volume"]
                or [1])
    sp = [float(s) for s in (scan.spacing or ())]
    known = bool(sp) and not (codes & NO_SPACING_CODES)
    inplane = slice_mm = extent = math.nan
    if known and scan.is_volume and len(sp) == 3:
        # by size, not by axis: a NIfTI volume is stored head-foot on axis 0 whatever its
        # acquisition plane, so its slice thickness can lie on any axis
        fine = sorted(abs(s) for s in sp)
        inplane = _num(math.sqrt(fine[0] * fine[1]))
        slice_mm = _num(fine[2])
        extent = _num(scan.spatial_shape[0] * sp[0])
    elif known and len(sp) >= 2:
        inplane = _num(math.sqrt(abs(sp[-1] * sp[-2])))
    try:
        plane = acquisition_plane(scan) if scan.is_volume else ""
    except (ValueError, TypeError):
        plane = ""
    return AcquisitionProfile(
        modality=modality_group(scan.modality), dims="3d" if scan.is_volume else "2d",
        n_volumes=n_vol, plane=plane, inplane_mm=inplane, slice_mm=slice_mm,
        extent_mm=extent)


def _range(values: Sequence[float]) -> tuple[float, float] | None:
    v = [x for x in values if math.isfinite(x)]
    return (min(v), max(v)) if len(v) >= MIN_KNOWN else None


def _outside(value: float, rng: tuple[float, float] | None, factor: float) -> bool:
    return rng is not None and math.isfinite(value) and (
        value > rng[1] * factor or value < rng[0] / factor)


def _mm(rng: tuple[float, float]) -> str:
    lo, hi = rng
    return f"{lo:.3g} mm" if math.isclose(lo, hi, rel_tol=0.005) else f"{lo:.3g}-{hi:.3g} mm"


def unlike_references(
    profile: AcquisitionProfile | None, references: Sequence[AcquisitionProfile | None],
) -> list[ScanWarning]:
    """Warnings for what makes ``profile`` unlike every reference profile.

    Args:
        profile: The scan's profile (None: nothing is compared).
        references: The references' profiles (None entries are ignored).

    Returns:
        ``warn`` warnings, in the order of the table in the module docstring.
    """
    return _unlike(profile, references, "references", "the references", "warn", coverage=True)


def unlike_dataset(
    profile: AcquisitionProfile | None, typical: Sequence[AcquisitionProfile | None],
) -> list[ScanWarning]:
    """The rules of :func:`unlike_references` against the dataset's typical scans.

    For runs without references: ``typical`` is :func:`typical_profiles` of the whole
    dataset. The codes end in ``_unlike_dataset`` and are ``info``: a majority is not the
    user's statement of what is right (a few CTs among radiographs may be wanted);
    coverage is not compared (datasets mix body regions more than reference sets do).
    """
    return _unlike(profile, typical, "dataset", "most scans", "info", coverage=False)


def majority(values: Sequence[str], share: float = DATASET_MAJORITY,
             min_known: int = MIN_DATASET) -> str | None:
    """The value held by at least ``share`` of the known (non-empty) ``values``, or None.

    None as well when fewer than ``min_known`` values are known.
    """
    known = [v for v in values if v]
    if len(known) < min_known:
        return None
    top = max(set(known), key=known.count)
    return top if known.count(top) >= share * len(known) else None


def typical_profiles(profiles: Sequence[AcquisitionProfile | None]) -> list[AcquisitionProfile]:
    """The dataset's typical scans: those sharing what at least 90 % of it shares.

    Of at least :data:`MIN_DATASET` profiles, keeps those with the modality group, the
    dimension, the single-volume form and the volume plane that each hold at least
    :data:`DATASET_MAJORITY` of the scans where known (a property without such a majority
    filters nothing), then drops the sizes outside the 5th-95th percentile, so that a few
    odd scans do not widen the typical range. Empty when the dataset is too small.
    """
    subset = [p for p in profiles if p is not None]
    if len(subset) < MIN_DATASET:
        return []
    mod = majority([p.modality for p in subset])
    if mod is not None:
        subset = [p for p in subset if p.modality == mod]
    dims = majority([p.dims for p in subset])
    if dims is not None:
        subset = [p for p in subset if p.dims == dims]
    single = majority(["1" if p.n_volumes <= 1 else "4d" for p in subset])
    if single == "1":
        subset = [p for p in subset if p.n_volumes <= 1]
    plane = majority([p.plane for p in subset if p.dims == "3d"])
    if plane is not None:
        subset = [p for p in subset if p.dims != "3d" or p.plane == plane]
    for key in ("inplane_mm", "slice_mm"):
        known = np.array([getattr(p, key) for p in subset if math.isfinite(getattr(p, key))])
        if known.size >= MIN_DATASET:
            lo, hi = np.percentile(known, [5, 95])
            subset = [p for p in subset
                      if not math.isfinite(getattr(p, key)) or lo <= getattr(p, key) <= hi]
    return subset


def _unlike(
    profile: AcquisitionProfile | None, references: Sequence[AcquisitionProfile | None],
    suffix: str, noun: str, severity: Severity, coverage: bool,
) -> list[ScanWarning]:
    refs = [r for r in references if r is not None]
    if profile is None or not refs:
        return []
    out: list[ScanWarning] = []
    mods = {r.modality for r in refs}
    if profile.modality and "" not in mods and profile.modality not in mods:
        out.append(ScanWarning(f"modality_unlike_{suffix}",
                               f"modality {profile.modality}, {noun} are "
                               f"{'/'.join(sorted(mods))}", severity=severity))
    dims = {r.dims for r in refs}
    if profile.dims not in dims:
        what = "a 2D image" if profile.dims == "2d" else "a volume"
        other = "volumes" if profile.dims == "2d" else "2D images"
        out.append(ScanWarning(f"dimension_unlike_{suffix}",
                               f"{what}, {noun} are {other}", severity=severity))
    elif profile.n_volumes > 1 and all(r.n_volumes <= 1 for r in refs):
        out.append(ScanWarning(f"dimension_unlike_{suffix}",
                               f"a 4D series of {profile.n_volumes} volumes (volume 0 is "
                               f"scored), {noun} are single volumes", severity=severity,
                               value=float(profile.n_volumes)))
    planes = {r.plane for r in refs if r.dims == "3d" and r.plane}
    named = {"axial", "coronal", "sagittal"}
    if (profile.dims == "3d" and profile.plane in named and planes and planes <= named
            and profile.plane not in planes
            and sum(r.dims == "3d" and bool(r.plane) for r in refs) >= MIN_KNOWN):
        out.append(ScanWarning(f"plane_unlike_{suffix}",
                               f"{profile.plane} slices, {noun} are "
                               f"{'/'.join(sorted(planes))}", severity=severity,
                               region=profile.plane))
    alike = [r for r in refs if r.dims == profile.dims]  # sizes: 2D with 2D, 3D with 3D
    inplane = _range([r.inplane_mm for r in alike])
    slices = _range([r.slice_mm for r in alike])
    parts = []
    if _outside(profile.inplane_mm, inplane, INPLANE_FACTOR):
        parts.append(f"{profile.inplane_mm:.3g} mm pixels, {noun} {_mm(inplane)}")
    if profile.dims == "3d" and _outside(profile.slice_mm, slices, SLICE_FACTOR):
        parts.append(f"{profile.slice_mm:.3g} mm slices, {noun} {_mm(slices)}")
    if parts:
        out.append(ScanWarning(f"resolution_unlike_{suffix}", "; ".join(parts),
                               severity=severity, value=profile.inplane_mm))
    extents = [r.extent_mm for r in refs if r.dims == "3d" and math.isfinite(r.extent_mm)]
    if (coverage and profile.dims == "3d" and math.isfinite(profile.extent_mm)
            and len(extents) >= MIN_KNOWN):
        short = short_against_references(profile.extent_mm, extents)
        out += [short] if short is not None else []
    return out
