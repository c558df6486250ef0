"""DICOM reading: series grouping and order, geometry, pixel transforms, failures."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scanqc.io import dicom
from scanqc.io.discover import discover
from scanqc.io.scan import ScanEntry, ScanReadError

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def make_dataset(
    pixels: np.ndarray | None,
    *,
    series_uid: str = "",
    modality: str = "CT",
    sop_class: str = CT_IMAGE,
    ipp: list[float] | None = None,
    iop: list[float] | None = None,
    instance: int | None = 1,
    spacing: list[float] | None = (0.5, 0.7),
    slope: float | None = None,
    intercept: float | None = None,
    photometric: str | None = None,
    bits_stored: int | None = None,
    description: str = "test series",
    frames: int | None = None,
) -> Dataset:
    """A minimal but valid DICOM dataset (pixels: (Y, X), (F, Y, X) or (Y, X, 3))."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesDescription = description
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-0001"
    if instance is not None:
        ds.InstanceNumber = instance
    if ipp is not None:
        ds.ImagePositionPatient = [float(v) for v in ipp]
    if iop is not None:
        ds.ImageOrientationPatient = [float(v) for v in iop]
    if spacing is not None:
        ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 2.5
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if pixels is None:
        return ds
    arr = np.ascontiguousarray(pixels)
    rgb = arr.ndim == 3 and arr.shape[-1] == 3 and frames is None
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = arr.shape[-3:-1] if rgb else arr.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric or ("RGB" if rgb else "MONOCHROME2")
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or arr.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    zs: list[float],
    *,
    series_uid: str | None = None,
    iop: list[float] = AXIAL,
    shuffle: bool = True,
    rng: np.random.Generator | None = None,
    prefix: str = "f",
    **kw,
) -> tuple[str, list[Path]]:
    """Write one slice per z (slice value = 100 + 10 * index in z order)."""
    rng = rng or np.random.default_rng(1)
    uid = series_uid or generate_uid()
    normal = np.cross(iop[:3], iop[3:])
    names = rng.permutation(len(zs)) if shuffle else np.arange(len(zs))
    instances = rng.permutation(len(zs)) + 1 if shuffle else np.arange(len(zs)) + 1
    paths = []
    for k, z in enumerate(zs):
        ipp = list(np.array([-100.0, -50.0, 0.0]) + z * normal)
        px = np.full((6, 5), 100 + 10 * k, dtype=np.int16)
        ds = make_dataset(px, series_uid=uid, ipp=ipp, iop=iop, instance=int(instances[k]), **kw)
        paths.append(save(ds, folder / f"{prefix}{names[k]:03d}.dcm"))
    return uid, paths


def only(entries: list[ScanEntry], **match) -> ScanEntry:
    got = [e for e in entries if all(getattr(e, k) == v for k, v in match.items())]
    assert len(got) == 1, [(e.name, e.status, e.kind) for e in entries]
    return got[0]


# ------------------------------------------------------------------ ordering and grouping


def test_series_sorted_by_position_not_by_name_or_instance(tmp_path: Path) -> None:
    zs = [10.0 + 2.5 * k for k in range(7)]
    write_series(tmp_path, zs)
    entry = only(discover(tmp_path), status="ok")
    assert entry.kind == "series" and entry.format == "dicom"
    assert entry.shape == (7, 6, 5)
    z_of_path = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in entry.paths]
    assert z_of_path == sorted(z_of_path)
    scan = dicom.load_dicom(entry)
    assert scan.kind == "series" and scan.data.shape == (7, 6, 5)
    assert list(scan.data[:, 0, 0]) == [100 + 10 * k for k in range(7)]
    assert scan.spacing == pytest.approx((2.5, 0.5, 0.7))
    assert not [w for w in scan.warnings if w.severity != "info"]
    # affine: index (k, row, col) -> RAS; LPS (-100, -50, z) is RAS (100, 50, z)
    aff = scan.affine
    assert aff @ np.array([0, 0, 0, 1.0]) == pytest.approx([100.0, 50.0, 10.0, 1.0])
    assert aff @ np.array([2, 0, 0, 1.0]) == pytest.approx([100.0, 50.0, 15.0, 1.0])
    assert aff @ np.array([0, 1, 0, 1.0]) == pytest.approx([100.0, 49.5, 10.0, 1.0])
    assert aff @ np.array([0, 0, 1, 1.0]) == pytest.approx([99.3, 50.0, 10.0, 1.0])
    assert scan.orientation == "SPL"


def test_missing_slice_reported_with_range(tmp_path: Path) -> None:
    zs = [2.0 * k for k in range(8) if k != 3]
    write_series(tmp_path, zs)
    entry = only(discover(tmp_path), status="ok")
    miss = [w for w in entry.warnings if w.code == "missing_slices"]
    assert len(miss) == 1 and miss[0].slices == (2, 3) and miss[0].value == 1
    scan = dicom.load_dicom(entry)
    assert [w.slices for w in scan.warnings if w.code == "missing_slices"] == [(2, 3)]
    assert scan.spacing[0] == pytest.approx(2.0)  # median spacing, not the gap


def test_duplicate_and_uneven_positions(tmp_path: Path) -> None:
    write_series(tmp_path / "dup", [0.0, 2.0, 2.0, 4.0, 6.0])
    write_series(tmp_path / "uneven", [0.0, 2.0, 4.0, 5.2, 7.2, 9.2])
    entries = discover(tmp_path)
    dup = only(entries, name="dup - test series")
    assert [w.slices for w in dup.warnings if w.code == "duplicate_slices"] == [(1, 2)]
    uneven = only(entries, name="uneven - test series")
    assert {w.code for w in uneven.warnings} == {"uneven_spacing"}


def test_two_series_in_one_folder_are_two_entries(tmp_path: Path) -> None:
    a, _ = write_series(tmp_path, [0.0, 1.0, 2.0], prefix="a", description="first")
    b, _ = write_series(tmp_path, [0.0, 3.0, 6.0, 9.0], prefix="b", description="second")
    entries = [e for e in discover(tmp_path) if e.status == "ok"]
    assert sorted(len(e.paths) for e in entries) == [3, 4]
    assert len({e.scan_id for e in entries}) == 2
    for e in entries:
        uids = {pydicom.dcmread(p).SeriesInstanceUID for p in e.paths}
        assert len(uids) == 1


@pytest.mark.parametrize("description", ["", None])
def test_series_without_description_is_named_by_its_folder(tmp_path: Path,
                                                          description: str | None) -> None:
    write_series(tmp_path / "s1", [0.0, 1.0, 2.0], description="")
    if description is None:  # an empty element: pydicom gives None
        for f in (tmp_path / "s1").iterdir():
            ds = pydicom.dcmread(f)
            ds.SeriesDescription = None
            ds.save_as(f)
    (entry,) = [e for e in discover(tmp_path) if e.status == "ok"]
    assert entry.name == "s1"
    assert entry.description == ""


def test_series_with_two_orientations_is_split(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path, [0.0, 1.0, 2.0], series_uid=uid, prefix="ax")
    write_series(tmp_path, [5.0, 7.0, 9.0], series_uid=uid, iop=CORONAL, prefix="co")
    entries = [e for e in discover(tmp_path) if e.status == "ok"]
    assert len(entries) == 2 and all(e.kind == "series" for e in entries)
    assert len({e.scan_id for e in entries}) == 2
    for e in entries:
        iops = {tuple(pydicom.dcmread(p).ImageOrientationPatient) for p in e.paths}
        assert len(iops) == 1
    coronal = next(e for e in entries if "co" in os.path.basename(e.paths[0]))
    scan = dicom.load_dicom(coronal)
    assert scan.spacing[0] == pytest.approx(2.0)
    assert scan.orientation[0] in "AP"  # coronal stack: slice axis runs front-back


def test_missing_positions_fall_back_to_instance_number(tmp_path: Path) -> None:
    uid = generate_uid()
    for k, inst in enumerate([3, 1, 2]):
        px = np.full((4, 4), inst, dtype=np.int16)
        ds = make_dataset(px, series_uid=uid, instance=inst)
        save(ds, tmp_path / f"s{k}.dcm")
    entry = only(discover(tmp_path), status="ok")
    assert entry.kind == "series"
    assert "sorted_by_instance" in {w.code for w in entry.warnings}
    scan = dicom.load_dicom(entry)
    assert list(scan.data[:, 0, 0]) == [1, 2, 3]


def test_lone_slice_is_an_image_and_radiographs_are_not_stacked(tmp_path: Path) -> None:
    save(make_dataset(np.zeros((4, 5), np.int16), ipp=[0, 0, 0], iop=AXIAL), tmp_path / "ct.dcm")
    uid = generate_uid()
    for k in range(2):
        ds = make_dataset(np.full((6, 4), k, np.uint16), series_uid=uid, modality="DX",
                          sop_class=DX_IMAGE, instance=k + 1)
        save(ds, tmp_path / f"dx{k}.dcm")
    entries = [e for e in discover(tmp_path) if e.status == "ok"]
    assert sorted((e.kind, e.shape) for e in entries) == [
        ("image", (4, 5)), ("image", (6, 4)), ("image", (6, 4))]
    scan = dicom.load_dicom(only(entries, name="ct.dcm - test series"))
    assert scan.kind == "image" and scan.data.shape == (4, 5) and scan.spacing == (0.5, 0.7)


# ------------------------------------------------------------------ pixel transforms


def load_one(tmp_path: Path, ds: Dataset, name: str = "x.dcm"):
    save(ds, tmp_path / name)
    entry = only(discover(tmp_path / name), status="ok")
    return dicom.load_dicom(entry)


def test_rescale_slope_intercept(tmp_path: Path) -> None:
    raw = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    s = load_one(tmp_path, make_dataset(raw, slope=1, intercept=-1024), "a.dcm")
    assert s.data.dtype == np.int16  # 16-bit stays 16-bit
    assert s.data.tolist() == [[-1024, -24], [976, 3071]]
    s = load_one(tmp_path, make_dataset(raw, slope=2.5, intercept=-10), "b.dcm")
    assert s.data.dtype == np.float32
    assert s.data == pytest.approx(raw * 2.5 - 10)
    big = np.array([[32000, -32000]], dtype=np.int16)
    s = load_one(tmp_path, make_dataset(big, slope=1, intercept=1000), "c.dcm")
    assert s.data.dtype == np.int32 and s.data.tolist() == [[33000, -31000]]


def test_sixteen_bit_stays_sixteen_bit(tmp_path: Path) -> None:
    raw = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    s = load_one(tmp_path, make_dataset(raw, modality="DX", sop_class=DX_IMAGE))
    assert s.data.dtype == np.uint16 and np.array_equal(s.data, raw)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    raw = np.array([[0, 100], [4000, 4095]], dtype=np.uint16)
    ds = make_dataset(raw, modality="CR", photometric="MONOCHROME1", bits_stored=12)
    s = load_one(tmp_path, ds)
    assert s.data.tolist() == [[4095, 3995], [95, 0]]
    assert "monochrome1_inverted" in {w.code for w in s.warnings}


def test_rgb_ultrasound(tmp_path: Path, rng: np.random.Generator) -> None:
    px = rng.integers(0, 255, (6, 7, 3), dtype=np.uint8)
    us = make_dataset(px, modality="US", sop_class="1.2.840.10008.5.1.4.1.1.6.1")
    s = load_one(tmp_path, us)
    assert s.rgb and s.kind == "image" and s.data.dtype == np.uint8
    assert np.array_equal(s.data, px)


def _us_region(fmt: int, units: int, delta_cm: tuple[float, float], box: tuple[int, ...]):
    r = Dataset()
    r.RegionSpatialFormat, r.RegionDataType = fmt, 1
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = units
    r.PhysicalDeltaX, r.PhysicalDeltaY = delta_cm
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, \
        r.RegionLocationMaxY1 = box
    return r


def test_ultrasound_pixel_size_from_its_calibrated_region(tmp_path: Path,
                                                          rng: np.random.Generator) -> None:
    """Ultrasound has no PixelSpacing; the B-mode region's PhysicalDelta (cm) gives it (a
    'missing_spacing' warning on every ultrasound image before)."""
    from pydicom.sequence import Sequence

    px = rng.integers(0, 255, (60, 80), dtype=np.uint8)
    us = make_dataset(px, modality="US", sop_class="1.2.840.10008.5.1.4.1.1.6.1", spacing=None)
    us.SequenceOfUltrasoundRegions = Sequence([
        _us_region(0, 0, (1.0, 1.0), (0, 0, 79, 59)),  # the whole frame, no calibration
        _us_region(1, 3, (0.004, 0.005), (10, 5, 70, 55)),  # B-mode sector in cm
        _us_region(1, 3, (0.02, 0.02), (0, 56, 10, 59)),  # a small strip
    ])
    s = load_one(tmp_path, us)
    assert s.spacing == pytest.approx((0.05, 0.04))  # (row, column) mm
    assert "missing_spacing" not in {w.code for w in s.warnings}
    # malformed values are left out, region by region; nothing usable: None
    from scanqc.io.dicom_header import ultrasound_spacing

    broken = _us_region(1, 3, (0.01, 0.01), (0, 0, 79, 59))
    del broken.PhysicalDeltaY
    good = _us_region(1, 3, (0.004, 0.005), (10, 5, 70, 55))
    assert ultrasound_spacing([broken, good]) == pytest.approx((0.05, 0.04))
    assert ultrasound_spacing(None) is None and ultrasound_spacing(3) is None
    assert ultrasound_spacing([broken]) is None
    # uncalibrated regions only: the pixel size stays unknown
    us.SequenceOfUltrasoundRegions = Sequence([_us_region(1, 0, (1.0, 1.0), (0, 0, 79, 59))])
    s = load_one(tmp_path, us, "b.dcm")
    assert "missing_spacing" in {w.code for w in s.warnings}


def test_multiframe_is_one_volume(tmp_path: Path) -> None:
    px = np.stack([np.full((4, 3), k, np.int16) for k in range(5)])
    ds = make_dataset(px, frames=5, ipp=[0, 0, 0], iop=AXIAL)
    ds.SpacingBetweenSlices = 3.0
    s = load_one(tmp_path, ds)
    assert s.kind == "volume" and s.data.shape == (5, 4, 3)
    assert s.spacing == pytest.approx((3.0, 0.5, 0.7))


def test_enhanced_multiframe_frames_sorted_by_position(tmp_path: Path) -> None:
    zs = [8.0, 6.0, 4.0, 2.0]  # stored top-down
    px = np.stack([np.full((4, 3), int(z), np.int16) for z in zs])
    ds = make_dataset(px, frames=4, sop_class=ENHANCED_CT, spacing=None)
    shared = Dataset()
    orient, measures = Dataset(), Dataset()
    orient.ImageOrientationPatient = AXIAL
    measures.PixelSpacing = [0.8, 0.8]
    measures.SliceThickness = 2.0
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for z in zs:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, z]
        item.PlanePositionSequence = [pos]
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = per
    s = load_one(tmp_path, ds)
    assert s.kind == "volume"
    assert list(s.data[:, 0, 0]) == [2, 4, 6, 8]
    assert s.spacing == pytest.approx((2.0, 0.8, 0.8))
    assert (s.affine @ [0, 0, 0, 1])[2] == pytest.approx(2.0)


def test_headless_and_gzip_dicom(tmp_path: Path) -> None:
    raw = np.arange(12, dtype=np.int16).reshape(3, 4)
    part10 = save(make_dataset(raw), tmp_path / "part10.dcm")
    ds = make_dataset(raw)
    del ds.file_meta
    ds.save_as(tmp_path / "headless.dcm", implicit_vr=True, little_endian=True,
               enforce_file_format=False)
    assert (tmp_path / "headless.dcm").read_bytes()[128:132] != b"DICM"
    assert dicom.is_dicom(tmp_path / "headless.dcm")
    h = dicom.load_dicom(only(discover(tmp_path / "headless.dcm"), status="ok"))
    assert np.array_equal(h.data, raw)
    assert "no_file_meta" in {w.code for w in h.warnings}
    gz = tmp_path / "zipped"
    gz.write_bytes(gzip.compress(part10.read_bytes()))
    assert dicom.is_dicom(gz)
    z = dicom.load_dicom(only(discover(gz), status="ok"))
    assert np.array_equal(z.data, raw)
    (tmp_path / "note.txt").write_text("hello")
    assert not dicom.is_dicom(tmp_path / "note.txt")


def test_missing_spacing_warns(tmp_path: Path) -> None:
    s = load_one(tmp_path, make_dataset(np.zeros((3, 3), np.uint8), spacing=None))
    assert s.spacing == (1.0, 1.0)
    assert "missing_spacing" in {w.code for w in s.warnings}


# ------------------------------------------------------------------ failures


def test_non_image_object_is_skipped_with_reason(tmp_path: Path) -> None:
    ds = make_dataset(None, modality="SR", sop_class=BASIC_TEXT_SR)
    save(ds, tmp_path / "report.dcm")
    e = only(discover(tmp_path), status="skipped")
    assert e.error == "no pixel data (SOP class: Basic Text SR)"
    with pytest.raises(ScanReadError, match="no pixel data"):
        dicom.load_dicom(ScanEntry(e.scan_id, e.paths, "image", "dicom"))


def test_truncated_pixel_data_is_a_one_line_error(tmp_path: Path) -> None:
    ds = make_dataset(np.zeros((16, 16), np.int16))
    ds.PixelData = ds.PixelData[:300]
    save(ds, tmp_path / "cut.dcm")
    e = only(discover(tmp_path), status="ok")
    with pytest.raises(ScanReadError) as err:
        dicom.load_dicom(e)
    msg = str(err.value)
    assert "\n" not in msg and "truncated or corrupt pixel data" in msg
    assert msg.startswith(str(tmp_path / "cut.dcm"))


def test_declared_size_checked_before_decoding(tmp_path: Path, monkeypatch) -> None:
    _, paths = write_series(tmp_path, [0.0, 1.0, 2.0])
    e = only(discover(tmp_path), status="ok")
    called = []
    monkeypatch.setattr(dicom, "_decode", lambda *a: called.append(a))
    with pytest.raises(ScanReadError, match="exceeds the per-scan limit"):
        dicom.load_dicom(e, max_bytes=100)  # 3 x 6 x 5 x 2 bytes = 180
    assert not called


def test_missing_codec_is_reported_as_such(tmp_path: Path, monkeypatch) -> None:
    save(make_dataset(np.zeros((4, 4), np.int16)), tmp_path / "a.dcm")
    e = only(discover(tmp_path), status="ok")

    class NoCodec:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg"]

    monkeypatch.setattr("pydicom.pixels.get_decoder", lambda uid: NoCodec())
    with pytest.raises(ScanReadError, match="cannot decode transfer syntax .*: missing codec"):
        dicom.load_dicom(e)


# ------------------------------------------------------------------ real data


def _sha(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize(
    ("folder", "n"),
    [
        ("totalsegmentator_examples/example_ct_dicom", 20),
        ("pykneer_knee_mri/DESS_echo1", 80),
        ("torchio_dicom_series/dicom", 17),
    ],
)
def test_real_series_open_as_one_sorted_volume(shared_data: Path, folder: str, n: int) -> None:
    d = shared_data / folder
    files = sorted(p for p in d.iterdir() if p.is_file() and dicom.is_dicom(p))
    before = _sha(files)
    entries = [e for e in discover(d) if e.status == "ok"]
    assert len(entries) == 1
    e = entries[0]
    assert e.kind == "series" and len(e.paths) == n == len(files)
    # expected order straight from pydicom
    proj = {}
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, float)
        proj[str(p)] = float(np.dot(np.cross(iop[:3], iop[3:]), np.array(
            ds.ImagePositionPatient, float)))
    assert list(e.paths) == sorted(proj, key=proj.get)
    assert np.all(np.diff([proj[p] for p in e.paths]) > 0)
    scan = dicom.load_dicom(e)
    assert scan.data.shape[0] == n
    for k in (0, n // 2, n - 1):
        ds = pydicom.dcmread(e.paths[k])
        ref = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0))
        assert np.array_equal(scan.data[k], ref)
    assert _sha(files) == before


def test_dicomdir_tree_one_scan_per_series(shared_data: Path) -> None:
    d = shared_data / "pydicom_3.0.2_testfiles" / "dicomdirtests"
    entries = discover(d)
    dirs = [e for e in entries if os.path.basename(e.path).startswith("DICOMDIR")]
    assert len(dirs) == 8 and all(e.status == "skipped" for e in dirs)
    # ground truth: series (and orientation groups) with pixel data, from pydicom
    series: dict[str, set] = {}
    files_of: dict[str, set] = {}
    for p in d.rglob("*"):
        if not p.is_file() or p.name.startswith(("DICOMDIR", "README")):
            continue
        ds = pydicom.dcmread(p, force=True)
        if "PixelData" not in ds:
            continue
        iop = tuple(np.round(np.array(ds.get("ImageOrientationPatient", [0] * 6), float), 3))
        series.setdefault(ds.SeriesInstanceUID, set()).add(iop)
        files_of.setdefault(ds.SeriesInstanceUID, set()).add(str(p))
    ok = [e for e in entries if e.status == "ok"]
    got: dict[str, list[ScanEntry]] = {}
    for e in ok:
        uids = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in e.paths}
        assert len(uids) == 1
        got.setdefault(uids.pop(), []).append(e)
    assert set(got) == set(series)
    for uid, groups in got.items():
        assert {p for e in groups for p in e.paths} == files_of[uid]
        if len(series[uid]) == 1:
            modality = groups[0].modality
            expect = len(files_of[uid]) if modality in ("CR", "DX") else 1
            assert len(groups) == expect, (uid, [e.name for e in groups])
    ct2 = [e for e in ok if e.name.startswith("77654033/CT2")]
    assert len(ct2) == 1 and ct2[0].kind == "series" and len(ct2[0].paths) == 4
    tiny = [e for e in entries if "TINY_ALPHA/PT" in e.name]
    assert len(tiny) == 1 and tiny[0].status == "skipped" and "no pixel data" in tiny[0].error


@pytest.mark.slow
def test_manifest_dicom_rows(shared_data: Path) -> None:
    m = pd.read_csv(shared_data / "manifest.csv")
    rows = m[m["format"].astype(str).str.startswith("dicom")]
    big = ("pykneer", "example_ct_dicom/", "torchio_dicom", "TINY_ALPHA/PT")
    rows = rows[~rows["path"].str.contains("|".join(big), regex=True)]
    paths = [shared_data / p for p in rows["path"]]
    before = _sha(paths)
    for rel, decode in zip(rows["path"], rows["decode"].astype(str), strict=True):
        p = shared_data / rel
        found = [e for e in discover(p, root=shared_data) if str(p) in e.paths]
        assert found, rel
        e = found[0]
        if decode == "no_pixel_data":
            if rel.endswith("no_meta.dcm"):  # stray byte before the data set: unreadable
                assert e.status == "error" and e.error
            else:
                assert e.status == "skipped" and e.error, rel
            continue
        assert e.status == "ok", (rel, e.error)
        try:
            scan = dicom.load_dicom(e)
        except ScanReadError as err:
            assert decode.startswith("FAIL"), (rel, str(err))
            assert "\n" not in str(err) and str(err).startswith(str(p))
            assert len(err.cause) < 300
        else:
            assert scan.data.size > 0 and np.isfinite(scan.data).all()
    assert _sha(paths) == before


def test_quiet_nests_and_restores_pydicom_settings():
    import warnings

    from pydicom import config

    from scanqc.io.dicom import _quiet

    before = config.settings.reading_validation_mode
    with _quiet():
        assert config.settings.reading_validation_mode == config.IGNORE
        with _quiet():
            warnings.warn("silenced", UserWarning, stacklevel=1)  # no error, no output
            assert config.settings.reading_validation_mode == config.IGNORE
        assert config.settings.reading_validation_mode == config.IGNORE  # inner left it
    assert config.settings.reading_validation_mode == before
    with pytest.raises(ValueError), _quiet(), _quiet():
        raise ValueError("propagates")
    assert config.settings.reading_validation_mode == before
    with _quiet():  # usable again after an exception inside a nested use
        assert config.settings.reading_validation_mode == config.IGNORE


def test_native_pixel_fast_path_equals_pydicom(tmp_path: Path) -> None:
    """The direct read of plain uncompressed data gives pydicom's array, bit for bit."""
    from pydicom.uid import ImplicitVRLittleEndian

    rng = np.random.default_rng(11)
    checked = 0
    for i in range(120):
        alloc = [8, 16, 32][i % 3]
        stored = int(rng.integers(1, alloc + 1)) if i % 4 else alloc
        signed = bool(i % 2)
        frames = [None, 1, 3][i % 3 if i % 5 else 0]
        rows, cols = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        n = rows * cols * (frames or 1)
        raw = rng.integers(0, 256, n * alloc // 8, dtype=np.uint8).tobytes()  # garbage high bits
        ds = make_dataset(np.zeros((rows, cols), np.uint16), frames=frames)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = alloc, stored, stored - 1
        ds.PixelRepresentation = int(signed)
        ds.PhotometricInterpretation = ["MONOCHROME2", "MONOCHROME1"][i % 2]
        if i % 3 == 0:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.PixelData = raw + (b"\0" if len(raw) % 2 else b"")
        path = save(ds, tmp_path / f"p{i}.dcm")
        ds = pydicom.dcmread(path)
        fast = dicom._native_pixels(ds)
        assert fast is not None, (alloc, stored, signed, frames)
        want = ds.pixel_array
        assert fast.dtype == want.dtype and fast.shape == want.shape
        assert np.array_equal(fast, want), (alloc, stored, signed, frames)
        fast[...] = 0  # a writable copy, never a view of the file's bytes
        checked += 1
    assert checked == 120


def test_native_pixel_fast_path_leaves_other_data_to_pydicom(tmp_path: Path) -> None:
    from pydicom.uid import ExplicitVRBigEndian

    base = make_dataset(np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert dicom._native_pixels(pydicom.dcmread(save(base, tmp_path / "ok.dcm"))) is not None
    rgb = make_dataset(np.zeros((3, 4, 3), np.uint8))
    short = make_dataset(np.arange(12, dtype=np.uint16).reshape(3, 4))
    short.PixelData = short.PixelData[:-4]
    long = make_dataset(np.arange(12, dtype=np.uint16).reshape(3, 4))
    long.PixelData = long.PixelData + b"\0" * 8
    big = make_dataset(np.arange(12, dtype=np.uint16).reshape(3, 4))
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    for name, ds in (("rgb", rgb), ("short", short), ("long", long), ("big", big)):
        read = pydicom.dcmread(save(ds, tmp_path / f"{name}.dcm"))
        assert dicom._native_pixels(read) is None, name


def test_series_files_are_parsed_once_and_checked_against_the_first(tmp_path: Path,
                                                                     monkeypatch) -> None:
    write_series(tmp_path / "a", [0.0, 1.0, 2.0, 3.0])
    e = only(discover(tmp_path / "a"), status="ok")
    parsed: list[str] = []
    real_header, real_dataset = dicom.read_header, dicom._read_dataset
    monkeypatch.setattr(dicom, "read_header", lambda p, **k: parsed.append(p) or real_header(p))
    monkeypatch.setattr(dicom, "_read_dataset", lambda p: parsed.append(p) or real_dataset(p))
    scan = dicom.load_dicom(e)
    assert len(parsed) == 4 + 1  # each file once, plus the first file's header for the size
    assert [float(v) for v in scan.data[:, 0, 0]] == [100, 110, 120, 130]
    # the headers kept for the geometry hold no pixel bytes
    kept = dicom._read_slice(e.paths[0], dicom.read_header(e.paths[0]))
    assert "PixelData" not in kept.header.ds and kept.pixels.shape == (1, 6, 5)
    # a slice whose size changed after discovery fails the scan, naming the first file
    _, paths = write_series(tmp_path / "b", [0.0, 1.0, 2.0])
    e = only(discover(tmp_path / "b"), status="ok")
    ds = pydicom.dcmread(paths[-1])
    ds.Rows, ds.PixelData = 3, np.zeros((3, 5), np.int16).tobytes()
    ds.save_as(paths[-1])
    with pytest.raises(ScanReadError, match="slices differ in size") as err:
        dicom.load_dicom(e)
    assert str(err.value).startswith(e.paths[0])
