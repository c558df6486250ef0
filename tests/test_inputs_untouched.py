"""Reading never modifies, touches or adds files next to the inputs.

The readers directly, then every CLI command that reads a dataset (``info``, ``score`` to
CSV / JSON lines / parquet with ``--html`` and ``--resume``, ``labels import`` /
``export``, ``rank`` with and without labels, ``asymmetry``, ``region predict`` when its
probe is bundled): afterwards every input file
is byte-identical with the same mtime and mode, nothing is added to the input folder, and
nothing is written outside the output folder the commands were given.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from scanqc.cli.main import main
from scanqc.io.discover import discover
from scanqc.io.load import load_scan, open_scans
from test_privacy_writers import SERIES_DIR, make_identified_dataset, run_every_writer


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p.relative_to(root))] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def _write_dicom_series(folder: Path, n: int = 3) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series = generate_uid()
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientName = "Doe^Jane"
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, 2.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 2.0
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.full((8, 8), i, np.int16).tobytes()
        ds.save_as(folder / f"im{i}.dcm", enforce_file_format=True)


def test_inputs_are_not_modified(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    nib.Nifti1Image(np.ones((4, 5, 6), np.int16), np.eye(4)).to_filename(root / "v.nii.gz")
    nib.Nifti1Image(np.ones((4, 5, 6, 2), np.float32), np.eye(4)).to_filename(root / "f.nii")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "x.png")
    (root / "bad.png").write_bytes(b"broken")
    _write_dicom_series(root / "series")
    os.chmod(root / "x.png", 0o444)  # read-only inputs must be fine too
    before = _snapshot(root)

    entries = discover([root])
    assert len(entries) == 5
    for e in entries:
        if e.status == "ok":
            load_scan(e)
    results = list(open_scans([root]))
    assert sum(1 for _, r in results if r is not None and not isinstance(r, Exception)) == 4
    for p in ("v.nii.gz", "f.nii", "x.png", "series"):
        load_scan(root / p)
    assert main(["info", str(root), "--load"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5

    after = _snapshot(root)
    assert after == before  # same files, same bytes, same mtimes, nothing added


def test_every_command_leaves_inputs_untouched(tmp_path, monkeypatch):
    root = tmp_path / "in"
    make_identified_dataset(root)  # DICOM series, radiograph, broken DICOM, NIfTI, PNG
    nib.Nifti1Image(np.ones((4, 5, 6, 2), np.float32), np.eye(4)).to_filename(
        root / "vols" / "f4d.nii")
    (root / "bad.png").write_bytes(b"broken")
    (root / "notes.txt").write_text("not a scan")
    os.chmod(root / "hand.png", 0o444)  # read-only inputs must be fine too
    os.chmod(root / SERIES_DIR / "slice0.dcm", 0o444)
    inputs_before = _snapshot(root)
    outside_before = {p for p in _snapshot(tmp_path) if not p.startswith("in")}

    out = tmp_path / "out"
    printed = run_every_writer(root, out, monkeypatch, tmp_path / "work")
    assert len(printed) >= 10  # info, score x5, labels x3, rank x2, asymmetry

    assert _snapshot(root) == inputs_before  # same files, same bytes, same mtimes
    written = {p for p in _snapshot(tmp_path) if not p.startswith("in")} - outside_before
    stray = sorted(p for p in written if not p.startswith(("out", "work")))
    assert not stray, f"written outside the output folder: {stray}"
    assert any(p.startswith("out/") for p in written)
