"""Which DICOM header fields may leave a scan: a whitelist, never a blacklist.

Everything scanqc exports (reports, CSV/JSON, ``Scan.metadata``, ``ScanEntry.header``)
goes through :func:`safe_dicom_metadata` (for pydicom datasets) or :func:`scrub` (for any
dict about to be written). Rules:

* only keywords in :data:`SAFE_DICOM_FIELDS` are read, and only from the top level of the
  dataset (never from sequences, never private tags);
* instance UIDs never leave raw: a UID that is a public DICOM constant (a SOP class or a
  transfer syntax from the standard) is kept, any other UID is replaced by a short hash;
* free-text fields (descriptions, protocol names) are blanked when they contain the
  patient's name or id, which some sites type into them;
* values become plain JSON-friendly Python values (str, int, float, lists of those);
* folder and file names that hold the patient's name or an ID (``DOE_JANE_12345/``) are
  written as ``[redacted]`` (:func:`identifying_names`, :func:`redact_names`) unless the
  user asks for identifiers (``--include-identifiers``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from typing import Any

from scanqc.io.scan import printable

#: Header keywords that may appear in metadata and exports (non-identifying).
SAFE_DICOM_FIELDS: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "Manufacturer",
    "ManufacturerModelName",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImageOrientationPatient",
    "PatientOrientation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "ImageType",
    "ImageLaterality",
    "Laterality",
    "ViewPosition",
    "SOPClassUID",
    "TransferSyntaxUID",
    "MagneticFieldStrength",
    "KVP",
    "ConvolutionKernel",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "ContrastBolusAgent",
    "XRayTubeCurrent",
    "Exposure",
    "LossyImageCompression",
    "BurnedInAnnotation",
    "PresentationIntentType",
    "FrameOfReferenceUID",
)

#: Identifying fields: never exported; :func:`scrub` drops them from any dict.
PATIENT_FIELDS: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "IssuerOfPatientID",
        "EthnicGroup",
        "AccessionNumber",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "PhysiciansOfRecord",
        "RequestingPhysician",
        "StationName",
        "DeviceSerialNumber",
        "StudyID",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "StudyTime",
        "SeriesTime",
        "AcquisitionTime",
        "ContentTime",
        "AcquisitionDateTime",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "MediaStorageSOPInstanceUID",
        "ReferencedSOPInstanceUID",
        "RequestAttributesSequence",
        "ReferencedPatientSequence",
    }
)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_FREE_TEXT = ("StudyDescription", "SeriesDescription", "ProtocolName", "BodyPartExamined")


def hash_uid(uid: str) -> str:
    """Return a short, stable, non-reversible stand-in for a UID (``"uid:<12 hex>"``)."""
    return "uid:" + hashlib.sha1(str(uid).encode("utf-8")).hexdigest()[:12]


def _is_public_uid(uid: str) -> bool:
    """True for UIDs defined by the DICOM standard (SOP classes, transfer syntaxes)."""
    try:
        from pydicom.uid import UID_dictionary

        return str(uid) in UID_dictionary
    except Exception:  # noqa: BLE001 - without the table, treat every UID as private
        return False


def _plain(value: Any) -> Any:
    """Convert a pydicom value into a JSON-friendly Python value (or None)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None  # binary blobs are never exported
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        return str(value).strip()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        out = [_plain(v) for v in value]
        return [v for v in out if v is not None]
    # pydicom value types: DSfloat/IS subclass float/int (handled above); PersonName etc.
    return None


#: Person-name fields: their name components are identifiers on their own.
_NAME_FIELDS = (
    "PatientName",
    "OtherPatientNames",
    "PatientMotherBirthName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "OperatorsName",
)
#: Other fields whose whole value (or each value of a multi-valued one) is an identifier.
_ID_FIELDS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "PatientBirthDate",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "PatientAddress",
)

#: Every field :func:`_identifiers` reads (a header-only DICOM read must include them).
REDACTION_FIELDS: tuple[str, ...] = (*_NAME_FIELDS, *_ID_FIELDS)


@functools.cache
def _redaction_tags() -> tuple[Any, ...]:
    """The DICOM tags of :data:`REDACTION_FIELDS`, in order."""
    from pydicom.tag import Tag

    return tuple(Tag(kw) for kw in REDACTION_FIELDS)


def _identifiers(ds: Any) -> list[str]:
    """Identifying strings of ``ds`` (lower case, >= 3 characters) used to redact text.

    Whole values of :data:`_NAME_FIELDS` and :data:`_ID_FIELDS`, plus the components of
    person names (family, given ... name, split at ``^``, spaces and commas).
    """
    found: list[str] = []
    tags = _redaction_tags() if not isinstance(ds, dict) else None
    for i, kw in enumerate(REDACTION_FIELDS):
        try:
            if tags is not None:  # a pydicom dataset: a dict lookup by tag first (~1 us)
                if tags[i] not in ds:
                    continue
                v = ds[tags[i]].value
            else:
                v = ds.get(kw)
        except Exception:  # noqa: BLE001 - a broken element must not leak or crash
            continue
        if v is None:
            continue
        values = list(v) if type(v).__name__ == "MultiValue" else [v]
        for item in values:
            text = str(item)
            parts = [text, *text.split("\\")]
            if kw in _NAME_FIELDS:
                parts += re.split(r"[\^\s,=]+", text)
            found += [p.strip().lower() for p in parts if len(p.strip()) >= 3]
    return found


#: Header values that anonymised and test data put in the patient fields: words, not
#: identifiers, that folder names share ("anonymized/", "test/", "phantom/").
_NOT_IDENTIFYING = frozenset({
    "anonymous", "anonymized", "anonymised", "anonymize", "anonymise", "anon", "removed",
    "test", "tests", "phantom", "patient", "unknown", "none", "null", "n/a", "na", "nan",
    "research", "demo", "sample", "study", "series", "image", "images", "dicom", "data",
})
#: What a folder or file name holding a patient identifier becomes in exports.
REDACTED = "[redacted]"
#: A file extension kept on a redacted file name (``.dcm``, ``.ima``; not ``.1234`` of a UID).
_EXTENSION_RE = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")


def identifying_names(path: str, ds: Any) -> dict[str, str]:
    """Folder and file names of ``path`` that hold an identifier of ``ds``, and their stand-ins.

    PACS and CD exports often name folders after the patient (``DOE_JANE_12345/``) or the
    accession number. A name matches when one of the header's identifying values (the
    patient's and physicians' names and their components, IDs, accession number, birth
    date, institution; see :func:`_identifiers`) appears in it as a whole word (bounded by
    anything but a letter or a digit), case-insensitively.

    Returns:
        ``{name: "[redacted]"}``, or ``"[redacted].dcm"`` for a file name with an
        extension; empty when nothing matches. The names themselves identify the patient:
        they are kept in memory to redact exports and never written.
    """
    # NFC on both sides: a folder written on macOS (decomposed "u" + diaeresis) still
    # matches the header's composed name
    ids = tuple(dict.fromkeys(unicodedata.normalize("NFC", i) for i in _identifiers(ds)
                              if i.strip() and i.strip() not in _NOT_IDENTIFYING))
    if not ids:
        return {}
    words = _words_pattern(ids)
    out: dict[str, str] = {}
    parts = [p for p in re.split(r"[\\/]", str(path)) if p]
    for i, name in enumerate(parts):
        if words.search(unicodedata.normalize("NFC", name.lower())):
            ext = _EXTENSION_RE.search(name) if i == len(parts) - 1 else None
            out[name] = REDACTED + (ext.group(0) if ext else "")
    return out


@functools.lru_cache(maxsize=64)
def _words_pattern(ids: tuple[str, ...]) -> re.Pattern[str]:
    """One regex matching any of ``ids`` as a whole word (the files of a series share it)."""
    return re.compile("(?<![0-9a-z])(?:" + "|".join(
        re.escape(i) for i in sorted(ids, key=len, reverse=True)) + ")(?![0-9a-z])")


def redact_names(text: str, names: dict[str, str] | None) -> str:
    """``text`` (a path, a display name, an error message) with ``names`` replaced.

    ``names`` comes from :func:`identifying_names`; longer names are replaced first, so a
    file name is not half replaced by a folder name inside it.
    """
    if not names or not text:
        return text
    for name in sorted(names, key=len, reverse=True):
        if name in text:
            text = text.replace(name, names[name])
    return text


def export_text(text: str, names: dict[str, str] | None) -> str:
    """``text`` as scanqc writes it: ``names`` redacted, then valid Unicode.

    :func:`redact_names`, then :func:`scanqc.io.scan.printable`.
    """
    return printable(redact_names(text, names))


def safe_dicom_metadata(ds: Any) -> dict[str, Any]:
    """Return the whitelisted, JSON-friendly header fields of a pydicom dataset.

    Args:
        ds: A ``pydicom.Dataset`` (with or without ``file_meta``).

    Returns:
        ``{keyword: value}`` for each field of :data:`SAFE_DICOM_FIELDS` present at the top
        level; ``SOPClassUID`` also gets ``SOPClassName``. Non-public UIDs are hashed.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom validation noise on odd values
        return _safe_dicom_metadata(ds)


def _safe_dicom_metadata(ds: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ids = _identifiers(ds)
    meta = getattr(ds, "file_meta", None)
    for kw in SAFE_DICOM_FIELDS:
        try:
            if kw == "TransferSyntaxUID":
                raw = meta.get(kw) if meta is not None else None
            else:
                raw = ds.get(kw)
        except Exception:  # noqa: BLE001 - invalid values are left out, never raised
            continue
        if raw is None or raw == "":
            continue
        if kw.endswith("UID"):
            uid = str(raw).strip()
            if not uid:
                continue
            if _is_public_uid(uid):
                out[kw] = uid
                if kw == "SOPClassUID":
                    out["SOPClassName"] = str(getattr(raw, "name", uid))
            else:
                out[kw] = hash_uid(uid)
            continue
        val = _plain(raw)
        if val is None or val == [] or val == "":
            continue
        if kw in _FREE_TEXT and isinstance(val, str) and ids:
            low = val.lower()
            if any(i in low for i in ids):
                val = "[redacted]"
        out[kw] = val
    return out


def scrub(d: dict[str, Any], _ids: list[str] | None = None) -> dict[str, Any]:
    """Return a copy of ``d`` safe to export: identifying keys dropped, raw UIDs hashed.

    Works recursively through nested dicts and lists. Keys in :data:`PATIENT_FIELDS` are
    removed; any string value that looks like a UID under a key ending in ``UID`` and is
    not a public DICOM constant is replaced by :func:`hash_uid`; bytes are dropped; any
    other string that contains one of the identifiers found in ``d`` (the values of its
    name and id fields, as in :func:`safe_dicom_metadata`) becomes ``"[redacted]"``.
    """
    ids = _identifiers(d) if _ids is None else _ids

    def _value(key: str, v: Any) -> Any:
        if isinstance(v, dict):
            return scrub(v, ids)
        if isinstance(v, (list, tuple)):
            return [_value(key, x) for x in v if not isinstance(x, (bytes, bytearray))]
        if not isinstance(v, str):
            return v
        if key.upper().endswith("UID") and _UID_RE.match(v.strip()) and not _is_public_uid(
            v.strip()
        ):
            return hash_uid(v.strip())
        low = v.lower()
        if ids and any(i in low for i in ids):
            return "[redacted]"
        return v

    out: dict[str, Any] = {}
    for k, v in d.items():
        key = str(k)
        if key in PATIENT_FIELDS or isinstance(v, (bytes, bytearray, memoryview)):
            continue
        out[key] = _value(key, v)
    return out


def declares_burned_in_text(metadata: dict[str, Any] | None) -> bool:
    """Whether a scan's header says its pixels carry burned-in text (BurnedInAnnotation YES).

    Names, IDs or dates are then part of the image itself, which removing header fields
    does not de-identify.
    """
    return str((metadata or {}).get("BurnedInAnnotation") or "").strip().upper() == "YES"
