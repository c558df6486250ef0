"""DICOM in: sniffing, header pass, grouping into series, and pixel loading.

Discovery reads headers only (``stop_before_pixels``, a tag whitelist) and groups files:

* by SeriesInstanceUID, then within a series by (rounded ImageOrientationPatient, Rows,
  Columns) when these differ (localizers in three planes become three scans);
* a multi-frame object (NumberOfFrames > 1) is one ``volume``; a lone single-frame object
  (radiograph, ultrasound frame, lone CT/MR slice) is an ``image``; two or more
  cross-sectional slices with the same geometry are a ``series`` sorted along the slice
  normal (cross product of the IOP row and column cosines) by the projection of
  ImagePositionPatient;
* objects without pixel data (SR, RT plan, ECG, presentation states, DICOMDIR ...) are
  ``skipped`` with the reason.

:func:`load_dicom` checks the declared size before decoding, decodes with pydicom (JPEG
codecs through pylibjpeg/pyjpegls), applies rescale slope/intercept, inverts MONOCHROME1,
converts colour to RGB uint8, and builds the index -> RAS+ affine. Every failure is a
:class:`~scanqc.io.scan.ScanReadError` with a one-line cause. Files are opened read-only.
"""

from __future__ import annotations

import gzip
import math
import os
import threading
import warnings
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanqc.io import limits
from scanqc.io.privacy import REDACTION_FIELDS, safe_dicom_metadata
from scanqc.io.scan import Scan, ScanEntry, ScanReadError, ScanWarning, make_scan_id

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
        """(row, column) spacing in mm from PixelSpacing, ImagerPixelSpacing or groups."""
        for v in (
            self.get("PixelSpacing"),
            _functional(self.ds, "PixelMeasuresSequence", "PixelSpacing"),
            self.get("ImagerPixelSpacing"),
        ):
            vec = _vector(v, 2)
            if vec is not None:
                return float(vec[0]), float(vec[1])
        return None


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


# --------------------------------------------------------------------------- slice order


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit slice normal: cross product of the IOP row and column direction cosines."""
    a = np.asarray(iop, dtype=float)
    n = np.cross(a[:3], a[3:6])
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def spacing_warnings(
    positions: Sequence[float], *, what: str = "slice"
) -> tuple[float | None, list[ScanWarning]]:
    """Analyse sorted slice positions (mm along the normal).

    Returns the median spacing (None when fewer than two distinct positions) and the
    findings: ``duplicate_slices`` (same position twice), ``missing_slices`` (gap larger
    than 1.5 times the median, with the neighbouring slice indices in ``slices``) and
    ``uneven_spacing`` (gaps differing from the median by more than 10 %).
    """
    p = np.asarray(positions, dtype=float)
    out: list[ScanWarning] = []
    if p.size < 2:
        return None, out
    d = np.diff(p)
    span = float(abs(p[-1] - p[0]))
    dup_tol = max(1e-3, 1e-4 * span)
    dup = np.flatnonzero(np.abs(d) <= dup_tol)
    steps = d[np.abs(d) > dup_tol]
    if dup.size:
        first, last = int(dup[0]), int(dup[-1] + 1)
        out.append(
            ScanWarning(
                "duplicate_slices",
                f"{dup.size} {what}(s) share a position with a neighbour "
                f"({what}s {first}-{last})",
                "warn",
                slices=(first, last),
                value=float(dup.size),
            )
        )
    if steps.size == 0:
        return None, out
    med = float(np.median(np.abs(steps)))
    gaps = [i for i in range(d.size) if abs(d[i]) > 1.5 * med]
    for i in gaps[:20]:
        n_missing = max(int(round(abs(d[i]) / med)) - 1, 1)
        out.append(
            ScanWarning(
                "missing_slices",
                f"about {n_missing} {what}(s) missing between {what}s {i} and {i + 1} "
                f"(gap {abs(d[i]):.3g} mm, usual spacing {med:.3g} mm)",
                "high",
                slices=(i, i + 1),
                value=float(n_missing),
            )
        )
    if len(gaps) > 20:
        out.append(
            ScanWarning("missing_slices", f"{len(gaps) - 20} more gaps not listed", "high")
        )
    regular = np.asarray([abs(d[i]) for i in range(d.size) if abs(d[i]) > dup_tol
                          and i not in gaps])
    if regular.size:
        dev = float(np.max(np.abs(regular - med)))
        if dev > max(0.1 * med, 0.01):
            out.append(
                ScanWarning(
                    "uneven_spacing",
                    f"{what} spacing varies from {regular.min():.3g} to {regular.max():.3g} "
                    f"mm (median {med:.3g} mm)",
                    "warn",
                    value=dev,
                )
            )
    return med, out


def order_slices(
    headers: Sequence[DicomHeader],
) -> tuple[list[DicomHeader], list[ScanWarning], float | None, np.ndarray | None]:
    """Sort single-frame slices along the slice normal.

    Returns ``(ordered, warnings, median_spacing, positions_mm)``. When a slice lacks
    ImagePositionPatient/ImageOrientationPatient the order falls back to InstanceNumber
    (then file name) with a ``sorted_by_instance`` warning.
    """
    hs = list(headers)
    if len(hs) < 2:
        return hs, [], None, None
    iops = [h.iop for h in hs]
    ipps = [h.ipp for h in hs]
    if all(v is not None for v in iops) and all(v is not None for v in ipps):
        normal = slice_normal(iops[0])
        proj = np.array([float(np.dot(normal, p)) for p in ipps])
        inst = [h.instance if h.instance is not None else 0 for h in hs]
        idx = sorted(range(len(hs)), key=lambda i: (proj[i], inst[i], hs[i].path))
        ordered = [hs[i] for i in idx]
        pos = proj[idx]
        med, warns = spacing_warnings(pos)
        return ordered, warns, med, pos
    idx = sorted(
        range(len(hs)),
        key=lambda i: (hs[i].instance is None, hs[i].instance or 0, hs[i].path),
    )
    warn = ScanWarning(
        "sorted_by_instance",
        "slice positions missing: slices ordered by InstanceNumber (geometry unknown)",
        "warn",
    )
    return [hs[i] for i in idx], [warn], None, None


# --------------------------------------------------------------------------- grouping


def _rel(path: str, root: str | None) -> str:
    if root:
        try:
            rel = os.path.relpath(path, root)
            if not rel.startswith(".."):
                return rel.replace(os.sep, "/")
        except ValueError:
            pass
    return path.replace(os.sep, "/")


def _series_name(paths: Sequence[str], root: str | None, desc: str, suffix: str = "") -> str:
    folder = os.path.dirname(_rel(paths[0], root))
    if not folder:
        folder = os.path.basename(os.path.normpath(root)) if root else "."
    name = folder + (f" - {desc}" if desc else "")
    return name + suffix


def _entry_header(h: DicomHeader, n_files: int) -> dict[str, Any]:
    meta = h.safe_metadata
    meta["n_files"] = n_files
    if h.headless:
        meta["headless"] = True
    return meta


def _spacing2(h: DicomHeader) -> tuple[float, float] | None:
    sp = h.pixel_spacing()
    if sp is None or not all(_IMPLAUSIBLE_SPACING[0] < s < _IMPLAUSIBLE_SPACING[1] for s in sp):
        return None
    return sp


def _iop_key(h: DicomHeader) -> str:
    v = h.iop
    return "none" if v is None else ",".join(f"{x:.3f}" for x in np.round(v, 3) + 0.0)


def headers_to_entries(
    headers: Sequence[DicomHeader], *, root: str | None = None
) -> list[ScanEntry]:
    """Group DICOM headers into scan entries (series, multi-frame volumes, images, skips).

    Args:
        headers: Headers from :func:`read_header` (any order, any number of series).
        root: Dataset root used for display names and path-based ids.
    """
    with _quiet():  # one for all the values read below
        return _group(headers, root)


def _group(headers: Sequence[DicomHeader], root: str | None) -> list[ScanEntry]:
    entries: list[ScanEntry] = []
    groups: dict[tuple, list[DicomHeader]] = {}
    nopix: dict[str, list[DicomHeader]] = {}
    for h in headers:
        rel = _rel(h.path, root)
        if h.is_dicomdir:
            entries.append(
                ScanEntry(
                    make_scan_id(rel), (h.path,), "image", "dicom", "skipped",
                    "DICOMDIR index file (the files it lists are found by the folder walk)",
                    name=rel,
                )
            )
            continue
        if not h.plausible:
            entries.append(
                ScanEntry(
                    make_scan_id(rel), (h.path,), "image", "dicom", "error",
                    "not a readable DICOM file (no preamble or file meta, and no "
                    "recognisable header)" if h.headless else
                    "truncated or empty DICOM data set (no SOP class, no image header)",
                    name=rel,
                )
            )
            continue
        if not h.has_pixels:
            sop = h.sop_class_name
            if h.series_uid and "image" in sop.lower():
                nopix.setdefault(h.series_uid, []).append(h)
                continue
            reason = f"no pixel data (SOP class: {sop})" if sop else "no pixel data"
            entries.append(
                ScanEntry(
                    make_scan_id(rel), (h.path,), "image", "dicom", "skipped", reason,
                    name=rel, modality=h.modality, description=h.description,
                    header=_entry_header(h, 1),
                )
            )
            continue
        warns = []
        if not h.frames_valid:
            warns.append(
                ScanWarning("invalid_header", "NumberOfFrames is not an integer", "warn")
            )
        if h.frames > 1:
            key = h.series_uid + "|" + str(h.get("SOPInstanceUID", rel))
            shape = (h.frames, h.rows, h.cols) + ((3,) if h.samples == 3 else ())
            sp = _spacing2(h)
            entries.append(
                ScanEntry(
                    make_scan_id(key if h.series_uid else rel), (h.path,), "volume", "dicom",
                    name=rel + (f" - {h.description}" if h.description else ""),
                    modality=h.modality, description=h.description, shape=shape,
                    spacing=None if sp is None else (_frame_spacing(h) or 1.0, *sp),
                    header=_entry_header(h, 1), warnings=warns,
                )
            )
            continue
        series = h.series_uid or _nouid_key(h, root)
        groups.setdefault((series, _iop_key(h), h.rows, h.cols), []).append(h)
        if warns:
            h._cache["warns"] = warns
    groups = _split_copies(groups)

    for uid, hs in nopix.items():
        hs.sort(key=lambda x: x.path)
        h = hs[0]
        entries.append(
            ScanEntry(
                make_scan_id(uid), tuple(x.path for x in hs), "series", "dicom", "skipped",
                f"no pixel data (SOP class: {h.sop_class_name}; {len(hs)} files)",
                name=_series_name([h.path], root, h.description), modality=h.modality,
                description=h.description, header=_entry_header(h, len(hs)),
            )
        )

    per_series: dict[str, int] = {}
    for key in groups:
        per_series[key[0]] = per_series.get(key[0], 0) + 1
    seen: dict[str, int] = {}
    for key, hs in groups.items():
        series = key[0]
        split = per_series[series] > 1
        seen[series] = seen.get(series, 0) + 1
        suffix = f" [{seen[series]}/{per_series[series]}]" if split else ""
        id_key = series + (f"|{key[1]}|{key[2]}x{key[3]}" if split else "")
        h0 = hs[0]
        projection = h0.modality in PROJECTION_MODALITIES
        if len(hs) == 1 or projection:
            for h in sorted(hs, key=lambda x: (x.instance or 0, x.path)):
                rel = _rel(h.path, root)
                one_key = id_key if len(hs) == 1 else id_key + "|" + str(
                    h.get("SOPInstanceUID", rel))
                sp = _spacing2(h)
                shape = (h.rows, h.cols) + ((3,) if h.samples == 3 else ())
                entries.append(
                    ScanEntry(
                        make_scan_id(one_key if h.series_uid else rel), (h.path,), "image",
                        "dicom", name=rel + (f" - {h.description}" if h.description else ""),
                        modality=h.modality, description=h.description, shape=shape,
                        spacing=sp, header=_entry_header(h, 1),
                        warnings=list(h._cache.get("warns", [])),
                    )
                )
            continue
        ordered, warns, med, _ = order_slices(hs)
        for h in hs:
            warns += [w for w in h._cache.get("warns", []) if w not in warns]
        sp = _spacing2(h0)
        slice_sp = med or _fallback_slice_spacing(h0)
        spacing = None if sp is None else (slice_sp or 1.0, *sp)
        entries.append(
            ScanEntry(
                make_scan_id(id_key), tuple(h.path for h in ordered), "series", "dicom",
                name=_series_name([h0.path], root, h0.description, suffix),
                modality=h0.modality, description=h0.description,
                shape=(len(ordered), h0.rows, h0.cols) + ((3,) if h0.samples == 3 else ()),
                spacing=spacing, header=_entry_header(ordered[0], len(ordered)),
                warnings=warns,
            )
        )
    return entries


def _nouid_key(h: DicomHeader, root: str | None) -> str:
    """Grouping key for files without SeriesInstanceUID (anonymised or ACR-NEMA)."""
    folder = os.path.dirname(_rel(h.path, root))
    parts = (folder, str(h.get("SeriesNumber", "")), h.modality, h.description)
    return "nouid:" + "|".join(parts)


def _split_copies(groups: dict[tuple, list[DicomHeader]]) -> dict[tuple, list[DicomHeader]]:
    """Move repeated SOPInstanceUIDs (copies of one file) into groups of their own.

    The k-th file carrying a given SOPInstanceUID (in path order) goes to layer k, so a
    series plus a stray copy of one slice becomes the series and a separate image.
    """
    out: dict[tuple, list[DicomHeader]] = {}
    for key, hs in groups.items():
        count: dict[str, int] = {}
        layers: dict[int, list[DicomHeader]] = {}
        for h in sorted(hs, key=lambda x: x.path):
            uid = str(h.get("SOPInstanceUID", "")).strip() or h.path
            k = count.get(uid, 0)
            count[uid] = k + 1
            layers.setdefault(k, []).append(h)
        if len(layers) > 1:
            for h in hs:
                uid = str(h.get("SOPInstanceUID", "")).strip() or h.path
                if count.get(uid, 0) > 1:
                    h._cache.setdefault("warns", []).append(
                        ScanWarning(
                            "duplicate_instance",
                            "another file has the same SOPInstanceUID (a copy of this one)",
                            "warn",
                        )
                    )
        for k, layer in layers.items():
            out[key if k == 0 else (key[0], f"{key[1]}|copy{k}", *key[2:])] = layer
    return out


def _fallback_slice_spacing(h: DicomHeader) -> float | None:
    for kw in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            v = float(h.get(kw))
        except (TypeError, ValueError):
            continue
        if _IMPLAUSIBLE_SPACING[0] < abs(v) < 1000:
            return abs(v)
    return None


def _frame_positions(h: DicomHeader) -> np.ndarray | None:
    """Per-frame ImagePositionPatient (frames, 3) of a multi-frame object, if known."""
    n = h.frames
    ds = h.ds
    pos = []
    if "PerFrameFunctionalGroupsSequence" in ds:
        for i in range(n):
            v = _vector(_functional(ds, "PlanePositionSequence", "ImagePositionPatient", i), 3)
            if v is None:
                pos = []
                break
            pos.append(v)
    if not pos:
        offsets = h.get("GridFrameOffsetVector")
        ipp, iop = h.ipp, h.iop
        if offsets is not None and ipp is not None and iop is not None:
            try:
                off = [float(x) for x in offsets]
            except (TypeError, ValueError):
                off = []
            if len(off) == n:
                normal = slice_normal(iop)
                pos = [list(ipp + o * normal) for o in off]
    return np.asarray(pos, dtype=float) if len(pos) == n else None


def _frame_spacing(h: DicomHeader) -> float | None:
    pos = _frame_positions(h)
    if pos is not None and h.iop is not None:
        proj = np.sort(pos @ slice_normal(h.iop))
        med, _ = spacing_warnings(proj)
        if med:
            return med
    return _fallback_slice_spacing(h)


# --------------------------------------------------------------------------- loading


def _prepare_dataset(ds: Any, path: str, warns: list[ScanWarning]) -> None:
    """Fill in what headless (ACR-NEMA) files lack so pydicom can decode them (in memory)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is None:
            implicit, little = True, True
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
        warns.append(
            ScanWarning(
                "no_file_meta",
                f"no file meta: read as {meta.TransferSyntaxUID.name}",
                "info",
            )
        )
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    if "PhotometricInterpretation" not in ds:
        ds.PhotometricInterpretation = "MONOCHROME2" if ds.SamplesPerPixel == 1 else "RGB"
        warns.append(
            ScanWarning(
                "missing_photometric",
                f"PhotometricInterpretation missing: assumed {ds.PhotometricInterpretation}",
                "info",
            )
        )
    if "BitsStored" not in ds and "BitsAllocated" in ds:
        ds.BitsStored = ds.BitsAllocated
    if "PixelRepresentation" not in ds:
        ds.PixelRepresentation = 0
    for kw in ("Rows", "Columns", "BitsAllocated"):
        if kw not in ds:
            raise ScanReadError(path, f"{kw} missing: cannot interpret the pixel data")


def _check_codec(ds: Any, path: str) -> None:
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.TransferSyntaxUID
    try:
        dec = get_decoder(ts)
    except NotImplementedError:
        raise ScanReadError(
            path, f"cannot decode transfer syntax {ts.name or ts}: not supported"
        ) from None
    except Exception:  # noqa: BLE001 - let pixel_array report it
        return
    if not dec.is_available:
        missing = "; ".join(dec.missing_dependencies)[:160]
        raise ScanReadError(
            path, f"cannot decode transfer syntax {ts.name or ts}: missing codec ({missing})"
        )


def _after_pixel_data():
    """A pydicom ``stop_when``: stop at the first element after the pixel data.

    Anything after the pixel data (trailing padding, junk, a gzip stream that goes on with
    zeros) is never needed; parsing it element by element can take minutes.
    """
    seen = [False]

    def stop(tag: Any, vr: Any, length: int) -> bool:  # noqa: ARG001
        if seen[0]:
            return True
        if (int(tag) >> 16, int(tag) & 0xFFFF) in _PIXEL_TAGS:
            seen[0] = True
        return False

    return stop


def _read_full(path: str, warns: list[ScanWarning]) -> Any:
    import pydicom

    headless = sniff(path) == "headless"
    try:
        with _quiet(), _open_binary(path) as fp:
            ds = pydicom.filereader.read_partial(
                fp, stop_when=_after_pixel_data(), force=headless
            )
    except Exception as exc:  # noqa: BLE001
        raise ScanReadError(path, read_cause(exc)) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ScanReadError(path, "no pixel data")
    _prepare_dataset(ds, path, warns)
    return ds


def _decode(ds: Any, path: str) -> np.ndarray:
    _check_codec(ds, path)
    try:
        with _quiet():
            arr = ds.pixel_array
            pi = str(ds.get("PhotometricInterpretation", "")).upper()
            if pi == "PALETTE COLOR":
                from pydicom.pixels import apply_color_lut

                arr = apply_color_lut(arr, ds)
    except ScanReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScanReadError(path, read_cause(exc)) from None
    return np.asarray(arr)


def _rescale_pairs(ds: Any, n_frames: int) -> list[tuple[float, float]]:
    """(slope, intercept) per frame (top level, or functional groups for enhanced)."""

    def _pair(s: Any, i: Any) -> tuple[float, float]:
        try:
            slope = float(s) if s not in (None, "") else 1.0
        except (TypeError, ValueError):
            slope = 1.0
        try:
            icpt = float(i) if i not in (None, "") else 0.0
        except (TypeError, ValueError):
            icpt = 0.0
        if not math.isfinite(slope) or slope == 0:
            slope = 1.0
        if not math.isfinite(icpt):
            icpt = 0.0
        return slope, icpt

    if "RescaleSlope" in ds or "RescaleIntercept" in ds or n_frames == 1:
        return [_pair(ds.get("RescaleSlope"), ds.get("RescaleIntercept"))] * n_frames
    return [
        _pair(
            _functional(ds, "PixelValueTransformationSequence", "RescaleSlope", i),
            _functional(ds, "PixelValueTransformationSequence", "RescaleIntercept", i),
        )
        for i in range(n_frames)
    ]


def _invert_monochrome1(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Invert MONOCHROME1 stored values so that high = bright (same dtype)."""
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        bits = _as_int(ds.get("BitsStored"), None) or arr.dtype.itemsize * 8
        hi = (1 << min(bits, arr.dtype.itemsize * 8)) - 1
        hi = max(hi, int(arr.max()) if arr.size else 0)
        return (hi - arr).astype(arr.dtype)
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    if np.issubdtype(arr.dtype, np.integer):
        out = (int(lo) + int(hi)) - arr.astype(np.int64)
        return out.astype(arr.dtype)
    return (lo + hi) - arr


def _apply_rescale(raw: np.ndarray, pairs: list[tuple[float, float]]) -> np.ndarray:
    """Apply per-slice slope/intercept; integer data stays integer when possible."""
    integral = all(s == 1.0 and float(i).is_integer() for s, i in pairs)
    if integral and np.issubdtype(raw.dtype, np.integer):
        icpts = np.array([int(i) for _, i in pairs], dtype=np.int64)
        if not icpts.any():
            return raw
        lo = int(raw.min()) + int(icpts.min())
        hi = int(raw.max()) + int(icpts.max())
        itemsize = raw.dtype.itemsize
        candidates = [raw.dtype, np.dtype(f"int{itemsize * 8}")] + [
            np.dtype(t) for t in ("int16", "int32", "int64") if np.dtype(t).itemsize > itemsize
        ]
        target = next(
            t for t in candidates if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max
        )
        out = raw.astype(np.int64) + icpts.reshape((-1,) + (1,) * (raw.ndim - 1))
        return out.astype(target)
    slopes = np.array([s for s, _ in pairs], dtype=np.float32).reshape(
        (-1,) + (1,) * (raw.ndim - 1)
    )
    icpts_f = np.array([i for _, i in pairs], dtype=np.float32).reshape(
        (-1,) + (1,) * (raw.ndim - 1)
    )
    return raw.astype(np.float32) * slopes + icpts_f


def _to_rgb8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float32)
    hi = float(a.max()) if a.size else 0.0
    if hi <= 255:
        return np.clip(a, 0, 255).astype(np.uint8)
    return np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _lps_to_ras(aff: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


_ORIENT_LETTERS = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0), "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0), "H": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0),
}


def _projection_cosines(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """(row direction, column direction) in LPS for a radiograph, from PatientOrientation.

    Defaults to the usual frontal view: columns run to the patient's left, rows to the feet.
    """
    row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])
    po = ds.get("PatientOrientation")
    try:
        if po is not None and len(po) == 2:
            vecs = []
            for code in po:
                v = np.zeros(3)
                for ch in str(code).upper():
                    if ch in _ORIENT_LETTERS:
                        v += np.array(_ORIENT_LETTERS[ch])
                if not v.any():
                    raise ValueError
                vecs.append(v / np.linalg.norm(v))
            if abs(float(np.dot(vecs[0], vecs[1]))) < 0.99:
                row_dir, col_dir = vecs[0], vecs[1]
    except (TypeError, ValueError):
        pass
    return row_dir, col_dir


def _affine(
    iop: np.ndarray | None,
    origin: np.ndarray | None,
    spacing_rc: tuple[float, float],
    slice_vec: np.ndarray | None,
    ds: Any,
) -> np.ndarray:
    """Index -> RAS+ affine. Volumes: index (slice, row, col); images: (row, col, 0)."""
    if iop is not None:
        row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:6], float)
    elif slice_vec is not None:  # a stack without orientation: assume axial
        row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    else:
        row_dir, col_dir = _projection_cosines(ds)
    normal = np.cross(row_dir, col_dir)
    aff = np.eye(4)
    dy, dx = spacing_rc
    org = np.zeros(3) if origin is None else np.asarray(origin, float)
    if slice_vec is not None:  # 3D: (z, y, x)
        aff[:3, 0] = slice_vec
        aff[:3, 1] = col_dir * dy
        aff[:3, 2] = row_dir * dx
    else:  # 2D: (y, x, 0)
        aff[:3, 0] = col_dir * dy
        aff[:3, 1] = row_dir * dx
        aff[:3, 2] = normal
    aff[:3, 3] = org
    return _lps_to_ras(aff)


def _declared(h: DicomHeader, n_files: int) -> tuple[tuple[int, ...], np.dtype]:
    bits = _as_int(h.get("BitsAllocated"), 16) or 16
    dtype = np.dtype(np.uint8) if bits <= 8 else (
        np.dtype(np.uint16) if bits <= 16 else np.dtype(np.float64 if bits > 32 else np.uint32)
    )
    shape = (n_files * h.frames, h.rows, h.cols) + ((h.samples,) if h.samples > 1 else ())
    return shape, dtype


def load_dicom(entry: ScanEntry, max_bytes: int | None = None) -> Scan:
    """Read a discovered DICOM scan (series, multi-frame volume or image) into a Scan.

    Args:
        entry: A :class:`ScanEntry` with ``format == "dicom"`` (``paths`` are re-sorted
            along the slice normal here, so any order works).
        max_bytes: Per-scan memory ceiling (default: ``SCANQC_MAX_SCAN_BYTES`` or 4 GiB).

    Raises:
        ScanReadError: One-line cause (unreadable, missing codec, corrupt pixel data,
            too large, no pixel data, inconsistent slices).
    """
    paths = tuple(entry.paths)
    if not paths:
        raise ScanReadError(entry.name or "?", "no files in this scan entry")
    if entry.status != "ok":
        raise ScanReadError(paths[0], entry.error or f"scan is {entry.status}")
    warns: list[ScanWarning] = []

    headers = [read_header(p) for p in paths]
    for h in headers:
        if h.is_dicomdir:
            raise ScanReadError(h.path, "DICOMDIR index file: no pixel data")
        if not h.plausible:
            raise ScanReadError(h.path, "file meta missing and transfer syntax unknown")
        if not h.has_pixels:
            sop = h.sop_class_name
            raise ScanReadError(h.path, f"no pixel data (SOP class: {sop})" if sop
                                else "no pixel data")
    h0 = headers[0]
    if len({(h.rows, h.cols, h.samples) for h in headers}) > 1:
        raise ScanReadError(h0.path, "slices differ in size (Rows/Columns): not one volume")
    if len(headers) > 1:
        headers, sort_warns, med, pos = order_slices(headers)
        warns += sort_warns
        h0 = headers[0]
    else:
        med, pos = None, None

    shape, dtype = _declared(h0, len(headers))
    if h0.rows <= 0 or h0.cols <= 0:
        raise ScanReadError(h0.path, f"invalid image size {h0.rows}x{h0.cols}")
    try:
        limits.check_declared_size(shape, dtype, max_bytes)
    except ValueError as exc:
        raise ScanReadError(h0.path, str(exc)) from None

    slabs: list[np.ndarray] = []
    pairs: list[tuple[float, float]] = []
    ds0 = None
    inverted = False
    for h in headers:
        ds = _read_full(h.path, warns)
        ds0 = ds0 if ds0 is not None else ds
        arr = _decode(ds, h.path)
        frames = h.frames if h.frames_valid else 1
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        colour = samples > 1 or str(ds.get("PhotometricInterpretation", "")).upper() == (
            "PALETTE COLOR"
        )
        expect = (h.rows, h.cols) + ((3,) if colour else ())
        if frames > 1:
            expect = (frames, *expect)
        if tuple(arr.shape) != expect:
            if arr.size == int(np.prod(expect)):
                arr = arr.reshape(expect)
            else:
                raise ScanReadError(
                    h.path, f"pixel data shape {arr.shape} does not match the header {expect}"
                )
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            arr = _invert_monochrome1(arr, ds)
            inverted = True
        if colour:
            arr = _to_rgb8(arr)
        if frames == 1:
            arr = arr[None]
        slabs.append(arr)
        if not colour:
            pairs += _rescale_pairs(ds, frames)
    if inverted:
        warns.append(
            ScanWarning(
                "monochrome1_inverted",
                "MONOCHROME1 (white = low values) inverted so that high values are bright",
                "info",
            )
        )
    data = np.concatenate(slabs, axis=0) if len(slabs) > 1 else slabs[0]
    del slabs
    rgb = data.shape[-1] == 3 and (h0.samples == 3 or str(
        ds0.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR")
    if not rgb:
        data = _apply_rescale(data, pairs)

    # geometry
    sp = _spacing2(h0)
    if sp is None:
        warns.append(
            ScanWarning(
                "missing_spacing",
                "pixel spacing missing or implausible: assumed 1.0 mm",
                "warn",
            )
        )
        sp = (1.0, 1.0)
    iop = h0.iop
    n_slices = data.shape[0]
    kind = entry.kind
    slice_vec = None
    if len(headers) > 1:
        kind = "series"
        if med is None:
            med = _fallback_slice_spacing(h0)
            if med is None:
                warns.append(
                    ScanWarning(
                        "missing_slice_spacing",
                        "slice spacing unknown (no positions, SpacingBetweenSlices or "
                        "SliceThickness): assumed 1.0 mm",
                        "warn",
                    )
                )
                med = 1.0
        if pos is not None and iop is not None:
            # direction from the positions (keeps gantry tilt), length = median spacing
            step = headers[-1].ipp - headers[0].ipp
            norm = float(np.linalg.norm(step))
            unit = step / norm if norm > 1e-6 else slice_normal(iop)
            slice_vec = unit * med
        else:
            normal = slice_normal(iop) if iop is not None else np.array([0.0, 0.0, 1.0])
            slice_vec = normal * med
        origin = headers[0].ipp
    elif h0.frames > 1:
        kind = "volume"
        fpos = _frame_positions(h0)
        origin = h0.ipp
        med = None
        if fpos is not None and iop is not None:
            normal = slice_normal(iop)
            proj = fpos @ normal
            if len(np.unique(np.round(proj, 3))) == len(proj):
                order = np.argsort(proj, kind="stable")
                if not np.array_equal(order, np.arange(len(order))):
                    data = data[order]
                proj_sorted = proj[order]
                med, fw = spacing_warnings(proj_sorted, what="frame")
                warns += fw
                origin = fpos[order[0]]
                step = fpos[order[-1]] - fpos[order[0]]
                if n_slices > 1 and med and float(np.linalg.norm(step)) > 1e-6:
                    slice_vec = step / float(np.linalg.norm(step)) * med
            else:
                warns.append(
                    ScanWarning(
                        "repeated_frame_positions",
                        "frames share positions (time series or multi-echo): kept in "
                        "stored order",
                        "info",
                    )
                )
        if med is None:
            med = _fallback_slice_spacing(h0) or 1.0
        if slice_vec is None:
            normal = slice_normal(iop) if iop is not None else np.array([0.0, 0.0, 1.0])
            slice_vec = normal * med
    else:
        kind = "image"
        data = data[0]
        origin = h0.ipp
        med = None

    affine = _affine(iop, origin, sp, slice_vec, ds0)
    spacing = (float(np.linalg.norm(slice_vec)), *sp) if slice_vec is not None else sp
    metadata = safe_dicom_metadata(ds0)
    metadata["n_files"] = len(headers)
    return Scan(
        data=data,
        spacing=tuple(float(s) for s in spacing),
        affine=affine,
        kind=kind,
        modality=h0.modality,
        paths=tuple(h.path for h in headers),
        scan_id=entry.scan_id,
        metadata=metadata,
        warnings=_dedupe(warns),
        rgb=bool(rgb),
        name=entry.name,
    )


def _dedupe(warns: list[ScanWarning]) -> list[ScanWarning]:
    seen, out = set(), []
    for w in warns:
        key = (w.code, w.message, w.slices)
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out
