"""The Asymmetry dock: heatmap layer over the current scan, score in the table, regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
import nibabel as nib  # noqa: E402
from tests.scoring.test_asymmetry import phantom_head  # noqa: E402

from scanqc.widgets._present import OWNER_KEY  # noqa: E402
from scanqc.widgets._state import get_state  # noqa: E402
from scanqc.widgets.asymmetry import OWNER, AsymmetryWidget  # noqa: E402
from scanqc.widgets.dataset import DatasetWidget  # noqa: E402

pytestmark = pytest.mark.gui

LESION = (-13.0, -12.0, 0.0, 5.0, 1.0)


def _heat_layers(viewer):
    return [ly for ly in viewer.layers if ly.metadata.get(OWNER_KEY) == OWNER]


def _open_dataset_scan(qtbot, viewer, folder: Path, prefix: str):
    """Open ``folder`` (two scans) in a Dataset dock and show the scan named ``prefix...``.

    Returns ``(dataset widget, viewer state, scan_id, its image layer)``.
    """
    ds_widget = DatasetWidget(viewer)
    viewer.window.add_dock_widget(ds_widget, name="Dataset")
    ds_widget.open_folder(folder)
    qtbot.waitUntil(lambda: ds_widget.model.rowCount() == 2, timeout=20_000)
    state = get_state(viewer)
    sid = next(e.scan_id for e in state.entries if e.name.startswith(prefix))
    ds_widget.open_scan(sid)

    def shown():
        return next((ly for ly in viewer.layers
                     if (ly.metadata.get("scanqc") or {}).get("scan_id") == sid), None)

    qtbot.waitUntil(lambda: shown() is not None, timeout=20_000)
    return ds_widget, state, sid, shown()


@pytest.fixture
def heads(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A folder with a head with a lesion and one without; the lesion mask in scan order."""
    from scanqc.io.load import load_scan

    ds = tmp_path / "heads"
    ds.mkdir()
    vol, lesion = phantom_head(lesion=LESION)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), ds / "lesion.nii.gz")
    nib.save(nib.Nifti1Image(phantom_head()[0].transpose(2, 1, 0), affine), ds / "clean.nii.gz")
    # the mask goes through the same reader, so it is in the order the viewer shows
    nib.save(nib.Nifti1Image(lesion.transpose(2, 1, 0).astype(np.uint8), affine),
             tmp_path / "mask.nii.gz")
    return ds, load_scan(tmp_path / "mask.nii.gz").data > 0


def test_heatmap_over_the_current_dataset_scan(qtbot, make_napari_viewer, heads, monkeypatch,
                                               tmp_path) -> None:
    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "labels.sqlite"))
    folder, lesion = heads
    viewer = make_napari_viewer()
    ds_widget, state, sid, image = _open_dataset_scan(qtbot, viewer, folder, "lesion")
    w = AsymmetryWidget(viewer)
    viewer.window.add_dock_widget(w, name="Asymmetry")
    w.method_combo.setCurrentText("intensity-z")
    w.run()
    qtbot.waitUntil(lambda: w.result is not None, timeout=60_000)
    heat = _heat_layers(viewer)
    assert len(heat) == 1
    layer = heat[0]
    # aligned with the scan: same grid, scale and position
    assert layer.data.shape == image.data.shape
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert layer.colormap.name == "inferno" and 0 < layer.opacity < 1
    # the peak is in the planted lesion
    assert image.data.shape == lesion.shape and lesion.any()
    peak = np.unravel_index(int(np.argmax(layer.data)), layer.data.shape)
    assert lesion[peak]
    # the score reaches the Dataset table, the regions list the peak
    assert state.rows[sid]["asymmetry_score"] == pytest.approx(w.result.score)
    assert "asymmetry score" in w.status.text()
    assert w.regions.count() >= 1
    item = w.regions.item(0)
    w._on_region_clicked(item)
    z = item.data(256)[0]
    assert viewer.dims.point[0] == pytest.approx(layer.translate[0] + z * layer.scale[0])
    # opening another scan removes the map that belonged to this one
    other = next(e.scan_id for e in state.entries if e.scan_id != sid)
    ds_widget.open_scan(other)
    qtbot.waitUntil(lambda: not _heat_layers(viewer), timeout=20_000)
    assert w.regions.count() == 0


def test_heatmap_of_an_image_layer_without_dataset(qtbot, make_napari_viewer) -> None:
    vol, lesion = phantom_head(lesion=LESION)
    viewer = make_napari_viewer()
    viewer.add_image(vol, name="head", scale=(1.5, 1.5, 1.5))
    w = AsymmetryWidget(viewer)
    viewer.window.add_dock_widget(w, name="Asymmetry")
    w.method_combo.setCurrentText("intensity-z")
    w.run()
    qtbot.waitUntil(lambda: w.result is not None, timeout=60_000)
    layer = _heat_layers(viewer)[0]
    assert layer.data.shape == vol.shape
    np.testing.assert_allclose(layer.scale, (1.5, 1.5, 1.5))
    assert lesion[np.unravel_index(int(np.argmax(layer.data)), vol.shape)]
    assert w.result.score > 0
    # a second run replaces the map instead of stacking layers
    w.run()
    qtbot.waitUntil(lambda: not w.cancel_btn.isEnabled(), timeout=60_000)
    assert len(_heat_layers(viewer)) == 1


def test_no_scan_gives_a_message_not_an_error(qtbot, make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    w = AsymmetryWidget(viewer)
    viewer.window.add_dock_widget(w, name="Asymmetry")
    w.run()
    assert "no scan" in w.status.text()
    assert w.result is None and not _heat_layers(viewer)


def test_mammogram_is_compared_with_the_other_side(qtbot, make_napari_viewer, monkeypatch,
                                                   tmp_path) -> None:
    from tests.test_cli_asymmetry_pairs import _breast, _mammo

    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "labels.sqlite"))
    ds = tmp_path / "study"
    ds.mkdir()
    _mammo(ds / "l_mlo.dcm", _breast(lesion=True, flip=False), "L", "MLO")
    _mammo(ds / "r_mlo.dcm", _breast(lesion=False, flip=True), "R", "MLO")
    viewer = make_napari_viewer()
    _, state, sid, _ = _open_dataset_scan(qtbot, viewer, ds, "l_mlo")
    w = AsymmetryWidget(viewer)
    viewer.window.add_dock_widget(w, name="Asymmetry")
    w.run()
    qtbot.waitUntil(lambda: w.result is not None, timeout=60_000)
    assert w.result.method == "siamese-pair"
    assert "compared with r_mlo" in w.status.text()
    layer = _heat_layers(viewer)[0]
    assert layer.data.shape == (160, 128)
    peak = np.unravel_index(int(np.argmax(layer.data)), layer.data.shape)
    assert (peak[0] - 90) ** 2 + (peak[1] - 40) ** 2 < 24**2, peak
    assert state.rows[sid]["asymmetry_score"] == pytest.approx(w.result.score)
