"""Screenshot of the Dataset dock on real data (docs/images/dataset_dock.png).

Builds a temporary dataset of symlinks into ``../shared/data`` (nothing is copied into the
repository): 8 radiographs of ``region_xr_v1`` (chest, knee, hand, shoulder, head), three
NIfTI volumes (TotalSegmentator CT and MR, a niivue head MR) and two DICOM series (the
20-slice TotalSegmentator CT, and torchio's 17-slice brain series whose header says CT
although the pixels are MR). Marks two chest radiographs as references, the CT volume
good and the torchio series bad (reason ``other``, with a note), opens that series in a
shown napari viewer (layer list and controls hidden, for room) and grabs the whole window
(dock, table, canvas and banner).

Run (under Xvfb)::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" \\
        .venv/bin/python benchmarks/dataset_dock_screenshot.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from screenshots import wait  # same folder: benchmarks/screenshots.py

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SCANQC_NOTHREADS", "0")

RADIOGRAPHS = {"chest_": 3, "knee_": 2, "hand_": 1, "shoulder_": 1, "head_": 1}
VOLUMES = ("totalsegmentator_examples/example_ct_sm.nii.gz",
           "totalsegmentator_examples/example_mr_sm.nii.gz",
           "niivue-demo-images/chris_PD.nii.gz")
SERIES = {"ct_abdomen_series": "totalsegmentator_examples/example_ct_dicom",
          "brain_series_header_says_ct": "torchio_dicom_series/dicom"}


def build_dataset(data: Path, dest: Path) -> Path:
    """Symlink radiographs, NIfTI volumes and DICOM series folders into ``dest``."""
    src = data / "region_xr_v1"
    files = sorted(src.glob("*.png"))
    (dest / "radiographs").mkdir(parents=True)
    for prefix, n in RADIOGRAPHS.items():
        for f in [f for f in files if f.name.startswith(prefix)][:n]:
            (dest / "radiographs" / f.name).symlink_to(f)
    (dest / "volumes").mkdir()
    for rel in VOLUMES:
        (dest / "volumes" / Path(rel).name).symlink_to(data / rel)
    (dest / "dicom").mkdir()
    for name, rel in SERIES.items():
        (dest / "dicom" / name).symlink_to(data / rel, target_is_directory=True)
    return dest


def settle(app, seconds: float) -> None:
    """Process events for ``seconds``."""
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def close_notifications(viewer) -> None:
    """Close napari's notification toasts (e.g. the PyQt5 deprecation notice)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dataset_dock.png")
    args = ap.parse_args(argv)
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from scanqc.widgets.dataset import DatasetWidget

    tmp = Path(tempfile.mkdtemp(prefix="scanqc_dock_"))
    ds = build_dataset(args.data, tmp / "mixed_study")
    os.environ["SCANQC_LABELS"] = str(tmp / "labels.sqlite")

    viewer = napari.Viewer(title="scanqc - Dataset dock", show=True)
    viewer.window.resize(1900, 1000)
    viewer.window._qt_viewer.dockLayerControls.hide()  # room for the canvas and the table
    viewer.window._qt_viewer.dockLayerList.hide()
    app = QApplication.instance()
    dock = DatasetWidget(viewer)
    dock_widget = viewer.window.add_dock_widget(dock, name="Dataset", area="right")
    viewer.window._qt_window.resizeDocks([dock_widget], [1000], Qt.Horizontal)
    dock.open_folder(ds)
    wait(app, lambda: dock._discovery is None and not dock.state.loading
         and dock.model.rowCount() > 0)
    state = dock.state
    by_name = {Path(r["name"]).name: sid for sid, r in state.rows.items()}
    by_path = {e.name: e.scan_id for e in state.entries}
    chest = sorted(n for n in by_name if n.startswith("chest_"))
    state.set_labels([by_name[chest[0]], by_name[chest[1]]], label="reference")
    ct = next(sid for name, sid in by_path.items() if name.endswith("example_ct_sm.nii.gz"))
    state.set_labels([ct], label="good", region="abdomen_pelvis")
    bad = next(sid for name, sid in by_path.items() if "brain_series_header_says_ct" in name)
    state.set_labels([bad], label="bad", reason="other",
                     note="header says CT, pixels are T1 MR")
    dock.table.setFocus()
    dock.select_scan(bad)
    wait(app, lambda: any(ly.metadata.get("scanqc", {}).get("scan_id") == bad
                          for ly in viewer.layers))
    settle(app, 3.0)  # thumbnails of the visible rows, the canvas
    close_notifications(viewer)
    settle(app, 0.5)
    print(dock.status.text(), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.grab().save(str(args.out))
    print(f"wrote {args.out}", file=sys.stderr)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
