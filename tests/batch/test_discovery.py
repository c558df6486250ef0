"""Discovery in worker processes gives the entries of the one-process discovery."""

from __future__ import annotations

import shutil
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from batch import write_png, write_volume
from scanqc.batch import discovery
from scanqc.io.discover import FileItem, discover
from scanqc.progress import Cancelled, CancelToken

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def _slice(path: Path, series: str | None, k: int, description: str = "T1 AX") -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription = "MR", description
    ds.StudyInstanceUID, ds.InstanceNumber = "1.2.3", k + 1
    if series:
        ds.SeriesInstanceUID = series
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.0 * k], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 2
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(256, dtype=np.uint16) * (k + 1)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _archive(root: Path) -> Path:
    """Series in folders (one spread over two folders), NIfTI, PNG, junk and a bad file."""
    for s in range(4):
        uid = generate_uid()
        for k in range(5):
            _slice(root / f"study{s}" / f"{k:03d}.dcm", uid, k)
    split = generate_uid()  # one series, its slices in two folders far apart in the walk
    for k in range(4):
        _slice(root / ("a_first" if k < 2 else "z_last") / f"{k:03d}.dcm", split, k, "SPLIT")
    copy = root / "study0" / "000_copy.dcm"  # a stray copy of a slice: an entry of its own
    shutil.copy(root / "study0" / "000.dcm", copy)
    (root / "nifti").mkdir()
    (root / "pngs").mkdir()
    write_volume(root / "nifti" / "v.nii.gz", 1)
    write_png(root / "pngs" / "x.png", 2)
    (root / "pngs" / "notes.txt").write_text("not an image")
    (root / "bad" / "broken.dcm").parent.mkdir()
    (root / "bad" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    return root


def _key(entries):
    return [(e.scan_id, e.paths, e.status, e.error, e.name, e.kind, e.format, e.shape,
             e.spacing, e.modality, e.description, sorted(e.header.items()),
             [(w.code, w.message) for w in e.warnings]) for e in entries]


@pytest.fixture
def archive(tmp_path):
    return _archive(tmp_path / "archive")


def test_shares_in_workers_equal_one_process_with_a_series_across_shares(archive,
                                                                         monkeypatch, caplog):
    monkeypatch.setattr(discovery, "MIN_FILES", 1)
    monkeypatch.setattr(discovery, "SHARE", 3)  # many shares; the split series spans two
    serial = discover([str(archive)], root=str(archive))
    assert any(e.description == "SPLIT" and len(e.paths) == 4 for e in serial)
    caplog.set_level("INFO", logger="scanqc.batch.discovery")
    parallel = discovery.discover_parallel([archive], str(archive), workers=2)
    assert "1 DICOM series span folders of several shares" in caplog.text  # regrouped
    assert _key(parallel) == _key(serial)
    one = discovery.discover_parallel([archive], str(archive), workers=1)  # main process
    assert _key(one) == _key(serial)


def test_a_dead_worker_pool_falls_back_to_the_main_process(archive, monkeypatch):
    monkeypatch.setattr(discovery, "MIN_FILES", 1)

    def broken(*_a, **_k):
        raise BrokenProcessPool("a worker died")

    monkeypatch.setattr(discovery, "_in_workers", broken)
    parallel = discovery.discover_parallel([archive], str(archive), workers=2)
    assert _key(parallel) == _key(discover([str(archive)], root=str(archive)))


def test_cancel_and_progress(archive, monkeypatch):
    monkeypatch.setattr(discovery, "MIN_FILES", 1)
    monkeypatch.setattr(discovery, "SHARE", 4)
    seen = []
    discovery.discover_parallel([archive], str(archive), 2,
                                progress=lambda d, t, m: seen.append((d, t, m)))
    assert seen[-1][0] == seen[-1][1] > 0 and seen[-1][2] == "grouping DICOM series"
    assert [d for d, _t, m in seen if m == "reading headers"] == sorted(
        d for d, _t, m in seen if m == "reading headers")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        discovery.discover_parallel([archive], str(archive), 2, cancel=token)


def test_folder_shares_keep_folders_whole_and_the_order():
    items = [FileItem(f"/d{d}/f{i}", "/", False) for d, n in ((1, 5), (2, 1), (3, 2), (4, 7))
             for i in range(n)]
    shares = discovery.folder_shares(items, 3)
    assert [len(s) for s in shares] == [5, 3, 7]
    assert [it for s in shares for it in s] == items
    for s in shares:
        folders = [it.path.split("/")[1] for it in s]
        assert all(sum(x.path.split("/")[1] == f for x in items) == folders.count(f)
                   for f in set(folders))


def test_files_without_series_uid_named_out_of_folder_order(tmp_path, monkeypatch, caplog):
    """Named files of one folder, far apart in the list: their no-UID group is regrouped."""
    monkeypatch.setattr(discovery, "MIN_FILES", 1)
    monkeypatch.setattr(discovery, "SHARE", 1)
    a = [tmp_path / "a" / f"{k}.dcm" for k in range(3)]
    b = [tmp_path / "b" / f"{k}.dcm" for k in range(2)]
    for k, p in enumerate(a):
        _slice(p, None, k, "NOUID")
    uid = generate_uid()
    for k, p in enumerate(b):
        _slice(p, uid, k)
    named = [str(p) for p in (a[0], b[0], a[1], b[1], a[2])]
    serial = discover(named, root=str(tmp_path))
    assert any(e.description == "NOUID" and len(e.paths) == 3 for e in serial)
    caplog.set_level("INFO", logger="scanqc.batch.discovery")
    parallel = discovery.discover_parallel(named, str(tmp_path), workers=2)
    assert "DICOM series span folders of several shares" in caplog.text
    assert _key(parallel) == _key(serial)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_archives_give_the_same_entries(tmp_path, monkeypatch, seed):
    """Series spread over random folders, files without UIDs, copies, junk; random shares."""
    rng = np.random.default_rng(seed)
    root = tmp_path / "random"
    folders = [root / f"f{i}" / ("sub" if i % 3 == 0 else "") for i in range(7)]
    for s in range(5):
        uid = None if s == 4 else generate_uid()  # one group without a SeriesInstanceUID
        for k in range(int(rng.integers(1, 6))):
            folder = folders[int(rng.integers(0, len(folders)))] if uid else folders[0]
            path = folder / f"s{s}_{k}.dcm"
            _slice(path, uid, k, f"S{s}")
            if rng.random() < 0.15:
                shutil.copy(path, folder / f"s{s}_{k}_copy.dcm")
    for i, folder in enumerate(folders[:3]):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"junk{i}.bin").write_bytes(rng.bytes(64))
    monkeypatch.setattr(discovery, "MIN_FILES", 1)
    monkeypatch.setattr(discovery, "SHARE", int(rng.integers(1, 5)))
    serial = discover([str(root)], root=str(root))
    assert _key(discovery.discover_parallel([root], str(root), workers=2)) == _key(serial)
