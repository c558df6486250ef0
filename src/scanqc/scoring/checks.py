"""Run every per-scan QC check and format the warnings for reports.

``run_checks(scan)`` builds the shared downsampled data once
(:func:`scanqc.scoring.body_mask.prepare`), runs each check from :data:`CHECKS`, and
never raises: a check that fails yields an ``info`` warning ``check_failed`` naming it.
Reader warnings (``scan.warnings``: missing slices, uneven spacing, 4D reduced ...) are
passed through first.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanqc.io.scan import SEVERITIES, Scan, ScanWarning
from scanqc.scoring import fov, header, label_map, metal, quality
from scanqc.scoring.body_mask import CheckData, prepare


@dataclass
class CheckContext:
    """Outside information some checks compare against (all optional).

    Attributes:
        reference_extents_mm: Slice-axis extents (mm) of the reference scans, for
            ``short_coverage``.
        typical_min_extent_mm: Minimum extent when there are no references.
        sibling_planes: Acquisition planes of the other series, for ``plane_mismatch``.
        predicted_region: Region predicted by the region classifier.
        region_confidence: Its probability.
        skip: Check names (keys of :data:`CHECKS`) not to run.
    """

    reference_extents_mm: Sequence[float] | None = None
    typical_min_extent_mm: float | None = None
    sibling_planes: Sequence[str] | None = None
    predicted_region: str | None = None
    region_confidence: float = 0.0
    skip: frozenset[str] = field(default_factory=frozenset)


CheckFn = Callable[[Scan, CheckData, CheckContext], list[ScanWarning]]

#: name -> check(scan, data, context). Order is the order of the warnings.
CHECKS: dict[str, CheckFn] = {
    "constant_image": lambda s, d, c: quality.check_constant(s, d),
    "tiny_image": lambda s, d, c: quality.check_tiny(s),
    "no_anatomy": lambda s, d, c: fov.check_no_anatomy(s, d),
    "noise_only": lambda s, d, c: quality.check_noise_only(s, d),
    "modality_mismatch": lambda s, d, c: header.check_modality_mismatch(s, d),
    "implausible_spacing": lambda s, d, c: header.check_spacing(s),
    "burned_in_text": lambda s, d, c: header.check_burned_in(s),
    "template_space": lambda s, d, c: header.check_template_space(s),
    "localizer": lambda s, d, c: fov.check_localizer(s),
    "fov_cut": lambda s, d, c: fov.check_fov_cut(s, d),
    "short_coverage": lambda s, d, c: fov.check_short_coverage(
        s, d, c.reference_extents_mm, c.typical_min_extent_mm),
    "truncated_coverage": lambda s, d, c: fov.check_truncated_coverage(s, d),
    "plane_mismatch": lambda s, d, c: fov.check_plane_mismatch(s, c.sibling_planes),
    "slice_gaps": lambda s, d, c: fov.check_slice_gaps(s),
    "blank_slices": lambda s, d, c: quality.check_blank_slices(s, d),
    "brightness": lambda s, d, c: quality.check_brightness(s, d),
    "low_information": lambda s, d, c: quality.check_low_information(s, d),
    "blurry": lambda s, d, c: quality.check_blur(s, d),
    "clipped": lambda s, d, c: quality.check_clipped(s, d),
    "inverted": lambda s, d, c: quality.check_inverted(s, d),
    "air_artifacts": lambda s, d, c: quality.check_air_artifacts(s, d),
    "derived_map": lambda s, d, c: quality.check_derived_map(s, d),
    "label_map": lambda s, d, c: label_map.check_label_map(s, d),
    "metal_artifact": lambda s, d, c: metal.check_metal(s, d),
    "region_header_mismatch": lambda s, d, c: header.region_header_mismatch(
        s, c.predicted_region or "", float(c.region_confidence or 0.0)),
}

#: Checks that only make sense when the image is not constant/empty.
_CONTENT_CHECKS = {"noise_only", "fov_cut", "short_coverage", "truncated_coverage",
                   "brightness", "low_information", "blurry", "clipped", "inverted",
                   "air_artifacts", "modality_mismatch", "blank_slices", "derived_map",
                   "label_map", "metal_artifact"}


def _failed(name: str, exc: BaseException) -> ScanWarning:
    cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    return ScanWarning("check_failed", f"check {name} failed ({cause})", severity="info")


def run_checks(
    scan: Scan,
    context: CheckContext | None = None,
    timings: dict[str, float] | None = None,
) -> list[ScanWarning]:
    """Run all per-scan checks on ``scan``.

    Args:
        scan: The scan (not modified).
        context: Outside information (references, siblings, predicted region).
        timings: If given, filled with seconds per check (``"prepare"`` for the shared
            downsampled data).

    Returns:
        Reader warnings followed by check warnings. Never raises for bad data.
    """
    return check_scan(scan, context, timings)[0]


def check_scan(
    scan: Scan,
    context: CheckContext | None = None,
    timings: dict[str, float] | None = None,
    keep: dict[str, Any] | None = None,
) -> tuple[list[ScanWarning], dict[str, float]]:
    """Like :func:`run_checks`, also returning the quality metrics.

    The metrics (:func:`scanqc.scoring.quality.quality_metrics`) come from the same
    downsampled data: one ``prepare`` instead of two.

    Args:
        scan: The scan (not modified).
        context: Outside information (references, siblings, predicted region).
        timings: If given, filled with seconds per check.
        keep: If given, ``keep["data"]`` gets the shared :class:`CheckData` (None when it
            could not be built), for callers that reuse the windowed copy.

    Returns:
        ``(warnings, metrics)``; metrics is ``{}`` when they could not be computed.
    """
    # overflow and NaN in the measures of extreme data (1e30 floats, Inf) end as NaN
    # metrics, which the checks and the report handle: no RuntimeWarning on the console
    with np.errstate(all="ignore"):
        return _check_scan(scan, context or CheckContext(), timings, keep)


def _check_scan(
    scan: Scan, ctx: CheckContext, timings: dict[str, float] | None,
    keep: dict[str, Any] | None = None,
) -> tuple[list[ScanWarning], dict[str, float]]:
    out: list[ScanWarning] = list(scan.warnings)
    t0 = time.perf_counter()
    try:
        data = prepare(scan)
    except Exception as exc:  # noqa: BLE001 - one bad scan must not stop a batch
        out.append(_failed("prepare", exc))
        data = None
    if keep is not None:
        keep["data"] = data
    if timings is not None:
        timings["prepare"] = time.perf_counter() - t0
    constant = False
    for name, fn in CHECKS.items():
        if name in ctx.skip:
            continue
        if data is None and name not in ("implausible_spacing", "localizer", "plane_mismatch",
                                         "slice_gaps", "region_header_mismatch",
                                         "tiny_image", "burned_in_text"):
            continue
        if constant and name in _CONTENT_CHECKS:
            continue
        t = time.perf_counter()
        try:
            found = fn(scan, data, ctx)
        except Exception as exc:  # noqa: BLE001 - see module docstring
            found = [_failed(name, exc)]
        if timings is not None:
            timings[name] = time.perf_counter() - t
        if name == "constant_image" and found:
            constant = True
        out.extend(found)
    metrics: dict[str, float] = {}
    if data is not None:
        try:
            metrics = quality.quality_metrics(scan, data)
        except Exception:  # noqa: BLE001 - metrics are optional report columns
            metrics = {}
    return out, metrics


def max_severity(warnings: Sequence[ScanWarning]) -> str:
    """The highest severity among ``warnings`` (``""`` when there is none)."""
    best = -1
    for w in warnings:
        try:
            best = max(best, SEVERITIES.index(w.severity))
        except ValueError:
            continue
    return SEVERITIES[best] if best >= 0 else ""


def warnings_to_columns(warnings: Sequence[ScanWarning]) -> tuple[str, str]:
    """Report columns: ``("code_a;code_b", "message a | message b")``.

    Codes are unique, in first-seen order; messages keep every warning (with its
    severity), separators inside messages are replaced so the columns split cleanly.
    """
    codes: list[str] = []
    msgs: list[str] = []
    for w in warnings:
        if w.code not in codes:
            codes.append(w.code)
        msg = " ".join(str(w.message).split()).replace("|", "/")
        msgs.append(f"{w.code} ({w.severity}): {msg}")
    return ";".join(codes), " | ".join(msgs)


_DETAIL = re.compile(r"(?P<code>[\w.-]+) \((?P<severity>info|warn|high)\): (?P<message>.*)", re.S)


def row_warnings(row: Any, default: str = "warn") -> list[ScanWarning]:
    """The warnings of a report row (its ``warnings`` and ``warnings_detail`` columns).

    :func:`warnings_from_columns`; a message without a severity gets the row's
    ``max_severity``, else ``default``.
    """
    return warnings_from_columns(str(row.get("warnings") or ""),
                                 str(row.get("warnings_detail") or ""),
                                 row.get("max_severity") or default)


def warnings_from_columns(codes: str, details: str, severity: str = "warn") -> list[ScanWarning]:
    """The warnings of a report row, read back from its two columns.

    The inverse of :func:`warnings_to_columns` for codes, messages and severities (not
    locations). A message not in its ``code (severity): message`` form, e.g. from a report
    written by another version, gets ``severity``; without messages the codes are used.
    """
    out = []
    for part in (p.strip() for p in str(details or "").split(" | ")):
        if not part:
            continue
        m = _DETAIL.fullmatch(part)
        if m:
            out.append(ScanWarning(m["code"], m["message"].strip(), severity=m["severity"]))
        else:
            code, _, msg = part.partition(": ")
            out.append(ScanWarning(code.strip(), msg.strip(), severity=severity))
    if not out:
        out = [ScanWarning(c, "", severity=severity) for c in str(codes or "").split(";") if c]
    return out
