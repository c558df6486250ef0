"""DICOM headers into scans: series grouping and slice order.

* Files are grouped by SeriesInstanceUID, then within a series by (rounded
  ImageOrientationPatient, Rows, Columns) when these differ (localizers in three planes
  become three scans); files without a SeriesInstanceUID are grouped by folder;
* a multi-frame object (NumberOfFrames > 1) is one ``volume``; a lone single-frame object
  (radiograph, ultrasound frame, lone CT/MR slice) is an ``image``; two or more
  cross-sectional slices with the same geometry are a ``series`` sorted along the slice
  normal (cross product of the IOP row and column cosines) by the projection of
  ImagePositionPatient;
* objects without pixel data (SR, RT plan, ECG, presentation states, DICOMDIR ...) are
  ``skipped`` with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from scanqc.io.dicom_header import (
    _IMPLAUSIBLE_SPACING,
    PROJECTION_MODALITIES,
    DicomHeader,
    _functional,
    _quiet,
    _vector,
)
from scanqc.io.scan import ScanEntry, ScanWarning, make_scan_id


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit slice normal: cross product of the IOP row and column direction cosines."""
    a = np.asarray(iop, dtype=float)
    n = np.cross(a[:3], a[3:6])
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def spacing_warnings(
    positions: Sequence[float], *, what: str = "slice"
) -> tuple[float | None, list[ScanWarning]]:
    """Analyse sorted slice positions (mm along the normal).

    Returns the median spacing (None when fewer than two distinct positions) and the
    findings: ``duplicate_slices`` (same position twice), ``missing_slices`` (gap larger
    than 1.5 times the median, with the neighbouring slice indices in ``slices``) and
    ``uneven_spacing`` (gaps differing from the median by more than 10 %).
    """
    p = np.asarray(positions, dtype=float)
    out: list[ScanWarning] = []
    if p.size < 2:
        return None, out
    d = np.diff(p)
    span = float(abs(p[-1] - p[0]))
    dup_tol = max(1e-3, 1e-4 * span)
    dup = np.flatnonzero(np.abs(d) <= dup_tol)
    steps = d[np.abs(d) > dup_tol]
    if dup.size:
        first, last = int(dup[0]), int(dup[-1] + 1)
        out.append(
            ScanWarning(
                "duplicate_slices",
                f"{dup.size} {what}(s) share a position with a neighbour "
                f"({what}s {first}-{last})",
                "warn",
                slices=(first, last),
                value=float(dup.size),
            )
        )
    if steps.size == 0:
        return None, out
    med = float(np.median(np.abs(steps)))
    gaps = [i for i in range(d.size) if abs(d[i]) > 1.5 * med]
    for i in gaps[:20]:
        n_missing = max(int(round(abs(d[i]) / med)) - 1, 1)
        out.append(
            ScanWarning(
                "missing_slices",
                f"about {n_missing} {what}(s) missing between {what}s {i} and {i + 1} "
                f"(gap {abs(d[i]):.3g} mm, usual spacing {med:.3g} mm)",
                "high",
                slices=(i, i + 1),
                value=float(n_missing),
            )
        )
    if len(gaps) > 20:
        out.append(
            ScanWarning("missing_slices", f"{len(gaps) - 20} more gaps not listed", "high")
        )
    regular = np.asarray([abs(d[i]) for i in range(d.size) if abs(d[i]) > dup_tol
                          and i not in gaps])
    if regular.size:
        dev = float(np.max(np.abs(regular - med)))
        if dev > max(0.1 * med, 0.01):
            out.append(
                ScanWarning(
                    "uneven_spacing",
                    f"{what} spacing varies from {regular.min():.3g} to {regular.max():.3g} "
                    f"mm (median {med:.3g} mm)",
                    "warn",
                    value=dev,
                )
            )
    return med, out


def order_slices(
    headers: Sequence[DicomHeader],
) -> tuple[list[DicomHeader], list[ScanWarning], float | None, np.ndarray | None]:
    """Sort single-frame slices along the slice normal.

    Returns ``(ordered, warnings, median_spacing, positions_mm)``. When a slice lacks
    ImagePositionPatient/ImageOrientationPatient the order falls back to InstanceNumber
    (then file name) with a ``sorted_by_instance`` warning.
    """
    hs = list(headers)
    if len(hs) < 2:
        return hs, [], None, None
    iops = [h.iop for h in hs]
    ipps = [h.ipp for h in hs]
    if all(v is not None for v in iops) and all(v is not None for v in ipps):
        normal = slice_normal(iops[0])
        proj = np.array([float(np.dot(normal, p)) for p in ipps])
        inst = [h.instance if h.instance is not None else 0 for h in hs]
        idx = sorted(range(len(hs)), key=lambda i: (proj[i], inst[i], hs[i].path))
        ordered = [hs[i] for i in idx]
        pos = proj[idx]
        med, warns = spacing_warnings(pos)
        return ordered, warns, med, pos
    idx = sorted(
        range(len(hs)),
        key=lambda i: (hs[i].instance is None, hs[i].instance or 0, hs[i].path),
    )
    warn = ScanWarning(
        "sorted_by_instance",
        "slice positions missing: slices ordered by InstanceNumber (geometry unknown)",
        "warn",
    )
    return [hs[i] for i in idx], [warn], None, None


# --------------------------------------------------------------------------- grouping


def _rel(path: str, root: str | None) -> str:
    if root:
        try:
            rel = os.path.relpath(path, root)
            if not rel.startswith(".."):
                return rel.replace(os.sep, "/")
        except ValueError:
            pass
    return path.replace(os.sep, "/")


def _series_name(paths: Sequence[str], root: str | None, desc: str, suffix: str = "") -> str:
    folder = os.path.dirname(_rel(paths[0], root))
    if not folder:
        folder = os.path.basename(os.path.normpath(root)) if root else "."
    name = folder + (f" - {desc}" if desc else "")
    return name + suffix


def _entry_header(h: DicomHeader, n_files: int) -> dict[str, Any]:
    meta = h.safe_metadata
    meta["n_files"] = n_files
    if h.headless:
        meta["headless"] = True
    return meta


def _spacing2(h: DicomHeader) -> tuple[float, float] | None:
    sp = h.pixel_spacing()
    if sp is None or not all(_IMPLAUSIBLE_SPACING[0] < s < _IMPLAUSIBLE_SPACING[1] for s in sp):
        return None
    return sp


def _iop_key(h: DicomHeader) -> str:
    v = h.iop
    return "none" if v is None else ",".join(f"{x:.3f}" for x in np.round(v, 3) + 0.0)


def headers_to_entries(
    headers: Sequence[DicomHeader], *, root: str | None = None
) -> list[ScanEntry]:
    """Group DICOM headers into scan entries (series, multi-frame volumes, images, skips).

    Args:
        headers: Headers from :func:`read_header` (any order, any number of series).
        root: Dataset root used for display names and path-based ids.
    """
    with _quiet():  # one for all the values read below
        entries = _group(headers, root)
    by_path = {h.path: h for h in headers}
    for e in entries:  # names that identify the patient, to redact in exports
        for p in e.paths:
            h = by_path.get(p)
            if h is not None and h.private_names:
                e.private_names.update(h.private_names)
    return entries


def _group(headers: Sequence[DicomHeader], root: str | None) -> list[ScanEntry]:
    entries: list[ScanEntry] = []
    groups: dict[tuple, list[DicomHeader]] = {}
    nopix: dict[str, list[DicomHeader]] = {}
    for h in headers:
        rel = _rel(h.path, root)
        if h.is_dicomdir:
            entries.append(
                ScanEntry(
                    make_scan_id(rel), (h.path,), "image", "dicom", "skipped",
                    "DICOMDIR index file (the files it lists are found by the folder walk)",
                    name=rel,
                )
            )
            continue
        if not h.plausible:
            entries.append(
                ScanEntry(
                    make_scan_id(rel), (h.path,), "image", "dicom", "error",
                    "not a readable DICOM file (no preamble or file meta, and no "
                    "recognisable header)" if h.headless else
                    "truncated or empty DICOM data set (no SOP class, no image header)",
                    name=rel,
                )
            )
            continue
        if not h.has_pixels:
            sop = h.sop_class_name
            if h.series_uid and "image" in sop.lower():
                nopix.setdefault(h.series_uid, []).append(h)
                continue
            reason = f"no pixel data (SOP class: {sop})" if sop else "no pixel data"
            entries.append(
                ScanEntry(
                    make_scan_id(rel), (h.path,), "image", "dicom", "skipped", reason,
                    name=rel, modality=h.modality, description=h.description,
                    header=_entry_header(h, 1),
                )
            )
            continue
        warns = []
        if not h.frames_valid:
            warns.append(
                ScanWarning("invalid_header", "NumberOfFrames is not an integer", "warn")
            )
        if h.frames > 1:
            key = h.series_uid + "|" + str(h.get("SOPInstanceUID", rel))
            shape = (h.frames, h.rows, h.cols) + ((3,) if h.samples == 3 else ())
            sp = _spacing2(h)
            entries.append(
                ScanEntry(
                    make_scan_id(key if h.series_uid else rel), (h.path,), "volume", "dicom",
                    name=rel + (f" - {h.description}" if h.description else ""),
                    modality=h.modality, description=h.description, shape=shape,
                    spacing=None if sp is None else (_frame_spacing(h) or 1.0, *sp),
                    header=_entry_header(h, 1), warnings=warns,
                )
            )
            continue
        series = h.series_uid or _nouid_key(h, root)
        groups.setdefault((series, _iop_key(h), h.rows, h.cols), []).append(h)
        if warns:
            h._cache["warns"] = warns
    groups = _split_copies(groups)

    for uid, hs in nopix.items():
        hs.sort(key=lambda x: x.path)
        h = hs[0]
        entries.append(
            ScanEntry(
                make_scan_id(uid), tuple(x.path for x in hs), "series", "dicom", "skipped",
                f"no pixel data (SOP class: {h.sop_class_name}; {len(hs)} files)",
                name=_series_name([h.path], root, h.description), modality=h.modality,
                description=h.description, header=_entry_header(h, len(hs)),
            )
        )

    per_series: dict[str, int] = {}
    for key in groups:
        per_series[key[0]] = per_series.get(key[0], 0) + 1
    seen: dict[str, int] = {}
    for key, hs in groups.items():
        series = key[0]
        split = per_series[series] > 1
        seen[series] = seen.get(series, 0) + 1
        suffix = f" [{seen[series]}/{per_series[series]}]" if split else ""
        id_key = series + (f"|{key[1]}|{key[2]}x{key[3]}" if split else "")
        h0 = hs[0]
        projection = h0.modality in PROJECTION_MODALITIES
        if len(hs) == 1 or projection:
            for h in sorted(hs, key=lambda x: (x.instance or 0, x.path)):
                rel = _rel(h.path, root)
                one_key = id_key if len(hs) == 1 else id_key + "|" + str(
                    h.get("SOPInstanceUID", rel))
                sp = _spacing2(h)
                shape = (h.rows, h.cols) + ((3,) if h.samples == 3 else ())
                entries.append(
                    ScanEntry(
                        make_scan_id(one_key if h.series_uid else rel), (h.path,), "image",
                        "dicom", name=rel + (f" - {h.description}" if h.description else ""),
                        modality=h.modality, description=h.description, shape=shape,
                        spacing=sp, header=_entry_header(h, 1),
                        warnings=list(h._cache.get("warns", [])),
                    )
                )
            continue
        ordered, warns, med, _ = order_slices(hs)
        for h in hs:
            warns += [w for w in h._cache.get("warns", []) if w not in warns]
        sp = _spacing2(h0)
        slice_sp = med or _fallback_slice_spacing(h0)
        spacing = None if sp is None else (slice_sp or 1.0, *sp)
        entries.append(
            ScanEntry(
                make_scan_id(id_key), tuple(h.path for h in ordered), "series", "dicom",
                name=_series_name([h0.path], root, h0.description, suffix),
                modality=h0.modality, description=h0.description,
                shape=(len(ordered), h0.rows, h0.cols) + ((3,) if h0.samples == 3 else ()),
                spacing=spacing, header=_entry_header(ordered[0], len(ordered)),
                warnings=warns,
            )
        )
    return entries


def _nouid_key(h: DicomHeader, root: str | None) -> str:
    """Grouping key for files without SeriesInstanceUID (anonymised or ACR-NEMA)."""
    folder = os.path.dirname(_rel(h.path, root))
    parts = (folder, str(h.get("SeriesNumber", "")), h.modality, h.description)
    return "nouid:" + "|".join(parts)


def _split_copies(groups: dict[tuple, list[DicomHeader]]) -> dict[tuple, list[DicomHeader]]:
    """Move repeated SOPInstanceUIDs (copies of one file) into groups of their own.

    The k-th file carrying a given SOPInstanceUID (in path order) goes to layer k, so a
    series plus a stray copy of one slice becomes the series and a separate image.
    """
    out: dict[tuple, list[DicomHeader]] = {}
    for key, hs in groups.items():
        count: dict[str, int] = {}
        layers: dict[int, list[DicomHeader]] = {}
        for h in sorted(hs, key=lambda x: x.path):
            uid = str(h.get("SOPInstanceUID", "")).strip() or h.path
            k = count.get(uid, 0)
            count[uid] = k + 1
            layers.setdefault(k, []).append(h)
        if len(layers) > 1:
            for h in hs:
                uid = str(h.get("SOPInstanceUID", "")).strip() or h.path
                if count.get(uid, 0) > 1:
                    h._cache.setdefault("warns", []).append(
                        ScanWarning(
                            "duplicate_instance",
                            "another file has the same SOPInstanceUID (a copy of this one)",
                            "warn",
                        )
                    )
        for k, layer in layers.items():
            out[key if k == 0 else (key[0], f"{key[1]}|copy{k}", *key[2:])] = layer
    return out


def _fallback_slice_spacing(h: DicomHeader) -> float | None:
    for kw in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            v = float(h.get(kw))
        except (TypeError, ValueError):
            continue
        if _IMPLAUSIBLE_SPACING[0] < abs(v) < 1000:
            return abs(v)
    return None


def _frame_positions(h: DicomHeader) -> np.ndarray | None:
    """Per-frame ImagePositionPatient (frames, 3) of a multi-frame object, if known."""
    n = h.frames
    ds = h.ds
    pos = []
    if "PerFrameFunctionalGroupsSequence" in ds:
        for i in range(n):
            v = _vector(_functional(ds, "PlanePositionSequence", "ImagePositionPatient", i), 3)
            if v is None:
                pos = []
                break
            pos.append(v)
    if not pos:
        offsets = h.get("GridFrameOffsetVector")
        ipp, iop = h.ipp, h.iop
        if offsets is not None and ipp is not None and iop is not None:
            try:
                off = [float(x) for x in offsets]
            except (TypeError, ValueError):
                off = []
            if len(off) == n:
                normal = slice_normal(iop)
                pos = [list(ipp + o * normal) for o in off]
    return np.asarray(pos, dtype=float) if len(pos) == n else None


def _frame_spacing(h: DicomHeader) -> float | None:
    pos = _frame_positions(h)
    if pos is not None and h.iop is not None:
        proj = np.sort(pos @ slice_normal(h.iop))
        med, _ = spacing_warnings(proj)
        if med:
            return med
    return _fallback_slice_spacing(h)

