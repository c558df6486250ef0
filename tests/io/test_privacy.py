"""No patient identifier leaves a scan: whitelist metadata, discovery headers, scrub()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scanqc.io import dicom
from scanqc.io.discover import discover
from scanqc.io.privacy import PATIENT_FIELDS, SAFE_DICOM_FIELDS, safe_dicom_metadata, scrub

PLANTED = {
    "PatientName": "Zyxwv^Qutsr",
    "PatientID": "PID-778899",
    "PatientBirthDate": "19230517",
    "AccessionNumber": "ACC-445566",
    "InstitutionName": "Saint Nowhere Hospital",
    "ReferringPhysicianName": "Plonk^Ferdinand",
}
NESTED = "Nested-Secret-Value"
PRIVATE = "Private-Secret-Value"


def planted_dataset(series_uid: str, z: float = 0.0) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for k, v in PLANTED.items():
        setattr(ds, k, v)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.826.0.1.99999.1"
    ds.FrameOfReferenceUID = "1.2.826.0.1.99999.2"
    ds.Modality = "CT"
    ds.SeriesDescription = "Abdomen Zyxwv"  # a site typed the patient's name in here
    ds.StudyDescription = "CT ABDOMEN"
    item = Dataset()
    item.PatientName = NESTED
    item.CodeMeaning = NESTED
    ds.RequestAttributesSequence = [item]
    ds.add_new(0x00091010, "LO", PRIVATE)
    ds.add_new(0x00090010, "LO", "ACME private creator")
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0, 0, 0, 1.0, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.InstanceNumber = int(z) + 1
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.zeros((4, 4), np.int16).tobytes()
    return ds


def leaks(obj) -> list[str]:
    text = json.dumps(obj, default=str).lower()
    values = [*PLANTED.values(), NESTED, PRIVATE, "zyxwv", "1.2.826.0.1.99999"]
    return [v for v in values if v.lower() in text]


def test_safe_metadata_has_no_identifiers() -> None:
    ds = planted_dataset(generate_uid())
    meta = safe_dicom_metadata(ds)
    assert set(meta) <= set(SAFE_DICOM_FIELDS) | {"SOPClassName"}
    assert not leaks(meta)
    assert meta["Modality"] == "CT" and meta["PixelSpacing"] == [0.5, 0.5]
    assert meta["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"  # public constant kept
    assert meta["FrameOfReferenceUID"].startswith("uid:")  # instance UID hashed
    assert meta["SeriesDescription"] == "[redacted]"
    assert meta["StudyDescription"] == "CT ABDOMEN"
    json.dumps(meta)  # plain JSON-friendly values


def test_discovery_and_scan_carry_no_identifiers(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.99999.3"
    for z in range(3):
        planted_dataset(uid, float(z)).save_as(tmp_path / f"s{z}.dcm", enforce_file_format=True)
    entries = discover(tmp_path)
    assert len(entries) == 1 and entries[0].status == "ok"
    e = entries[0]
    assert not leaks(e.header) and not leaks(e.name) and not leaks(e.description)
    assert uid not in e.scan_id
    scan = dicom.load_dicom(e)
    assert not leaks(scan.metadata)


def test_scrub_drops_patient_fields_and_hashes_uids() -> None:
    d = {
        "PatientName": "X^Y",
        "AccessionNumber": "A1",
        "SeriesInstanceUID": "1.2.826.0.1.99999.4",
        "TransferSyntaxUID": "1.2.840.10008.1.2.1",
        "nested": {"PatientID": "P1", "ok": 1, "blob": b"\x00"},
        "rows": [{"StudyInstanceUID": "1.2.826.0.1.99999.5", "v": 2}],
        "Modality": "MR",
    }
    out = scrub(d)
    assert "PatientName" not in out and "AccessionNumber" not in out
    assert "SeriesInstanceUID" not in out  # listed in PATIENT_FIELDS
    assert out["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert out["nested"] == {"ok": 1}
    assert out["rows"] == [{"v": 2}]
    assert out["Modality"] == "MR"
    assert scrub({"MyUID": "1.2.826.0.1.99999.6"})["MyUID"].startswith("uid:")
    assert {"PatientName", "PatientID", "PatientBirthDate"} <= PATIENT_FIELDS


def test_identifying_names_match_whole_words_only() -> None:
    from pydicom.dataset import Dataset

    from scanqc.io.privacy import identifying_names, redact_names

    ds = Dataset()
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "12345"
    ds.AccessionNumber = "ACC9"
    path = "/exports/DOE_JANE_12345/CT Chest ACC9/IM-0001-12345.dcm"
    names = identifying_names(path, ds)
    assert names == {"DOE_JANE_12345": "[redacted]", "CT Chest ACC9": "[redacted]",
                     "IM-0001-12345.dcm": "[redacted].dcm"}
    assert redact_names("DOE_JANE_12345/CT Chest ACC9/IM-0001-12345.dcm", names) == (
        "[redacted]/[redacted]/[redacted].dcm")
    # inside a longer word or number it is not the identifier
    assert identifying_names("/data/Doenitz/janet/123456/ACC99.dcm", ds) == {}
    assert identifying_names("C:\\exports\\jane doe\\x.dcm", ds) == {"jane doe": "[redacted]"}
    assert identifying_names("/data/DOE/1.2.840.12345", ds) == {
        "DOE": "[redacted]", "1.2.840.12345": "[redacted]"}  # no ".12345" extension kept
    assert identifying_names("/data/DOE_JANE/x.dcm", Dataset()) == {}
    assert redact_names("no names", {}) == "no names"


def test_placeholder_patient_values_do_not_redact_folder_names() -> None:
    """Anonymised data often says "ANONYMOUS" or "Test": words folders share, not names."""
    from pydicom.dataset import Dataset

    from scanqc.io.privacy import identifying_names

    ds = Dataset()
    ds.PatientName = "Anonymized^Test"
    ds.PatientID = "ANONYMOUS"
    assert identifying_names("/data/anonymized/test/anonymous_01.dcm", ds) == {}
    ds.PatientID = "PAT0042"
    assert identifying_names("/data/test/PAT0042/x.dcm", ds) == {"PAT0042": "[redacted]"}


def test_accented_names_match_in_either_unicode_form() -> None:
    import unicodedata

    from pydicom.dataset import Dataset

    from scanqc.io.privacy import identifying_names

    ds = Dataset()
    ds.PatientName = "Müller^Jürgen"
    folder = unicodedata.normalize("NFD", "MÜLLER_JÜRGEN")  # as macOS writes names
    assert identifying_names(f"/data/{folder}/x.dcm", ds) == {folder: "[redacted]"}
