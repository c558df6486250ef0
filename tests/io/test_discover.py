"""Dataset discovery: formats, bad files and folders, progress/cancel, speed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scanqc.io.discover import discover
from scanqc.progress import Cancelled, CancelToken


def tiny_dicom(path: Path, series_uid: str, z: float) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0, 0, 0, 1.0, 0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(4)
    ds.save_as(path, enforce_file_format=True)


def test_mixed_folder(tmp_path: Path) -> None:
    uid = generate_uid()
    (tmp_path / "mr").mkdir()
    for k in range(3):
        tiny_dicom(tmp_path / "mr" / f"IM{k}", uid, float(k))  # no extension
    img = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
    nib.save(img, tmp_path / "vol.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), tmp_path / "fmri.nii")
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "xr.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "photo.jpg")
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "labels.csv").write_text("a,b\n")
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / ".hidden" / "x.png")
    calls = []
    entries = discover(tmp_path, progress=lambda d, t, m: calls.append((d, t)))
    by_name = {e.name: e for e in entries}
    assert set(by_name) == {"mr", "vol.nii.gz", "fmri.nii", "xr.png", "photo.jpg"}
    assert all(e.status == "ok" for e in entries)
    series = next(e for e in entries if e.format == "dicom")
    assert series.kind == "series" and len(series.paths) == 3
    vol = by_name["vol.nii.gz"]
    assert vol.format == "nifti" and vol.kind == "volume"
    # file axes are RAS; the NIfTI reader's (S, P, L) order reverses them
    assert vol.shape == (7, 6, 5) and vol.spacing == (3.0, 2.0, 1.0)
    assert by_name["fmri.nii"].header["n_volumes"] == 3
    assert by_name["xr.png"].shape == (10, 20) and by_name["xr.png"].format == "image"
    assert by_name["photo.jpg"].shape == (8, 9, 3)
    assert calls[-1][0] == calls[-1][1] == 3 + 2 + 2 + 2  # every file counted, hidden not
    ids = [e.scan_id for e in entries]
    assert len(set(ids)) == len(ids)
    assert [e.scan_id for e in discover(tmp_path)] == ids  # stable


def test_bad_files_and_folders_give_entries_not_exceptions(tmp_path: Path) -> None:
    (tmp_path / "corrupt.dcm").write_bytes(os.urandom(64))
    (tmp_path / "cut.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "x.dcm").mkdir()  # a folder with a DICOM-like name
    (tmp_path / "loop").mkdir()
    os.symlink(tmp_path, tmp_path / "loop" / "back")  # symlink loop
    os.symlink(tmp_path / "missing", tmp_path / "dangling.dcm")
    entries = discover(tmp_path)
    by = {e.name: e for e in entries}
    assert set(by) == {"corrupt.dcm", "cut.dcm", "empty.dcm", "broken.png", "dangling.dcm"}
    assert all(e.status == "error" and e.error and "\n" not in e.error for e in entries)
    assert by["empty.dcm"].error == "empty file (0 bytes)"
    assert by["dangling.dcm"].error == "broken symbolic link"
    assert "not a readable image" in by["broken.png"].error


def test_explicit_paths(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "data.bin").write_bytes(b"abc" * 100)
    entries = discover([tmp_path / "notes.txt", tmp_path / "data.bin", tmp_path / "nope.nii"])
    assert [e.status for e in entries] == ["error"] * 3
    by = {e.name: e.error for e in entries}
    assert by["notes.txt"] == "not an image: unrecognised format"
    assert by["data.bin"] == "not an image: unrecognised format"
    assert by["nope.nii"] == "no such file or folder"


def test_unreadable_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read any folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        entries = discover(tmp_path)
    finally:
        locked.chmod(0o755)
    assert [e.status for e in entries] == ["error"] and "cannot list" in entries[0].error


def test_cancel(tmp_path: Path) -> None:
    for k in range(3):
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / f"{k}.png")
    token = CancelToken()

    def progress(done: int, total: int, msg: str) -> None:
        if done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        discover(tmp_path, progress=progress, cancel=token)


def test_shared_data_discovers_without_exception(shared_data: Path) -> None:
    t = time.perf_counter()
    entries = discover(shared_data)
    assert time.perf_counter() - t < 30
    assert sum(e.format == "nifti" and e.status == "ok" for e in entries) >= 15
    assert sum(e.format == "image" and e.status == "ok" for e in entries) >= 500
    assert all("\n" not in e.error for e in entries)


@pytest.mark.slow
def test_discovery_groups_2000_dicom_files(tmp_path: Path) -> None:
    for s in range(20):
        uid = generate_uid()
        d = tmp_path / f"series{s:02d}"
        d.mkdir()
        for k in range(100):
            tiny_dicom(d / f"{k:03d}.dcm", uid, float(k))
    t = time.perf_counter()
    entries = discover(tmp_path)
    dt = time.perf_counter() - t
    assert len(entries) == 20 and all(len(e.paths) == 100 for e in entries)
    assert dt < 120, dt  # a hang guard, not a speed target (benchmarks/ measure speed)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_nifti_header_only_agrees_with_the_reader(tmp_path: Path) -> None:
    """Shape and spacing from the 544 header bytes match what the reader then loads."""
    from scanqc.io.load import load_scan

    rng = np.random.default_rng(3)
    for k in range(10):
        perm = rng.permutation(3)
        zooms = rng.uniform(0.4, 3.0, 3)
        rzs = _rotation(rng.uniform(-0.5, 0.5)) @ (np.eye(3)[perm] * rng.choice([-1, 1], 3)
                                                   * zooms)
        affine = np.eye(4)
        affine[:3, :3] = rzs
        shape = tuple(int(s) for s in rng.integers(3, 9, 3))
        cls = nib.Nifti2Image if k % 3 == 0 else nib.Nifti1Image
        img = cls(rng.integers(0, 100, shape).astype(np.int16), affine)
        if k % 2:
            img.header.set_qform(affine, 1)
            img.header.set_sform(None, 0)
        nib.save(img, tmp_path / f"v{k}.nii{'.gz' if k % 2 else ''}")
    entries = discover(tmp_path)
    assert len(entries) == 10 and all(e.status == "ok" for e in entries)
    for e in entries:
        scan = load_scan(e)
        assert e.shape == scan.data.shape, e.name
        np.testing.assert_allclose(e.spacing, scan.spacing, rtol=1e-5, err_msg=e.name)
        assert len(e.header["file_axes"]) == 3


def test_nifti_header_reads_no_pixel_data(tmp_path: Path) -> None:
    """A .nii.gz cut right after its header is listed; its data are never decompressed."""
    import gzip

    img = nib.Nifti1Image(np.zeros((40, 30, 20), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
    raw = img.header.binaryblock + b"\0" * 4
    (tmp_path / "head_only.nii.gz").write_bytes(gzip.compress(raw))
    (e,) = discover(tmp_path)
    assert e.status == "ok" and e.shape == (20, 30, 40) and e.spacing == (3.0, 2.0, 1.0)


def test_bad_nifti_headers(tmp_path: Path) -> None:
    import struct

    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4))
    good = bytearray(img.header.binaryblock + b"\0" * 4 + bytes(240))
    bad_magic = bytearray(good)
    bad_magic[344:348] = b"abcd"
    (tmp_path / "magic.nii").write_bytes(bad_magic)
    (tmp_path / "short.nii").write_bytes(good[:200])
    neg = bytearray(good)
    struct.pack_into("<f", neg, 80, -2.0)  # pixdim[1] < 0: nibabel's fix takes |value|
    (tmp_path / "neg.nii").write_bytes(neg)
    ext = bytearray(good)
    struct.pack_into("<f", ext, 108, 600.0)  # vox_offset past an extension
    ext[348] = 1  # extension flag set ...
    struct.pack_into("<ii", ext, 352, -5, 0)  # ... with an impossible size
    (tmp_path / "ext.nii").write_bytes(ext)
    by = {e.name: e for e in discover(tmp_path)}
    assert by["magic.nii"].status == "error" and "not a NIfTI file" in by["magic.nii"].error
    assert by["short.nii"].status == "error" and "not a NIfTI file" in by["short.nii"].error
    assert by["neg.nii"].status == "ok" and by["neg.nii"].spacing == (1.0, 1.0, 2.0)
    assert by["ext.nii"].status == "error" and "extension size" in by["ext.nii"].error
    assert all("\n" not in e.error and str(tmp_path) not in e.error for e in by.values())


def test_iter_discover_streams_parts_before_the_end(tmp_path: Path) -> None:
    from scanqc.io.discover import iter_discover, sort_key

    for i in range(23):
        Image.fromarray(np.full((4, 5), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    uid = generate_uid()
    (tmp_path / "series").mkdir()
    for k in range(2):
        tiny_dicom(tmp_path / "series" / f"IM{k}", uid, float(k))
    done = [0]
    parts, done_at_part = [], []
    for part in iter_discover(tmp_path, chunk_size=5,
                              progress=lambda d, t, m: done.__setitem__(0, d)):
        parts.append(part)
        done_at_part.append(done[0])
    assert all(0 < len(p) <= 5 for p in parts)
    assert done_at_part[0] < 25  # the first part came while files were still being read
    flat = [e for p in parts for e in p]
    assert flat[-1].format == "dicom"  # series are grouped at the end
    assert sorted(flat, key=sort_key) == discover(tmp_path)


def test_fifo_and_device_links_get_one_error_each(tmp_path) -> None:
    """Inside a walked folder too (they were left out), once even when reached twice."""
    import os

    from scanqc.io.discover import discover

    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "pipe.dcm")
    (tmp_path / "zero.nii").symlink_to("/dev/zero")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "gone2.png").symlink_to(tmp_path / "missing.png")  # another file: its own row
    (tmp_path / "sub" / "up").symlink_to("..")  # a loop: the folder is reached twice
    entries = discover([tmp_path, tmp_path / "sub"], root=tmp_path)
    errors = sorted((os.path.basename(e.path), e.error) for e in entries)
    assert errors == [
        ("gone.png", "broken symbolic link"),
        ("gone2.png", "broken symbolic link"),
        ("pipe.dcm", "not a regular file (device, FIFO or socket)"),
        ("zero.nii", "not a regular file (device, FIFO or socket)"),
    ]
