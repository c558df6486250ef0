"""The Score dock: score a synthetic dataset against marked references, re-threshold, cancel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from scanqc.io.discover import discover  # noqa: E402
from scanqc.io.labels import LabelStore  # noqa: E402
from scanqc.io.load import load_scan  # noqa: E402
from scanqc.widgets._overlays import overlay_layers  # noqa: E402
from scanqc.widgets._present import show_scan  # noqa: E402
from scanqc.widgets._state import get_state  # noqa: E402
from scanqc.widgets.score import ScoreWidget, reflag  # noqa: E402

pytestmark = pytest.mark.gui

Z = 8
REFS = ("good0.nii.gz", "good1.nii.gz", "good2.nii.gz")


def write_volume(path: Path, seed: int, kind: str = "normal") -> None:
    """A small NIfTI: a bright blob with mild noise, pure noise, or blank."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    _, y, x = np.mgrid[0:Z, 0:32, 0:32]
    if kind == "noise":
        vol = rng.random((Z, 32, 32)) * 800
    elif kind == "blank":
        vol = np.zeros((Z, 32, 32))
    else:
        vol = 900 * np.exp(-((y - 16) ** 2 + (x - 16) ** 2) / 80.0)
        vol = vol + 20 * rng.standard_normal(vol.shape)
    nib.save(nib.Nifti1Image(np.clip(vol, 0, None).astype(np.int16).transpose(2, 1, 0),
                             np.diag([1.0, 1.0, 2.0, 1.0])), path)


def write_png(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:40]
    img = 180 * np.exp(-((y - 24) ** 2 + (x - 20) ** 2) / 150.0) + 10 * rng.random((48, 40))
    Image.fromarray(img.astype(np.uint8)).save(path)


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    ds = tmp_path / "ds"
    (ds / "sub").mkdir(parents=True)
    for i in range(4):
        write_volume(ds / "sub" / f"good{i}.nii.gz", i)
    write_volume(ds / "blank.nii.gz", 10, "blank")
    write_volume(ds / "noise.nii.gz", 11, "noise")
    write_png(ds / "img0.png", 100)
    write_png(ds / "img1.png", 101)
    return ds


def tiny_encoder():
    import torch

    from scanqc.models.encoder import SliceEncoder

    torch.manual_seed(0)
    return SliceEncoder(widths=(8, 16, 16, 32), deep_stages=1).eval()


def open_dock(make_napari_viewer, ds: Path, tmp_path: Path):
    viewer = make_napari_viewer()
    entries = discover([str(ds)], root=str(ds))
    state = get_state(viewer)
    state.set_dataset(ds, entries, LabelStore.open(tmp_path / "labels.sqlite", root=ds))
    ids = {Path(e.path).name: e.scan_id for e in entries}
    state.set_labels([ids[n] for n in REFS], reference=True)
    w = ScoreWidget(viewer)
    viewer.window.add_dock_widget(w, name="Score")
    w.config_overrides = {"encoder": tiny_encoder(), "size": 64, "max_slices": None,
                          "workers": 0, "device": "cpu"}
    return viewer, w, ids


@pytest.fixture
def engine_calls(monkeypatch):
    import scanqc.batch.engine as engine

    calls = []
    real = engine.score

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "score", counting)
    return calls


@pytest.mark.slow
def test_score_dataset_then_rethreshold(qtbot, make_napari_viewer, scans, tmp_path,
                                        engine_calls) -> None:
    viewer, w, ids = open_dock(make_napari_viewer, scans, tmp_path)
    assert "3 reference scans" in w.refs_label.text()
    assert "too tight; mark 10-30" in w.refs_label.text()  # 2-4 references: a caution
    w.score_btn.click()
    qtbot.waitUntil(lambda: w.run_status != "running", timeout=30_000)
    assert w.run_status == "done", w.status.text()
    assert len(engine_calls) == 1
    rows = w.state.rows
    assert set(w.rows) == set(rows) == set(ids.values())
    for name, sid in ids.items():
        assert rows[sid]["bad_score"] is not None, name
        assert rows[sid]["flagged"] in (True, False)
        # a custom encoder has no region probe: no region is invented
        assert rows[sid]["predicted_region"] is None, name
    score = {n: rows[s]["bad_score"] for n, s in ids.items()}
    assert score["blank.nii.gz"] > score["good3.nii.gz"]
    assert score["noise.nii.gz"] > score["good3.nii.gz"]
    assert rows[ids["blank.nii.gz"]]["flagged"]
    assert "constant" in rows[ids["blank.nii.gz"]]["warnings"]
    assert len(w.histogram.values) == len(ids)

    # the threshold re-flags without scoring again: spin box, slider, histogram drag
    values = sorted(score.values())
    for setter, t in ((w.threshold_spin.setValue, 0.0),
                      (lambda v: w.threshold_slider.setValue(int(v * 1000)), 0.999),
                      (w.histogram.drag_to, (values[2] + values[3]) / 2)):
        setter(t)
        assert w.threshold == pytest.approx(t, abs=1e-3)
        assert w.histogram.threshold == pytest.approx(w.threshold)
        flagged = {n: rows[s]["flagged"] for n, s in ids.items()}
        assert flagged == {n: score[n] > w.threshold for n in ids}
    assert sum(flagged.values()) == len(ids) - 3
    assert len(engine_calls) == 1
    assert reflag(w.rows, w.threshold) == []  # idempotent

    # the current volume: per-slice scores, one point per slice; click -> that slice
    entry = w.state.entry(ids["good3.nii.gz"])
    show_scan(viewer, load_scan(entry))
    w.state.set_current(entry.scan_id)
    qtbot.waitUntil(lambda: w.details is not None, timeout=20_000)
    assert len(w.slice_plot.slice_index) == Z
    assert sorted(w.slice_plot.slice_index.tolist()) == list(range(Z))
    assert np.all((w.slice_plot.scores >= 0) & (w.slice_plot.scores <= 1))
    w.slice_plot.slice_clicked.emit(5)
    assert viewer.dims.current_step[0] == 5
    assert "good3" in w.current_label.text()

    # a flagged scan with warnings: list, canvas text, shapes layer
    blank = w.state.entry(ids["blank.nii.gz"])
    w.set_threshold(0.5)
    show_scan(viewer, load_scan(blank))
    w.state.set_current(blank.scan_id)
    qtbot.waitUntil(lambda: w.details is not None, timeout=20_000)
    assert w.warnings_list.count() >= 1
    codes = [w.warnings_list.item(i).text() for i in range(w.warnings_list.count())]
    assert any(c.startswith("constant_image") for c in codes)
    banner = viewer.canvas.overlays.text.text if hasattr(viewer, "canvas") else \
        viewer.text_overlay.text
    assert "bad_score" in banner and "FLAGGED" in banner
    layers = overlay_layers(viewer)
    assert len(layers) == 1 and layers[0].name == "blank.nii.gz QC warnings"
    assert viewer.layers[-1] is layers[0]  # drawn above the image
    # the Dataset dock shows the image after the details arrived: drawn above it again
    viewer.add_image(np.zeros((4, 4)), name="late image")
    w.state.scan_shown.emit(blank.scan_id)
    layers = overlay_layers(viewer)
    assert len(layers) == 1 and viewer.layers[-1] is layers[0]
    assert len(engine_calls) == 1

    # a 2D image among volume references: the engine's reason is listed with the worker's
    img = w.state.entry(ids["img0.png"])
    show_scan(viewer, load_scan(img))
    w.details = None
    w.state.set_current(img.scan_id)
    qtbot.waitUntil(lambda: w.details is not None and w.details.scan_id == img.scan_id,
                    timeout=20_000)
    items = [w.warnings_list.item(i).text() for i in range(w.warnings_list.count())]
    assert "dimension_unlike_references: a 2D image, the references are volumes" in items
    tips = [w.warnings_list.item(i).toolTip() for i in range(w.warnings_list.count())]
    assert any("probably the wrong series for this set" in tip for tip in tips)  # advice
    assert "no_spacing" in " ".join(items)  # the reader's note is still there

    # the details of a scan whose image is not shown yet wait for it (the Dataset dock's
    # scan_shown), so the two reads do not slow each other down ...
    vol = w.state.entry(ids["good2.nii.gz"])
    w.state.set_current(vol.scan_id)
    assert w._details_pending == vol.scan_id and w.details is None
    w.state.scan_shown.emit(vol.scan_id)
    assert w._details_pending is None and not w._details_timer.isActive()
    qtbot.waitUntil(lambda: w.details is not None and w.details.scan_id == vol.scan_id,
                    timeout=20_000)
    # ... or start after DETAILS_WAIT_MS when no dock shows it
    noise = w.state.entry(ids["noise.nii.gz"])
    w.state.set_current(noise.scan_id)
    assert w.details is None and w._details_timer.isActive()
    qtbot.waitUntil(lambda: w.details is not None and w.details.scan_id == noise.scan_id,
                    timeout=20_000)


def test_cancel_stops_a_run(qtbot, make_napari_viewer, scans, tmp_path) -> None:
    _viewer, w, ids = open_dock(make_napari_viewer, scans, tmp_path)
    real = w._on_progress

    def progress_then_cancel(done, total, message):
        real(done, total, message)
        if done >= 1 and total:
            w.cancel()

    w._on_progress = progress_then_cancel
    w.score_dataset()
    qtbot.waitUntil(lambda: w.run_status != "running", timeout=30_000)
    assert w.run_status == "cancelled"
    assert w.status.text() == "cancelled"
    scored = [s for s in ids.values() if w.state.rows[s].get("bad_score") is not None]
    assert len(scored) < len(ids)
    assert w.score_btn.isEnabled() and not w.cancel_btn.isEnabled()


@pytest.mark.slow
def test_train_on_references_then_score_current(qtbot, make_napari_viewer, scans,
                                                tmp_path) -> None:
    _viewer, w, ids = open_dock(make_napari_viewer, scans, tmp_path)
    w.train_epochs = 10
    w.train()
    qtbot.waitUntil(lambda: w.run_status != "running", timeout=30_000)
    assert w.run_status == "done", w.status.text()
    assert w.finetuned is not None
    assert "fine-tuned" in w.refs_label.text()
    w.state.set_current(ids["noise.nii.gz"])
    w.score_current()
    qtbot.waitUntil(lambda: w.run_status != "running", timeout=30_000)
    assert w.run_status == "done", w.status.text()
    row = w.rows[ids["noise.nii.gz"]]
    assert "+ft" in row["model_version"]  # scored through the trained head
    assert w.state.rows[ids["noise.nii.gz"]]["bad_score"] == row["bad_score"]
    assert len(w.slice_plot.slice_index) == Z


def test_table_fields_forward_the_engine_region() -> None:
    from scanqc.widgets.score import table_fields

    row = {"scan_id": "a", "status": "ok", "bad_score": 0.2, "flagged": False,
           "warnings": "", "region": "chest", "region_confidence": 0.97,
           "header_region": "abdomen", "region_mismatch": True}
    fields = table_fields(row)
    assert fields["region"] == "chest"
    assert fields["region_confidence"] == 0.97
    assert fields["header_region"] == "abdomen"
    assert fields["region_mismatch"] is True
    # no prediction (a CSV NaN or nothing): the table's region is left alone
    assert "region" not in table_fields({**row, "region": float("nan")})
    assert "region" not in table_fields({k: v for k, v in row.items() if k != "region"})


def test_table_fields_forward_an_asymmetry_score_but_never_blank_it() -> None:
    from scanqc.widgets.score import table_fields

    row = {"scan_id": "a", "status": "ok", "bad_score": 0.2, "asymmetry_score": 3.5}
    assert table_fields(row)["asymmetry_score"] == 3.5
    # a run without --asymmetry (NaN / None) leaves the Asymmetry dock's value alone
    for empty in (float("nan"), None, ""):
        assert "asymmetry_score" not in table_fields({**row, "asymmetry_score": empty})
