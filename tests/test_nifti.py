"""NIfTI reader: orientation to (S, P, L), affine, spacing, 4D, bad headers, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scanqc.io.nifti import load_nifti
from scanqc.io.scan import ScanReadError


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.Nifti1Image(data, affine).to_filename(path)
    return path


def _marker_volume(shape=(10, 12, 14), at=(2, 3, 4)) -> np.ndarray:
    d = np.zeros(shape, np.int16)
    d[at] = 1000
    return d


def _oblique_affine() -> np.ndarray:
    # rotation of 30 degrees about z and 20 degrees about x, anisotropic voxels
    a, b = np.deg2rad(30), np.deg2rad(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.8, 1.2, 2.5])
    aff[:3, 3] = [-40.0, 12.5, 7.0]
    return aff


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([2.0, 3.0, 4.0, 1.0]),  # RAS
        np.array([[-2.0, 0, 0, 50], [0, 3.0, 0, -20], [0, 0, 4.0, 10], [0, 0, 0, 1]]),  # LAS
        np.array([[0, 0, -4.0, 5], [-2.0, 0, 0, 6], [0, 3.0, 0, 7], [0, 0, 0, 1]]),  # PSL-ish
        _oblique_affine(),
    ],
    ids=["RAS", "LAS", "permuted", "oblique"],
)
def test_marker_keeps_world_position(tmp_path, affine):
    at = (2, 3, 4)
    path = _write(tmp_path / "m.nii.gz", _marker_volume(at=at), affine)
    scan = load_nifti(path, scan_id="abc")
    assert scan.kind == "volume" and scan.scan_id == "abc"
    assert scan.orientation == "SPL"
    hits = np.argwhere(scan.data == 1000)
    assert len(hits) == 1
    z, y, x = hits[0]
    world_before = affine @ [*at, 1]
    world_after = scan.affine @ [z, y, x, 1]
    np.testing.assert_allclose(world_after, world_before, atol=1e-4)
    # spacing equals the affine's column lengths in data order
    col_norms = np.linalg.norm(scan.affine[:3, :3], axis=0)
    np.testing.assert_allclose(scan.spacing, col_norms, rtol=1e-5)


def test_ras_marker_lands_at_expected_index(tmp_path):
    shape, at = (10, 12, 14), (2, 3, 4)
    path = _write(tmp_path / "ras.nii", _marker_volume(shape, at), np.diag([2.0, 3.0, 4.0, 1.0]))
    scan = load_nifti(path)
    nx, ny, nz = shape
    assert scan.data.shape == (nz, ny, nx)
    assert scan.data[at[2], ny - 1 - at[1], nx - 1 - at[0]] == 1000
    assert scan.spacing == (4.0, 3.0, 2.0)
    assert scan.data.dtype == np.int16


def test_las_marker_lands_at_expected_index(tmp_path):
    shape, at = (10, 12, 14), (2, 3, 4)
    aff = np.diag([-2.0, 3.0, 4.0, 1.0])
    scan = load_nifti(_write(tmp_path / "las.nii", _marker_volume(shape, at), aff))
    nx, ny, _ = shape
    # x already runs towards L: no flip of x, only y flips (A -> P)
    assert scan.data[at[2], ny - 1 - at[1], at[0]] == 1000
    assert scan.spacing == (4.0, 3.0, 2.0)


def test_scaling_applied(tmp_path):
    img = nib.Nifti1Image(np.full((4, 4, 4), 10, np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -5.0)
    img.to_filename(tmp_path / "s.nii")
    scan = load_nifti(tmp_path / "s.nii")
    assert scan.data.dtype.kind == "f"
    np.testing.assert_allclose(scan.data, 15.0)


def test_4d_takes_first_volume(tmp_path):
    d = np.zeros((5, 6, 7, 3), np.float32)
    for t in range(3):
        d[..., t] = t + 1
    scan = load_nifti(_write(tmp_path / "f.nii.gz", d, np.eye(4)))
    assert scan.data.shape == (7, 6, 5)
    assert np.all(scan.data == 1)
    w = {w.code: w for w in scan.warnings}
    assert "4d_first_volume" in w and "3 volumes" in w["4d_first_volume"].message


def test_2d_nifti_is_image(tmp_path):
    d = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    scan = load_nifti(_write(tmp_path / "two.nii", d, np.diag([0.5, 0.7, 1.0, 1.0])))
    assert scan.kind == "image" and scan.data.ndim == 2
    assert sorted(scan.data.shape) == [6, 8]
    assert sorted(scan.spacing) == pytest.approx([0.5, 0.7])
    # the world coordinate of a pixel is kept (through the 2D affine convention)
    y, x = np.argwhere(scan.data == d[1, 2])[0]
    expected = np.diag([0.5, 0.7, 1, 1]) @ [1, 2, 0, 1]
    np.testing.assert_allclose(scan.affine @ [y, x, 0, 1], expected)


def test_nan_values_kept_and_warned(tmp_path):
    d = np.ones((4, 4, 4), np.float32)
    d[0, 0, 0] = np.nan
    d[1, 1, 1] = np.inf
    scan = load_nifti(_write(tmp_path / "nan.nii", d, np.eye(4)))
    assert np.count_nonzero(~np.isfinite(scan.data)) == 2
    w = [w for w in scan.warnings if w.code == "non_finite_values"]
    assert w and w[0].value == 2


def _patch_pixdim(path: Path, values, *, no_transform: bool) -> None:
    raw = bytearray(path.read_bytes())
    raw[80:92] = np.asarray(values, np.float32).tobytes()  # pixdim[1:4]
    if no_transform:
        raw[252:254] = np.int16(0).tobytes()  # qform_code
        raw[254:256] = np.int16(0).tobytes()  # sform_code
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("bad", [0.0, np.nan, -2.0])
def test_invalid_pixdim_gives_unit_spacing_and_warning(tmp_path, bad):
    path = _write(tmp_path / "bad.nii", np.ones((4, 5, 6), np.int16), np.diag([2.0, 3.0, 4.0, 1]))
    _patch_pixdim(path, [2.0, bad, 4.0], no_transform=True)
    scan = load_nifti(path)
    assert "invalid_spacing" in [w.code for w in scan.warnings]
    # axis j (A/P) is data axis 1
    assert scan.spacing == (4.0, 1.0, 2.0)
    assert np.isfinite(scan.affine).all()


def test_truncated_gz_is_one_line_error(tmp_path):
    path = _write(tmp_path / "t.nii.gz", np.random.default_rng(0).random((20, 20, 20)), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ScanReadError) as ei:
        load_nifti(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    assert "truncated" in msg


def test_not_nifti_is_one_line_error(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(ScanReadError) as ei:
        load_nifti(path)
    assert "\n" not in str(ei.value) and "junk.nii" in str(ei.value)


def test_gzip_of_garbage(tmp_path):
    path = tmp_path / "g.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 10))
    with pytest.raises(ScanReadError):
        load_nifti(path)


def test_declared_size_checked_before_reading(tmp_path):
    # header declares 64x64x64 float64 = 2 MiB; a 1 MiB ceiling refuses it without reading
    path = _write(tmp_path / "big.nii.gz", np.zeros((64, 64, 64)), np.eye(4))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:400]))  # header only: reading data would fail
    with pytest.raises(ScanReadError, match="exceeds the per-scan limit"):
        load_nifti(path, max_bytes=1024**2)


def test_declared_size_bomb_env(tmp_path, monkeypatch):
    path = _write(tmp_path / "b.nii.gz", np.zeros((32, 32, 32), np.int16), np.eye(4))
    monkeypatch.setenv("SCANQC_MAX_SCAN_BYTES", "1000")
    with pytest.raises(ScanReadError, match="limit"):
        load_nifti(path)


@pytest.mark.parametrize("shape", [(6, 8), (6, 8, 1), (6, 8, 1, 3)])
def test_2d_nifti_is_discovered_as_the_image_it_loads_as(tmp_path, shape):
    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan

    d = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    _write(tmp_path / "two.nii.gz", d, np.diag([0.5, 0.7, 2.0, 1.0]))
    (entry,) = discover(tmp_path)
    assert entry.status == "ok" and entry.kind == "image"
    scan = load_scan(entry)
    assert scan.kind == "image" and tuple(entry.shape) == scan.data.shape
    assert tuple(entry.spacing) == pytest.approx(scan.spacing)


def test_colour_nifti_becomes_gray_luminance(tmp_path):
    rng = np.random.default_rng(2)
    rgb = np.zeros((5, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for c in "RGB":
        rgb[c] = rng.integers(0, 256, rgb.shape)
    scan = load_nifti(_write(tmp_path / "rgb.nii.gz", rgb, np.eye(4)))
    assert scan.data.dtype == np.uint8 and scan.data.shape == (3, 4, 5)
    assert "colour_to_gray" in {w.code for w in scan.warnings}
    want = np.round(0.299 * rgb["R"] + 0.587 * rgb["G"] + 0.114 * rgb["B"])
    assert sorted(scan.data.ravel()) == pytest.approx(sorted(want.ravel()), abs=1)


def test_complex_nifti_becomes_its_magnitude(tmp_path):
    d = (np.arange(60).reshape(5, 4, 3) * (0.6 + 0.8j)).astype(np.complex64)
    scan = load_nifti(_write(tmp_path / "c.nii.gz", d, np.eye(4)))
    assert scan.data.dtype == np.float32 and "complex_magnitude" in {
        w.code for w in scan.warnings}
    assert sorted(scan.data.ravel()) == pytest.approx(sorted(np.arange(60.0)), abs=1e-4)


def test_uncompressed_file_shorter_than_its_header_says_is_refused_before_reading(tmp_path):
    import tracemalloc

    path = _write(tmp_path / "cut.nii", np.ones((4, 5, 6), np.float32), np.eye(4))
    raw = bytearray(path.read_bytes())
    for k, n in ((1, 200), (2, 200), (3, 6000)):  # dim[1..3] (int16 at byte 40 + 2k)
        raw[40 + 2 * k:42 + 2 * k] = n.to_bytes(2, "little")
    path.write_bytes(bytes(raw))  # declares 960 MB (under the 4 GiB limit), holds 480 bytes
    tracemalloc.start()
    with pytest.raises(ScanReadError, match="truncated file") as err:
        load_nifti(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))
    assert peak < 20 << 20  # the 960 MB are never allocated


def test_disagreeing_qform_and_sform_are_reported(tmp_path):
    """A header whose two transforms disagree (read with the sform, as nibabel does)."""
    data = np.zeros((20, 24, 10), np.int16)
    data[5:15, 6:18, 2:8] = 100
    sform = np.diag([1.0, 1.0, 2.0, 1.0])

    def write(name, qform, qcode=1):
        img = nib.Nifti1Image(data, sform)
        img.set_sform(sform, code=1)
        img.set_qform(qform, code=qcode)
        nib.save(img, tmp_path / name)
        return {w.code: w for w in load_nifti(tmp_path / name).warnings}

    assert "qform_sform_mismatch" not in write("same.nii.gz", sform)
    shifted = sform.copy()
    shifted[:3, 3] = [30.0, 0.0, 0.0]
    w = write("shifted.nii.gz", shifted)["qform_sform_mismatch"]
    assert w.severity == "warn" and "30.0 mm" in w.message and "mirrored" not in w.message
    flipped = np.diag([-1.0, 1.0, 2.0, 1.0])
    assert "mirrored" in write("flipped.nii.gz", flipped)["qform_sform_mismatch"].message
    assert "qform_sform_mismatch" not in write("unset.nii.gz", shifted, qcode=0)
