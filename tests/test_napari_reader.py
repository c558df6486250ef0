"""napari reader: get_reader contract (no Qt) and opening through a viewer (gui)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from scanqc.io._napari_reader import get_reader, read_scans

AFFINE = np.array([[-2.0, 0, 0, 30], [0, 3.0, 0, -10], [0, 0, 4.0, 5], [0, 0, 0, 1]])


def _nifti(path: Path) -> Path:
    d = np.zeros((10, 12, 14), np.int16)
    d[2, 3, 4] = 500
    nib.Nifti1Image(d, AFFINE).to_filename(path)
    return path


def _dicom_series(folder: Path, n: int = 4) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    series, study = generate_uid(), generate_uid()
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.PatientName = "Secret^Person"
        ds.PatientID = "PID-12345"
        ds.SeriesDescription = "t1 axial"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = n - i  # reversed on purpose
        ds.ImagePositionPatient = [-10.0, -20.0, 3.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.75]
        ds.SliceThickness = 3.0
        ds.Rows, ds.Columns = 6, 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.full((6, 8), 100 * (i + 1), np.uint16).tobytes()
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    return folder


def test_get_reader_accepts_our_files_and_folders(tmp_path):
    nii = _nifti(tmp_path / "a.nii.gz")
    series = _dicom_series(tmp_path / "series")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    assert callable(get_reader(str(nii)))
    assert callable(get_reader(str(series)))
    assert callable(get_reader(str(tmp_path / "x.png")))
    assert callable(get_reader([str(nii), str(tmp_path / "x.png")]))


def test_get_reader_declines_quickly_and_never_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "missing.nii")) is None
    assert get_reader(None) is None  # type: ignore[arg-type]


def test_read_scans_layer_data(tmp_path):
    nii = _nifti(tmp_path / "a.nii.gz")
    (layer,) = read_scans(str(nii))
    data, kw, kind = layer
    assert kind == "image" and data.shape == (14, 12, 10)
    assert kw["scale"] == (4.0, 3.0, 2.0)
    meta = kw["metadata"]["scanqc"]
    assert meta["orientation"] == "SPL" and meta["kind"] == "volume"
    json.dumps(meta)  # JSON-friendly
    # translate + scale reproduce the world position of the marker (axis-aligned case)
    z, y, x = np.argwhere(data == 500)[0]
    world = AFFINE @ [2, 3, 4, 1]
    napari_world = np.asarray(kw["translate"]) + np.asarray(kw["scale"]) * [z, y, x]
    np.testing.assert_allclose(napari_world, [world[2], -world[1], -world[0]])
    lo, hi = kw["contrast_limits"]
    assert hi > lo


def test_read_scans_dicom_series_hides_patient(tmp_path):
    (layer,) = read_scans(str(_dicom_series(tmp_path / "series")))
    data, kw, _ = layer
    assert data.shape == (4, 6, 8)
    assert kw["scale"] == pytest.approx((3.0, 0.5, 0.75))
    text = json.dumps(kw["metadata"])
    assert "Secret" not in text and "PID-12345" not in text
    assert kw["metadata"]["scanqc"]["modality"] == "MR"


def test_read_scans_skips_bad_and_raises_when_nothing(tmp_path):
    nii = _nifti(tmp_path / "a.nii.gz")
    bad = tmp_path / "b.nii.gz"
    bad.write_bytes(b"nope")
    with pytest.warns(UserWarning, match="b.nii.gz"):
        layers = read_scans([str(nii), str(bad)])
    assert len(layers) == 1
    with pytest.raises(ValueError, match="b.nii.gz"):
        read_scans(str(bad))


def test_sample_data_loads():
    from scanqc.sample_data import load_sample, sample_dir

    assert (sample_dir() / "LICENSE").is_file() and (sample_dir() / "README.md").is_file()
    layers = load_sample()
    names = {kw["name"] for _, kw, _ in layers}
    assert len(layers) == 7
    assert any(n.startswith("ct_chest_abdomen_dicom") for n in names)
    readme = (sample_dir() / "README.md").read_text()
    for p in sample_dir().rglob("*"):
        if p.is_file() and p.name not in ("README.md", "LICENSE"):
            assert (p.parent.name if p.suffix == ".dcm" else p.name) in readme
    total = sum(p.stat().st_size for p in sample_dir().rglob("*") if p.is_file())
    assert total < 3 * 1024**2


@pytest.mark.gui
def test_viewer_open_with_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    nii = _nifti(tmp_path / "a.nii.gz")
    series = _dicom_series(tmp_path / "series")
    viewer.open(str(nii), plugin="napari-scanqc")
    viewer.open(str(series), plugin="napari-scanqc")
    assert len(viewer.layers) == 2
    vol, ser = viewer.layers
    np.testing.assert_allclose(vol.scale, (4.0, 3.0, 2.0))
    np.testing.assert_allclose(ser.scale, (3.0, 0.5, 0.75))
    assert vol.metadata["scanqc"]["orientation"] == "SPL"
    assert ser.metadata["scanqc"]["modality"] == "MR"
    assert ser.data.shape == (4, 6, 8)
    assert vol.colormap.name == "gray"
