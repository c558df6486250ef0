"""The numpy-slice morphology and the faster measures equal their scipy/numpy originals.

The checks (issue 7: checks cost) replaced ``scipy.ndimage`` binary opening, dilation
and hole filling, and a few histogram/normalisation steps, by cheaper code that must give
exactly the same masks and numbers. These tests compare both on random masks of every
shape class the checks see (single slices, thin and empty stacks, full and empty masks).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from scanqc.io.intensity import normalize
from scanqc.scoring.body_mask import dilate_cross, erode_cross, fill_holes_inplane
from scanqc.scoring.quality import _open_2x2, entropy_bits

INPLANE = np.zeros((3, 3, 3), bool)
INPLANE[1] = ndi.generate_binary_structure(2, 1)


def _masks(n: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 14)), int(rng.integers(1, 14)))
        density = [0.0, 1.0, rng.random()][min(i % 7, 2)]
        yield rng.random(shape) < density


def test_inplane_opening_equals_scipy():
    for a in _masks():
        expected = ndi.binary_opening(a, structure=INPLANE)
        assert np.array_equal(dilate_cross(erode_cross(a, (1, 2)), (1, 2)), expected)


def test_fill_holes_equals_scipy():
    for a in _masks(seed=1):
        assert np.array_equal(fill_holes_inplane(a), ndi.binary_fill_holes(a, structure=INPLANE))
    ring = np.zeros((1, 7, 7), bool)
    ring[0, 1:6, 1:6] = True
    ring[0, 3, 3] = False  # a hole: filled
    assert fill_holes_inplane(ring)[0, 3, 3]


def test_3d_dilation_equals_scipy():
    for a in _masks(seed=2):
        for it in (1, 2):
            assert np.array_equal(dilate_cross(a, (0, 1, 2), it),
                                  ndi.binary_dilation(a, iterations=it))


def test_open_2x2_equals_scipy():
    for a in _masks(seed=3):
        assert np.array_equal(_open_2x2(a),
                              ndi.binary_opening(a, structure=np.ones((1, 2, 2), bool)))


def test_entropy_bins_equal_the_integer_cast_then_clip():
    rng = np.random.default_rng(4)
    win = rng.random((3, 20, 20)).astype(np.float32)
    win[0, 0, :5] = [0.0, 1.0, 0.999999, 1 / 255, 254.5 / 255]
    hist = np.bincount(np.clip((win.ravel() * 255).astype(np.int64), 0, 255), minlength=256)
    p = hist[hist > 0] / hist.sum()
    assert entropy_bits(win) == pytest.approx(float(-(p * np.log2(p)).sum()), rel=1e-12)


def _normalize_reference(data, window):
    lo, hi = window
    out = (np.asarray(data, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32,
                                   np.float64])
def test_normalize_equals_nan_to_num_then_clip(dtype):
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((4, 9, 11)) * 300 + 100).astype(dtype)
    if data.dtype.kind == "f":
        data.flat[::7], data.flat[::11], data.flat[::13] = np.nan, np.inf, -np.inf
    with np.errstate(all="ignore"):
        for window in ((-50.5, 420.25), (3.0, 3.0), (0.0, 1e-50), (np.nan, 1.0)):
            got, want = normalize(data, window=window), _normalize_reference(data, window)
            assert got.dtype == np.float32 and np.array_equal(got, want), window


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, bool])
def test_integer_window_equals_the_float_path(dtype):
    """robust_window's histogram path for integers = the generic float64 percentile path."""
    from scanqc.io.intensity import robust_window

    rng = np.random.default_rng(6)
    for i in range(60):
        n = int(rng.integers(1, 2500))
        if dtype is bool:
            x = rng.random(n) < rng.random()
        else:
            info = np.iinfo(dtype)
            hi = [4, 3000, 70000][i % 3]
            x = rng.integers(0, hi, n) * (rng.random(n) < [0.5, 0.995][i % 2])
            x = np.clip(x - (i % 5) * 100, info.min, info.max).astype(dtype)
        for q in ((0.5, 99.5), (0.0, 100.0), (37.3, 62.1)):
            assert robust_window(x, "", *q) == robust_window(x.astype(np.float64), "", *q)
