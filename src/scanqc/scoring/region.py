"""Anatomical region per scan, per-slice coverage of volumes, and header consistency.

The classifier is :class:`scanqc.models.region_probe.RegionProbe` on the frozen slice
encoder (docs/region.md). A 2D image is one slice. A volume is classified slice by slice
(at most ``max_slices`` evenly spaced slices); the per-slice labels are smoothed with a
3-slice majority vote and merged into ordered ranges (e.g. chest 0-40, abdomen 41-80,
pelvis 81-111); the volume's region is the class covering most slices. Slices (and 2D
images) below the probe's calibrated threshold are ``unknown``. Batch pipelines that
already have the base slice embeddings call :func:`region_from_embeddings`.

Header consistency uses :mod:`scanqc.scoring.header` (``header_regions`` and
``region_header_mismatch``): a confident prediction that disagrees with BodyPartExamined,
ProtocolName/SeriesDescription or StudyDescription gives a ``region_header_mismatch``
warning. For a volume the header is consistent when any confident part of its coverage
agrees. :func:`rank_region_issues` ranks a labelled dataset by cleanlab's label quality.

No torch at import time (the model modules are imported inside the functions).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring.acquisition import majority as majority_of
from scanqc.scoring.header import header_regions, region_header_mismatch, regions_compatible

if TYPE_CHECKING:
    from scanqc.models.region_probe import RegionProbe

log = logging.getLogger(__name__)

UNKNOWN = "unknown"

#: Probe classes that the header keywords can name (others never give a mismatch).
HEADER_COMPARABLE = frozenset({
    "head", "neck", "chest", "abdomen", "pelvis", "spine", "upper_limb", "lower_limb",
    "breast", "whole_body", "non_anatomical",
})


@dataclass
class RegionPrediction:
    """The region classifier's answer for one scan.

    Attributes:
        region: Predicted class, or ``"unknown"`` below the probe's threshold. For a
            volume: the class covering most slices.
        confidence: Probability of ``region`` (for a volume: its mean over the slices it
            covers).
        probs: Class -> probability (mean over slices).
        per_slice: For volumes: ``((first, last), region)`` ranges in slice order covering
            every slice; for a 2D image one range ``((0, 0), region)``.
        header_region: Regions named by the header, ``"/"``-joined (``""``: none).
        mismatch: True when a ``region_header_mismatch`` warning was raised.
        warnings: The warnings (empty or one ``region_header_mismatch``).
    """

    region: str
    confidence: float
    probs: dict[str, float]
    per_slice: list[tuple[tuple[int, int], str]]
    header_region: str = ""
    mismatch: bool = False
    warnings: list[ScanWarning] = field(default_factory=list)

    @property
    def coverage(self) -> list[str]:
        """Regions the scan covers, in slice order (unknown ranges left out)."""
        out: list[str] = []
        for _, reg in self.per_slice:
            if reg != UNKNOWN and (not out or out[-1] != reg):
                out.append(reg)
        return out

    def columns(self) -> dict[str, Any]:
        """Flat, JSON-friendly columns for tables and exports."""
        return {
            "region": self.region,
            "region_confidence": round(float(self.confidence), 4),
            "region_coverage": "; ".join(f"{r} {a}-{b}" for (a, b), r in self.per_slice),
            "header_region": self.header_region,
            "region_mismatch": bool(self.mismatch),
        }


def _mode_filter(labels: list[str], width: int = 3) -> list[str]:
    if len(labels) < width:
        return list(labels)
    half = width // 2
    out = []
    for i in range(len(labels)):
        win = labels[max(0, i - half): i + half + 1]
        counts = Counter(win)
        best, n = counts.most_common(1)[0]
        out.append(best if n > 1 else labels[i])
    return out


def slice_ranges(
    slice_index: Sequence[int], labels: Sequence[str], n_slices: int | None = None,
    min_run: int = 2, smooth: int = 3,
) -> list[tuple[tuple[int, int], str]]:
    """Aggregate per-slice labels into ordered, non-overlapping slice ranges.

    Args:
        slice_index: Scan index of each classified slice (increasing).
        labels: Label of each classified slice.
        n_slices: Slices in the scan (the last range ends at ``n_slices - 1``); default:
            the last classified index.
        min_run: Runs of fewer classified slices are merged into the run before them
            (or after them, at the start), unless the whole scan is that short.
        smooth: Width of the majority-vote filter over classified slices (1: none).

    Returns:
        ``[((first, last), label), ...]`` covering ``0 .. n_slices - 1`` in order,
        adjacent ranges with different labels.
    """
    idx = [int(i) for i in slice_index]
    labs = [str(lab) for lab in labels]
    if len(idx) != len(labs):
        raise ValueError("slice_index and labels differ in length")
    if not idx:
        return []
    order = np.argsort(idx, kind="stable")
    idx = [idx[i] for i in order]
    labs = [labs[i] for i in order]
    if smooth > 1:
        labs = _mode_filter(labs, smooth)
    # runs over classified slices: [start position, end position, label]
    runs: list[list[Any]] = []
    for pos, lab in enumerate(labs):
        if runs and runs[-1][2] == lab:
            runs[-1][1] = pos
        else:
            runs.append([pos, pos, lab])
    changed = True
    while changed and len(runs) > 1:
        changed = False
        for k, (a, b, _lab) in enumerate(runs):
            if b - a + 1 < min_run:
                if k > 0:
                    runs[k - 1][1] = b
                else:
                    runs[1][0] = a
                del runs[k]
                changed = True
                break
        merged: list[list[Any]] = []
        for r in runs:
            if merged and merged[-1][2] == r[2]:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        runs = merged
    last = (int(n_slices) - 1) if n_slices is not None else idx[-1]
    out = []
    for k, (a, _b, lab) in enumerate(runs):
        first = 0 if k == 0 else idx[a]
        end = last if k == len(runs) - 1 else idx[runs[k + 1][0]] - 1
        out.append(((first, max(first, end)), lab))
    return out


def slice_probabilities(
    slices: np.ndarray, encoder: Any, probe: RegionProbe, tta: bool = False
) -> np.ndarray:
    """Probe probabilities ``(N, n_classes)`` of model-ready slices ``(N, H, W)``.

    With ``tta`` the probabilities of each slice and of its left-right mirror are averaged.
    """
    from scanqc.models.encoder import embed_slices

    p = probe.predict_proba(embed_slices(encoder, slices))
    if tta:
        p = 0.5 * (p + probe.predict_proba(embed_slices(encoder, slices[:, :, ::-1].copy())))
    return p


def _header_warnings(
    scan: Scan, region: str, confidence: float, per_slice_conf: list[tuple[str, float]],
    min_confidence: float,
) -> list[ScanWarning]:
    """The header check of a prediction and of the parts a volume covers.

    Consistent when any confidently predicted part (or the scan's region) agrees with the
    header; otherwise the most confident disagreeing part gives the warning.
    """
    cands = [(region, confidence), *[(r, c) for r, c in per_slice_conf if r != region]]
    cands = [(r, c) for r, c in cands if r in HEADER_COMPARABLE]
    if not cands:
        return []
    for reg, conf in cands:
        if conf >= min_confidence and not region_header_mismatch(scan, reg, 1.0,
                                                                 min_confidence=0.0):
            return []
    for reg, conf in sorted(cands, key=lambda rc: -rc[1]):
        warns = region_header_mismatch(scan, reg, conf, min_confidence=min_confidence)
        if warns:
            return warns
    return []


#: Header fields the region check reads (:func:`region_header`).
HEADER_FIELDS: tuple[str, ...] = ("BodyPartExamined", "ProtocolName", "SeriesDescription",
                                  "StudyDescription")


def region_header(scan: Scan) -> dict[str, str]:
    """The header fields the region check needs, as a small picklable dict.

    Lets a worker process keep only these strings and the main process compare them
    with the prediction later (:func:`region_from_embeddings`).
    """
    from scanqc.scoring.body_mask import meta_get

    out = {}
    for key in HEADER_FIELDS:
        v = meta_get(scan, key)
        if v is not None:
            out[key] = "\\".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
    return out


def _header_scan(header: Scan | dict[str, str] | None) -> Scan:
    if isinstance(header, Scan):
        return header
    return Scan(np.zeros((1, 1), np.float32), (1.0, 1.0), np.eye(4), "image",
                metadata=dict(header or {}))


def region_from_probs(
    p: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    slice_index: Sequence[int] | None = None,
    *,
    n_slices: int | None = None,
    is_volume: bool | None = None,
    header: Scan | dict[str, str] | None = None,
    min_confidence: float = 0.7,
    untrained: Collection[str] = (),
) -> RegionPrediction:
    """Aggregate per-slice class probabilities into a :class:`RegionPrediction`.

    Args:
        p: ``(N, n_classes)`` probabilities of the classified slices.
        classes: Class names of the columns.
        threshold: Below this top probability a slice (or the scan) is ``unknown``.
        slice_index: Scan index of each slice (default ``0..N-1``).
        n_slices: Slices in the scan (default: last index + 1).
        is_volume: Volume (per-slice coverage) or 2D image; default: ``N > 1``.
        header: The scan, or its :func:`region_header` dict, for the header check.
        min_confidence: A header mismatch is reported only from this confidence.
        untrained: Classes the probe had no training data for (:func:`untrained_classes`):
            a mismatch with a header naming only those is a ``warn``, not ``high`` (it
            does not flag the scan: the probe cannot recognise those classes).
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError("need (N, n_classes) slice probabilities, N >= 1")
    classes = [str(c) for c in classes]
    idx = np.arange(len(p)) if slice_index is None else np.asarray(slice_index, dtype=np.int64)
    volume = len(p) > 1 if is_volume is None else bool(is_volume)
    mean = p.mean(axis=0)
    s_top = p.argmax(axis=1)
    s_conf = p[np.arange(len(p)), s_top]
    s_lab = [classes[t] if c >= threshold else UNKNOWN
             for t, c in zip(s_top, s_conf, strict=True)]
    n = int(n_slices) if n_slices is not None else int(idx.max()) + 1
    if volume:
        per_slice = slice_ranges(idx, s_lab, n_slices=n)
        # each covered region: its classified slices and its mean probability over them
        covered: dict[str, np.ndarray] = {}
        for (a, b), reg in per_slice:
            if reg != UNKNOWN:
                sel = (idx >= a) & (idx <= b)
                covered[reg] = covered.get(reg, np.zeros(len(idx), bool)) | sel
        per_conf = [(reg, float(p[sel, classes.index(reg)].mean()) if sel.any() else 0.0)
                    for reg, sel in covered.items()]
        if covered:
            # the scan's region: the class that covers most slices (ties: more probable)
            region = max(covered, key=lambda r: (int(covered[r].sum()),
                                                 float(mean[classes.index(r)])))
            conf = dict(per_conf)[region]
        else:
            region, conf = UNKNOWN, float(mean.max())
    else:
        top = int(mean.argmax())
        conf = float(mean[top])
        region = classes[top] if conf >= threshold else UNKNOWN
        per_slice = [((0, 0), region)]
        per_conf = [] if region == UNKNOWN else [(region, conf)]
    hscan = _header_scan(header)
    hdr = header_regions(hscan)
    warns = [] if region == UNKNOWN else _header_warnings(hscan, region, conf, per_conf,
                                                          min_confidence)
    if warns and hdr and {h.replace(" ", "_") for h in hdr} <= set(untrained):
        # the header names only classes the probe never saw (the shipped one: no permissively
        # licensed knee, spine, neck or breast images), so a confident other answer may be
        # its own mistake: reported, but it does not flag the scan
        names = "/".join(sorted(hdr))
        warns = [replace(w, severity="warn", message=f"{w.message} (the region model has no "
                         f"training data for {names}: this may be its mistake)")
                 for w in warns]
    return RegionPrediction(
        region=region, confidence=conf,
        probs={c: float(v) for c, v in zip(classes, mean, strict=True)},
        per_slice=per_slice, header_region="/".join(sorted(hdr)), mismatch=bool(warns),
        warnings=warns,
    )


#: Confidence from which a predicted region is compared with the references' regions.
REFERENCE_REGION_CONFIDENCE = 0.8


def region_unlike_references(
    region: str | None, confidence: float | None,
    reference_regions: Sequence[tuple[str | None, float | None]],
    min_confidence: float = REFERENCE_REGION_CONFIDENCE,
) -> list[ScanWarning]:
    """``region_unlike_references`` (warn): the scan shows another body region.

    Fires when the scan's predicted region (not ``unknown``) has at least
    ``min_confidence``, at least two references have a region predicted that confidently,
    and the scan's region is none of theirs nor overlaps one (chest/abdomen, head/neck,
    spine and its neighbours count as alike; a limb never does:
    :func:`scanqc.scoring.header.regions_compatible` with ``limbs=False``).

    Args:
        region: The scan's predicted region (None: nothing is compared).
        confidence: Its probability.
        reference_regions: ``(region, confidence)`` of each reference.
        min_confidence: The confidence floor for the scan and for the references.
    """
    known = [str(r) for r, c in reference_regions if _sure(r, c, min_confidence)]
    if len(known) < 2:
        return []
    return _region_unlike(region, confidence, set(known), "references", "the references'",
                          "warn", min_confidence)


def typical_region(predictions: Sequence[tuple[str | None, float | None]],
                   min_confidence: float = REFERENCE_REGION_CONFIDENCE,
                   majority: float = 0.9, min_scans: int = 20) -> str | None:
    """The region of at least ``majority`` of a dataset's confident predictions, or None.

    Only predictions with at least ``min_confidence`` count, and at least ``min_scans`` of
    them are needed (the same rule as the acquisition comparison of runs without
    references, :func:`scanqc.scoring.acquisition.typical_profiles`).
    """
    return majority_of([str(r) for r, c in predictions if _sure(r, c, min_confidence)],
                       majority, min_scans)


def region_unlike_dataset(region: str | None, confidence: float | None, typical: str | None,
                          min_confidence: float = REFERENCE_REGION_CONFIDENCE,
                          ) -> list[ScanWarning]:
    """``region_unlike_dataset`` (info): another region than :func:`typical_region`'s."""
    if not typical:
        return []
    return _region_unlike(region, confidence, {typical}, "dataset", "most scans'", "info",
                          min_confidence)


def _sure(region: str | None, confidence: float | None, min_confidence: float) -> bool:
    return bool(region) and region != UNKNOWN and confidence is not None \
        and bool(np.isfinite(confidence)) and float(confidence) >= min_confidence


def _region_unlike(region: str | None, confidence: float | None, known: set[str],
                   suffix: str, noun: str, severity: Any, min_confidence: float,
                   ) -> list[ScanWarning]:
    if not _sure(region, confidence, min_confidence) or any(
            regions_compatible(str(region), r, limbs=False) for r in known):
        return []
    names = "/".join(sorted({r.replace("_", " ") for r in known}))
    return [ScanWarning(f"region_unlike_{suffix}", f"predicted region "
                        f"{str(region).replace('_', ' ')} ({float(confidence):.0%}), {noun} "
                        f"{names}", severity=severity, value=float(confidence))]


def untrained_classes(probe: Any) -> tuple[str, ...]:
    """Classes ``probe`` had no training data for (``classes_without_data`` of its card)."""
    meta = getattr(probe, "metadata", None)
    return tuple(str(c) for c in (meta or {}).get("classes_without_data") or ())


def region_from_embeddings(
    embeddings: np.ndarray,
    probe: RegionProbe | None = None,
    slice_index: Sequence[int] | None = None,
    *,
    n_slices: int | None = None,
    is_volume: bool | None = None,
    header: Scan | dict[str, str] | None = None,
    min_confidence: float = 0.7,
) -> RegionPrediction:
    """Region of a scan from its base-encoder slice embeddings (batch pipelines).

    For pipelines that already embed the slices with the bundled encoder (the base
    embeddings, not a fine-tuned head): no second encoder pass.

    Args:
        embeddings: ``(N, D)`` unit slice embeddings of the encoder the probe was trained on.
        probe: Region probe; default: the bundled one.
        slice_index: Scan index of each slice (default ``0..N-1``).
        n_slices: Slices in the scan.
        is_volume: Volume or 2D image (default: ``N > 1``).
        header: The scan or its :func:`region_header` dict.
        min_confidence: Header-mismatch confidence floor.

    Raises:
        scanqc.models.weights.ModelLoadError: bundled probe missing or corrupt.
    """
    if probe is None:
        from scanqc.models.region_probe import load_bundled_probe

        probe = load_bundled_probe()
    p = probe.predict_proba(np.asarray(embeddings, dtype=np.float32))
    return region_from_probs(p, probe.classes, probe.threshold, slice_index,
                             n_slices=n_slices, is_volume=is_volume, header=header,
                             min_confidence=min_confidence, untrained=untrained_classes(probe))


def predict_region(
    scan: Scan,
    encoder: Any = None,
    probe: RegionProbe | None = None,
    *,
    max_slices: int = 64,
    min_confidence: float = 0.7,
    tta: bool = False,
    device: Any = "auto",
) -> RegionPrediction:
    """Predict the anatomical region of a scan and compare it with the header.

    Args:
        scan: The scan.
        encoder: Slice encoder; default: the bundled one.
        probe: Region probe; default: the bundled ``resources/models/region``.
        max_slices: Classify at most this many evenly spaced slices of a volume.
        min_confidence: A header mismatch is reported only from this confidence.
        tta: Average with the left-right mirrored slices.
        device: Device for the bundled encoder.

    Raises:
        scanqc.models.weights.ModelLoadError: bundled weights missing or corrupt.
    """
    from scanqc.models.encoder import load_encoder
    from scanqc.models.preprocess import DEFAULT_SIZE, scan_to_slices
    from scanqc.models.region_probe import load_bundled_probe

    if encoder is None:
        encoder = load_encoder("encoder", device)
    if probe is None:
        probe = load_bundled_probe()
    slices, idx = scan_to_slices(scan, size=DEFAULT_SIZE, max_slices=max_slices)
    p = slice_probabilities(slices, encoder, probe, tta=tta)
    n = int(scan.spatial_shape[0]) if scan.is_volume else 1
    return region_from_probs(p, probe.classes, probe.threshold, idx, n_slices=n,
                             is_volume=scan.is_volume, header=scan,
                             min_confidence=min_confidence, untrained=untrained_classes(probe))


@dataclass(frozen=True)
class RegionIssue:
    """One row of :func:`rank_region_issues`: a given label and how much to doubt it."""

    index: int
    label: str
    predicted: str
    quality: float


def rank_region_issues(
    labels: Sequence[str] | Sequence[int], pred_probs: np.ndarray,
    classes: Sequence[str] | None = None, method: str = "self_confidence",
) -> list[RegionIssue]:
    """Rank labelled scans by label quality (lowest first) with cleanlab.

    Uses :func:`cleanlab.rank.get_label_quality_scores` (self-confidence by default: the
    predicted probability of the given label). Rows whose label is not one of ``classes``
    are left out.

    Args:
        labels: Given label of each scan: a class name, or a column index when
            ``classes`` is None.
        pred_probs: ``(N, n_classes)`` out-of-sample predicted probabilities.
        classes: Class names of the columns of ``pred_probs`` (default: ``"0"``, ``"1"``
            ...; labels are then column indices).
        method: cleanlab scoring method (``self_confidence``, ``normalized_margin``,
            ``confidence_weighted_entropy``).
    """
    from cleanlab.rank import get_label_quality_scores

    probs = np.asarray(pred_probs, dtype=np.float64)
    cls = [str(c) for c in classes] if classes is not None else \
        [str(i) for i in range(probs.shape[1])]
    index = {c: i for i, c in enumerate(cls)}
    rows = [i for i, lab in enumerate(labels) if str(lab) in index]
    if not rows:
        return []
    y = np.array([index[str(labels[i])] for i in rows], dtype=np.int64)
    sub = probs[rows]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    scores = get_label_quality_scores(y, sub, method=method)
    order = np.argsort(scores, kind="stable")
    return [RegionIssue(rows[k], str(labels[rows[k]]), cls[int(sub[k].argmax())],
                        float(scores[k])) for k in order]
