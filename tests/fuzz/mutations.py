"""Malformed-input generators and the per-case harness for the reader fuzz tests.

One generator serves the CI tests (driven by hypothesis, see :class:`HypothesisDraw`) and
the long run in ``benchmarks/fuzz_long.py`` (driven by ``random.Random``, see
:class:`RandomDraw`): :func:`make_case` writes one malformed input (a file, or a small folder
structure) and :func:`run_case` pushes it through ``discover`` + ``load_scan`` (+
``open_scans``) under a per-case time limit and classifies the outcome.

An outcome is acceptable when it is a :class:`~scanqc.io.scan.Scan`, a
:class:`~scanqc.io.scan.ScanReadError` whose ``str`` is one line naming the file, or a
discovery entry with status ``error``/``skipped`` and a one-line ``error``. Anything else
(another exception, a hang, a multi-line or anonymous error) is a failure.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import resource
import shutil
import signal
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Per-case wall-clock limit in seconds.
CASE_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- draws


class Draw:
    """The few random choices a mutation needs (hypothesis or ``random.Random``)."""

    def integer(self, lo: int, hi: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.integer(0, len(seq) - 1)]

    def binary(self, n: int) -> bytes:
        return bytes(self.integer(0, 255) for _ in range(n))


class RandomDraw(Draw):
    """Draws from a seeded ``random.Random`` (the long run)."""

    def __init__(self, rng) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def binary(self, n: int) -> bytes:
        return self.rng.randbytes(n)


class HypothesisDraw(Draw):
    """Draws through hypothesis ``st.data()`` (CI; shrinkable, derandomized)."""

    def __init__(self, data) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        from hypothesis import strategies as st

        return self.data.draw(st.integers(lo, hi))

    def binary(self, n: int) -> bytes:
        from hypothesis import strategies as st

        return self.data.draw(st.binary(min_size=n, max_size=n))


# --------------------------------------------------------------------------- seeds


def _nifti_bytes(shape, dtype, *, version: int = 1, gz: bool = False, fill=None) -> bytes:
    import nibabel as nib

    arr = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    arr = (arr % 97).astype(dtype) if fill is None else np.full(shape, fill, dtype)
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(arr, np.diag([0.9, 0.9, 2.0, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def _png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def dicom_dataset(
    *, rows: int = 6, cols: int = 5, frames: int = 1, bits: int = 16, modality: str = "CT",
    series_uid: str = "1.2.826.0.1.3680043.8.498.1", instance: int = 1, z: float = 0.0,
):
    """A small, valid single- or multi-frame DICOM dataset (no file meta yet)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.2.{instance}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if bits == 16 else 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if frames > 1:
        ds.NumberOfFrames = frames
    dtype = np.int16 if bits == 16 else np.uint8
    ds.PixelData = (np.arange(rows * cols * frames) % 50).astype(dtype).tobytes()
    return ds


def dicom_bytes(ds, syntax: str = "explicit") -> bytes:
    """Serialise ``ds`` with a transfer syntax: explicit, implicit, big, deflate, rle, raw."""
    import pydicom
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        RLELossless,
    )

    buf = io.BytesIO()
    if syntax == "raw":  # no preamble, no file meta (ACR-NEMA style)
        ds = ds.copy()
        del ds.file_meta
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
        return buf.getvalue()
    if syntax == "rle":
        ds = ds.copy()
        ds.compress(RLELossless)
    else:
        uid = {
            "explicit": ExplicitVRLittleEndian,
            "implicit": ImplicitVRLittleEndian,
            "big": ExplicitVRBigEndian,
            "deflate": DeflatedExplicitVRLittleEndian,
        }[syntax]
        ds.file_meta.TransferSyntaxUID = uid
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


_SEEDS: dict[str, tuple[str, bytes]] | None = None


def synthetic_seeds() -> dict[str, tuple[str, bytes]]:
    """Small valid inputs of every format: name -> (file name, bytes). Built once."""
    global _SEEDS
    if _SEEDS is None:
        gray = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
        seeds = {
            "nii_int16": ("v.nii", _nifti_bytes((4, 5, 3), np.int16)),
            "nii_gz_f32": ("v.nii.gz", _nifti_bytes((4, 5, 3), np.float32, gz=True)),
            "nii2": ("v2.nii", _nifti_bytes((3, 4, 2), np.uint8, version=2)),
            "nii_4d": ("f.nii.gz", _nifti_bytes((3, 3, 2, 2), np.int16, gz=True)),
            "png8": ("x.png", _png_bytes(gray)),
            "png16": ("x16.png", _png_bytes(gray.astype(np.uint16) * 200)),
            "pgm": ("x.pgm", _png_bytes(gray, "PPM")),
            "jpeg": ("x.jpg", _png_bytes(gray, "JPEG")),
            "tiff": ("x.tif", _png_bytes(gray, "TIFF")),
            "dcm_explicit": ("a.dcm", dicom_bytes(dicom_dataset())),
            "dcm_implicit": ("b.dcm", dicom_bytes(dicom_dataset(), "implicit")),
            "dcm_big": ("c.dcm", dicom_bytes(dicom_dataset(), "big")),
            "dcm_deflate": ("d.dcm", dicom_bytes(dicom_dataset(), "deflate")),
            "dcm_rle": ("e.dcm", dicom_bytes(dicom_dataset(), "rle")),
            "dcm_raw": ("IM0001", dicom_bytes(dicom_dataset(), "raw")),
            "dcm_multiframe": ("mf.dcm", dicom_bytes(dicom_dataset(frames=3, bits=8))),
        }
        _SEEDS = seeds
    return _SEEDS


#: A handful of small real files from ../shared/data (relative paths), several formats
#: and DICOM transfer syntaxes.
REAL_SEED_PATHS = (
    "pydicom_3.0.2_testfiles/CT_small.dcm",  # explicit VR LE
    "pydicom_3.0.2_testfiles/MR_small.dcm",
    "pydicom_3.0.2_testfiles/JPEG2000.dcm",  # JPEG 2000
    "pydicom_3.0.2_testfiles/SC_jpeg_no_color_transform.dcm",  # JPEG baseline, colour
    "pydicom_3.0.2_testfiles/rtdose.dcm",  # multi-frame dose grid
    "pydicom_3.0.2_testfiles/zipMR.gz",  # gzipped DICOM
    "dicomsamples_jl/MR_Implicit_Little.dcm",  # implicit VR
    "dicomsamples_jl/US_Explicit_Big_RGB.dcm",  # explicit VR big endian, RGB
    "niivue-demo-images/fmri_pitch.nii.gz",
    "mini_mias_subset/mdb001.pgm",
    "torchxrayvision_tests/16747_3_1.jpg",
)


def real_seeds(data_root: Path | None, max_bytes: int = 1_500_000) -> dict[str, tuple[str, bytes]]:
    """The real files of :data:`REAL_SEED_PATHS` that exist under ``data_root``."""
    out: dict[str, tuple[str, bytes]] = {}
    if data_root is None:
        return out
    for rel in REAL_SEED_PATHS:
        p = Path(data_root) / rel
        if p.is_file() and p.stat().st_size <= max_bytes:
            out["real:" + rel] = (p.name, p.read_bytes())
    # a PNG from the radiograph set (any one)
    xr = Path(data_root) / "region_xr_v1"
    if xr.is_dir():
        pngs = sorted(xr.rglob("*.png"))[:1]
        for p in pngs:
            out["real:" + str(p.relative_to(data_root))] = (p.name, p.read_bytes())
    return out


# --------------------------------------------------------------------------- mutations


def _suffix(name: str) -> str:
    low = name.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else os.path.splitext(low)[1]


def _with_suffix(name: str, suffix: str) -> str:
    stem = name[: -len(_suffix(name))] if _suffix(name) else name
    return stem + suffix


def _is_gz(b: bytes) -> bool:
    return b[:2] == b"\x1f\x8b"


def _ungz(b: bytes) -> bytes:
    try:
        return gzip.decompress(b)
    except Exception:  # noqa: BLE001
        return b


def m_truncate(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    cut = d.integer(0, max(len(b) - 1, 0))
    return name, b[:cut], "truncate"


def m_flip_header(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    raw = bytearray(_ungz(b))
    if not raw:
        return name, b, "flip_header"
    for _ in range(d.integer(1, 6)):
        i = d.integer(0, min(len(raw), 600) - 1)
        raw[i] ^= 1 << d.integer(0, 7) if d.integer(0, 1) else d.integer(1, 255)
    out = bytes(raw)
    return name, gzip.compress(out, mtime=0) if _is_gz(b) else out, "flip_header"


def m_flip_body(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    raw = bytearray(b)  # compressed bytes too: corrupt gzip streams
    if not raw:
        return name, b, "flip_body"
    for _ in range(d.integer(1, 20)):
        i = d.integer(len(raw) // 2, len(raw) - 1)
        raw[i] = d.integer(0, 255)
    return name, bytes(raw), "flip_body"


def m_overwrite(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    raw = bytearray(b)
    n = d.integer(1, 16)
    at = d.integer(0, max(len(raw) - 1, 0))
    raw[at:at + n] = d.binary(n)
    return name, bytes(raw), "overwrite"


_EXTS = (".nii", ".nii.gz", ".png", ".jpg", ".pgm", ".tif", ".dcm", "", ".txt", ".bmp")


def m_wrong_ext(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    new = d.choice([e for e in _EXTS if e != _suffix(name)])
    return _with_suffix(name, new) or "noext", b, "wrong_ext"


def m_random_bytes(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    return name, d.binary(d.integer(1, 400)), "random_bytes"


def m_gzip_wrap(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    """Gzip a (possibly truncated) file under its own or a .gz name."""
    raw = b[: d.integer(1, len(b))] if b else b
    z = gzip.compress(raw, mtime=0)
    if d.integer(0, 1):
        z = z[: d.integer(1, len(z))]
    return d.choice([name, name + ".gz"]), z, "gzip_wrap"


_NIFTI_DIM_VALUES = (0, -1, -32768, 1, 2, 32767, 65535, 8, 9, 1000)
_NIFTI_FLOAT_VALUES = (0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-30, 1e30)


def m_nifti_header(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    """Impossible values in a NIfTI-1/2 header (dims, pixdim, datatype, offsets, scaling)."""
    gz = _is_gz(b)
    raw = bytearray(_ungz(b))
    if len(raw) < 352:
        return name, b, "nifti_header:short"
    nifti2 = struct.unpack_from("<i", raw, 0)[0] == 540
    what = d.choice(("dim", "dim0", "pixdim", "datatype", "vox_offset", "scl", "ext", "magic"))
    if nifti2:
        dim_fmt, dim_off, pix_fmt, pix_off = "<q", 16, "<d", 104
        vox_fmt, vox_off, dt_off, scl_off, ext_off = "<q", 168, 12, 176, 540
    else:
        dim_fmt, dim_off, pix_fmt, pix_off = "<h", 40, "<f", 76
        vox_fmt, vox_off, dt_off, scl_off, ext_off = "<f", 108, 70, 112, 348
    dsz = struct.calcsize(dim_fmt)
    psz = struct.calcsize(pix_fmt)
    if what == "dim":
        i = d.integer(1, 7)
        v = d.choice(_NIFTI_DIM_VALUES)
        if not nifti2:
            v = max(min(v, 32767), -32768)
        struct.pack_into(dim_fmt, raw, dim_off + i * dsz, v)
        if d.integer(0, 1):  # absurd but "valid" 5000 x 5000 x 1000
            for k, s in enumerate((5000, 5000, 1000)):
                struct.pack_into(dim_fmt, raw, dim_off + (k + 1) * dsz, s)
    elif what == "dim0":
        struct.pack_into(dim_fmt, raw, dim_off, d.choice((0, -1, 8, 9, 100, 1, 2)))
    elif what == "pixdim":
        for _ in range(d.integer(1, 3)):
            struct.pack_into(pix_fmt, raw, pix_off + d.integer(0, 7) * psz,
                             d.choice(_NIFTI_FLOAT_VALUES))
    elif what == "datatype":
        struct.pack_into("<h", raw, dt_off, d.choice((0, 1, 3, 32, 128, 255, 1536, 2304, 9999)))
        if d.integer(0, 1):
            struct.pack_into("<h", raw, dt_off + 2, d.choice((0, 7, 64, 256, -8)))
    elif what == "vox_offset":
        v = d.choice((0, 1, 100, 351, 353, 10**6, 2**31 - 1, -352, 4e9))
        if nifti2 or isinstance(v, int):
            struct.pack_into(vox_fmt, raw, vox_off, int(v) if nifti2 else float(v))
        else:
            struct.pack_into(vox_fmt, raw, vox_off, float(v))
        if not nifti2 and d.integer(0, 1):
            struct.pack_into("<f", raw, vox_off, d.choice((float("nan"), float("inf"))))
    elif what == "scl":
        struct.pack_into(pix_fmt, raw, scl_off, d.choice(_NIFTI_FLOAT_VALUES))
        struct.pack_into(pix_fmt, raw, scl_off + psz, d.choice(_NIFTI_FLOAT_VALUES))
    elif what == "ext":
        # extension flag set, with an impossible esize (0, negative, huge, unaligned)
        raw[ext_off:ext_off + 4] = b"\x01\x00\x00\x00"
        esize = d.choice((0, 8, -16, 2**31 - 16, 24, 16 * 1000, 13))
        tail = struct.pack("<ii", esize, d.choice((0, 4, 6, 40)))
        raw = raw[: ext_off + 4] + tail + raw[ext_off + 4:]
    else:
        raw[344:348] = d.choice((b"n+2\x00", b"ni1\x00", b"\x00\x00\x00\x00", b"n+1\x01"))
    out = bytes(raw)
    return name, gzip.compress(out, mtime=0) if gz else out, f"nifti_header:{what}"


_DICOM_TAGS = ("Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit",
               "SamplesPerPixel", "PixelRepresentation", "PlanarConfiguration")
_DICOM_INT_VALUES = (0, -1, 1, 3, 7, 12, 33, 64, 65535, 2**31 - 1, -(2**31))


def m_dicom_tags(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    """Impossible DICOM values: zero/negative/huge sizes, wrong VR, missing transfer syntax."""
    import pydicom

    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(io.BytesIO(_ungz(b)), force=True)
            ds.PixelData  # noqa: B018 - fail early when the seed has no pixels
    except Exception:  # noqa: BLE001 - not a DICOM seed: fall back to a synthetic one
        ds = dicom_dataset()
    what = d.choice(("int", "int", "huge", "vr", "no_ts", "bad_ts", "pixels", "photometric",
                     "geometry"))
    try:
        with _quiet_pydicom():
            return _dicom_tags(d, name, b, ds, what)
    except Exception:  # noqa: BLE001 - pydicom refuses the value: keep the seed bytes
        return name, b, f"dicom:{what}:unwritable"


def _dicom_tags(d: Draw, name: str, b: bytes, ds, what: str) -> tuple[str, bytes, str]:
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    tag = d.choice(_DICOM_TAGS)
    syntax = d.choice(("explicit", "explicit", "implicit", "big"))
    if what == "int":
        v = d.choice(_DICOM_INT_VALUES)
        vr = "SL" if v < 0 else ("UL" if v > 65535 else "US")
        ds[tag_for_keyword(tag)] = DataElement(tag_for_keyword(tag), vr if tag != "NumberOfFrames"
                                               else "IS", v if tag != "NumberOfFrames" else str(v))
    elif what == "huge":
        ds.Rows = ds.Columns = 65535
        nf = d.choice(("2147483647", "100000", "99999999999", "-5", "1e9", "abc"))
        ds[0x00280008] = DataElement(0x00280008, "LO" if nf == "abc" else "IS", nf)
    elif what == "vr":
        ds[tag_for_keyword(tag)] = DataElement(tag_for_keyword(tag), d.choice(("DS", "LO", "UN")),
                                               d.choice(("12.5", "abc", "", "1\\2")))
        syntax = "explicit"
    elif what in ("no_ts", "bad_ts"):
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            ds = dicom_dataset()
            meta = ds.file_meta
        raw = dicom_bytes(ds, "explicit")
        if what == "no_ts":  # drop (0002,0010) from the file meta by patching its tag
            i = raw.find(b"\x02\x00\x10\x00UI")
            if i > 0:
                raw = raw[:i] + b"\x02\x00\x99\x00" + raw[i + 4:]
        else:
            uid = ExplicitUIDs[d.integer(0, len(ExplicitUIDs) - 1)].encode()
            i = raw.find(b"\x02\x00\x10\x00UI")
            if i > 0:
                ln = struct.unpack_from("<H", raw, i + 6)[0]
                val = uid.ljust(ln, b"\x00")[:ln]
                raw = raw[: i + 8] + val + raw[i + 8 + ln:]
        return name, raw, f"dicom:{what}"
    elif what == "pixels":
        px = bytes(ds.PixelData) if "PixelData" in ds else b""
        cut = d.integer(0, len(px))
        ds.PixelData = px[:cut] + (b"\x00" if d.integer(0, 1) else b"")
    elif what == "photometric":
        ds.PhotometricInterpretation = d.choice(("RGB", "PALETTE COLOR", "YBR_FULL", "XYZ", ""))
        if d.integer(0, 1):
            ds.SamplesPerPixel = d.choice((3, 4, 0))
    else:
        setattr(ds, d.choice(("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
                              "RescaleSlope", "SliceThickness")),
                d.choice(("nan", "inf", "0", "-1", "1e308", "abc")))
    try:
        with _quiet_pydicom():
            if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
                return name, dicom_bytes(ds, "raw"), f"dicom:{what}"
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                buf = io.BytesIO()
                pydicom.dcmwrite(buf, ds)
                return name, buf.getvalue(), f"dicom:{what}"
            return name, dicom_bytes(ds, syntax), f"dicom:{what}"
    except Exception:  # noqa: BLE001 - pydicom refuses to write it: write it raw
        return name, b, f"dicom:{what}:unwritable"


#: Transfer syntax UIDs that do not match uncompressed pixel data (or do not exist).
ExplicitUIDs = (
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
    "1.2.3.4.5", "", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.1.99",
)


class _quiet_pydicom:
    def __enter__(self):
        import warnings

        from pydicom import config

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        self._old = config.settings.writing_validation_mode
        config.settings.writing_validation_mode = config.IGNORE
        self._oldr = config.settings.reading_validation_mode
        config.settings.reading_validation_mode = config.IGNORE
        return self

    def __exit__(self, *exc):
        from pydicom import config

        config.settings.writing_validation_mode = self._old
        config.settings.reading_validation_mode = self._oldr
        self._w.__exit__(*exc)
        return False


def gzip_zero_members(n_bytes: int, chunk: int = 64 << 20) -> bytes:
    """A multi-member gzip stream of ``n_bytes`` zeros, built from one compressed chunk."""
    member = gzip.compress(b"\0" * min(chunk, n_bytes), compresslevel=1, mtime=0)
    return member * max(1, n_bytes // chunk)


def m_gzip_bomb(d: Draw, name: str, b: bytes) -> tuple[str, bytes, str]:
    """A .nii.gz or gzipped DICOM whose stream goes on with many zeros (up to 1 GiB)."""
    size = d.choice((16 << 20, 256 << 20, 1 << 30))
    if d.integer(0, 1):
        raw = _nifti_bytes((4, 5, 3), np.int16)
        if d.integer(0, 1):  # and the header declares a volume bigger than the limit
            raw = bytearray(raw)
            for k, s in enumerate((2048, 2048, 512)):
                struct.pack_into("<h", raw, 40 + (k + 1) * 2, s)
            raw = bytes(raw)
        return "bomb.nii.gz", gzip.compress(raw, mtime=0) + gzip_zero_members(size, 16 << 20), \
            "gzip_bomb:nifti"
    raw = dicom_bytes(dicom_dataset())
    return "bomb.dcm", gzip.compress(raw, mtime=0) + gzip_zero_members(size, 16 << 20), \
        "gzip_bomb:dicom"


MUTATIONS: dict[str, Callable[[Draw, str, bytes], tuple[str, bytes, str]]] = {
    "truncate": m_truncate,
    "flip_header": m_flip_header,
    "flip_body": m_flip_body,
    "overwrite": m_overwrite,
    "wrong_ext": m_wrong_ext,
    "random_bytes": m_random_bytes,
    "gzip_wrap": m_gzip_wrap,
    "nifti_header": m_nifti_header,
    "dicom_tags": m_dicom_tags,
}


# --------------------------------------------------------------------------- structures


def s_empty(d: Draw, folder: Path) -> tuple[Path, str]:
    p = folder / d.choice(("e.nii", "e.nii.gz", "e.png", "e.dcm", "IM0001", "e.pgm"))
    p.write_bytes(b"")
    return p, "empty_file"


def s_dir_named_like_file(d: Draw, folder: Path) -> tuple[Path, str]:
    p = folder / d.choice(("x.nii.gz", "x.dcm", "x.png", "x.nii"))
    p.mkdir()
    if d.integer(0, 1):
        (p / "inner.txt").write_text("not a scan")
    return (p if d.integer(0, 1) else folder), "dir_named_like_file"


def s_symlink_loop(d: Draw, folder: Path) -> tuple[Path, str]:
    sub = folder / "sub"
    sub.mkdir()
    (sub / "up").symlink_to(folder, target_is_directory=True)  # directory loop
    (folder / "a.dcm").symlink_to(folder / "b.dcm")  # file loop
    (folder / "b.dcm").symlink_to(folder / "a.dcm")
    (folder / "dangling.nii").symlink_to(folder / "nowhere.nii")
    (folder / "ok.png").write_bytes(synthetic_seeds()["png8"][1])
    target = d.choice((folder, folder / "a.dcm", folder / "dangling.nii", sub / "up"))
    return target, "symlink_loop"


def s_fifo(d: Draw, folder: Path) -> tuple[Path, str]:
    p = folder / d.choice(("pipe.dcm", "pipe.nii", "pipe"))
    os.mkfifo(p)
    return (p if d.integer(0, 1) else folder), "fifo"


def s_unreadable(d: Draw, folder: Path) -> tuple[Path, str]:
    name, data = d.choice(list(synthetic_seeds().values()))
    p = folder / name
    p.write_bytes(data)
    os.chmod(p, 0)
    return (p if d.integer(0, 1) else folder), "unreadable"


def s_series_mixed(d: Draw, folder: Path) -> tuple[Path, str]:
    """A 3-slice DICOM series where one slice is malformed."""
    bad = d.integer(0, 2)
    for i in range(3):
        raw = dicom_bytes(dicom_dataset(instance=i + 1, z=2.0 * i))
        if i == bad:
            _, raw, _ = d.choice((m_truncate, m_flip_body, m_dicom_tags))(d, "s.dcm", raw)
        (folder / f"s{i}.dcm").write_bytes(raw)
    return folder, "series_one_bad_slice"


STRUCTURES: dict[str, Callable[[Draw, Path], tuple[Path, str]]] = {
    "empty_file": s_empty,
    "dir_named_like_file": s_dir_named_like_file,
    "symlink_loop": s_symlink_loop,
    "fifo": s_fifo,
    "unreadable": s_unreadable,
    "series_one_bad_slice": s_series_mixed,
}


@dataclass
class Case:
    """One malformed input written under ``folder``; ``target`` is what is scanned."""

    target: Path
    kind: str
    seed: str = ""


def make_case(d: Draw, folder: Path, seeds: dict[str, tuple[str, bytes]],
              *, bombs: bool = True) -> Case:
    """Write one malformed input under ``folder`` (which must exist and be empty)."""
    roll = d.integer(0, 99)
    if roll < 8:
        key = d.choice(sorted(STRUCTURES))
        target, kind = STRUCTURES[key](d, folder)
        return Case(target, kind)
    if bombs and roll < 10:
        name, data, kind = m_gzip_bomb(d, "", b"")
        p = folder / name
        p.write_bytes(data)
        return Case(p, kind)
    seed_key = d.choice(sorted(seeds))
    name, data = seeds[seed_key]
    mut = d.choice(sorted(MUTATIONS))
    name, data, kind = MUTATIONS[mut](d, name, data)
    if d.integer(0, 9) == 0:  # sometimes a second mutation on top
        mut2 = d.choice(("truncate", "flip_header", "wrong_ext", "overwrite"))
        name, data, k2 = MUTATIONS[mut2](d, name, data)
        kind = f"{kind}+{k2}"
    p = folder / (name or "noname")
    p.write_bytes(data)
    return Case(p if d.integer(0, 3) else folder, kind, seed_key)


# --------------------------------------------------------------------------- harness


class CaseTimeout(BaseException):
    """Raised by the watchdog alarm when one case runs past its time limit."""


@dataclass
class Outcome:
    """What happened to one case."""

    kind: str
    results: list[str] = field(default_factory=list)  # "scan", "error:<cause>", ...
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


def cause_key(text: str) -> str:
    """A short key for counting causes: the cause without paths, numbers and details."""
    t = re.sub(r"/\S+", "<path>", text)
    t = t[len("<path>"):].lstrip(": ") if t.startswith("<path>") else t
    t = re.sub(r"\(.*", "", t)
    t = re.sub(r"[-+]?\d[\d.,eE+x-]*", "N", t)
    return " ".join(t.split())[:70]


def _one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "\r" not in text


def _alarm(signum, frame):  # noqa: ARG001
    raise CaseTimeout()


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: Case, *, timeout: float = CASE_TIMEOUT_S, max_rss_growth_mb: float = 768,
             use_open_scans: bool = True, pipeline: bool = False) -> Outcome:
    """Push one case through discover + load_scan (+ open_scans); classify the outcome.

    Runs under a ``SIGALRM`` watchdog of ``timeout`` seconds (main thread only); the
    previous alarm handler and timer (e.g. pytest-timeout's) are restored afterwards.
    With ``pipeline``, every loaded scan also goes through the QC checks, the quality
    measures and the model input slices (what a worker of ``scanqc score`` does): a
    ``check_failed`` warning, an exception or non-finite slices are failures.
    """
    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan, open_scans
    from scanqc.io.scan import Scan, ScanReadError

    out = Outcome(case.kind)
    target = str(case.target)
    rss0 = rss_mb()
    old_handler = signal.signal(signal.SIGALRM, _alarm)
    old_timer = signal.setitimer(signal.ITIMER_REAL, timeout)
    t0 = time.perf_counter()

    def check_error(err: BaseException, paths: Sequence[str]) -> None:
        text = str(err)
        if not _one_line(text):
            out.failures.append(f"multiline error: {text[:200]!r}")
        elif not any(text.startswith(str(p)) for p in paths):
            out.failures.append(f"error does not name the file: {text[:200]!r}")
        out.results.append("error:" + cause_key(text))

    def check_load(arg, paths: Sequence[str]) -> None:
        try:
            scan = load_scan(arg)
        except ScanReadError as err:
            check_error(err, paths)
            return
        if not isinstance(scan, Scan) or not isinstance(scan.data, np.ndarray):
            out.failures.append(f"load_scan returned {type(scan).__name__}")
            return
        if scan.data.size == 0 or scan.data.ndim not in (2, 3):
            out.failures.append(f"scan with odd data shape {scan.data.shape}")
        out.results.append("scan" + ("+warn" if scan.warnings else ""))
        if pipeline:
            check_pipeline(scan)

    def check_pipeline(scan) -> None:
        from scanqc.batch.pipeline import checks_and_quality
        from scanqc.models.preprocess import scan_to_slices

        try:
            warns, _metrics = checks_and_quality(scan)
            slices, _ = scan_to_slices(scan, 64, 8)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            out.failures.append(f"pipeline raised {type(exc).__name__}: {exc}"[:300])
            return
        failed = [w.message for w in warns if w.code == "check_failed"]
        if failed:
            out.failures.append(f"check failed: {failed[0]}"[:300])
        if not np.isfinite(slices).all():
            out.failures.append("non-finite model input slices")

    try:
        try:
            entries = discover([target])
            for e in entries:
                if e.status not in ("ok", "skipped", "error"):
                    out.failures.append(f"bad status {e.status!r}")
                if e.status != "ok":
                    if not _one_line(e.error):
                        out.failures.append(f"{e.status} entry without a one-line error: "
                                            f"{e.error[:200]!r}")
                    out.results.append(f"discover_{e.status}:{cause_key(e.error)}")
                    continue
                check_load(e, e.paths)
            if os.path.isfile(target) or os.path.islink(target):
                check_load(target, [target])
            if use_open_scans and os.path.isdir(target):
                for entry, res in open_scans([target]):
                    if isinstance(res, ScanReadError):
                        check_error(res, [*entry.paths, entry.path])
                    elif res is not None and not isinstance(res, Scan):
                        out.failures.append(f"open_scans yielded {type(res).__name__}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except CaseTimeout:
        out.failures.append(f"hang: over {timeout:g} s")
    except MemoryError:
        out.failures.append("crash: MemoryError")
    except Exception as exc:  # noqa: BLE001 - the point: anything else is a crash
        out.failures.append(f"crash: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        out.seconds = time.perf_counter() - t0
        if old_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(old_timer[0] - out.seconds, 0.001),
                             old_timer[1])
    growth = rss_mb() - rss0
    if growth > max_rss_growth_mb:
        out.failures.append(f"memory: RSS grew by {growth:.0f} MiB")
    return out


def clear_folder(folder: Path) -> None:
    """Empty ``folder`` (permissions restored first, symlinks not followed)."""
    for p in folder.iterdir():
        if p.is_symlink() or not p.is_dir():
            p.unlink()
        else:
            os.chmod(p, 0o700)
            shutil.rmtree(p, ignore_errors=True)
