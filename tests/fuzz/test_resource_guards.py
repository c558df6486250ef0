"""Resource guards: huge declared volumes and gzip bombs are refused in bounded memory.

The files are built in ``tmp_path`` without ever writing gigabytes: declared sizes live
only in headers, and a "bomb" is a multi-member gzip stream made of one compressed chunk of
zeros repeated (about 4.5 MB on disk for 4 GiB of zeros). They are read in a child process
with the default limits (``SCANQC_MAX_SCAN_BYTES`` unset = 4 GiB) whose peak RSS is
measured with ``getrusage`` and must stay under 2 GiB.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.fuzz.mutations import dicom_bytes, dicom_dataset, gzip_zero_members

MAX_PEAK_MB = 2048
BOMB_BYTES = 4 << 30  # 4 GiB of zeros after decompression

_CHILD = r"""
import json, resource, sys, time
from scanqc.io.discover import discover
from scanqc.io.load import load_scan
from scanqc.io.scan import ScanReadError
out = {}
for path in sys.argv[1:]:
    t0 = time.perf_counter()
    res = []
    for e in discover([path]):
        if e.status != "ok":
            res.append({"outcome": e.status, "error": e.error})
            continue
        try:
            s = load_scan(e)
            res.append({"outcome": "scan", "shape": list(s.data.shape),
                        "warnings": [w.code for w in s.warnings]})
        except ScanReadError as err:
            res.append({"outcome": "error", "error": str(err)})
    out[path] = {"results": res, "seconds": time.perf_counter() - t0,
                 "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
print(json.dumps(out))
"""


def _nifti_header(shape, dtype=np.float32, vox_offset: float | None = None) -> bytes:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    buf = io.BytesIO()
    hdr.write_to(buf)  # 348 bytes + 4 bytes extension flag, vox_offset 352
    raw = bytearray(buf.getvalue())
    if vox_offset is not None:
        struct.pack_into("<f", raw, 108, vox_offset)
    return bytes(raw)


def _bomb(head: bytes) -> bytes:
    return gzip.compress(head, mtime=0) + gzip_zero_members(BOMB_BYTES)


@pytest.fixture(scope="module")
def guard_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("guards")
    files = {}
    # 1. a declared 100 GB volume (5000 x 5000 x 1000 float32) with a tiny body
    files["nifti_100gb"] = d / "huge.nii"
    files["nifti_100gb"].write_bytes(_nifti_header((5000, 5000, 1000)) + b"\0" * 64)
    # 2. a gzip bomb whose header declares 16 GiB and whose stream expands to 4 GiB
    files["nifti_bomb_declared"] = d / "bomb_declared.nii.gz"
    files["nifti_bomb_declared"].write_bytes(_bomb(_nifti_header((2048, 2048, 1024))))
    # 3. a gzip bomb with a small, valid header: only the declared 64^3 bytes are read
    files["nifti_bomb_small_header"] = d / "bomb_small.nii.gz"
    files["nifti_bomb_small_header"].write_bytes(_bomb(_nifti_header((64, 64, 64), np.uint8)))
    # 4. a gzip bomb whose data offset lies 2 GB into the stream
    files["nifti_bomb_offset"] = d / "bomb_offset.nii.gz"
    files["nifti_bomb_offset"].write_bytes(_bomb(_nifti_header((8, 8, 8), vox_offset=2e9)))
    # 5. a gzip bomb with a header extension that claims 2 GB (nibabel would read it all)
    ext = _nifti_header((8, 8, 8), vox_offset=float(16 << 20))[:348] + b"\x01\0\0\0" + struct.pack(
        "<ii", 2**31 - 16, 0)
    files["nifti_bomb_extension"] = d / "bomb_ext.nii.gz"
    files["nifti_bomb_extension"].write_bytes(_bomb(ext))
    # 6. DICOM: Rows = Columns = 65535 and a huge NumberOfFrames, tiny pixel data
    ds = dicom_dataset()
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 2147483647
    files["dicom_huge"] = d / "huge.dcm"
    files["dicom_huge"].write_bytes(dicom_bytes(ds))
    # 7. a gzipped DICOM whose stream goes on with 4 GiB of zeros after the pixel data
    files["dicom_bomb"] = d / "bomb.dcm"
    files["dicom_bomb"].write_bytes(_bomb(dicom_bytes(dicom_dataset())))
    env = {k: v for k, v in os.environ.items() if k != "SCANQC_MAX_SCAN_BYTES"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *(str(p) for p in files.values())],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: raw[str(p)] for name, p in files.items()}


def _single(res: dict) -> dict:
    assert len(res["results"]) == 1, res
    return res["results"][0]


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("nifti_100gb", "exceeds the per-scan limit"),
        ("nifti_bomb_declared", "exceeds the per-scan limit"),
        ("nifti_bomb_offset", "exceeds the header limit"),
        ("nifti_bomb_extension", "header extensions of"),
        ("dicom_huge", "exceeds the per-scan limit"),
    ],
)
def test_huge_or_bomb_is_refused_in_bounded_memory(guard_results, name, phrase):
    res = guard_results[name]
    r = _single(res)
    assert r["outcome"] == "error", r
    assert phrase in r["error"]
    assert "\n" not in r["error"]
    assert res["peak_mb"] < MAX_PEAK_MB
    assert res["seconds"] < 10


def test_bomb_behind_a_small_header_reads_only_the_declared_bytes(guard_results):
    for name, shape in (("nifti_bomb_small_header", [64, 64, 64]), ("dicom_bomb", [6, 5])):
        res = guard_results[name]
        r = _single(res)
        assert r["outcome"] == "scan", r
        assert r["shape"] == shape
        assert res["peak_mb"] < MAX_PEAK_MB
        assert res["seconds"] < 5  # decompressing 4 GiB would take far longer


def test_peak_memory_of_the_whole_guard_run(guard_results):
    peak = max(r["peak_mb"] for r in guard_results.values())
    assert peak < MAX_PEAK_MB
    print(f"peak RSS over all guard cases: {peak:.0f} MiB")


def test_capped_dicom_stream_refuses_a_bomb_above_the_limit(tmp_path, monkeypatch):
    """A gzipped DICOM element that expands past the ceiling ends as a one-line error."""
    from scanqc.io.load import load_scan
    from scanqc.io.scan import ScanReadError

    monkeypatch.setenv("SCANQC_MAX_SCAN_BYTES", str(16 << 20))
    ds = dicom_dataset()
    raw = dicom_bytes(ds)
    # a private OB element declaring 1 GiB, followed by zeros, before the pixel data
    i = raw.find(b"\xe0\x7f\x10\x00")
    big = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 1 << 30)
    p = tmp_path / "privbomb.dcm"
    p.write_bytes(gzip.compress(raw[:i] + big, mtime=0) + gzip_zero_members(1 << 30, 64 << 20))
    with pytest.raises(ScanReadError) as info:
        load_scan(p)
    assert "\n" not in str(info.value) and str(p) in str(info.value)


def test_nan_inf_nifti_loads_with_a_warning(tmp_path):
    import nibabel as nib

    from scanqc.io.load import load_scan

    arr = np.full((6, 5, 4), np.nan, np.float32)
    arr[::2] = np.inf
    arr[0, 0, 0] = -np.inf
    p = tmp_path / "nan.nii.gz"
    nib.Nifti1Image(arr, np.eye(4)).to_filename(p)
    scan = load_scan(p)
    w = {x.code: x for x in scan.warnings}
    assert "non_finite_values" in w
    assert w["non_finite_values"].value == arr.size
    assert scan.data.shape == (4, 5, 6)


def test_decompression_limit_is_documented():
    from scanqc.io import limits

    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    assert "SCANQC_MAX_SCAN_BYTES" in doc
    assert f"{limits.MAX_HEADER_BYTES // 1024**2} MiB" in doc
