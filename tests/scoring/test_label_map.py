"""The label_map check on synthetic label maps and images with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.io.scan import Scan
from scanqc.scoring import label_map as L
from scanqc.scoring.checks import run_checks


def organs(shape=(24, 96, 96), seed=0) -> np.ndarray:
    """A label volume: background 0 and seven blob-shaped organs with ids 10-120."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    lab = np.zeros(shape, np.uint8)
    for i in rng.choice(np.arange(10, 130, 10), 7, replace=False):  # ids apart, as usual
        c = rng.uniform(0.25, 0.75, 3) * shape
        r = rng.uniform(0.12, 0.25, 3) * shape
        lab[((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2
            < 1] = i
    return lab


def volume(data, **kw) -> Scan:
    return Scan(data, (3.0, 1.5, 1.5), np.eye(4), "volume", **kw)


def image(data, **kw) -> Scan:
    return Scan(data, (0.2, 0.2), np.eye(4), "image", **kw)


def codes(scan: Scan) -> dict[str, str]:
    return {w.code: w.severity for w in run_checks(scan)}


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_a_label_volume_is_a_label_map(dtype):
    assert codes(volume(organs().astype(dtype))).get("label_map") == "high"


def test_binary_masks_are_label_maps():
    lab = organs()
    assert codes(volume((lab > 0).astype(np.uint8))).get("label_map") == "high"  # 0/1
    y, x = np.mgrid[:256, :240]
    mask2d = np.where(((y - 120) / 70.0) ** 2 + ((x - 100) / 50.0) ** 2 < 1, 255, 0)
    mask2d[200:230, 150:220] = 255                                               # 0/255 PNG
    mask2d = mask2d.astype(np.uint8)
    assert codes(image(mask2d)).get("label_map") == "high"


def test_dicom_seg_is_named_from_its_header():
    seg = volume(organs(), modality="SEG")
    ws = L.check_label_map(seg)
    assert [w.code for w in ws] == ["label_map"] and "DICOM SEG" in ws[0].message


def test_images_are_not_label_maps():
    rng = np.random.default_rng(1)
    lab = organs()
    # the same shapes as an MR: tissue intensities with noise and partial-volume edges
    from scipy import ndimage as ndi

    mr = ndi.gaussian_filter(lab.astype(np.float32) * 40, 1.0) + rng.normal(0, 4, lab.shape)
    assert "label_map" not in codes(volume(np.clip(mr, 0, None).astype(np.int16)))
    # an 8-bit radiograph: flat padding, a smooth body, little noise
    y, x = np.mgrid[:300, :260]
    xr = np.where((y - 150) ** 2 / 120**2 + (x - 130) ** 2 / 90**2 < 1,
                  120 + 60 * np.sin(x / 25.0), 0) + rng.normal(0, 1.5, (300, 260))
    xr[:, :30] = 255  # a flat white border
    assert "label_map" not in codes(image(np.clip(xr, 0, 255).astype(np.uint8)))
    # posterized soft tissue (a step of 1 every 8 pixels) with bright bone bars and a flat
    # border: as flat as a label map (84 % equal pairs), but three in four steps are small
    body = (y - 150) ** 2 / 130**2 + (x - 130) ** 2 / 110**2 < 1
    flat = np.where(body, 100 + x // 8, 0)
    for c in (60, 100, 150, 200):
        flat[(np.abs(x - c) < 3) & body] += 25
    flat[:, :20] = 255
    equal, small, _ = L.row_steps(flat)
    assert equal > L.MIN_EQUAL and small > 0.5
    assert "label_map" not in codes(image(flat.astype(np.uint8)))
    # a noise-free ramp: few values, but every step is 1
    ramp = np.tile(np.arange(0, 200, dtype=np.uint8), (200, 1))
    assert "label_map" not in codes(image(ramp))


def test_row_steps_measure_flat_regions_and_small_steps():
    equal, small, pairs = L.row_steps(np.array([[0, 0, 5, 5, 5, 9, 9, 0]]))
    # pairs outside the background: (0,5) (5,5) (5,5) (5,9) (9,9) (9,0): 3 equal of 6
    assert pairs == 6 and equal == pytest.approx(0.5) and small == 0.0
    equal, small, _ = L.row_steps(np.array([[3, 4, 5, 6, 6]], np.float32))
    assert equal == pytest.approx(0.25) and small == 1.0
    assert L.row_steps(np.zeros((4, 4)))[2] == 0
