"""Corruptions return new, seeded Scans and never touch the input."""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring import corruptions as C


def _phantom(shape):
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    data = np.where(r < 0.5, 800, 0).astype(np.int16)
    data[r < 0.25] = 1500
    return data


def _scan(volume: bool) -> Scan:
    shape = (16, 32, 32) if volume else (48, 40)
    data = _phantom(shape)
    data.flags.writeable = False  # a write anywhere would raise
    return Scan(
        data=data,
        spacing=(3.0, 1.0, 1.0) if volume else (0.5, 0.5),
        affine=np.diag([1.0, 1.0, 1.0, 1.0]),
        kind="volume" if volume else "image",
        modality="MR",
        scan_id="orig",
        metadata={"SeriesDescription": "sag T1"},
        warnings=[ScanWarning("x", "reader note", "info")],
        name="orig",
    )


NAMES = sorted(C.CORRUPTIONS)


@pytest.mark.parametrize("volume", [False, True], ids=["image", "volume"])
@pytest.mark.parametrize("name", NAMES)
def test_new_scan_input_unchanged_and_seeded(name, volume):
    scan = _scan(volume)
    before = scan.data.copy()
    meta_before, warn_before = dict(scan.metadata), list(scan.warnings)
    aff_before = scan.affine.copy()
    out = C.apply(name, scan, seed=3)
    again = C.apply(name, scan, seed=3)
    assert out is not scan and out.data is not scan.data
    assert not np.shares_memory(out.data, scan.data)
    np.testing.assert_array_equal(scan.data, before)
    assert scan.data.flags.writeable is False
    assert scan.metadata == meta_before and scan.warnings == warn_before
    np.testing.assert_array_equal(scan.affine, aff_before)
    assert out.metadata is not scan.metadata and out.warnings is not scan.warnings
    np.testing.assert_array_equal(out.data, again.data)
    assert out.scan_id != scan.scan_id and out.scan_id == again.scan_id
    assert out.data.dtype == scan.data.dtype
    assert out.metadata == scan.metadata  # still labelled as the original
    if name != "fov_miss":
        assert out.data.shape == scan.data.shape
    assert not np.array_equal(out.data, scan.data)


@pytest.mark.parametrize("name", ["motion", "ghosting", "spikes", "noise_only", "bias_field"])
def test_seed_changes_output(name):
    scan = _scan(True)
    a = C.apply(name, scan, seed=1).data
    b = C.apply(name, scan, seed=2).data
    assert not np.array_equal(a, b)


def test_blank_and_noise_statistics():
    scan = _scan(False)
    assert not C.blank(scan).data.any()
    noise = C.noise_only(scan, seed=0).data.astype(float)
    g = scan.data.astype(float)
    assert noise.mean() == pytest.approx(g.mean(), rel=0.1)
    assert noise.std() == pytest.approx(g.std(), rel=0.1)


def test_fov_miss_keeps_an_empty_edge():
    scan = _scan(True)
    out = C.fov_miss(scan, seed=0)
    assert out.data.size < 0.3 * scan.data.size
    assert (out.data > 0).mean() < 0.05 < (scan.data > 0).mean()


def test_wrong_plane_reslices_volume_and_keeps_labels():
    scan = _scan(True)
    out = C.wrong_plane(scan, plane="coronal")
    assert out.data.shape == (32, 16, 32)
    np.testing.assert_array_equal(out.data, np.transpose(scan.data, (1, 0, 2)))
    assert out.spacing == (1.0, 3.0, 1.0)
    assert out.metadata["SeriesDescription"] == "sag T1" and out.name == "orig"
    with pytest.raises(ValueError):
        C.wrong_plane(_scan(False))


def test_wrong_region_takes_other_pixels():
    scan, other = _scan(False), _scan(True)
    out = C.wrong_region(scan, other)
    np.testing.assert_array_equal(out.data, other.data)
    assert out.name == scan.name and out.kind == "volume"
    assert not np.shares_memory(out.data, other.data)


def test_rgb_input_becomes_gray():
    rgb = np.repeat(_phantom((30, 30))[..., None], 3, axis=-1).clip(0, 255).astype(np.uint8)
    scan = Scan(data=rgb, spacing=(1.0, 1.0), affine=np.eye(4), kind="image", rgb=True)
    out = C.noise_only(scan, seed=0)
    assert out.data.shape == (30, 30) and not out.rgb and out.data.dtype == np.uint8
