"""``label_map``: a segmentation or label map filed among the images.

Image datasets often hold their own masks: nnU-Net and Medical Segmentation Decathlon
folders keep ``labelsTr/`` beside ``imagesTr/``, TotalSegmentator writes ``*_seg.nii.gz``
next to the CT, and DICOM SEG objects travel with their series. A model fed one of them
as an image learns nothing useful, and neither the learned score nor the other checks
name the problem. Two kinds of evidence:

* the header: DICOM Modality ``SEG`` (a segmentation object), and
* the pixels: integer values, few of them (:data:`MAX_LABELS` at the most on the
  downsampled copy), and piecewise constant at full resolution. Along evenly spaced
  full-resolution rows, at least :data:`MIN_EQUAL` of the neighbouring pixel pairs
  outside the background are equal, and where two neighbouring non-background pixels
  differ, at most :data:`MAX_SMALL_STEPS` of the steps are 1 or 2 values (a step to the
  background is a label's own id, 1 for a 0/1 mask, and is not counted). An image, even an
  8-bit radiograph with flat padding, changes inside the body in small steps (noise,
  gradients): on the integer images of ../shared/data at most 75 % of the pairs are equal
  and 48-78 % of the inner steps are small. The TotalSegmentator label map has 82 % equal
  pairs and 21 % small steps (neighbouring vertebrae and ribs have consecutive ids); the
  DICOM SEG mask 88 % and none.

A label map whose touching labels mostly have consecutive ids (vertebrae labelled one after
the other with no gap between them) has many small steps and can pass as an image; a
colour-coded (RGB) mask is not tested.

The full-resolution sample costs a few hundred microseconds at most: :data:`ROWS` rows of
:data:`SLICES` slices; the test is only run when the downsampled copy has few values.
"""

from __future__ import annotations

import numpy as np

from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring.body_mask import CheckData, meta_get, prepare

#: Most distinct values (on the downsampled copy) a label map is taken to have.
MAX_LABELS = 256
#: Fewest equal neighbouring pairs (outside the background) of a label map.
MIN_EQUAL = 0.8
#: Largest fraction of the steps between neighbours that are 1 or 2 values.
MAX_SMALL_STEPS = 0.35
#: Full-resolution rows per slice, and slices, of the sample.
ROWS = 32
SLICES = 8
#: Fewest non-background neighbour pairs for a verdict from the pixels.
MIN_PAIRS = 200
#: DICOM modalities that are segmentations, not images.
SEGMENTATION_MODALITIES = frozenset({"SEG"})


def _distinct_values(raw: np.ndarray) -> int | None:
    """Distinct values of the downsampled copy, or None when they are not few integers."""
    flat = raw.ravel()
    lo, hi = float(flat.min()), float(flat.max())
    if not 0 < hi - lo < 65536:
        return None
    sample = flat[:: max(1, flat.size // 4096)]
    if not np.array_equal(sample, np.round(sample)):  # float data: integer values only
        return None
    counts = np.bincount((flat - lo).astype(np.intp), minlength=1)
    return int(np.count_nonzero(counts))


def row_steps(data: np.ndarray) -> tuple[float, float, int]:
    """``(equal, small steps, pairs)`` of neighbouring pixels along full-resolution rows.

    Args:
        data: ``(Y, X)`` or ``(Z, Y, X)`` integer-valued data (non-finite values count as 0).

    Returns:
        The fraction of neighbour pairs outside the background (not both at the sample's
        minimum) that are equal; the fraction of the unequal pairs of two non-background
        pixels that differ by 1 or 2 (0 when there is none); the number of pairs outside
        the background.
    """
    g = data[None] if data.ndim == 2 else data
    zi = np.unique(np.linspace(0, g.shape[0] - 1, min(SLICES, g.shape[0])).round().astype(int))
    yi = np.unique(np.linspace(0, g.shape[1] - 1, min(ROWS, g.shape[1])).round().astype(int))
    rows = np.asarray(g[zi[:, None], yi[None, :], :], dtype=np.float64)  # exact below 2**53
    if not np.isfinite(rows).all():
        rows = np.where(np.isfinite(rows), rows, 0.0)
    a, b = rows[..., 1:], rows[..., :-1]
    background = rows.min()
    fa, fb = a != background, b != background
    inside = fa | fb
    pairs = int(np.count_nonzero(inside))
    if pairs == 0:
        return 0.0, 1.0, 0
    step = np.abs(a - b)
    equal = 1.0 - float(np.count_nonzero(step[inside])) / pairs
    # steps between two non-background pixels: inside an image mostly gradients and noise,
    # in a label map the boundary between two labels (a step to the background is the
    # label's own value, 1 for a 0/1 mask: not evidence either way)
    between = step[fa & fb]
    between = between[between > 0]
    small = float(np.count_nonzero(between <= 2)) / between.size if between.size else 0.0
    return equal, small, pairs


def check_label_map(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``label_map`` (high): a segmentation or label map, not an image (module docstring)."""
    modality = str(meta_get(scan, "Modality", default=scan.modality or "") or "").upper()
    if modality in SEGMENTATION_MODALITIES:
        return [ScanWarning("label_map", f"DICOM {modality} object: a segmentation, not an "
                            "image", severity="high")]
    if scan.rgb or scan.data.dtype.kind not in "iubf":
        return []
    d = data if data is not None else prepare(scan)
    if d.hounsfield or d.raw.size == 0:
        return []
    k = _distinct_values(d.raw)
    if k is None or not 2 <= k <= MAX_LABELS:
        return []
    equal, small, pairs = row_steps(scan.data)
    if pairs < MIN_PAIRS or equal < MIN_EQUAL or small > MAX_SMALL_STEPS:
        return []
    return [ScanWarning(
        "label_map", f"looks like a segmentation or label map, not an image ({k} values, "
        f"{equal:.0%} of neighbouring pixels equal, steps between labels not gradual)",
        severity="high", value=float(k))]
