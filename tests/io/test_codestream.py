"""Compressed frames: the size in the codestream is read and checked before decoding."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless
from test_dicom import DX_IMAGE, make_dataset, only, save  # tests/io is on sys.path

from scanqc.io import dicom
from scanqc.io.codestream import frame_size, j2k_sample_format
from scanqc.io.discover import discover
from scanqc.io.scan import ScanReadError


def _pixels(rows: int = 80, cols: int = 64, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.random((rows, cols)) * 200 + 20).astype(dtype)


def _compressed(uid: str, rows: int = 80, cols: int = 64):
    ds = make_dataset(_pixels(rows, cols), modality="DX", sop_class=DX_IMAGE)
    ds.compress(uid)
    return ds


def _first_fragment(ds) -> bytes:
    return next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))[0]


def _jpeg(rows: int, cols: int, app_bytes: int = 0) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(_pixels(rows, cols, np.uint8))
    extra = {"icc_profile": b"\0" * app_bytes} if app_bytes else {}
    img.save(buf, "JPEG", **extra)
    return buf.getvalue()


@pytest.mark.parametrize("uid", [JPEG2000Lossless, JPEGLSLossless])
def test_size_read_from_jpeg2000_and_jpeg_ls_codestreams(uid):
    ds = _compressed(uid, rows=80, cols=64)
    assert frame_size(_first_fragment(ds)) == (80, 64, 1)


def test_size_read_from_jpeg_after_other_segments():
    assert frame_size(_jpeg(33, 17)) == (33, 17, 1)
    # a large APP2 (ICC profile) segment before the frame header is skipped by its length
    assert frame_size(_jpeg(33, 17, app_bytes=20000)) == (33, 17, 1)


def test_unknown_or_cut_codestreams_give_none():
    j2k = _first_fragment(_compressed(JPEG2000Lossless))
    assert frame_size(b"") is None
    assert frame_size(b"\x00" * 64) is None
    assert frame_size(j2k[:20]) is None  # SIZ cut short
    assert frame_size(_jpeg(33, 17)[:30]) is None  # ends before the frame header


def _with_j2k_width(ds, width: int):
    frag = bytearray(_first_fragment(ds))
    start = frag.find(b"\xff\x4f\xff\x51")
    frag[start + 8:start + 12] = struct.pack(">I", width)  # Xsiz
    ds.PixelData = encapsulate([bytes(frag)])
    return ds


def test_a_frame_declaring_more_pixels_than_the_header_is_refused_before_decoding(
        tmp_path: Path, monkeypatch):
    save(_with_j2k_width(_compressed(JPEG2000Lossless), 6_947_072), tmp_path / "big.dcm")
    entry = only(discover(tmp_path), status="ok")
    decoded = []
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                        property(lambda self: decoded.append(1)))
    t0 = time.perf_counter()
    with pytest.raises(ScanReadError) as err:
        dicom.load_dicom(entry)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "big.dcm"))
    assert "declares 6947072 x 80 pixels" in msg and "the header 64 x 80" in msg
    assert not decoded and time.perf_counter() - t0 < 5


def test_valid_compressed_frames_still_load(tmp_path: Path):
    for uid, name in ((JPEG2000Lossless, "j2k.dcm"), (JPEGLSLossless, "jls.dcm")):
        save(_compressed(uid), tmp_path / name)
    ds = make_dataset(_pixels(33, 17, np.uint8), modality="DX", sop_class=DX_IMAGE)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([_jpeg(33, 17)])
    ds["PixelData"].VR = "OB"
    save(ds, tmp_path / "jpeg.dcm")
    shapes = {Path(e.path).name: dicom.load_dicom(e).data.shape
              for e in discover(tmp_path) if e.status == "ok"}
    assert shapes == {"j2k.dcm": (80, 64), "jls.dcm": (80, 64), "jpeg.dcm": (33, 17)}


def test_a_frame_declaring_fewer_pixels_is_left_to_the_decoder(tmp_path: Path):
    save(_with_j2k_width(_compressed(JPEG2000Lossless), 12), tmp_path / "small.dcm")
    entry = only(discover(tmp_path), status="ok")
    with pytest.raises(ScanReadError) as err:
        dicom.load_dicom(entry)
    assert "declares" not in str(err.value)  # the decoder or the shape check reports it


def test_sample_format_read_from_the_jpeg2000_siz():
    frag = _first_fragment(_compressed(JPEG2000Lossless))
    assert j2k_sample_format(frag) == (False, 16)  # uint16 pixels
    signed = _first_fragment(_with_header(_compressed(JPEG2000Lossless), representation=1))
    assert j2k_sample_format(signed) == (False, 16)  # the stream keeps its own format
    assert j2k_sample_format(_jpeg(33, 17)) is None and j2k_sample_format(frag[:40]) is None


def _with_header(ds, representation=None, bits_stored=None):
    if representation is not None:
        ds.PixelRepresentation = representation
    if bits_stored is not None:
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
    return ds


def _codes(path):
    entry = only(discover(path.parent), status="ok")
    return {w.code: w.severity for w in dicom.load_dicom(entry).warnings}


def test_a_header_that_contradicts_the_jpeg2000_stream_is_reported(tmp_path: Path):
    """PixelRepresentation and BitsStored that lie about the codestream (real archive files
    such as pylibjpeg-data's TOSHIBA_J2K_SIZ1_PixRep0.dcm do)."""
    for name, kw, want in (
        ("signed", {"representation": 1}, {"pixel_representation_mismatch": "info"}),
        ("bits", {"bits_stored": 12}, {"bits_stored_mismatch": "info"}),
        ("clean", {}, {}),
    ):
        folder = tmp_path / name
        folder.mkdir()
        save(_with_header(_compressed(JPEG2000Lossless), **kw), folder / "x.dcm")
        codes = _codes(folder / "x.dcm")
        assert {c: codes[c] for c in codes if c.endswith("_mismatch")} == want, name


def test_signed_stream_under_an_unsigned_header_is_read_as_signed(tmp_path: Path):
    """A CT whose header says unsigned while its JPEG 2000 stream is signed (as the real
    TOSHIBA_J2K_SIZ1_PixRep0.dcm): decoded by the header, -1000 would read 64536."""
    ct = (np.random.default_rng(4).random((80, 64)) * 1500 - 1000).astype(np.int16)
    ds = make_dataset(ct, modality="CT")
    ds.compress(JPEG2000Lossless)
    assert j2k_sample_format(_first_fragment(ds))[0]  # a signed stream
    ds.PixelRepresentation = 0  # the header lies
    save(ds, tmp_path / "ct.dcm")
    scan = dicom.load_dicom(only(discover(tmp_path), status="ok"))
    np.testing.assert_array_equal(scan.data, ct)
    assert {w.code: w.severity for w in scan.warnings}["pixel_representation_mismatch"] == "warn"
