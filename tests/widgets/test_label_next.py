"""The Label next dock: Next opens a suggested scan through the Dataset dock; labels retrain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
from PIL import Image  # noqa: E402

from scanqc.widgets._state import get_state  # noqa: E402
from scanqc.widgets.dataset import DatasetWidget  # noqa: E402
from scanqc.widgets.label_next import LabelNextWidget  # noqa: E402

pytestmark = pytest.mark.gui

N = 8


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    ds = tmp_path / "ds"
    ds.mkdir()
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:48, :48]
    for i in range(N):
        img = ((xx - 24) ** 2 + (yy - 24) ** 2 < (6 + 2 * i) ** 2) * 200.0 if i % 2 else \
            ((xx // (3 + i)) % 2) * 180.0
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(ds / f"img{i}.png")
    return ds


@pytest.fixture
def tiny_encoder():
    import torch

    from scanqc.models.encoder import SliceEncoder

    torch.manual_seed(0)
    return SliceEncoder(widths=(4, 8, 8), deep_stages=1).eval()


def test_next_opens_suggested_scans_and_retrains(qtbot, make_napari_viewer, dataset,
                                                 tiny_encoder, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "labels.sqlite"))
    viewer = make_napari_viewer()
    ds_widget = DatasetWidget(viewer)
    viewer.window.add_dock_widget(ds_widget, name="Dataset")
    ds_widget.open_folder(dataset)
    qtbot.waitUntil(lambda: ds_widget.model.rowCount() >= N, timeout=20_000)
    w = LabelNextWidget(viewer)
    viewer.window.add_dock_widget(w, name="Label next")
    w.encoder = tiny_encoder
    w.batch_spin.setValue(2)
    w.strategy_combo.setCurrentText("entropy")
    state = get_state(viewer)

    w.next_btn.click()
    qtbot.waitUntil(lambda: state.current is not None, timeout=20_000)
    assert w.queue is not None and w.queue.recomputes == 1
    first = state.current
    assert ds_widget.current_id() == first  # opened through the Dataset dock
    assert w.queue.ranking.order[0] == w.queue.ids.index(first)

    # label two scans (two classes) in the Dataset dock's store: a retrain follows
    seen = [first]
    state.set_labels([first], region="chest")
    w.next_btn.click()
    second = state.current
    assert second not in seen
    seen.append(second)
    state.set_labels([second], region="hand")
    qtbot.waitUntil(lambda: w.queue.recomputes >= 2, timeout=20_000)
    assert w.queue.ranking.n_labels == 2 and w.queue.ranking.used == "entropy"
    w.next_btn.click()
    third = state.current
    assert third not in seen
    assert third == w.queue.ids[w.queue.ranking.order[0]]
    assert w.upcoming.count() > 0
    assert not {w.upcoming.item(i).data(256) for i in range(w.upcoming.count())} & set(seen)
    w.close()


def test_next_while_the_dataset_is_still_read_starts_when_it_ends(
        qtbot, make_napari_viewer, dataset, tiny_encoder) -> None:
    from scanqc.io.discover import discover
    from scanqc.widgets._state import entry_row

    viewer = make_napari_viewer()
    state = get_state(viewer)
    w = LabelNextWidget(viewer)
    w.encoder = tiny_encoder
    w.strategy_combo.setCurrentText("examine")
    entries = discover([dataset], root=dataset)
    state.begin_dataset(dataset, None)
    state.add_entries(entries[:3], {e.scan_id: entry_row(e) for e in entries[:3]})
    w.next_btn.click()  # the Dataset dock is still reading: nothing may start yet
    assert w.queue is None and not w._busy and "Waiting" in w.status.text()
    state.add_entries(entries[3:], {e.scan_id: entry_row(e) for e in entries[3:]})
    state.finish_dataset()
    qtbot.waitUntil(lambda: state.current is not None, timeout=20_000)
    assert w.queue is not None and len(w.queue.ids) == N  # the whole dataset, not a part
    assert state.current == w.queue.ids[w.queue.ranking.order[0]]
    w.close()
