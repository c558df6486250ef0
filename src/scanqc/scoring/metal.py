"""``metal_artifact``: metal in a CT, whose streaks corrupt the slices it lies on.

Dental fillings, hip and spine implants, clips and wires attenuate so strongly that the
reconstruction fills their slices with bright and dark streaks (beam hardening, photon
starvation); a model trained on such slices learns the streaks. Metal is recognised by its
values (:data:`METAL_HU`: cortical bone stays below ~2,000 HU, dense contrast and dental
enamel below ~3,000) and by saturation: a conventional 12-bit CT scale ends near 3,071 HU,
so a large piece of metal piles up at the scale's ceiling, while a small calcification or
a clip in a downsampled volume does not.

The check runs on the checks' strided copy (:class:`~scanqc.scoring.body_mask.CheckData`,
``raw`` in HU; striding keeps the sampled values exact, so saturation survives it) and only
for CT in Hounsfield units. A slice is affected when metal covers at least
:data:`MIN_BODY_FRACTION` of its body mask (and :data:`MIN_PIXELS` sampled pixels), and
either at least :data:`MIN_SATURATED` of that metal sits at the scan's maximum value or
metal covers at least :data:`LARGE_BODY_FRACTION` of the body (an extended-HU scale that
does not saturate). Measured on ../shared/data (docs/checks.md): the ELSCINT dental CT
has metal on 1.0 % of its body, 48 % of it saturated; the clean TotalSegmentator CTs reach
0.5 % and 0.3 % with one saturated pixel each.
"""

from __future__ import annotations

import numpy as np

from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring.body_mask import CheckData

#: Hounsfield units from which a pixel counts as metal.
METAL_HU = 3000.0
#: Fewest metal pixels (of the body mask of one slice of the strided copy) for a finding.
MIN_BODY_FRACTION = 0.003
#: Fewest sampled metal pixels in that slice.
MIN_PIXELS = 8
#: Share of the metal pixels at the scan's maximum value (saturated) for a finding.
MIN_SATURATED = 0.25
#: Metal share of a slice's body that is a finding without saturation.
LARGE_BODY_FRACTION = 0.02


def metal_slices(data: CheckData) -> tuple[np.ndarray, np.ndarray, float]:
    """Per kept slice: metal pixels, the fraction of the body they cover, and the ceiling.

    Returns:
        ``(metal count per slice, metal / body fraction per slice, maximum value)``.
    """
    raw, mask = data.raw, data.mask
    metal = raw >= METAL_HU
    count = metal.sum(axis=(1, 2))
    body = np.maximum(mask.sum(axis=(1, 2)), 1)
    return count, count / body, float(raw.max()) if raw.size else float("nan")


def check_metal(scan: Scan, data: CheckData) -> list[ScanWarning]:
    """``metal_artifact`` (warn): metal in a CT in HU, on the slices it lies on.

    Args:
        scan: The scan (only CT in Hounsfield units is checked).
        data: The checks' shared downsampled copy.

    Returns:
        One warning naming the affected slice range (original indices), or nothing.
    """
    if not data.hounsfield or data.raw.size == 0 or float(data.raw.max()) < METAL_HU:
        return []
    count, fraction, ceiling = metal_slices(data)
    hit = (fraction >= MIN_BODY_FRACTION) & (count >= MIN_PIXELS)
    if not hit.any():
        return []
    metal = data.raw >= METAL_HU
    saturated = int((metal & (data.raw == ceiling)).sum()) / max(int(metal.sum()), 1)
    large = fraction >= LARGE_BODY_FRACTION
    if saturated < MIN_SATURATED and not (hit & large).any():
        return []
    rows = np.flatnonzero(hit if saturated >= MIN_SATURATED else hit & large)
    first, last = int(data.slice_index[rows[0]]), int(data.slice_index[rows[-1]])
    worst = float(fraction[rows].max())
    where = f" on slices {first}-{last}" if scan.is_volume else ""
    why = (f", {saturated:.0%} of it saturated at {ceiling:.0f} HU"
           if saturated >= MIN_SATURATED else "")
    return [ScanWarning(
        "metal_artifact",
        f"metal (>= {METAL_HU:.0f} HU) on up to {worst:.1%} of the body{where}{why}: "
        "streak artefacts likely", severity="warn",
        slices=(first, last) if scan.is_volume else None, value=worst)]
