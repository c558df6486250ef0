"""The Dataset dock: open a folder, navigate with keys, label, close, reopen."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")
from qtpy.QtCore import Qt  # noqa: E402

from scanqc.io.labels import LabelStore, default_store_path  # noqa: E402
from scanqc.widgets._present import OWNER_KEY, owned_layers  # noqa: E402
from scanqc.widgets._state import COLUMNS, get_state  # noqa: E402
from scanqc.widgets.dataset import DatasetWidget  # noqa: E402

pytestmark = pytest.mark.gui

N = 8


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    ds = tmp_path / "ds"
    rng = np.random.default_rng(1)
    for i in range(N):
        p = ds / ("a" if i % 2 else "b") / f"scan_{i}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        shape = (6 + i, 10, 12)  # each scan a different shape, to know which one is shown
        nib.Nifti1Image(rng.integers(0, 500, shape).astype(np.int16), np.eye(4)).to_filename(p)
    (ds / "notes.txt").write_text("not an image")
    return ds


def _names(w: DatasetWidget) -> list[str]:
    col = COLUMNS.index("name")
    return [Path(w.proxy.index(r, col).data()).name for r in range(w.proxy.rowCount())]


def _labels_by_name(w: DatasetWidget) -> dict[str, tuple]:
    rows = w.state.rows
    return {Path(r["name"]).name: (r["label"], r["reason"], bool(r["reference"]))
            for r in rows.values()}


def _shown_scan_id(viewer) -> str | None:
    layers = owned_layers(viewer)
    assert len(layers) <= 1  # the previous scan's layer was replaced
    return layers[0].metadata["scanqc"]["scan_id"] if layers else None


def _open(qtbot, make_napari_viewer, ds: Path):
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    viewer.window.add_dock_widget(w, name="Dataset")
    w.open_folder(ds)
    qtbot.waitUntil(lambda: w.model.rowCount() >= N, timeout=20_000)
    w.table.sortByColumn(COLUMNS.index("name"), Qt.AscendingOrder)
    return viewer, w


def test_label_with_keys_and_reopen(qtbot, make_napari_viewer, dataset: Path,
                                    monkeypatch) -> None:
    monkeypatch.delenv("SCANQC_LABELS", raising=False)
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    viewer, w = _open(qtbot, make_napari_viewer, dataset)
    names = _names(w)
    assert sorted(n for n in names if n.startswith("scan_")) == sorted(
        f"scan_{i}.nii.gz" for i in range(N))
    assert "notes.txt" not in names
    user_layer = viewer.add_image(np.zeros((4, 4)), name="mine")  # never touched by the dock

    # open the first scan, then walk down with the arrow key, labelling as we go
    w.table.setFocus()
    w.select_scan(w.proxy.index(0, 1).data(256 + 2))

    def current_shown() -> bool:
        return _shown_scan_id(viewer) == w.current_id()

    qtbot.waitUntil(current_shown, timeout=10_000)
    plan = [Qt.Key_R, Qt.Key_R, Qt.Key_R, Qt.Key_5, Qt.Key_B]
    for i, key in enumerate(plan):
        if i:
            qtbot.keyClick(w.table, Qt.Key_Down)
            qtbot.waitUntil(current_shown, timeout=10_000)
        assert w.current_id() == w.proxy.index(i, 1).data(256 + 2)  # ID_ROLE
        if key == Qt.Key_B:
            w.reason_combo.setCurrentIndex(1)  # wrong_region, used by "B"
        qtbot.keyClick(w.table, key)
    assert user_layer in viewer.layers
    shown = owned_layers(viewer)[0]
    assert shown.metadata[OWNER_KEY] == "dataset"
    assert shown.data.shape == tuple(w.state.entry(w.current_id()).shape)
    assert Path(w.state.entry(w.current_id()).path).name == names[4]
    banner = viewer.canvas.overlays.text
    assert banner.visible and "BAD (wrong_region)" in banner.text and names[4] in banner.text

    # multi-selection: the last two rows become good with one key press
    w.table.selectRow(6)
    w.table.selectionModel().select(
        w.proxy.index(7, 0), w.table.selectionModel().Select | w.table.selectionModel().Rows)
    qtbot.keyClick(w.table, Qt.Key_G)
    # a region typed as a user class on the current scan
    w.select_scan(w.proxy.index(0, 1).data(256 + 2))
    w.region_combo.setCurrentText("my_phantom")
    w._on_region_edited()

    expected = {names[0]: ("reference", None, True), names[1]: ("reference", None, True),
                names[2]: ("reference", None, True), names[3]: ("bad", "artifact", False),
                names[4]: ("bad", "wrong_region", False), names[6]: ("good", None, False),
                names[7]: ("good", None, False)}
    got = _labels_by_name(w)
    assert {k: v for k, v in got.items() if v[0]} == expected
    # the filter box finds them
    w.filter_edit.setText("bad")
    assert sorted(_names(w)) == sorted([names[3], names[4]])
    w.filter_edit.setText("")

    w.close()
    viewer.close()

    # the labels were written beside the dataset, the dataset itself was not touched
    store_path = default_store_path(dataset)
    assert store_path.parent == dataset.parent
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before
    with LabelStore.open(store_path) as store:
        assert len(store.references()) == 3

    viewer2, w2 = _open(qtbot, make_napari_viewer, dataset)
    assert get_state(viewer2) is not get_state(viewer)
    got2 = _labels_by_name(w2)
    assert {k: v for k, v in got2.items() if v[0]} == expected
    assert next(r for r in w2.state.rows.values()
                if Path(r["name"]).name == names[0])["region"] == "my_phantom"
    label_col = COLUMNS.index("label")
    shown_labels = {Path(w2.proxy.index(r, 1).data()).name: w2.proxy.index(r, label_col).data()
                    for r in range(w2.proxy.rowCount())}
    assert shown_labels[names[3]] == "bad: artifact"
    assert shown_labels[names[0]] == "reference"
    w2.close()


def test_update_rows_from_other_docks_and_unreadable(qtbot, make_napari_viewer, dataset: Path,
                                                     monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "chosen.sqlite"))
    (dataset / "broken.nii.gz").write_bytes(b"\x1f\x8bnot really gzip")
    viewer, w = _open(qtbot, make_napari_viewer, dataset)
    assert w.state.store.path == tmp_path / "chosen.sqlite"
    sid = next(s for s, r in w.state.rows.items() if r["name"].endswith("scan_3.nii.gz"))
    w.state.update_rows([{"scan_id": sid, "bad_score": 0.875, "region": "knee"}])
    row = w.model.row_of(sid)
    score_col = COLUMNS.index("bad_score")
    assert w.model.index(row, score_col).data() == "0.875"
    # sorting by bad score puts it last (others have no score)
    w.table.sortByColumn(score_col, Qt.AscendingOrder)
    assert w.proxy.index(w.proxy.rowCount() - 1, 1).data().endswith("scan_3.nii.gz")
    # opening an unreadable scan shows a one-line error and no layer
    broken = [s for s, r in w.state.rows.items() if "broken" in r["name"]]
    assert broken
    w.open_scan(broken[0])
    qtbot.waitUntil(lambda: "broken.nii.gz" in w.status.text(), timeout=10_000)
    assert owned_layers(viewer) == []
    assert "\n" not in w.status.text()
    w.close()


def test_result_columns_and_banner(qtbot, make_napari_viewer, dataset: Path,
                                   monkeypatch, tmp_path: Path) -> None:
    """region, region check, flagged and bad score fill in; the banner shows label and score."""
    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "labels.sqlite"))
    viewer, w = _open(qtbot, make_napari_viewer, dataset)
    check_col, flag_col = COLUMNS.index("region_mismatch"), COLUMNS.index("flagged")
    region_col = COLUMNS.index("region")
    assert w.table.isColumnHidden(check_col)  # no result carries it yet
    assert not w.table.isColumnHidden(flag_col)
    sid = next(s for s, r in w.state.rows.items() if r["name"].endswith("scan_2.nii.gz"))
    other = next(s for s, r in w.state.rows.items() if r["name"].endswith("scan_5.nii.gz"))
    w.select_scan(sid)
    qtbot.waitUntil(lambda: w.state.current == sid, timeout=10_000)
    qtbot.keyClick(w.table, Qt.Key_G)
    banner = viewer.canvas.overlays.text
    assert "GOOD" in banner.text and "bad_score" not in banner.text  # not scored yet

    w.state.update_rows([
        {"scan_id": sid, "bad_score": 0.912, "flagged": True, "region": "knee",
         "region_confidence": 0.8, "header_region": "chest", "region_mismatch": True},
        {"scan_id": other, "bad_score": 0.1, "flagged": False, "region": "knee",
         "region_mismatch": False},
    ])
    row, row2 = w.model.row_of(sid), w.model.row_of(other)
    assert not w.table.isColumnHidden(check_col)
    assert w.model.index(row, check_col).data() == "mismatch (header: chest)"
    assert w.model.index(row2, check_col).data() == "ok"
    assert w.model.index(row, flag_col).data() == "flagged"
    assert w.model.index(row2, flag_col).data() == ""
    assert w.model.index(row, region_col).data() == "knee"
    assert "predicted: knee (80%)" in w.model.index(row, region_col).data(Qt.ToolTipRole)
    assert "GOOD" in banner.text and "bad_score 0.912 FLAGGED" in banner.text
    # the filter finds flagged scans; sorting by flagged puts the flagged one last
    w.filter_edit.setText("flagged")
    assert [Path(n).name for n in _names(w)] == ["scan_2.nii.gz"]
    w.filter_edit.setText("")
    w.table.sortByColumn(flag_col, Qt.AscendingOrder)
    assert w.proxy.index(w.proxy.rowCount() - 1, 1).data().endswith("scan_2.nii.gz")

    # a region a person labels wins over the predicted one, and clearing it brings it back
    w.region_combo.setCurrentText("my_phantom")
    w._on_region_edited()
    assert w.model.index(row, region_col).data() == "my_phantom"
    w.state.update_rows([{"scan_id": sid, "region": "hand"}])  # a new prediction
    assert w.model.index(row, region_col).data() == "my_phantom"
    w.region_combo.setCurrentText("")
    w._on_region_edited()
    assert w.model.index(row, region_col).data() == "hand"
    with LabelStore.open(tmp_path / "labels.sqlite") as store:
        assert store.get(sid).region is None and store.get(sid).label == "good"
    w.close()


def test_rows_arrive_in_parts_in_final_order(qtbot, make_napari_viewer, dataset: Path,
                                             monkeypatch, tmp_path: Path) -> None:
    """Parts inserted at their sorted places: no reset, selection kept, order = discover()."""
    import scanqc.widgets.dataset as dataset_mod
    from scanqc.io.discover import discover

    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "labels.sqlite"))
    monkeypatch.setattr(dataset_mod, "DISCOVERY_CHUNK", 3)
    # a file at the top comes first from the walk but sorts last: later parts go before it
    nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), np.eye(4)).to_filename(dataset / "zz.nii")
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    resets, inserts, parts = [], [], []
    w.model.modelReset.connect(lambda: resets.append(w.model.rowCount()))
    w.model.rowsInserted.connect(lambda _p, a, b: inserts.append((a, b, w.model.rowCount())))
    w.state.entries_added.connect(lambda ids: parts.append(len(ids)))
    w.open_folder(dataset)
    assert len(parts) >= 3 and max(parts) <= 3
    assert resets == [0]  # one reset: the empty new dataset; the parts are inserts
    assert any(b < n - 1 for _a, b, n in inserts)  # some rows went in above others
    expected = [e.scan_id for e in discover(dataset)]
    assert w.model.ids == expected == [e.scan_id for e in w.state.entries]
    assert Path(w.state.entries[-1].path).name == "zz.nii"
    assert not w.state.loading and f"{N + 1} scans" in w.status.text()
    w.close()


def test_cancel_keeps_the_rows_listed(qtbot, make_napari_viewer, dataset: Path,
                                      monkeypatch, tmp_path: Path) -> None:
    import scanqc.io.discover as discover_mod
    from scanqc.progress import Cancelled

    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "labels.sqlite"))
    real = discover_mod.iter_discover

    def first_part_then_cancel(*args, **kw):
        yield next(real(*args, **{**kw, "chunk_size": 3}))
        raise Cancelled("cancelled by the user")

    monkeypatch.setattr(discover_mod, "iter_discover", first_part_then_cancel)
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    w.open_folder(dataset)
    assert w.model.rowCount() == 3 and len(w.state.entries) == 3
    assert not w.state.loading and "incomplete" in w.status.text()
    assert w.state.store is not None and not w.state.store.closed
    w.close()


def test_threaded_discovery_streams_from_a_child_process(qtbot, make_napari_viewer,
                                                         dataset: Path, monkeypatch,
                                                         tmp_path: Path) -> None:
    """The real path: child process, pickled parts, rows inserted on the GUI thread."""
    import scanqc.widgets.dataset as dataset_mod

    monkeypatch.setenv("SCANQC_NOTHREADS", "0")
    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "labels.sqlite"))
    monkeypatch.setattr(dataset_mod, "DISCOVERY_CHUNK", 2)
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    parts: list[int] = []
    w.state.entries_added.connect(lambda ids: parts.append(len(ids)))
    w.open_folder(dataset)
    qtbot.waitUntil(lambda: w._discovery is None and w.model.rowCount() == N, timeout=60_000)
    assert len(parts) >= 4 and max(parts) <= 2
    assert not w.state.loading and w.model.in_sync()
    assert sorted(Path(r["name"]).name for r in w.state.rows.values()) == sorted(
        f"scan_{i}.nii.gz" for i in range(N))
    w.close()


def test_packed_entries_round_trip(dataset: Path) -> None:
    """What the discovery child sends (packed, pickled) rebuilds the same entries."""
    import pickle

    from scanqc.io.discover import discover
    from scanqc.widgets._state import discover_packed, unpack_entries
    from scanqc.widgets.dataset import rows_of_part

    parts = list(discover_packed([str(dataset)], root=str(dataset), chunk_size=3))
    assert len(parts) == 3 and all(isinstance(t, tuple) for p in parts for t in p)
    entries = [e for p in parts for e in rows_of_part(pickle.dumps(p), {})[0]]
    assert sorted(entries, key=lambda e: e.name) == discover(dataset)
    assert unpack_entries(parts[0]) == entries[:3]


def test_odd_file_names_open_and_keep_their_labels(qtbot, make_napari_viewer, tmp_path: Path,
                                                   monkeypatch) -> None:
    """A Latin-1 file name and a FIFO in the folder: listed, shown, labelled, kept."""
    import os

    from PIL import Image

    monkeypatch.delenv("SCANQC_LABELS", raising=False)
    ds = tmp_path / "odd"
    ds.mkdir()
    odd = os.fsdecode(b"r\xf6ntgen.png")
    yy, xx = np.mgrid[:40, :40]
    Image.fromarray(((xx + yy) * 3).astype(np.uint8)).save(ds / odd)
    nib.Nifti1Image(np.ones((4, 6, 6), np.int16), np.eye(4)).to_filename(ds / "v.nii.gz")
    os.mkfifo(ds / "pipe.dcm")  # never opened: discovery must not block on it
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    viewer.window.add_dock_widget(w, name="Dataset")
    w.open_folder(ds)
    qtbot.waitUntil(lambda: w.model.rowCount() >= 3, timeout=20_000)
    rows = {Path(r["name"]).name: sid for sid, r in w.state.rows.items()}
    assert set(rows) == {odd, "v.nii.gz", "pipe.dcm"}
    w.select_scan(rows[odd])
    qtbot.waitUntil(lambda: _shown_scan_id(viewer) == rows[odd], timeout=10_000)
    assert owned_layers(viewer)[0].data.shape == (40, 40)
    w.state.set_labels([rows[odd]], label="good")
    w.close()
    viewer.close()
    with LabelStore.open(default_store_path(ds)) as store:
        rec = store.get(rows[odd])
    assert rec is not None and rec.label == "good" and rec.path == "r\\xf6ntgen.png"


def test_labels_of_a_patient_named_folder_keep_no_names(qtbot, make_napari_viewer,
                                                        tmp_path: Path, monkeypatch) -> None:
    """Even for a file without a header of its own (unreadable) in that folder."""
    from test_privacy_writers import SERIES_DIR, find_planted, make_identified_dataset

    monkeypatch.delenv("SCANQC_LABELS", raising=False)
    ds = tmp_path / "ds"
    make_identified_dataset(ds)
    (ds / SERIES_DIR / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    viewer.window.add_dock_widget(w, name="Dataset")
    w.open_folder(ds)
    qtbot.waitUntil(lambda: w.model.rowCount() >= 9 and not w.state.loading, timeout=20_000)
    ids = list(w.state.rows)
    w.state.set_labels(ids, label="bad", reason="artifact")
    w.close()
    viewer.close()
    with LabelStore.open(default_store_path(ds)) as store:
        paths = [r.path for r in store.all()]
    assert len(paths) == len(ids) and "[redacted]/garbage.dcm" in paths
    assert not find_planted("\n".join(paths).encode())


def _scan(shape: tuple[int, ...], spacing: tuple[float, ...], name: str, *, rgb: bool = False,
          dtype: type = np.uint16, seed: int = 0):
    from scanqc.io.scan import Scan

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 250 if dtype is np.uint8 else 4000, shape).astype(dtype)
    n = len(shape) - (1 if rgb else 0)
    affine = np.eye(4)
    for ax in range(n):
        affine[ax, ax] = spacing[ax]
    affine[:3, 3] = (5.0, -7.0, 11.0)
    return Scan(data=data, spacing=spacing, affine=affine,
                kind="volume" if n == 3 else "image", modality="MR" if n == 3 else "CR",
                scan_id=name, name=name, rgb=rgb)


def _props(layer) -> dict:
    return {
        "data": layer.data, "scale": tuple(layer.scale), "translate": tuple(layer.translate),
        "contrast_limits": None if layer.rgb else tuple(layer.contrast_limits),
        "colormap": layer.colormap.name, "name": layer.name, "rgb": layer.rgb,
        "scan_id": layer.metadata["scanqc"]["scan_id"], "owner": layer.metadata[OWNER_KEY],
    }


def test_next_scan_updates_the_image_layer_in_place(make_napari_viewer) -> None:
    """Stepping to the next gray scan updates the layer (no removal, which costs ~150 ms
    of garbage collection in napari); the result equals a freshly added layer."""
    from scanqc.widgets._present import scan_to_layer_kwargs, show_scan

    viewer = make_napari_viewer()
    mine = viewer.add_image(np.zeros((4, 4)), name="mine")  # never touched
    a = _scan((100, 120), (0.2, 0.2), "a.dcm")
    b = _scan((80, 60), (0.5, 0.25), "b.png", dtype=np.uint8, seed=1)
    first = show_scan(viewer, a)
    second = show_scan(viewer, b)
    assert second is first and owned_layers(viewer) == [second]
    data, kwargs = scan_to_layer_kwargs(b)
    fresh = viewer.add_image(data, **{**kwargs, "name": "fresh"})
    got, want = _props(second), _props(fresh)
    assert got.pop("data") is b.data and want.pop("data") is b.data
    assert got.pop("name") == "b.png" and want.pop("name") == "fresh"
    assert got == want
    viewer.layers.remove(fresh)

    # a volume: the same layer, now 3D, at the volume's middle slice, as a fresh layer
    c = _scan((30, 40, 50), (3.0, 1.0, 1.0), "c.nii.gz", seed=2)
    third = show_scan(viewer, c)
    assert third is second and owned_layers(viewer) == [third] and third.ndim == 3
    assert viewer.dims.current_step[0] == 15
    data, kwargs = scan_to_layer_kwargs(c)
    fresh = viewer.add_image(data, **{**kwargs, "name": "fresh"})
    got, want = _props(third), _props(fresh)
    assert got.pop("data") is want.pop("data") is c.data
    assert got.pop("name") == "c.nii.gz" and want.pop("name") == "fresh"
    assert got == want and third.extent.world.tolist() == fresh.extent.world.tolist()
    viewer.layers.remove(fresh)
    # another volume of another shape: updated in place, also at its middle slice
    viewer.dims.set_current_step(0, 3)
    d = _scan((12, 40, 50), (2.0, 1.0, 1.0), "d.nii.gz", seed=3)
    fourth = show_scan(viewer, d)
    assert fourth is third and fourth.data is d.data and tuple(fourth.scale) == d.spacing
    assert viewer.dims.current_step[0] == 6
    # the same geometry again: the slice the user is on is kept
    viewer.dims.set_current_step(0, 2)
    e = _scan((12, 40, 50), (2.0, 1.0, 1.0), "e.nii.gz", seed=4)
    assert show_scan(viewer, e) is third and viewer.dims.current_step[0] == 2
    # colour: a new layer; back to gray: a new layer again
    f = _scan((20, 30, 3), (1.0, 1.0), "f.jpg", rgb=True, dtype=np.uint8)
    assert show_scan(viewer, f).rgb and owned_layers(viewer)[0] is not third
    assert not show_scan(viewer, a).rgb and viewer.dims.ndim == 2
    assert mine in viewer.layers and len(owned_layers(viewer)) == 1
