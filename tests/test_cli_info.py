"""``scanqc info``: one JSON line per scan, statuses, exit code 0 with bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from scanqc.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    nib.Nifti1Image(np.ones((6, 7, 8), np.int16), np.diag([1.0, 2.0, 3.0, 1])).to_filename(
        d / "good.nii.gz"
    )
    Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10)).save(d / "xray.png")
    (d / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    (d / "notes.txt").write_text("ignored")
    return d


def _records(text: str) -> dict[str, dict]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    recs = [json.loads(ln) for ln in lines]
    return {Path(r["path"]).name: r for r in recs}


@pytest.mark.parametrize("load", [False, True])
def test_info_in_process(folder, capsys, load):
    rc = main(["info", str(folder), "--root", str(folder), *(["--load"] if load else [])])
    assert rc == 0
    recs = _records(capsys.readouterr().out)
    assert set(recs) == {"good.nii.gz", "xray.png", "broken.nii.gz"}
    good, png, bad = recs["good.nii.gz"], recs["xray.png"], recs["broken.nii.gz"]
    assert good["status"] == "ok" and good["kind"] == "volume"
    assert png["status"] == "ok" and png["kind"] == "image"
    assert bad["status"] == "error" and bad["error"] and "\n" not in bad["error"]
    for r in recs.values():
        assert set(r) >= {"scan_id", "path", "kind", "modality", "shape", "spacing",
                          "series_description", "status", "error", "warnings"}
    if load:
        assert good["shape"] == [8, 7, 6]
        assert good["spacing"] == [3.0, 2.0, 1.0]
        assert png["shape"] == [10, 10] and "no_spacing" in png["warnings"]


def test_info_checks_lists_the_qc_findings_without_the_model(folder, capsys, monkeypatch):
    import scanqc.batch.embedder as embedder

    def no_model(*a, **k):  # --checks never loads an encoder
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(embedder.Embedder, "__init__", no_model)
    rc = main(["info", str(folder), "--root", str(folder), "--checks"])
    assert rc == 0
    recs = _records(capsys.readouterr().out)
    good, png, bad = recs["good.nii.gz"], recs["xray.png"], recs["broken.nii.gz"]
    # an all-ones volume is constant: the high-severity finding, with its message
    const = [c for c in good["checks"] if c["code"] == "constant_image"]
    assert const and const[0]["severity"] == "high" and "every value is 1" in const[0]["message"]
    assert {"code", "severity", "message", "slices", "region", "advice"} <= set(const[0])
    assert const[0]["advice"].startswith("Every pixel has the same value")
    # a 10 x 10 PNG: the reader's note and the tiny-image check
    assert {"no_spacing", "tiny_image"} <= {c["code"] for c in png["checks"]}
    assert "entropy_bits" in png["metrics"]
    assert all(isinstance(v, float) for v in png["metrics"].values())
    assert bad["status"] == "error" and "checks" not in bad  # unreadable: no checks


def test_info_load_reports_undecodable_pixels(tmp_path, capsys):
    # header fine, pixel data cut off: discovery says ok, --load says error
    p = tmp_path / "cut.nii"
    nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)).to_filename(p)
    p.write_bytes(p.read_bytes()[:2000])
    assert main(["info", str(p), "--load"]) == 0
    (rec,) = _records(capsys.readouterr().out).values()
    assert rec["status"] == "error" and "cut.nii" not in rec["error"]  # cause only


def test_info_subprocess(folder):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, "-m", "scanqc", "info", str(folder)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    recs = _records(res.stdout)
    assert {k: v["status"] for k, v in recs.items()} == {
        "good.nii.gz": "ok", "xray.png": "ok", "broken.nii.gz": "error",
    }


def test_library_info_logs_stay_off_the_console(tmp_path):
    """Dask logs every worker start at INFO on its own loggers: hidden without --verbose."""
    code = (
        "import logging, sys\n"
        "from scanqc.cli.main import main\n"
        f"main(['info', {str(tmp_path)!r}])\n"
        "log = logging.getLogger('distributed.scheduler')\n"
        "log.setLevel(logging.INFO)\n"
        "log.info('State start')\n"
        "log.warning('a real warning')\n"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stderr
    assert "a real warning" in err and "State start" not in err
