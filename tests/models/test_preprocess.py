from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from scanqc.io.scan import Scan
from scanqc.models.preprocess import resize_and_pad, scan_to_slices, subsample_indices


def _scan(data, spacing, kind="image", modality="", rgb=False):
    return Scan(data=data, spacing=spacing, affine=np.eye(4), kind=kind, modality=modality,
                rgb=rgb, paths=("synthetic",))


def _extent(sl: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(sl.max(axis=1) > 0)
    cols = np.flatnonzero(sl.max(axis=0) > 0)
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_image_16bit_shape_range_and_aspect(rng):
    data = (rng.random((200, 100)) * 4000 + 1000).astype(np.uint16)
    sl, idx = scan_to_slices(_scan(data, (1.0, 1.0)), size=128)
    assert sl.shape == (1, 128, 128) and sl.dtype == np.float32
    assert idx.tolist() == [0]
    assert sl.min() >= 0.0 and sl.max() <= 1.0
    h, w = _extent(sl[0])
    assert h == 128 and abs(w - 64) <= 1  # 2:1 aspect kept, padded left/right
    inner = sl[0][:, 40:88]
    assert 0.1 < inner.mean() < 0.9  # 16-bit values windowed, not saturated / divided by 255


def test_anisotropic_pixels_use_physical_spacing(rng):
    data = rng.random((100, 100)).astype(np.float32) + 1
    sl, _ = scan_to_slices(_scan(data, (2.0, 1.0)), size=128)
    h, w = _extent(sl[0])
    assert h == 128 and abs(w - 64) <= 1


def test_volume_subsampled_evenly_with_one_window(rng):
    vol = np.zeros((40, 64, 64), dtype=np.int16)
    vol[:, 16:48, 16:48] = np.linspace(100, 1000, 40)[:, None, None].astype(np.int16)
    sl, idx = scan_to_slices(_scan(vol, (3.0, 1.0, 1.0), kind="volume", modality="MR"),
                             size=64, max_slices=10)
    assert sl.shape == (10, 64, 64)
    assert idx[0] == 0 and idx[-1] == 39 and np.all(np.diff(idx) > 0)
    means = sl.mean(axis=(1, 2))
    assert np.all(np.diff(means) >= -1e-6)  # one window per volume: brightness order kept
    assert means[0] < means[-1]


def test_rgb_image(rng):
    data = (rng.random((50, 80, 3)) * 255).astype(np.uint8)
    sl, _ = scan_to_slices(_scan(data, (1.0, 1.0), rgb=True), size=32)
    assert sl.shape == (1, 32, 32)


def test_subsample_and_resize_helpers():
    assert subsample_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    assert subsample_indices(100, 3).tolist() == [0, 50, 99]
    out = resize_and_pad(np.ones((2, 10, 10)), (1.0, 1.0), 16)
    assert out.shape == (2, 16, 16) and np.allclose(out, 1.0)


def test_preprocess_does_not_import_torch():
    code = ("import sys, scanqc.models.preprocess\n"
            "assert 'torch' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_bad_dimensions_raise():
    with pytest.raises(ValueError):
        scan_to_slices(_scan(np.zeros((2, 3, 4, 5)), (1, 1, 1, 1), kind="volume"))
