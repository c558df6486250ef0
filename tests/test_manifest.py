"""Every file of ../shared/data/manifest.csv opens as the manifest says (skips without it).

* ``decode == ok``: opens, with the manifest's shape and spacing (NIfTI axes are reordered
  by the reorientation, so they are compared as the set of (size, spacing) pairs);
* ``FAIL ...``: opens, or raises a one-line ``ScanReadError`` naming the file;
* ``no_pixel_data``: ``discover`` lists it as skipped (or error) with a reason.

DICOM series are opened one file at a time. Only ~20 of the 521 region_xr_v1 PNGs are used.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from scanqc.io.discover import discover
from scanqc.io.load import load_scan
from scanqc.io.scan import ScanReadError

pytestmark = pytest.mark.data


def _rows() -> list[dict]:
    manifest = SHARED_DATA / "manifest.csv"
    if not manifest.is_file():
        return []
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out, n_region = [], 0
    for r in rows:
        if r["format"] == "npz":
            continue
        if r["set"] == "region_xr_v1":
            n_region += 1
            if n_region % 26 != 1:
                continue
        out.append(r)
    return out


ROWS = _rows()


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("x")) if text else ()


def _spacing(text: str) -> tuple[tuple[float, ...], float | None]:
    """``"0.5x0.5 thk2.0"`` -> ((0.5, 0.5), 2.0)."""
    m = re.match(r"^([0-9.x]*)\s*(?:thk([0-9.]+))?$", text.strip())
    assert m, text
    px = tuple(float(v) for v in m.group(1).split("x")) if m.group(1) else ()
    return px, (float(m.group(2)) if m.group(2) else None)


def _check_ok(row: dict, path: Path) -> None:
    scan = load_scan(path)
    shape = _dims(row["shape"])
    px, _thk = _spacing(row["spacing"])
    fmt = row["format"]
    if fmt == "nifti":
        spatial = shape[:3]
        got = sorted(zip(scan.data.shape, np.round(scan.spacing, 3), strict=True))
        want = sorted(zip(spatial, np.round(px[:3], 3), strict=True))
        assert [g[0] for g in got] == [w[0] for w in want], (scan.data.shape, spatial)
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=2e-3)
        assert scan.orientation == "SPL"
    elif fmt.startswith("dicom"):
        rgb = len(shape) >= 3 and shape[-1] == 3
        spatial = shape[:-1] if rgb else shape
        same_ndim = len(spatial) == len(scan.spatial_shape)
        got = tuple(d for d in scan.spatial_shape if d != 1 or same_ndim)
        assert got[-2:] == spatial[-2:], (scan.data.shape, shape)
        if len(spatial) == 3:
            assert scan.spatial_shape[0] == spatial[0]
        assert scan.rgb == rgb
        if len(px) == 2:
            np.testing.assert_allclose(scan.spacing[-2:], px, rtol=1e-4)
    else:  # 2D images: gray stored as RGB becomes gray
        assert scan.spatial_shape == shape[:2]
        if scan.rgb:
            assert shape[-1] == 3
    assert "\n" not in scan.name


@pytest.mark.parametrize("row", ROWS, ids=[r["path"] for r in ROWS])
def test_manifest_row(row):
    data = SHARED_DATA
    if not (data / "manifest.csv").is_file():
        pytest.skip("../shared/data is not available")
    path = data / row["path"]
    decode = row["decode"]
    if decode == "ok":
        _check_ok(row, path)
    elif decode.startswith("FAIL"):
        try:
            load_scan(path)
        except ScanReadError as err:
            msg = str(err)
            assert "\n" not in msg and Path(err.path).name == path.name, msg
    elif decode == "no_pixel_data":
        entries = discover([path])
        assert len(entries) == 1
        (e,) = entries
        assert e.status in ("skipped", "error") and e.error, e
        with pytest.raises(ScanReadError):
            load_scan(path)
    else:
        pytest.fail(f"unknown decode value {decode!r}")


def test_manifest_has_rows():
    if not ROWS:
        pytest.skip("../shared/data is not available")
    assert len(ROWS) > 200
