"""DICOM header pass: sniffing, the tag-whitelisted header read, one-line read errors.

Discovery reads headers only (``stop_before_pixels``, a tag whitelist) into
:class:`DicomHeader`; :mod:`scanqc.io.dicom_series` groups them into scans and
:mod:`scanqc.io.dicom` loads the pixels. Files are opened read-only.
"""

from __future__ import annotations

import gzip
import math
import os
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanqc.io import limits
from scanqc.io.privacy import REDACTION_FIELDS, identifying_names, safe_dicom_metadata
from scanqc.io.scan import ScanReadError

#: File name endings that announce DICOM (files without them are still sniffed).
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")

#: Modalities whose single-frame objects are 2D projections, never stacked into a volume.
PROJECTION_MODALITIES = frozenset(
    {"CR", "DX", "MG", "IO", "PX", "RG", "XA", "RF", "US", "SC", "OT", "ES", "XC", "GM", "SM"}
)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_IMPLAUSIBLE_SPACING = (1e-4, 100.0)  # mm per pixel outside this range is not believed

_HEADER_KEYWORDS = (
    "SpecificCharacterSet",
    "ImageType",
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "BodyPartExamined",
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "SliceThickness",
    "SpacingBetweenSlices",
    "KVP",
    "ConvolutionKernel",
    "MagneticFieldStrength",
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
    "ViewPosition",
    "ImagerPixelSpacing",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "PatientOrientation",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "Laterality",
    "ImageLaterality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "FrameIncrementPointer",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "WindowCenter",
    "WindowWidth",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "LossyImageCompression",
    "BurnedInAnnotation",
    "PresentationIntentType",
    "GridFrameOffsetVector",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "SequenceOfUltrasoundRegions",
)


# --------------------------------------------------------------------------- reading


@contextmanager
def _open_binary(path: str):
    """Open ``path`` read-only, transparently gunzipping ``.gz``-compressed files."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield _CappedStream(gz, limits.max_scan_bytes() + limits.MAX_HEADER_BYTES)
        else:
            yield raw


class _CappedStream:
    """A read-only view of a decompressed stream that refuses to go past ``cap`` bytes.

    A gzip bomb (a tiny ``.gz`` that expands to gigabytes) then ends with a one-line
    error instead of exhausting memory or time.
    """

    def __init__(self, fp: Any, cap: int) -> None:
        self._fp = fp
        self._cap = int(cap)
        self.name = getattr(fp, "name", "")

    def _check(self, end: int) -> None:
        if end > self._cap:
            raise ValueError(
                f"decompressed stream exceeds the limit of {self._cap / 1024**3:.1f} GiB "
                "(gzip bomb?)"
            )

    def read(self, size: int = -1) -> bytes:
        pos = self._fp.tell()
        room = max(self._cap - pos, 0)
        want = room + 1 if size is None or size < 0 else min(int(size), room + 1)
        data = self._fp.read(want)
        if len(data) > room:  # the stream really goes on past the cap
            self._check(pos + len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._fp.tell()
            whence = 0
        if whence == 0:
            self._check(offset)
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


def sniff(path: str) -> str | None:
    """Return ``"dicom"`` (preamble + DICM), ``"headless"`` (maybe a raw dataset) or None.

    Gzip-compressed files are looked at after decompression.
    """
    try:
        with _open_binary(path) as fp:
            head = fp.read(132)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error, ValueError):
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    # ACR-NEMA / no file meta: the stream starts with a group 0002, 0008 or 0018 element
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x18\x00"):
        return "headless"
    return None


def _tags():
    from pydicom.tag import Tag

    return [Tag(k) for k in dict.fromkeys((*_HEADER_KEYWORDS, *REDACTION_FIELDS))]


_TAG_CACHE: list | None = None


def _header_tags() -> list:
    global _TAG_CACHE
    if _TAG_CACHE is None:
        _TAG_CACHE = _tags()
    return _TAG_CACHE


def _plausible(ds: Any) -> bool:
    """True when a force-read dataset looks like a real DICOM image/object header."""
    try:
        keys = {int(t) for t in ds.keys()}  # noqa: SIM118 - tags, not elements
    except Exception:  # noqa: BLE001
        return False
    g8 = any((k >> 16) == 0x0008 for k in keys)
    has_core = any(
        k in keys for k in (0x00080060, 0x00080016, 0x00280010, 0x00280011, 0x0020000E)
    )
    return g8 and has_core


def is_dicom(path: str | os.PathLike) -> bool:
    """Return True if ``path`` is a DICOM file (Part 10, gzipped, or headless ACR-NEMA).

    Fast for the usual case (reads 132 bytes); files without preamble are parsed with
    ``force=True`` and accepted when they carry plausible group 0008/0028 elements.
    """
    path = os.fspath(path)
    kind = sniff(path)
    if kind == "dicom":
        return True
    if kind == "headless":
        try:
            return read_header(path).plausible
        except ScanReadError:
            return False
    return False


@dataclass
class DicomHeader:
    """The header of one DICOM file, read without pixel data.

    Attributes:
        path: File path.
        ds: The pydicom dataset (whitelisted tags only, no pixel data).
        has_pixels: Whether a pixel data element follows the header.
        headless: True when the file has no preamble / file meta (ACR-NEMA style).
        plausible: True when the header looks like a DICOM object (always for Part 10).
    """

    path: str
    ds: Any
    has_pixels: bool
    headless: bool = False
    plausible: bool = True
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def private_names(self) -> dict[str, str]:
        """Names in :attr:`path` that hold a patient identifier, and their stand-ins.

        See :func:`scanqc.io.privacy.identifying_names`.
        """
        if "private_names" not in self._cache:
            try:
                with _quiet():
                    self._cache["private_names"] = identifying_names(self.path, self.ds)
            except Exception:  # noqa: BLE001 - a broken value must not stop discovery
                self._cache["private_names"] = {}
        return self._cache["private_names"]

    def get(self, keyword: str, default: Any = None) -> Any:
        """Return a header value, or ``default`` when absent or unreadable."""
        key = "kw:" + keyword
        if key not in self._cache:
            try:
                with _quiet():
                    self._cache[key] = self.ds.get(keyword)
            except Exception:  # noqa: BLE001 - an invalid value is treated as missing
                self._cache[key] = None
        v = self._cache[key]
        return default if v is None else v

    @property
    def sop_class(self) -> str:
        """SOPClassUID (or MediaStorageSOPClassUID) as a string, ``""`` if absent."""
        uid = self.get("SOPClassUID")
        if not uid:
            uid = _meta_value(self.ds, "MediaStorageSOPClassUID")
        uid = str(uid or "").strip()
        if len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
            # a corrupt UID: keep error messages one short, printable line
            uid = "".join(c if c.isprintable() and not c.isspace() else "?" for c in uid[:64])
        return uid

    @property
    def sop_class_name(self) -> str:
        """Human name of the SOP class (``"Basic Text SR Storage"``), or the UID."""
        uid = self.sop_class
        if not uid:
            return ""
        from pydicom.uid import UID

        name = UID(uid).name
        return name.replace(" Storage", "") if name else uid

    @property
    def is_dicomdir(self) -> bool:
        """True for a media storage directory (DICOMDIR) file."""
        return self.sop_class == MEDIA_STORAGE_DIRECTORY

    @property
    def series_uid(self) -> str:
        """SeriesInstanceUID, ``""`` if absent."""
        return str(self.get("SeriesInstanceUID", "")).strip()

    @property
    def modality(self) -> str:
        """Modality, upper case, ``""`` if absent."""
        return str(self.get("Modality", "")).strip().upper()

    @property
    def rows(self) -> int:
        """Rows, 0 if absent or invalid."""
        return _as_int(self.get("Rows"), 0)

    @property
    def cols(self) -> int:
        """Columns, 0 if absent or invalid."""
        return _as_int(self.get("Columns"), 0)

    @property
    def samples(self) -> int:
        """SamplesPerPixel (1 if absent)."""
        return _as_int(self.get("SamplesPerPixel"), 1) or 1

    @property
    def frames(self) -> int:
        """NumberOfFrames (1 if absent; 1 if invalid, see :attr:`frames_valid`)."""
        return max(_as_int(self.get("NumberOfFrames"), 1), 1)

    @property
    def frames_valid(self) -> bool:
        """False when NumberOfFrames is present but not an integer."""
        v = self.get("NumberOfFrames")
        return v is None or v == "" or _as_int(v, None) is not None

    @property
    def iop(self) -> np.ndarray | None:
        """ImageOrientationPatient (6,) float, from the top level or shared groups."""
        if "iop" not in self._cache:
            self._cache["iop"] = _vector(self.get("ImageOrientationPatient"), 6) or (
                _vector(_functional(self.ds, "PlaneOrientationSequence",
                                    "ImageOrientationPatient"), 6)
            )
        v = self._cache["iop"]
        return None if v is None else np.asarray(v, dtype=float)

    @property
    def ipp(self) -> np.ndarray | None:
        """ImagePositionPatient (3,) float, ``None`` if absent."""
        v = _vector(self.get("ImagePositionPatient"), 3)
        return None if v is None else np.asarray(v, dtype=float)

    @property
    def instance(self) -> int | None:
        """InstanceNumber, ``None`` if absent."""
        return _as_int(self.get("InstanceNumber"), None)

    @property
    def safe_metadata(self) -> dict[str, Any]:
        """Whitelisted header fields (see :func:`scanqc.io.privacy.safe_dicom_metadata`)."""
        if "meta" not in self._cache:
            self._cache["meta"] = safe_dicom_metadata(self.ds)
        return dict(self._cache["meta"])

    @property
    def description(self) -> str:
        """SeriesDescription, blanked when it contains a patient identifier."""
        d = self.safe_metadata.get("SeriesDescription")
        return "" if d in (None, "[redacted]") else str(d).strip()

    def pixel_spacing(self) -> tuple[float, float] | None:
        """(row, column) spacing in mm.

        From PixelSpacing, the pixel measures functional group, ImagerPixelSpacing or, for
        ultrasound, its calibrated regions (:func:`ultrasound_spacing`).
        """
        for v in (
            self.get("PixelSpacing"),
            _functional(self.ds, "PixelMeasuresSequence", "PixelSpacing"),
            self.get("ImagerPixelSpacing"),
        ):
            vec = _vector(v, 2)
            if vec is not None:
                return float(vec[0]), float(vec[1])
        return ultrasound_spacing(self.get("SequenceOfUltrasoundRegions"))


def ultrasound_spacing(regions: Any) -> tuple[float, float] | None:
    """(row, column) mm of the largest 2D region calibrated in cm (PS3.3 C.8.5.5).

    Ultrasound images carry no PixelSpacing: each region of the image (the B-mode sector,
    a Doppler strip ...) has its own ``PhysicalDeltaX/Y``. Only regions of spatial format
    2D (``RegionSpatialFormat`` 1) in cm (``PhysicalUnitsX/YDirection`` 3) give a pixel
    size; None when there is none.
    """
    best: tuple[float, tuple[float, float]] | None = None
    try:
        items = list(regions or ())
    except TypeError:  # not a sequence
        return None
    for r in items:
        try:
            if (_as_int(r.get("RegionSpatialFormat"), None) != 1
                    or _as_int(r.get("PhysicalUnitsXDirection"), None) != 3
                    or _as_int(r.get("PhysicalUnitsYDirection"), None) != 3):
                continue
            dx, dy = float(r.get("PhysicalDeltaX")), float(r.get("PhysicalDeltaY"))
            if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
                continue
            area = abs((_as_int(r.get("RegionLocationMaxX1"), 0) or 0)
                       - (_as_int(r.get("RegionLocationMinX0"), 0) or 0)) * abs(
                (_as_int(r.get("RegionLocationMaxY1"), 0) or 0)
                - (_as_int(r.get("RegionLocationMinY0"), 0) or 0))
        except (TypeError, ValueError, AttributeError):  # a malformed region is left out
            continue
        if best is None or area > best[0]:
            best = (area, (10.0 * abs(dy), 10.0 * abs(dx)))  # cm -> mm
    return best[1] if best else None


def _as_int(v: Any, default: int | None) -> int | None:
    if v is None or v == "":
        return default
    try:
        return int(float(str(v).strip()))
    except (TypeError, ValueError):
        return default


def _vector(v: Any, n: int) -> list[float] | None:
    """Return ``v`` as a list of ``n`` finite floats, or None."""
    if v is None:
        return None
    try:
        vals = [float(x) for x in v] if not isinstance(v, (str, bytes)) else [
            float(x) for x in str(v).split("\\")
        ]
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(math.isfinite(x) for x in vals):
        return None
    return vals


def _functional(ds: Any, seq: str, keyword: str, frame: int | None = None) -> Any:
    """Read ``keyword`` from a functional group macro (per-frame first, then shared)."""
    try:
        groups = []
        if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
            pf = ds.PerFrameFunctionalGroupsSequence
            if frame < len(pf):
                groups.append(pf[frame])
        if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
            groups.append(ds.SharedFunctionalGroupsSequence[0])
        for g in groups:
            if seq in g and len(g[seq].value):
                item = g[seq].value[0]
                if keyword in item:
                    return item[keyword].value
    except Exception:  # noqa: BLE001 - broken functional groups: treat as absent
        return None
    return None


_QUIET = threading.local()


@contextmanager
def _quiet():
    """Silence pydicom's value validation (warnings and their cost) for one read.

    Reading never needs validation: odd values are handled where they are used. Nested
    uses in one thread cost nothing (the outer one holds the settings): grouping a series
    reads a dozen values per header, and entering ``warnings.catch_warnings`` for each
    took a fifth of the grouping time.
    """
    if getattr(_QUIET, "depth", 0):
        _QUIET.depth += 1
        try:
            yield
        finally:
            _QUIET.depth -= 1
        return
    from pydicom import config

    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    _QUIET.depth = 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _QUIET.depth = 0
        config.settings.reading_validation_mode = old


def read_header(path: str | os.PathLike, *, all_tags: bool = False) -> DicomHeader:
    """Read one DICOM header without pixel data.

    Args:
        path: The file (Part 10, gzipped, or headless).
        all_tags: Read every element instead of the scanqc tag whitelist.

    Raises:
        ScanReadError: Not DICOM or unreadable (one-line cause).
    """
    import pydicom

    path = os.fspath(path)
    kind = sniff(path)
    if kind is None:
        raise ScanReadError(path, "not a DICOM file (no DICM marker and no DICOM header)")
    headless = kind == "headless"
    try:
        with _quiet(), _open_binary(path) as fp:
            ds = pydicom.dcmread(
                fp,
                force=headless,
                stop_before_pixels=True,
                specific_tags=None if all_tags else _header_tags(),
            )
            nxt = fp.read(8)
    except ScanReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a read error
        raise ScanReadError(path, read_cause(exc)) from None
    has_pixels = False
    if len(nxt) >= 4:
        le = (int.from_bytes(nxt[0:2], "little"), int.from_bytes(nxt[2:4], "little"))
        be = (int.from_bytes(nxt[0:2], "big"), int.from_bytes(nxt[2:4], "big"))
        has_pixels = le in _PIXEL_TAGS or be in _PIXEL_TAGS
    return header_of(path, ds, has_pixels, headless)


def header_of(path: str, ds: Any, has_pixels: bool, headless: bool) -> DicomHeader:
    """The :class:`DicomHeader` of a dataset read from ``path`` (with or without pixels).

    ``plausible``: a headless (force-read) dataset needs real group 0008/0028 elements; a
    Part 10 file needs them or a MediaStorageSOPClassUID.
    """
    plausible = _plausible(ds)
    if not headless and not plausible:
        sop = _meta_value(ds, "MediaStorageSOPClassUID")
        plausible = bool(sop) and (len(ds) > 0 or str(sop) == MEDIA_STORAGE_DIRECTORY)
    return DicomHeader(path, ds, has_pixels, headless=headless, plausible=plausible)


def _meta_value(ds: Any, keyword: str) -> Any:
    """A file meta (group 0002) value, or None when absent or unreadable (corrupt VR ...)."""
    try:
        meta = getattr(ds, "file_meta", None)
        with _quiet():
            return meta.get(keyword) if meta is not None else None
    except Exception:  # noqa: BLE001 - a corrupt element is treated as missing
        return None


def read_cause(exc: BaseException) -> str:
    """Turn an exception from pydicom or a codec into a short, specific one-line cause."""
    if isinstance(exc, ScanReadError):
        return exc.cause
    msg = " ".join(str(exc).split())
    low = msg.lower()
    if "number of bytes of pixel data is less than expected" in low or (
        "less than expected" in low and "pixel" in low
    ):
        import re

        m = re.search(r"\((\d+) vs (\d+) bytes\)", msg)
        detail = f"{m.group(1)} of {m.group(2)} bytes" if m else "too few bytes"
        return f"truncated or corrupt pixel data ({detail})"
    if "unable to decode as exceptions were raised by all available plugins" in low:
        detail = msg.split(":", 2)[-1].strip()
        return f"truncated or corrupt pixel data (decoder failed: {detail[:120]})"
    if "missing" in low and ("plugin" in low or "dependenc" in low):
        return f"cannot decode pixel data: missing codec ({msg[:120]})"
    if isinstance(exc, (EOFError,)) or "end of file" in low or "truncat" in low:
        return f"truncated file ({msg[:120]})" if msg else "truncated file"
    if isinstance(exc, ValueError) and ("is invalid, it must be" in low
                                        or low.startswith("unknown (")):
        return f"invalid header value ({msg[:140]})"
    if isinstance(exc, AttributeError) and "missing required element" in low:
        return f"missing header element ({msg.split(':', 1)[-1].strip()[:120]})"
    if "unknown value representation" in low:
        return f"corrupt header (unknown value representation: {msg[:120]})"
    if "unpack requires a buffer" in low:  # struct.error: the data ends inside an element
        return "truncated file (data ends inside a header element)"
    if "could not broadcast" in low or "cannot reshape" in low:
        return f"pixel data does not match the header's image size ({msg[:120]})"
    if isinstance(exc, TypeError) and "not supported between" in low:
        return f"invalid header value (wrong value type: {msg[:100]})"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return f"corrupt gzip stream ({msg[:120]})"
    if "decompressed stream exceeds" in low:
        return msg[:200]
    if isinstance(exc, OSError):
        return f"cannot read file ({exc.strerror or msg})"[:200]
    if isinstance(exc, ValueError) and ("invalid literal" in low or "could not convert" in low):
        return f"invalid header value ({msg[:120]})"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode the pixel data"
    return f"{type(exc).__name__}: {msg}"[:200]
