"""metal_artifact on synthetic CT with a known truth (scoring/metal.py)."""

from __future__ import annotations

import numpy as np

from scanqc.io.scan import Scan
from scanqc.scoring import metal
from scanqc.scoring.body_mask import prepare
from scanqc.scoring.checks import run_checks


def ct(n=20, size=256, metal_radius=0.0, metal_value=3071.0, ceiling=3071.0,
       slices=range(0), modality="CT"):
    """An axial CT: air, a soft-tissue body with a bone ring, optional metal on ``slices``."""
    y, x = np.mgrid[:size, :size]
    r = np.hypot(y - size / 2, x - size / 2)
    img = np.where(r < 0.4 * size, 40.0, -1000.0)
    img[(r > 0.3 * size) & (r < 0.33 * size)] = 1200.0
    vol = np.repeat(img[None], n, axis=0)
    if metal_radius:
        blob = np.hypot(y - size / 2, x - 0.42 * size) < metal_radius
        for z in slices:
            vol[z][blob] = metal_value
            rows = slice(int(size / 2) - 2, int(size / 2) + 2)  # a streak through the body
            vol[z, rows] = np.where(vol[z, rows] > -500, vol[z, rows] - 400.0, vol[z, rows])
    vol = np.minimum(vol, ceiling)
    return Scan(vol.astype(np.float32), (2.0, 0.8, 0.8), np.eye(4), "volume",
                modality=modality)


def found(scan):
    return [w for w in run_checks(scan) if w.code == "metal_artifact"]


def test_saturated_metal_is_found_on_its_slices():
    ws = found(ct(metal_radius=12, slices=range(8, 13)))
    assert len(ws) == 1 and ws[0].severity == "warn"
    first, last = ws[0].slices
    assert 7 <= first <= 8 and 12 <= last <= 13  # the strided copy keeps every slice here
    assert "saturated at 3071 HU" in ws[0].message


def test_clean_ct_and_dense_bone_are_not_metal():
    assert found(ct()) == []
    bone = ct()
    bone.data[bone.data == 1200.0] = 2400.0  # very dense cortical bone, still below metal
    assert found(bone) == []


def test_unsaturated_dense_spot_is_not_metal():
    # dense voxels (3200 HU) over ~1 % of the body on a scale reaching 3400 HU elsewhere:
    # above the area floor but not saturated and below the large-area rule
    scan = ct(metal_radius=10, metal_value=3200.0, ceiling=3400.0, slices=[10])
    scan.data[0, 0, 0] = 3400.0
    data = prepare(scan)
    count, fraction, ceiling = metal.metal_slices(data)
    assert ceiling == 3400.0 and count.max() >= metal.MIN_PIXELS
    assert metal.MIN_BODY_FRACTION <= fraction.max() < metal.LARGE_BODY_FRACTION
    assert metal.check_metal(scan, data) == []
    scan.data[0, 0, 0] = 3200.0  # now the same spot is the scale's ceiling: saturated
    assert [w.code for w in metal.check_metal(scan, prepare(scan))] == ["metal_artifact"]


def test_extended_scale_metal_needs_a_large_area():
    # an extended-HU reconstruction does not saturate: large metal still counts, small not
    big = ct(metal_radius=20, metal_value=8000.0, ceiling=30000.0, slices=[10, 11])
    big.data[0, 0, 0] = 12000.0  # the ceiling is elsewhere: no saturation
    assert [w.slices for w in found(big)] == [(10, 11)]
    small = ct(metal_radius=5, metal_value=8000.0, ceiling=30000.0, slices=[10])
    small.data[0, 0, 0] = 12000.0
    assert found(small) == []


def test_only_ct_in_hounsfield_units():
    mr = ct(metal_radius=12, slices=range(8, 13), modality="MR")
    mr.data[:] += 1000.0  # MR-like positive magnitudes with the same pattern
    assert found(mr) == []


def test_a_2d_ct_slice_has_no_slice_range():
    vol = ct(metal_radius=12, slices=[0], n=1)
    img = Scan(vol.data[0], (0.8, 0.8), np.eye(4), "image", modality="CT")
    ws = found(img)
    assert len(ws) == 1 and ws[0].slices is None and "slices" not in ws[0].message
