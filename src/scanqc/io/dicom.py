"""DICOM in: pixel loading of discovered DICOM scans (:func:`load_dicom`).

The reading is split in three modules; this one also re-exports the others' public names
(``from scanqc.io.dicom import read_header, headers_to_entries`` keeps working):

* :mod:`scanqc.io.dicom_header`: sniffing and the header pass (``stop_before_pixels``, a
  tag whitelist) into :class:`~scanqc.io.dicom_header.DicomHeader`;
* :mod:`scanqc.io.dicom_series`: headers grouped into scans (series, multi-frame volumes,
  single images, skipped objects) and slices ordered along the slice normal;
* here: :func:`load_dicom` checks the declared size before decoding, decodes with pydicom
  (JPEG codecs through pylibjpeg/pyjpegls), applies rescale slope/intercept, inverts
  MONOCHROME1, converts colour to RGB uint8, and builds the index -> RAS+ affine.

Every failure is a :class:`~scanqc.io.scan.ScanReadError` with a one-line cause. Files are
opened read-only.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanqc.io import limits
from scanqc.io.codestream import frame_size, j2k_sample_format
from scanqc.io.dicom_header import (  # noqa: F401 - the public names stay importable here
    _PIXEL_TAGS,
    DICOM_SUFFIXES,
    MEDIA_STORAGE_DIRECTORY,
    PROJECTION_MODALITIES,
    DicomHeader,
    _as_int,
    _functional,
    _open_binary,
    _quiet,
    header_of,
    is_dicom,
    read_cause,
    read_header,
    sniff,
)
from scanqc.io.dicom_series import (  # noqa: F401
    _fallback_slice_spacing,
    _frame_positions,
    _nouid_key,
    _spacing2,
    headers_to_entries,
    order_slices,
    slice_normal,
    spacing_warnings,
)
from scanqc.io.privacy import safe_dicom_metadata
from scanqc.io.scan import Scan, ScanEntry, ScanReadError, ScanWarning


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


#: Keywords of the pixel data elements.
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _read_dataset(path: str) -> tuple[Any, bool]:
    """``(dataset up to the end of its pixel data, headless)`` of one file (one parse)."""
    import pydicom

    headless = sniff(path) == "headless"
    try:
        with _quiet(), _open_binary(path) as fp:
            ds = pydicom.filereader.read_partial(
                fp, stop_when=_after_pixel_data(), force=headless
            )
    except Exception as exc:  # noqa: BLE001
        raise ScanReadError(path, read_cause(exc)) from None
    return ds, headless


def _check_frame_sizes(ds: Any, path: str) -> tuple[bool, int] | None:
    """Refuse compressed frames whose codestream declares more pixels than the header.

    The decoder allocates the size in the codestream (:mod:`scanqc.io.codestream`), not
    Rows x Columns: a corrupt JPEG 2000 SIZ can ask for gigabytes and minutes. A frame
    declaring fewer pixels is left to the decoder and the shape check after it.

    Returns:
        ``(signed, bits)`` that the first frame's JPEG 2000 stream declares, from the same
        parse (None when the pixels are not JPEG 2000 or the encapsulation is broken).
    """
    try:
        if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
            return None
        from pydicom.encaps import generate_fragmented_frames

        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = max(1, int(ds.get("SamplesPerPixel", 1) or 1))
        n_frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        frames = generate_fragmented_frames(ds.PixelData, number_of_frames=n_frames)
        declared = None
        for k, fragments in enumerate(frames):
            size = frame_size(fragments[0]) if fragments else None
            if size is not None and size[0] * size[1] * max(1, size[2]) > rows * cols * samples:
                raise ScanReadError(
                    path, f"compressed frame {k + 1} declares {size[1]} x {size[0]} pixels "
                    f"({size[2]} components), the header {cols} x {rows} ({samples})")
            if k == 0 and fragments:
                declared = j2k_sample_format(fragments[0])
        return declared
    except ScanReadError:
        raise
    except Exception:  # noqa: BLE001 - a broken encapsulation is the decoder's to report
        return None


def _codestream_warnings(ds: Any, declared: tuple[bool, int] | None) -> list[ScanWarning]:
    """Where a JPEG 2000 stream's sample format (``declared``) contradicts the header.

    A signedness that differs is ``pixel_representation_mismatch``: a warning when the
    header says unsigned and the stream is signed (decoded by the header, negative values
    would wrap to large ones, speckled garbage; :func:`_signed_as_stream` reads them as
    the stream says), a note the other way round (pydicom's sign correction reads the
    values right). A precision other than BitsStored (``bits_stored_mismatch``, info)
    breaks the DICOM rule that they agree and misleads viewers that window by BitsStored.
    """
    if declared is None:
        return []
    signed, bits = declared
    out = []
    rep = _as_int(ds.get("PixelRepresentation"), None)
    if rep in (0, 1) and signed != bool(rep):
        kinds = ("unsigned", "signed")
        wraps = signed and rep == 0
        out.append(ScanWarning(
            "pixel_representation_mismatch",
            f"the header says {kinds[rep]} pixels (PixelRepresentation {rep}), the JPEG 2000 "
            f"stream holds {kinds[signed]} {bits}-bit values"
            + (": read as signed, as the stream says" if wraps else ""),
            "warn" if wraps else "info"))
    stored = _as_int(ds.get("BitsStored"), None)
    if stored and stored != bits:
        out.append(ScanWarning(
            "bits_stored_mismatch",
            f"the header says {stored} bits stored, the JPEG 2000 stream has {bits}", "info"))
    return out


def _signed_as_stream(arr: np.ndarray, ds: Any, declared: tuple[bool, int] | None
                      ) -> np.ndarray:
    """Signed JPEG 2000 samples decoded as unsigned (the header's claim), read as signed.

    The decoder returns the stream's signed values and pydicom stores them in the header's
    unsigned type, so a negative value v becomes v + 2**n: viewing the same bytes as the
    signed type of that size gives v back.
    """
    if (declared is None or not declared[0] or _as_int(ds.get("PixelRepresentation"), None)
            != 0 or arr.dtype.kind != "u" or _as_int(ds.get("SamplesPerPixel"), 1) != 1):
        return arr  # colour is left as decoded
    return arr.view(np.dtype(f"{arr.dtype.byteorder}i{arr.dtype.itemsize}"))


#: Uncompressed little-endian transfer syntaxes (Implicit and Explicit VR Little Endian).
_NATIVE_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _native_values(ds: Any) -> tuple | None:
    """The attributes :func:`_native_pixels` needs (None: one is unreadable)."""
    try:
        get = ds.get
        frames = get("NumberOfFrames", 1)
        return (get("SamplesPerPixel"), get("BitsAllocated"), get("BitsStored"),
                get("PixelRepresentation"), get("Rows"), get("Columns"),
                1 if frames in (None, "") else int(frames),
                str(get("PhotometricInterpretation", "")).strip(),  # as strict as pydicom
                ds["PixelData"].value)
    except Exception:  # noqa: BLE001 - pydicom decodes (or reports) such files
        return None


def _native_pixels(ds: Any) -> np.ndarray | None:
    """The pixel array of plain uncompressed grayscale data, or None (use pydicom).

    For little-endian, 8/16/32-bit, one-sample monochrome pixel data of exactly the
    declared length (one padding byte allowed) the array is read directly from the bytes,
    with pydicom's own handling of unused high bits (shifted out, sign-extended for signed
    data): the same array as ``ds.pixel_array`` (tested), without its per-file overhead
    (about a quarter of reading a 256 x 256 slice). Everything else returns None.
    """
    try:
        if str(ds.file_meta.TransferSyntaxUID) not in _NATIVE_LE:
            return None
        with _quiet():  # invalid values (IS '1A') read as pydicom would, without warnings
            values = _native_values(ds)
        if values is None:
            return None
        samples, alloc, stored, rep, rows, cols, frames, photometric, buf = values
        ints = (samples, alloc, stored, rep, rows, cols)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or (
                samples != 1 or alloc not in (8, 16, 32) or not 1 <= stored <= alloc
                or rep not in (0, 1) or rows <= 0 or cols <= 0 or frames < 1
                or photometric not in ("MONOCHROME1", "MONOCHROME2")):
            return None
        n_bytes = rows * cols * frames * (alloc // 8)
        if not isinstance(buf, (bytes, bytearray)) or len(buf) not in (n_bytes, n_bytes + 1):
            return None
    except Exception:  # noqa: BLE001 - anything unusual is pydicom's to decode or report
        return None
    dtype = np.dtype(f"<{'i' if rep else 'u'}{alloc // 8}")
    arr = np.frombuffer(buf, dtype=dtype, count=rows * cols * frames).copy()
    if stored < alloc:  # as pydicom: shift out the unused bits (arithmetic for signed)
        np.left_shift(arr, alloc - stored, out=arr)
        np.right_shift(arr, alloc - stored, out=arr)
    return arr.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


def _decode(ds: Any, path: str) -> tuple[np.ndarray, tuple[bool, int] | None]:
    """The pixels, and the sample format a JPEG 2000 stream declares (None otherwise).

    A signed JPEG 2000 stream under a header that says unsigned is read as signed
    (:func:`_signed_as_stream`).
    """
    _check_codec(ds, path)
    declared = _check_frame_sizes(ds, path)
    native = _native_pixels(ds)
    if native is not None:
        return native, None
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
    return _signed_as_stream(np.asarray(arr), ds, declared), declared


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


def _check_header(h: DicomHeader, pixels_first: bool = False) -> None:
    """Raise for a file that cannot be a slice of an image (one line naming it).

    Args:
        h: The file's header.
        pixels_first: Test for pixel data before plausibility (a full read of a file cut
            short: "no pixel data" says more than "transfer syntax unknown").
    """
    if h.is_dicomdir:
        raise ScanReadError(h.path, "DICOMDIR index file: no pixel data")
    if not h.has_pixels and (pixels_first or h.plausible):
        sop = h.sop_class_name
        raise ScanReadError(h.path, f"no pixel data (SOP class: {sop})" if sop
                            else "no pixel data")
    if not h.plausible:
        raise ScanReadError(h.path, "file meta missing and transfer syntax unknown")


@dataclass
class _Slice:
    """One file of a scan, read and decoded: its header, pixels and pixel transforms."""

    header: DicomHeader
    pixels: np.ndarray  # (frames, rows, cols[, 3])
    rescale: list[tuple[float, float]]
    colour: bool
    inverted: bool
    warnings: list[ScanWarning]


def _read_slice(path: str, first: DicomHeader) -> _Slice:
    """Parse ``path`` once (header and pixel data), check it against ``first``, decode it.

    The pixel bytes are dropped from the kept header once decoded, so that a series
    holds each slice's pixels once.
    """
    warns: list[ScanWarning] = []
    ds, headless = _read_dataset(path)
    h = header_of(path, ds, any(k in ds for k in _PIXEL_KEYWORDS), headless)
    _check_header(h, pixels_first=True)
    if (h.rows, h.cols, h.samples) != (first.rows, first.cols, first.samples):
        raise ScanReadError(first.path, "slices differ in size (Rows/Columns): not one volume")
    _prepare_dataset(ds, path, warns)
    arr, declared = _decode(ds, path)
    if path == first.path:  # one warning per series
        warns += _codestream_warnings(ds, declared)
    frames = h.frames if h.frames_valid else 1
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    colour = samples > 1 or photometric == "PALETTE COLOR"
    expect = (h.rows, h.cols) + ((3,) if colour else ())
    if frames > 1:
        expect = (frames, *expect)
    if tuple(arr.shape) != expect:
        if arr.size == int(np.prod(expect)):
            arr = arr.reshape(expect)
        else:
            raise ScanReadError(
                path, f"pixel data shape {arr.shape} does not match the header {expect}"
            )
    inverted = photometric == "MONOCHROME1"
    if inverted:
        arr = _invert_monochrome1(arr, ds)
    if colour:
        arr = _to_rgb8(arr)
    if frames == 1:
        arr = arr[None]
    rescale = [] if colour else _rescale_pairs(ds, frames)
    _drop_pixel_data(ds)
    return _Slice(h, arr, rescale, colour, inverted, warns)


def _drop_pixel_data(ds: Any) -> None:
    """Free a decoded dataset's pixel bytes and pydicom's cached array (header kept)."""
    for kw in _PIXEL_KEYWORDS:
        if kw in ds:
            del ds[kw]
    with contextlib.suppress(Exception):
        ds._pixel_array = None
        ds._pixel_id = {}


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

    # The first file's header alone (no pixel bytes read) sizes the whole scan: a scan
    # over the per-scan limit is refused before any file's pixel data is read.
    first = read_header(paths[0])
    _check_header(first)
    if first.rows <= 0 or first.cols <= 0:
        raise ScanReadError(first.path, f"invalid image size {first.rows}x{first.cols}")
    shape, dtype = _declared(first, len(paths))
    try:
        limits.check_declared_size(shape, dtype, max_bytes)
    except ValueError as exc:
        raise ScanReadError(first.path, str(exc)) from None
    # Then each file is parsed once (header and pixel data) and decoded; the slices are
    # put in order afterwards.
    slices = [_read_slice(path, first) for path in paths]
    if len(slices) > 1:
        headers, sort_warns, med, pos = order_slices([sl.header for sl in slices])
        warns += sort_warns
        by_header = {id(sl.header): sl for sl in slices}
        slices = [by_header[id(h)] for h in headers]
    else:
        headers, med, pos = [slices[0].header], None, None
    h0, ds0 = headers[0], slices[0].header.ds
    for sl in slices:
        warns += sl.warnings
    if any(sl.inverted for sl in slices):
        warns.append(
            ScanWarning(
                "monochrome1_inverted",
                "MONOCHROME1 (white = low values) inverted so that high values are bright",
                "info",
            )
        )
    pairs = [pair for sl in slices if not sl.colour for pair in sl.rescale]
    data = (np.concatenate([sl.pixels for sl in slices], axis=0) if len(slices) > 1
            else slices[0].pixels)
    del slices
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

