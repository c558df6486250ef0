"""Field-of-view checks: anatomy cut by the border, coverage, plane, slices, localisers.

All checks take the scan and an optional precomputed :class:`~scanqc.scoring.body_mask.
CheckData` (``run_checks`` builds it once) and return a list of
:class:`~scanqc.io.scan.ScanWarning`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring.body_mask import CheckData, meta_get, meta_text, prepare

#: A border side is "touched" when at least this fraction of its pixels is body.
CUT_FRACTION = 0.15
#: ... in at least this fraction of the slices that contain anatomy.
CUT_SLICE_FRACTION = 0.1
#: Touch fraction from which a cut is reported as ``warn`` (else ``info``; always ``info``
#: for projection radiographs, where limbs and trunk run past the film by design).
CUT_WARN_FRACTION = 0.5
#: Body fraction under which a scan has no anatomy (``high``) / mostly air (``warn``).
NO_ANATOMY_FRACTION = 0.005
MOSTLY_AIR_FRACTION = 0.03
#: An end slice whose body area is at least this fraction of the typical slice area
#: means the anatomy continues beyond the covered range.
END_AREA_FRACTION = 0.5
#: Default minimum extent (mm) along the slice axis when anatomy continues at both ends.
TYPICAL_MIN_EXTENT_MM = 100.0
#: Extent below this fraction of the reference median extent is short coverage.
REFERENCE_EXTENT_FRACTION = 0.7
#: |cosine| of the slice normal with its main axis below which a plane is oblique.
OBLIQUE_COS = 0.8

PLANES = ("axial", "coronal", "sagittal", "oblique")
_SIDES = ("top", "bottom", "left", "right")
_LOCALIZER_WORDS = re.compile(
    r"(scout|locali[sz]er|survey|topogram|surview|scanogram|pilot|tri-?pilot|\bloc\b|"
    r"3[- ]?plane|plan[- ]?scan)",
    re.IGNORECASE,
)
_PROJECTION_MODALITIES = {"CR", "DX", "MG", "XA", "RF", "RG", "IO", "PX", "OT", "SC", "US", ""}


def _data(scan: Scan, data: CheckData | None) -> CheckData:
    return data if data is not None else prepare(scan)


def _slice_range(idx: np.ndarray) -> tuple[int, int] | None:
    if idx.size == 0:
        return None
    return int(idx.min()), int(idx.max())


def border_touch(mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per side, the fraction of each slice's border pixels that are inside ``mask``.

    Args:
        mask: Body mask ``(N, y, x)``.

    Returns:
        ``{"top"|"bottom"|"left"|"right": array (N,)}`` (image/screen sides: top = row 0,
        left = column 0).
    """
    m = mask.astype(np.float32)
    return {
        "top": m[:, 0, :].mean(axis=1),
        "bottom": m[:, -1, :].mean(axis=1),
        "left": m[:, :, 0].mean(axis=1),
        "right": m[:, :, -1].mean(axis=1),
    }


def check_fov_cut(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``fov_cut``: anatomy touching an image border (one warning per side).

    A side is cut when at least :data:`CUT_FRACTION` of its border pixels are body in at
    least :data:`CUT_SLICE_FRACTION` of the slices holding anatomy. ``value`` is the
    largest touched fraction; ``severity`` is ``warn`` from :data:`CUT_WARN_FRACTION`
    (``info`` for projection radiographs).
    """
    d = _data(scan, data)
    areas = d.mask.reshape(d.mask.shape[0], -1).mean(axis=1)
    body = areas > 0.01
    if not body.any():
        return []
    out = []
    for side, frac in border_touch(d.mask).items():
        cut = (frac >= CUT_FRACTION) & body
        if cut.sum() < max(1, CUT_SLICE_FRACTION * body.sum()):
            continue
        value = float(frac[body].max())
        sev = "warn" if value >= CUT_WARN_FRACTION and not is_projection(scan) else "info"
        rng = _slice_range(d.slice_index[cut]) if scan.is_volume else None
        where = f" on slices {rng[0]}-{rng[1]}" if rng else ""
        out.append(
            ScanWarning(
                "fov_cut",
                f"anatomy cut by the {side} border ({value:.0%} of the border){where}",
                severity=sev,
                slices=rng,
                region=side,
                value=value,
            )
        )
    return out


def check_no_anatomy(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``no_anatomy``: the body mask is (nearly) empty: blank scan or mostly air."""
    d = _data(scan, data)
    frac = d.body_fraction
    if frac < NO_ANATOMY_FRACTION:
        return [ScanWarning("no_anatomy", f"no anatomy found (body mask {frac:.1%} of the "
                            "scan)", severity="high", value=frac)]
    if frac < MOSTLY_AIR_FRACTION:
        return [ScanWarning("no_anatomy", f"mostly air (body mask {frac:.1%} of the scan)",
                            severity="warn", value=frac)]
    return []


def _axis_end_names(scan: Scan) -> tuple[str, str]:
    """Anatomical names of the first and last slice ends of axis 0."""
    try:
        v = np.asarray(scan.affine, dtype=float)[:3, 0]
        c = int(np.argmax(np.abs(v)))
        if not np.isfinite(v).all() or abs(v[c]) == 0:
            raise ValueError
    except (ValueError, IndexError, TypeError):
        return "first slices", "last slices"
    pos = ("right", "anterior", "superior")[c]
    neg = ("left", "posterior", "inferior")[c]
    return (neg, pos) if v[c] > 0 else (pos, neg)


def coverage_ends(data: CheckData) -> tuple[bool, bool, float]:
    """Return ``(anatomy at first slice, anatomy at last slice, typical slice area)``."""
    areas = data.mask.reshape(data.mask.shape[0], -1).mean(axis=1)
    if areas.size < 4 or areas.max() <= 0.01:
        return False, False, float(areas.max(initial=0.0))
    ref = float(np.median(np.sort(areas)[areas.size // 2:]))
    return (bool(areas[0] >= END_AREA_FRACTION * ref),
            bool(areas[-1] >= END_AREA_FRACTION * ref), ref)


def slice_extent_mm(scan: Scan) -> float:
    """Extent of a volume along its slice axis in mm (``n_slices * slice spacing``)."""
    if not scan.is_volume:
        return float("nan")
    n = scan.spatial_shape[0]
    sp = float(scan.spacing[0]) if scan.spacing else float("nan")
    return n * sp


def check_truncated_coverage(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``truncated_coverage`` (info): the first/last slice is still full of anatomy."""
    if not scan.is_volume or scan.spatial_shape[0] < 4:
        return []
    d = _data(scan, data)
    first, last, _ = coverage_ends(d)
    names = _axis_end_names(scan)
    n = scan.spatial_shape[0]
    out = []
    for hit, name, sl in ((first, names[0], (0, 0)), (last, names[1], (n - 1, n - 1))):
        if hit:
            out.append(ScanWarning("truncated_coverage",
                                   f"anatomy continues beyond the {name} end of the scan",
                                   severity="info", slices=sl, region=name))
    return out


def short_against_references(extent_mm: float, reference_extents_mm: Sequence[float],
                             ) -> ScanWarning | None:
    """The reference form of ``short_coverage`` (warn), or None.

    ``extent_mm`` below :data:`REFERENCE_EXTENT_FRACTION` of the references' median.
    """
    med = float(np.median(reference_extents_mm))
    if extent_mm < REFERENCE_EXTENT_FRACTION * med:
        return ScanWarning("short_coverage", f"covers {extent_mm:.0f} mm along the slice axis, "
                           f"the references {med:.0f} mm", severity="warn", value=extent_mm)
    return None


def check_short_coverage(
    scan: Scan,
    data: CheckData | None = None,
    reference_extents_mm: Sequence[float] | None = None,
    typical_min_mm: float | None = None,
) -> list[ScanWarning]:
    """``short_coverage``: the volume covers too little along its slice axis.

    Short compared with references (below :data:`REFERENCE_EXTENT_FRACTION` of their
    median extent) or, without references, shorter than ``typical_min_mm`` (default
    :data:`TYPICAL_MIN_EXTENT_MM`) while anatomy continues at both ends.
    """
    if not scan.is_volume or scan.spatial_shape[0] < 2:
        return []
    extent = slice_extent_mm(scan)
    if not np.isfinite(extent) or extent <= 0:
        return []
    refs = [float(r) for r in (reference_extents_mm or []) if np.isfinite(r) and r > 0]
    if refs:
        short = short_against_references(extent, refs)
        return [short] if short is not None else []
    d = _data(scan, data)
    first, last, _ = coverage_ends(d)
    limit = TYPICAL_MIN_EXTENT_MM if typical_min_mm is None else float(typical_min_mm)
    if first and last and extent < limit:
        names = _axis_end_names(scan)
        return [ScanWarning("short_coverage",
                            f"covers only {extent:.0f} mm and anatomy continues beyond both "
                            f"ends ({names[0]} and {names[1]})", severity="warn",
                            region=f"{names[0]}+{names[1]}", value=extent)]
    return []


def normal_plane(normal: Sequence[float]) -> str:
    """Name the plane whose slice normal (RAS) is ``normal``."""
    n = np.asarray(normal, dtype=float)
    norm = np.linalg.norm(n)
    if not np.isfinite(norm) or norm == 0:
        return ""
    n = np.abs(n / norm)
    c = int(np.argmax(n))
    if n[c] < OBLIQUE_COS:
        return "oblique"
    return ("sagittal", "coronal", "axial")[c]


def acquisition_plane(scan: Scan) -> str:
    """The acquisition plane of ``scan``: axial, coronal, sagittal, oblique or "" (unknown).

    NIfTI volumes are reoriented by the reader, so their original axis codes decide (the
    third axis is the slice axis); DICOM series use the slice normal (axis 0 of the
    affine); single DICOM images use the cross product of their in-plane directions when
    an ``ImageOrientationPatient`` is known. Projection images without orientation get "".
    """
    fmt = str(meta_get(scan, "format", default="")).lower()
    orig = str(meta_get(scan, "original_orientation", default=""))
    if fmt == "nifti" or (orig and len(orig) == 3):
        if len(orig) == 3:
            return {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal",
                    "S": "axial", "I": "axial"}.get(orig[2].upper(), "")
        return ""
    aff = np.asarray(scan.affine, dtype=float)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        return ""
    if scan.is_volume and scan.spatial_shape[0] > 1:
        a, b = aff[:3, 1], aff[:3, 2]
        return normal_plane(np.cross(a, b))
    iop = meta_get(scan, "ImageOrientationPatient")
    if iop is not None:
        try:
            v = np.asarray([float(x) for x in iop], dtype=float)
            if v.size == 6:
                return normal_plane(np.cross(v[:3], v[3:]))
        except (TypeError, ValueError):
            return ""
    return ""


def description_plane(text: str) -> str:
    """The plane named by a series description ("sag", "cor", "ax", "tra" ...), or ""."""
    found = set()
    for tok in re.split(r"[^a-z]+", (text or "").lower()):
        if not tok:
            continue
        if tok == "sag" or tok.startswith("sagit"):
            found.add("sagittal")
        elif tok == "cor" or tok.startswith("coron"):
            found.add("coronal")
        elif tok in ("ax", "axi", "tra", "trans", "tran") or tok.startswith(("axial", "transv")):
            found.add("axial")
    return found.pop() if len(found) == 1 else ""


def check_plane_mismatch(
    scan: Scan, sibling_planes: Sequence[str] | None = None
) -> list[ScanWarning]:
    """``plane_mismatch``: the measured plane disagrees with the description or siblings.

    Args:
        scan: The scan.
        sibling_planes: Planes of the other series it is compared with (e.g. the rest of
            the dataset); a mismatch is reported when at least 3 siblings agree on a
            plane at 70% or more and this scan's plane differs.
    """
    plane = acquisition_plane(scan)
    if plane in ("", "oblique"):
        return []
    out = []
    desc = meta_text(scan, "SeriesDescription", "ProtocolName") or scan.name
    named = description_plane(desc)
    if named and named != plane:
        out.append(ScanWarning("plane_mismatch",
                               f"slices are {plane} but the description says {named}",
                               severity="warn", region=plane))
    sib = [p for p in (sibling_planes or []) if p in ("axial", "coronal", "sagittal")]
    if len(sib) >= 3:
        top, count = Counter(sib).most_common(1)[0]
        share = count / len(sib)
        if share >= 0.7 and top != plane:
            out.append(ScanWarning("plane_mismatch",
                                   f"slices are {plane} but {share:.0%} of the other series "
                                   f"are {top}", severity="warn", region=plane, value=share))
    return out


def detect_slice_gaps(positions: Sequence[float]) -> list[ScanWarning]:
    """``missing_slices`` / ``uneven_spacing`` from slice positions along the normal (mm)."""
    p = np.sort(np.asarray([float(x) for x in positions], dtype=float))
    p = p[np.isfinite(p)]
    if p.size < 3:
        return []
    gaps = np.diff(p)
    step = float(np.median(gaps))
    if step <= 0:
        return [ScanWarning("uneven_spacing", "duplicate slice positions", severity="warn")]
    out = []
    big = np.flatnonzero(gaps > 1.5 * step)
    if big.size:
        missing = int(np.round(gaps[big] / step - 1).sum())
        out.append(ScanWarning("missing_slices",
                               f"about {missing} missing slice(s) after slice {int(big[0])}",
                               severity="warn", slices=(int(big[0]), int(big[-1]) + 1),
                               value=float(missing)))
    rest = np.delete(gaps, big)
    if rest.size >= 2 and float(np.std(rest)) > 0.1 * step:
        out.append(ScanWarning("uneven_spacing",
                               f"slice spacing varies (sd {np.std(rest):.2f} mm around "
                               f"{step:.2f} mm)", severity="warn", value=float(np.std(rest))))
    return out


def check_slice_gaps(scan: Scan) -> list[ScanWarning]:
    """Missing / uneven slices from slice positions in the metadata.

    Only when the reader has not already reported them (reader warnings are passed
    through by ``run_checks``).
    """
    have = {w.code for w in scan.warnings}
    if have & {"missing_slices", "uneven_spacing", "uneven_slice_spacing"}:
        return []
    pos = meta_get(scan, "slice_positions", "slice_locations")
    if pos is None:
        return []
    try:
        return detect_slice_gaps(list(pos))
    except (TypeError, ValueError):
        return []


def is_localizer(scan: Scan) -> tuple[bool, str]:
    """Return ``(is a localiser/scout, why)``."""
    itype = meta_text(scan, "ImageType")
    if "localizer" in itype or "localiser" in itype:
        return True, "ImageType says LOCALIZER"
    desc = meta_text(scan, "SeriesDescription", "ProtocolName", "StudyDescription")
    m = _LOCALIZER_WORDS.search(desc)
    if m:
        return True, f"description says '{m.group(0)}'"
    thk = meta_get(scan, "SliceThickness")
    try:
        thk_f = float(thk) if thk is not None else float("nan")
    except (TypeError, ValueError):
        thk_f = float("nan")
    n = scan.spatial_shape[0] if scan.is_volume else 1
    if n <= 3 and np.isfinite(thk_f) and thk_f >= 20.0 and scan.modality.upper() in (
        "CT", "MR", "PT", "NM"
    ):
        return True, f"{n} slice(s) of {thk_f:.0f} mm"
    return False, ""


def check_localizer(scan: Scan) -> list[ScanWarning]:
    """``localizer``: a scout / localiser / topogram rather than a diagnostic series."""
    hit, why = is_localizer(scan)
    if hit:
        return [ScanWarning("localizer", f"localiser/scout image ({why})", severity="warn")]
    return []


def is_projection(scan: Scan) -> bool:
    """True for 2D projection-type images (radiographs, photos, PNG/JPEG files)."""
    return (not scan.is_volume) and scan.modality.upper() in _PROJECTION_MODALITIES
