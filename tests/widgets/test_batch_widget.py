"""The Batch dock: score a folder into a CSV (+ HTML) and fill the Dataset table."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from scanqc.io.discover import discover  # noqa: E402
from scanqc.io.labels import LabelStore  # noqa: E402
from scanqc.widgets._state import get_state  # noqa: E402
from scanqc.widgets.batch import BatchWidget, rate_eta  # noqa: E402

pytestmark = pytest.mark.gui


def _volume(path: Path, seed: int, kind: str = "normal") -> None:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    _, y, x = np.mgrid[0:6, 0:32, 0:32]
    if kind == "noise":
        vol = rng.random(y.shape) * 800
    elif kind == "blank":
        vol = np.zeros(y.shape)
    else:
        vol = 900 * np.exp(-((y - 16) ** 2 + (x - 16) ** 2) / 80.0) + 20 * rng.random(y.shape)
    nib.save(nib.Nifti1Image(vol.astype(np.int16).transpose(2, 1, 0), np.eye(4)), path)


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    from PIL import Image

    ds = tmp_path / "ds"
    (ds / "sub").mkdir(parents=True)
    for i in range(4):
        _volume(ds / "sub" / f"good{i}.nii.gz", i)
    _volume(ds / "blank.nii.gz", 10, "blank")
    _volume(ds / "noise.nii.gz", 11, "noise")
    Image.fromarray((np.arange(48 * 40).reshape(48, 40) % 200).astype(np.uint8)).save(
        ds / "img0.png")
    (ds / "broken.nii.gz").write_bytes(b"not a nifti")
    return ds


@pytest.mark.slow
def test_batch_run_writes_report_and_fills_table(qtbot, make_napari_viewer, scans,
                                                 tmp_path) -> None:
    import torch

    from scanqc.models.encoder import SliceEncoder

    viewer = make_napari_viewer()
    entries = discover([str(scans)], root=str(scans))
    state = get_state(viewer)
    state.set_dataset(scans, entries, LabelStore.open(tmp_path / "labels.sqlite", root=scans))
    ids = {Path(e.path).name: e.scan_id for e in entries}
    state.set_labels([ids["good0.nii.gz"], ids["good1.nii.gz"], ids["good2.nii.gz"]],
                     reference=True)
    w = BatchWidget(viewer)
    viewer.window.add_dock_widget(w, name="Batch")
    assert w.folder_edit.text() == str(scans)  # default: the dataset root
    assert "3 reference scans" in w.refs_label.text()
    assert "too tight; mark 10-30" in w.refs_label.text()  # 2-4 references: a caution
    torch.manual_seed(0)
    w.config_overrides = {"encoder": SliceEncoder(widths=(8, 16, 16, 32), deep_stages=1),
                          "size": 64, "max_slices": 4, "device": "cpu"}
    w.workers_spin.setValue(0)
    out = tmp_path / "out" / "report.csv"
    html = tmp_path / "out" / "report.html"
    w.out_edit.setText(str(out))
    w.html_edit.setText(str(html))
    w.run_btn.click()
    qtbot.waitUntil(lambda: w.run_status != "running", timeout=30_000)
    assert w.run_status == "done", w.status.text()

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    files = sorted(p.name for p in scans.rglob("*") if p.is_file())
    assert sorted(Path(r["path"]).name for r in rows) == files  # one row per file
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["broken.nii.gz"]["status"] == "error"
    score = {n: float(r["bad_score"]) for n, r in by_name.items() if r["bad_score"]}
    assert score["blank.nii.gz"] > score["good3.nii.gz"]
    # the Dataset table got the scores
    for name, sid in ids.items():
        if by_name[name]["status"] == "ok":
            assert state.rows[sid]["bad_score"] == pytest.approx(
                float(by_name[name]["bad_score"]), abs=1e-5)
    assert "error" in state.rows[ids["broken.nii.gz"]]["warnings"]
    assert w.summary is not None and w.summary["n"] == len(files)
    assert f"{len(files)} scanned" in w.status.text()
    # the most severe, then commonest, warnings of the run (the dock drains its row queue,
    # so they are counted as rows arrive): the blank and noise volumes' come first
    codes = [c for c, _sev, _n in w.summary["findings"]]
    assert len(codes) == 3 and "constant_image" in codes and "noise_only" in codes
    assert "most found: " in w.status.text() and "constant_image (1)" in w.status.text()
    assert html.is_file() and w.open_btn.isEnabled()


def test_rate_eta_text() -> None:
    assert rate_eta(0, 10, 1.0) == ""
    assert rate_eta(5, 10, 10.0) == "0.50 scans/s, ETA 0:00:10"
    assert "ETA" not in rate_eta(10, 10, 2.0)


def test_asymmetry_option_reaches_the_engine(make_napari_viewer, tmp_path) -> None:
    w = BatchWidget(make_napari_viewer())
    assert w.config(str(tmp_path)).asymmetry is False
    w.asymmetry_check.setChecked(True)
    assert w.config(str(tmp_path)).asymmetry is True


def test_include_identifiers_option_reaches_the_engine(make_napari_viewer, tmp_path) -> None:
    w = BatchWidget(make_napari_viewer())
    assert w.config(str(tmp_path)).include_identifiers is False  # redacted by default
    w.identifiers_check.setChecked(True)
    assert w.config(str(tmp_path)).include_identifiers is True
