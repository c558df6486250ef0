"""Mammogram pairs in ``scanqc asymmetry``: paired by laterality and view, or ``--pair``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from scanqc.cli.main import main
from scanqc.io.scan import ScanEntry
from scanqc.scoring.asymmetry_pairs import pair_by_laterality, partner_of


def _entry(path: str, side: str = "", view: str = "MLO", kind: str = "image",
           key: str = "ImageLaterality", modality: str = "MG") -> ScanEntry:
    header = {"ViewPosition": view}
    if side:
        header[key] = side
    return ScanEntry(scan_id=path, paths=(path,), kind=kind, format="dicom", header=header,
                     modality=modality)


def test_pairs_by_side_and_view_within_a_folder() -> None:
    entries = [
        _entry("a/l_mlo.dcm", "L"), _entry("a/r_mlo.dcm", "R"),
        _entry("a/l_cc.dcm", "L", "CC"),                       # no R CC in folder a
        _entry("b/r_cc.dcm", "R", "CC"),                       # another folder: not a partner
        _entry("c/l.dcm", "L", key="Laterality"), _entry("c/r.dcm", "r", key="Laterality"),
        _entry("a/chest.dcm"),                                 # no laterality
        _entry("a/head.nii.gz", kind="volume"),
        _entry("d/chest_pa.dcm", "L", "PA", modality="DX"),    # not a mammogram: alone
    ]
    p = pair_by_laterality(entries)
    pairs = {(left.path, right.path) for left, right in p.pairs}
    assert pairs == {("a/l_mlo.dcm", "a/r_mlo.dcm"), ("c/l.dcm", "c/r.dcm")}
    unpaired = {e.path: why for e, why in p.unpaired}
    assert set(unpaired) == {"a/l_cc.dcm", "b/r_cc.dcm"}
    assert "other side (R, view CC)" in unpaired["a/l_cc.dcm"]
    assert {e.path for e in p.others} == {"a/chest.dcm", "a/head.nii.gz", "d/chest_pa.dcm"}
    # a flat folder of several women's images: no guessing who belongs with whom
    flat = [_entry(f"e/{i}.dcm", side, "CC") for i, side in enumerate("LRL")]
    q = pair_by_laterality(flat)
    assert not q.pairs and len(q.unpaired) == 3
    assert all("2 left and 1 right" in why for _e, why in q.unpaired)
    # the dock's lookup: the partner of one image, or None
    assert partner_of(entries[1], entries).path == "a/l_mlo.dcm"
    assert partner_of(entries[2], entries) is None and partner_of(entries[6], entries) is None


def _breast(lesion: bool, flip: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:160, 0:128]
    rng = np.random.default_rng(int(lesion))
    img = np.where(((yy - 80) / 70.0) ** 2 + (xx / 100.0) ** 2 < 1, 1800.0, 100.0)
    img += 150 * np.sin(yy / 6.0) * (img > 1000)  # symmetric "tissue" texture
    if lesion:
        img[(yy - 90) ** 2 + (xx - 40) ** 2 < 12**2] += 1500
    img += rng.normal(0, 20, img.shape)
    img = np.clip(img, 0, 4095).astype(np.uint16)
    return img[:, ::-1].copy() if flip else img


def _mammo(path: Path, img: np.ndarray, side: str, view: str, modality: str = "MG") -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography, for presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = uid, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.ImageLaterality, ds.ViewPosition = modality, side, view
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.PixelData = img.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def mammograms(tmp_path: Path) -> Path:
    d = tmp_path / "study"
    d.mkdir()
    _mammo(d / "l_mlo.dcm", _breast(lesion=True, flip=False), "L", "MLO")
    _mammo(d / "r_mlo.dcm", _breast(lesion=False, flip=True), "R", "MLO")
    _mammo(d / "l_cc.dcm", _breast(lesion=False, flip=False), "L", "CC")
    return d


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "asymmetry.csv", newline="") as fh:
        return {Path(r["path"]).name: r for r in csv.DictReader(fh)}


def test_cli_pairs_mammograms_and_explains_the_unpaired(mammograms: Path, tmp_path: Path
                                                         ) -> None:
    before = {p.name: p.read_bytes() for p in mammograms.iterdir()}
    out = tmp_path / "out"
    assert main(["asymmetry", str(mammograms), "--out-dir", str(out)]) == 0
    rows = _rows(out)
    left, right, cc = rows["l_mlo.dcm"], rows["r_mlo.dcm"], rows["l_cc.dcm"]
    assert left["status"] == right["status"] == "ok"
    assert Path(left["pair"]).name == "r_mlo.dcm" and Path(right["pair"]).name == "l_mlo.dcm"
    assert float(left["asymmetry_score"]) > 0
    assert (out / left["heatmap"]).is_file() and (out / right["heatmap"]).is_file()
    assert cc["status"] == "skipped" and "other side (R, view CC)" in cc["error"]
    # the left heatmap peaks at the lesion (r = 12 px; within one radius of its edge), not
    # on the breast outline, where the unmasked map peaked
    from PIL import Image

    heat = np.asarray(Image.open(out / left["heatmap"]).convert("L"), dtype=float)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert (peak[0] - 90) ** 2 + (peak[1] - 40) ** 2 < 24**2, peak
    assert {p.name: p.read_bytes() for p in mammograms.iterdir()} == before


def test_cli_explicit_pair_of_plain_images(tmp_path: Path) -> None:
    from PIL import Image

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray((_breast(True, False) // 16).astype(np.uint8)).save(a)
    Image.fromarray((_breast(False, True) // 16).astype(np.uint8)).save(b)
    out = tmp_path / "out"
    assert main(["asymmetry", "--pair", str(a), str(b), "--out-dir", str(out)]) == 0
    rows = _rows(out)
    assert rows["a.png"]["status"] == rows["b.png"]["status"] == "ok"
    assert Path(rows["a.png"]["pair"]).name == "b.png"
    # a missing partner: both rows are errors naming the file, and the run goes on
    assert main(["asymmetry", "--pair", str(a), str(tmp_path / "nope.png"),
                 "--out-dir", str(out)]) == 0
    rows = _rows(out)
    assert rows["nope.png"]["status"] == rows["a.png"]["status"] == "error"
    assert "nope.png" in rows["nope.png"]["error"] and "nope.png" in rows["a.png"]["error"]
    assert "\n" not in rows["nope.png"]["error"]
