"""No patient identifier leaves scanqc: every file it writes is free of planted values.

Distinctive identifiers are planted in synthetic DICOM files (patient, institution,
physician and accession tags; private tags; nested sequences; free-text descriptions that
quote them; instance UIDs; folder and file names made of the patient's name, ID and
accession number) and in NIfTI headers (``descrip``, ``aux_file``, ``intent_name``,
``db_name``, a header extension) and PNG text chunks. Then every writer scanqc has runs over
the folder: ``scanqc info`` (with and without ``--load``), ``scanqc score`` to CSV, JSON
lines and parquet with ``--html`` (thumbnails of flagged scans embedded) and ``--resume``
(resume cache), ``scanqc labels import``/``export`` (the SQLite label store and its CSV),
``scanqc rank``, ``scanqc asymmetry`` (CSV, NIfTI and PNG heatmaps) and, when the region
probe is bundled, ``scanqc region predict`` (prints only). No byte of any file
written, nor of anything printed, may contain a planted value (case-insensitive, UTF-8 and
UTF-16, DICOM name components separately).

:func:`run_every_writer` is shared with ``tests/test_inputs_untouched.py``.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from scanqc.cli.main import main

#: Planted identifier values (each distinctive; none can occur by chance in the outputs).
PLANTED: dict[str, str] = {
    "PatientName": "Zqxlastname^Zqxfirstname",
    "PatientID": "PIDZQ77314",
    "PatientBirthDate": "19230417",
    "OtherPatientIDs": "OPIDZQ55127",
    "InstitutionName": "Zqxmemorial Hospital",
    "InstitutionAddress": "17 Zqxstreet Lane",
    "ReferringPhysicianName": "Zqxreferrer^Annabel",
    "PerformingPhysicianName": "Zqxperformer^Bob",
    "OperatorsName": "Zqxoperator^Cid",
    "AccessionNumber": "ACCZQ99813",
    "StudyID": "STUDZQ4417",
    "StationName": "ZQXSTATION9",
    "DeviceSerialNumber": "SERZQ31337",
    "StudyInstanceUID": "1.2.826.0.1.3680043.9.7777.424242.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.9.7777.424242.2",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.9.7777.424242.3",
    "private": "PRIVZQ44110",
    "nested": "NESTZQ33180",
    "nested_name": "Zqxnestedname",
    "nifti_descrip": "NDESCZQ1234",
    "nifti_aux": "NAUXZQ5678",
    "nifti_intent": "NINTZQ",
    "nifti_db": "NDBZQ8765",
    "nifti_ext": "NEXTZQ24680",
    "png_text": "PNGZQ13579",
}


#: Folder and file names that carry identifiers (as PACS and CD exports name them).
SERIES_DIR = "ZQXLASTNAME_ZQXFIRSTNAME_PIDZQ77314"
XRAY_FILE = "ACCZQ99813.dcm"
BROKEN_FILE = "broken PIDZQ77314.dcm"


def needles() -> list[str]:
    """Every string to look for: the planted values and their name components."""
    out: set[str] = set()
    for v in PLANTED.values():
        out.add(v)
        if "^" in v or " " in v:
            out.update(p for p in v.replace("^", " ").split() if len(p) >= 5)
    out.discard("Hospital")  # a common word, not an identifier by itself
    out.discard("Annabel")
    return sorted(out)


def find_planted(data: bytes) -> list[str]:
    """Planted values found in ``data`` (case-insensitive; UTF-8 and UTF-16)."""
    low = data.lower()
    found = []
    for n in needles():
        for enc in ("utf-8", "utf-16-le", "utf-16-be"):
            if n.lower().encode(enc) in low or n.upper().encode(enc) in data:
                found.append(n)
                break
    return found


# ---------------------------------------------------------------------------------- dataset


def _dicom(path: Path, *, series_uid: str, sop_uid: str, index: int, modality: str = "CT",
           rows: int = 32, cols: int = 32, truncate: bool = False) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import (
        CTImageStorage,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
    )

    sop_class = CTImageStorage if modality == "CT" else DigitalXRayImageStorageForPresentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs",
               "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
               "PerformingPhysicianName", "OperatorsName", "AccessionNumber", "StudyID",
               "StationName", "DeviceSerialNumber", "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, kw, PLANTED[kw])
    ds.SeriesInstanceUID = series_uid
    # free text that quotes identifiers, as some sites type them
    ds.StudyDescription = f"head {PLANTED['InstitutionName']}"
    ds.SeriesDescription = f"axial {PLANTED['PatientName'].split('^')[0]}"
    ds.ProtocolName = f"proto {PLANTED['AccessionNumber']}"
    ds.BodyPartExamined = "HEAD"
    # nested: identifiers inside sequences
    ref = Dataset()
    ref.PatientID = PLANTED["nested"]
    ref.PatientName = PLANTED["nested_name"]
    ds.OtherPatientIDsSequence = Sequence([ref])
    req = Dataset()
    req.AccessionNumber = PLANTED["nested"]
    req.RequestedProcedureDescription = PLANTED["nested_name"]
    ds.RequestAttributesSequence = Sequence([req])
    # private tags
    block = ds.private_block(0x0011, "ZQ PRIVATE CREATOR", create=True)
    block.add_new(0x01, "LO", PLANTED["private"])
    block.add_new(0x02, "PN", PLANTED["PatientName"])
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, 2.0 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[0:rows, 0:cols]
    img = (800 * np.exp(-((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) / (rows * 3.0))
           + 40 * index).astype(np.uint16)
    pixels = img.tobytes()
    ds.PixelData = pixels[: len(pixels) // 3] if truncate else pixels
    ds.save_as(path, enforce_file_format=True)


def _nifti(path: Path, seed: int, noise: bool = False) -> None:
    rng = np.random.default_rng(seed)
    shape = (24, 24, 8)
    if noise:
        vol = rng.random(shape) * 900
    else:
        x, y = np.mgrid[0:24, 0:24]
        blob = 900 * np.exp(-((x - 12) ** 2 + (y - 12) ** 2) / 40.0)
        vol = blob[..., None] + 20 * rng.standard_normal(shape)
    img = nib.Nifti1Image(np.clip(vol, 0, None).astype(np.int16), np.diag([1.0, 1.0, 2.0, 1]))
    hdr = img.header
    hdr["descrip"] = f"{PLANTED['nifti_descrip']} {PLANTED['PatientID']}".encode()
    hdr["aux_file"] = PLANTED["nifti_aux"].encode()
    hdr["intent_name"] = PLANTED["nifti_intent"].encode()
    hdr["db_name"] = PLANTED["nifti_db"].encode()
    hdr.extensions.append(nib.nifti1.Nifti1Extension(6, PLANTED["nifti_ext"].encode()))
    nib.save(img, path)


def make_identified_dataset(root: Path) -> dict[str, Path]:
    """Write the dataset with planted identifiers; return a few notable paths."""
    root.mkdir(parents=True)
    # PACS exports name folders and files after the patient or the accession number
    series = root / SERIES_DIR
    series.mkdir()
    for i in range(4):
        _dicom(series / f"slice{i}.dcm", series_uid=PLANTED["SeriesInstanceUID"],
               sop_uid=f"1.2.826.0.1.3680043.9.7777.424242.10{i}", index=i)
    _dicom(root / XRAY_FILE, series_uid="1.2.826.0.1.3680043.9.7777.424242.20",
           sop_uid="1.2.826.0.1.3680043.9.7777.424242.21", index=0, modality="DX",
           rows=48, cols=40)
    _dicom(root / BROKEN_FILE, series_uid="1.2.826.0.1.3680043.9.7777.424242.30",
           sop_uid="1.2.826.0.1.3680043.9.7777.424242.31", index=0, modality="DX",
           truncate=True)
    (root / "vols").mkdir()
    for i in range(3):
        _nifti(root / "vols" / f"vol{i}.nii.gz", i)
    _nifti(root / "vols" / "odd.nii", 9, noise=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", PLANTED["png_text"])
    info.add_text("Comment", PLANTED["PatientName"])
    yy, xx = np.mgrid[0:48, 0:40]
    png = (180 * np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / 150.0)).astype(np.uint8)
    Image.fromarray(png).save(root / "hand.png", pnginfo=info)
    return {"series": series, "vols": root / "vols"}


# ---------------------------------------------------------------------------------- writers


def _tiny_score_encoder():
    import torch

    from scanqc.models.encoder import SliceEncoder

    torch.manual_seed(0)
    return SliceEncoder(widths=(8, 16, 16, 32), deep_stages=1).eval()


def _tiny_model_dir(folder: Path) -> Path:
    import torch

    from scanqc.models.encoder import SliceEncoder
    from scanqc.models.weights import save_model

    torch.manual_seed(0)
    save_model(SliceEncoder(widths=(4, 8, 8), deep_stages=1), folder, {
        "name": "tiny", "architecture": {"class": "SliceEncoder",
                                         "kwargs": {"widths": [4, 8, 8], "deep_stages": 1}}})
    return folder


def has_region_model() -> bool:
    """True when the region probe and the encoder it needs are bundled."""
    from scanqc.models.registry import model_dir

    return all((model_dir(n) / "model.safetensors").is_file() for n in ("region", "encoder"))


def run_every_writer(root: Path, out: Path, monkeypatch: pytest.MonkeyPatch,
                     work: Path) -> dict[str, bytes]:
    """Run every scanqc command that writes something, over ``root``, into ``out``.

    Args:
        root: The dataset (never written).
        out: Folder for every output the commands write.
        monkeypatch: Used to give ``scanqc score`` a tiny random encoder (no weights).
        work: Folder for the test's own helper files (reference list, label CSV, model).

    Returns:
        ``{command: stdout + stderr bytes}`` of every command run.
    """
    model = _tiny_score_encoder()
    monkeypatch.setattr("scanqc.models.encoder.load_encoder",
                        lambda name="encoder", device="auto": model)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    refs = work / "refs.txt"
    refs.write_text("".join(f"{root / 'vols' / f'vol{i}.nii.gz'}\n" for i in range(3)))
    labels_in = work / "labels_in.csv"
    with open(labels_in, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "reason", "region", "note"])
        w.writerow([XRAY_FILE, "bad", "artifact", "chest", "checked"])
        w.writerow([SERIES_DIR, "good", "", "head", ""])
        w.writerow(["vols/vol0.nii.gz", "reference", "", "head", ""])
    model_dir = _tiny_model_dir(work / "tiny_model")
    score = ["--workers", "0", "--max-slices", "4", "--no-progress"]
    commands: dict[str, list[str]] = {
        "info": ["info", str(root)],
        "info --load": ["info", str(root), "--load"],
        "score csv --html": ["score", str(root), "--references", str(refs), "--threshold",
                             "0", "--out", str(out / "report.csv"), "--html",
                             str(out / "report.html"), *score],
        "score csv --resume": ["score", str(root), "--references", str(refs), "--threshold",
                               "0", "--out", str(out / "report.csv"), "--resume",
                               "--html", str(out / "report2.html"), *score],
        "score json": ["score", str(root), "--out", str(out / "report.jsonl"), "--format",
                       "json", *score],
        "score parquet": ["score", str(root), "--references", str(refs), "--out",
                          str(out / "report.parquet"), *score],
        "score parquet --resume": ["score", str(root), "--references", str(refs), "--out",
                                   str(out / "report.parquet"), "--resume", *score],
        "labels import": ["labels", "import", str(root), str(labels_in), "--store",
                          str(out / "labels.sqlite")],
        "labels export": ["labels", "export", str(root), "--store", str(out / "labels.sqlite"),
                          "--out", str(out / "labels.csv")],
        "labels export --include-identifiers": [
            "labels", "export", str(root), "--store", str(out / "labels.sqlite"), "--out",
            str(out / "labels_abs.csv"), "--include-identifiers"],
        "rank": ["rank", str(root), "--model-dir", str(model_dir), "--max-slices", "4",
                 "--out", str(out / "rank.csv")],
        "rank --labels": ["rank", str(root), "--model-dir", str(model_dir), "--max-slices",
                          "4", "--labels", str(out / "labels.csv"), "--out",
                          str(out / "rank_labels.csv")],
        "asymmetry": ["asymmetry", str(root), "--out-dir", str(out / "asymmetry"),
                      "--method", "intensity"],
    }
    if has_region_model():  # prints only; bundled probe + encoder (not a tiny model)
        commands["region predict"] = ["region", "predict", str(root)]
        commands["region predict --json"] = ["region", "predict", str(root), "--json"]
    printed: dict[str, bytes] = {}
    for name, argv in commands.items():
        o, e = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            rc = main(argv)
        printed[name] = (o.getvalue() + e.getvalue()).encode("utf-8")
        assert rc == 0, f"scanqc {name} failed: {e.getvalue()[-2000:]}"
    return printed


def _files(folder: Path, skip: Callable[[Path], bool] = lambda p: False) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not skip(p))


def test_no_planted_identifier_in_any_output(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "dataset"
    make_identified_dataset(root)
    # the search works: every planted value is found in the inputs
    in_inputs = set()
    for p in _files(root):
        data = p.read_bytes()
        if p.suffix == ".gz":
            import gzip

            data = gzip.decompress(data)
        in_inputs.update(find_planted(data))
    assert in_inputs == set(needles()), set(needles()) - in_inputs

    out = tmp_path / "out"
    printed = run_every_writer(root, out, monkeypatch, tmp_path / "work")
    written = _files(tmp_path, skip=lambda p: root in p.parents or (tmp_path / "work")
                     in p.parents)
    names = {p.relative_to(out).as_posix() for p in written if out in p.parents}
    # every writer did write (otherwise the test would prove nothing)
    for expected in ("report.csv", "report.html", "report2.html", "report.csv.cache.sqlite",
                     "report.jsonl", "report.jsonl.cache.sqlite", "report.parquet",
                     "labels.sqlite", "labels.csv", "labels_abs.csv", "rank.csv",
                     "rank_labels.csv", "asymmetry/asymmetry.csv"):
        assert expected in names, f"{expected} not written; got {sorted(names)}"
    assert any(n.endswith(".nii.gz") for n in names if n.startswith("asymmetry/"))
    from scanqc.batch.output import read_report

    rows = read_report(out / "report.csv")
    assert len(rows) == 8 and sum(r["status"] == "ok" for r in rows) == 7
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert (out / "report.html").read_text().count("class='thumb'") >= 2
    assert len(read_report(out / "report.parquet", "parquet")) == 8
    # asked for, identifiers are there: the real folder and file names, nothing else
    asked = out / "labels_abs.csv"
    assert set(find_planted(asked.read_bytes())) == {
        "ACCZQ99813", "PIDZQ77314", "Zqxfirstname", "Zqxlastname"}
    assert SERIES_DIR in asked.read_text() and XRAY_FILE in asked.read_text()
    # nothing planted anywhere else
    leaks = {str(p.relative_to(tmp_path)): hits for p in written
             if p != asked and (hits := find_planted(p.read_bytes()))}
    leaks.update({f"printed by scanqc {k}": hits for k, v in printed.items()
                  if (hits := find_planted(v))})
    assert not leaks, leaks


def test_header_metadata_and_scan_entries_carry_no_planted_value(tmp_path: Path) -> None:
    """What the readers hand on (``Scan.metadata``, entry names, headers) is already clean."""
    import json

    import pydicom

    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan
    from scanqc.io.privacy import redact_names, safe_dicom_metadata, scrub

    root = tmp_path / "dataset"
    make_identified_dataset(root)
    ds = pydicom.dcmread(root / XRAY_FILE)
    meta = safe_dicom_metadata(ds)
    # the free-text fields quoting the institution, a name and the accession are blanked
    assert meta["StudyDescription"] == meta["SeriesDescription"] == "[redacted]"
    assert meta["ProtocolName"] == "[redacted]"
    assert meta["BodyPartExamined"] == "HEAD" and meta["Modality"] == "DX"
    assert not find_planted(json.dumps(meta).encode())
    everything = {el.keyword: str(el.value) for el in ds if el.keyword}
    assert find_planted(json.dumps(everything).encode())  # the raw header does carry them
    assert not find_planted(json.dumps(scrub(everything)).encode())
    for entry in discover([root], root=root):
        # names are made of folder and file names, which here carry identifiers: every
        # writer passes them through redact_names with the entry's private names
        name = redact_names(entry.name, entry.private_names)
        assert not find_planted(redact_names(entry.path, entry.private_names).encode())
        if find_planted(entry.name.encode()):
            assert entry.format == "dicom" and entry.private_names, entry.name
        text = json.dumps({"name": name, "description": entry.description,
                           "error": entry.error, "header": entry.header}, default=str)
        assert not find_planted(text.encode()), name
        if entry.status == "ok" and entry.format == "dicom":
            try:
                scan = load_scan(entry)
            except Exception:  # noqa: BLE001 - broken.dcm: its error is checked above
                continue
            blob = json.dumps({"meta": scan.metadata,
                               "name": redact_names(scan.name, entry.private_names)},
                              default=str)
            assert not find_planted(blob.encode()), entry.name


def test_identifying_folder_names_are_redacted_unless_asked_for(tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    """Paths stay usable: only the identifying names go, and the user can keep them."""
    from scanqc.batch.output import read_report

    root = tmp_path / "dataset"
    make_identified_dataset(root)
    model = _tiny_score_encoder()
    monkeypatch.setattr("scanqc.models.encoder.load_encoder",
                        lambda name="encoder", device="auto": model)
    args = ["--workers", "0", "--max-slices", "4", "--no-progress", "--no-cache"]
    assert main(["score", str(root), "--out", str(tmp_path / "r.csv"), *args]) == 0
    err = capsys.readouterr().err
    assert "3 paths hold the patient's name or an ID" in err and "--include-identifiers" in err
    paths = {r["path"] for r in read_report(tmp_path / "r.csv")}
    assert {"[redacted]/slice0.dcm", "[redacted].dcm", "hand.png", "vols/vol0.nii.gz"} <= paths
    assert main(["score", str(root), "--out", str(tmp_path / "raw.csv"),
                 "--include-identifiers", *args]) == 0
    assert "[redacted]" not in capsys.readouterr().err
    paths = {r["path"] for r in read_report(tmp_path / "raw.csv")}
    assert {f"{SERIES_DIR}/slice0.dcm", XRAY_FILE, BROKEN_FILE} <= paths


def test_unreadable_files_in_a_patient_folder_do_not_show_its_name(tmp_path: Path) -> None:
    """The folder is known to identify the patient from its readable DICOM files."""
    from scanqc.batch.discovery import discover_parallel
    from scanqc.batch.pipeline import entry_row, error_row
    from scanqc.io.discover import discover

    root = tmp_path / "dataset"
    make_identified_dataset(root)
    (root / SERIES_DIR / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    (root / SERIES_DIR / "notes.png").write_bytes(b"not a png")
    for entries in (discover([root], root=root),
                    discover_parallel([root], str(root), workers=2, mp_context=None)):
        odd = [e for e in entries if e.path.endswith(("garbage.dcm", "notes.png"))]
        assert len(odd) == 2 and all(e.status == "error" for e in odd)
        for e in entries:
            row = error_row(e, str(root), e.error or "x") if e.status != "ok" else entry_row(
                e, str(root))
            text = f"{row['path']} {row['name']} {row['error']}"
            assert not find_planted(text.encode()), text


def test_rank_matches_hand_written_labels_by_the_real_names(tmp_path: Path) -> None:
    """The ranking shows [redacted], yet a labels file naming the real folder still counts."""
    root = tmp_path / "dataset"
    make_identified_dataset(root)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{SERIES_DIR},bad\nvols/vol0.nii.gz,good\n")
    out = tmp_path / "rank.csv"
    assert main(["rank", str(root), "--labels", str(labels), "--model-dir",
                 str(_tiny_model_dir(tmp_path / "m")), "--max-slices", "4", "--out",
                 str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        rows = {r["path"]: r["status"] for r in csv.DictReader(fh)}
    assert rows["[redacted]"] == "labelled" and rows["vols/vol0.nii.gz"] == "labelled"
    assert not find_planted(out.read_bytes())
