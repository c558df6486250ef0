"""Screenshot of the Asymmetry dock on a real head MR with a synthetic lesion.

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" \\
        .venv/bin/python benchmarks/asymmetry_dock_screenshot.py

``niivue-demo-images/register/T2w.nii.gz`` (permissive licence) gets a 20 mm lesion of +50 %
on one side (the lesion generator of ``benchmarks/asymmetry.py``), is written to a temporary
folder, opened in the Dataset dock and mapped by the Asymmetry dock (default method); the
window is saved as ``docs/images/asymmetry_dock.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screenshots import close_toasts, wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "niivue-demo-images/register/T2w.nii.gz"


def make_volume(data: Path, out: Path) -> tuple[Path, tuple[int, ...]]:
    """Write the T2w head with one synthetic lesion; return the file and the lesion centre."""
    import nibabel as nib
    from asymmetry import _insert_lesion

    img = nib.load(data / SOURCE)
    vol = np.asarray(img.dataobj, dtype=np.float32)
    sp = tuple(float(s) for s in img.header.get_zooms()[:3])
    # the centre: one hemisphere (file axis 0 is x), above the ventricles
    c = (int(vol.shape[0] * 0.66), int(vol.shape[1] * 0.45), int(vol.shape[2] * 0.68))
    scaled = vol / max(float(vol.max()), 1e-6)
    _insert_lesion(scaled, sp, c, (10.0, 10.0, 10.0), 0.5)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "T2w_with_lesion.nii.gz"
    nib.save(nib.Nifti1Image((scaled * 1000).astype(np.int16), img.affine), path)
    return path, c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    warnings.filterwarnings("ignore", message=".*System theme detection.*")
    import napari
    from qtpy.QtWidgets import QApplication

    from scanqc.widgets.asymmetry import AsymmetryWidget
    from scanqc.widgets.dataset import DatasetWidget

    tmp = Path(tempfile.mkdtemp(prefix="scanqc_asym_"))
    folder = tmp / "heads"
    path, centre = make_volume(args.data, folder)
    print(f"lesion centre (file voxel order x, y, z): {centre}", file=sys.stderr)
    os.environ["SCANQC_LABELS"] = str(tmp / "labels.sqlite")
    viewer = napari.Viewer(title="scanqc - asymmetry", show=False)
    app = QApplication.instance()
    dataset = DatasetWidget(viewer)
    viewer.window.add_dock_widget(dataset, name="Dataset", area="left")
    dock = AsymmetryWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Asymmetry", area="right")
    viewer.window.show()
    viewer.window._qt_window.resize(1600, 1000)
    dataset.open_folder(folder)
    wait(app, lambda: len(dataset.state.entries) >= 1)
    sid = dataset.state.entries[0].scan_id
    dataset.select_scan(sid)
    wait(app, lambda: dataset.state.current == sid and len(viewer.layers) >= 1, 120)
    t0 = time.time()
    dock.run()
    wait(app, lambda: dock.result is not None, 600)
    print(f"Asymmetry dock: {dock.status.text()} ({time.time() - t0:.1f} s)", file=sys.stderr)
    for i in range(dock.regions.count()):
        print("  " + dock.regions.item(i).text(), file=sys.stderr)
    if dock.regions.count():
        dock._on_region_clicked(dock.regions.item(0))
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    close_toasts(viewer, app)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "asymmetry_dock.png"
    viewer.window._qt_window.grab().save(str(target))
    print(target)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
