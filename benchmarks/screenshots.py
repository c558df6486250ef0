"""Screenshots of the Score and Batch docks on a small real dataset (docs/images/*.png).

Builds a temporary dataset of symlinks (nothing is copied into the repository): 36 chest
radiographs of ``../shared/data/region_xr_v1`` plus a few odd ones (knee, hand, skull) and
two synthetic bad images (blank, noise); marks 12 chest images as references, scores the
dataset in the Score dock, opens the worst scan and grabs the window; then runs the Batch
dock on the same folder and grabs it.

Run (under Xvfb):
    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" \
        .venv/bin/python benchmarks/screenshots.py [--data ../shared/data] [--out docs/images]

``--only html`` instead scores ``resources/sample_data`` with ``scanqc score --html`` and
renders the report in headless Chromium (``html_report.png``, 1280x1600; needs the
``chromium`` package; no network, a fresh profile).

Without the bundled encoder weights (``resources/models/encoder``) a seeded random
encoder is used, which the window title says.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SCANQC_NOTHREADS", "0")


def build_dataset(data: Path, dest: Path) -> Path:
    """Symlink 36 chest + 5 odd radiographs and write 2 synthetic bad PNGs into ``dest``."""
    from PIL import Image

    src = data / "region_xr_v1"
    files = sorted(src.glob("*.png")) + sorted(src.glob("*.jpg"))
    chest = [f for f in files if f.name.startswith("chest_")][:36]
    odd = [next(f for f in files if f.name.startswith(p)) for p in
           ("knee_", "hand_", "head_", "shoulder_", "pelvis_")]
    (dest / "chest").mkdir(parents=True)
    (dest / "other").mkdir()
    for f in chest:
        (dest / "chest" / f.name).symlink_to(f)
    for f in odd:
        (dest / "other" / f.name).symlink_to(f)
    rng = np.random.default_rng(0)
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(dest / "other" / "blank.png")
    Image.fromarray(rng.integers(0, 255, (512, 512), dtype=np.uint8)).save(
        dest / "other" / "noise.png")
    return dest


def encoder_overrides() -> tuple[dict, str]:
    """Engine overrides: the bundled encoder when present, else a seeded random one."""
    try:
        from scanqc.models.encoder import load_encoder

        load_encoder("encoder", "cpu")
        return {"device": "cpu"}, "bundled encoder"
    except Exception:  # noqa: BLE001 - weights not there yet
        import torch

        from scanqc.models.encoder import SliceEncoder

        torch.manual_seed(0)
        return {"encoder": SliceEncoder().eval(), "device": "cpu"}, "random encoder (no weights)"


def html_report_shot(out: Path, tmp: Path) -> Path:
    """Score resources/sample_data, render its HTML report in headless Chromium."""
    import shutil
    import subprocess

    report, html = tmp / "sample_report.csv", tmp / "sample_report.html"
    scanqc = Path(sys.executable).with_name("scanqc")
    subprocess.run([str(scanqc), "score", str(ROOT / "resources" / "sample_data"), "--out",
                    str(report), "--html", str(html), "--workers", "1", "--no-progress",
                    "--no-cache"], check=True)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found (apt-get install -y chromium)")
    png = out / "html_report.png"
    profile = tempfile.mkdtemp(prefix="chromium_")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                    f"--screenshot={png}", "--window-size=1280,1600", html.as_uri()],
                   check=True, timeout=120, capture_output=True)
    return png


def close_toasts(viewer, app) -> None:
    """Close napari's notification toasts (backend notices) before a grab."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:
        return
    for w in viewer.window._qt_window.findChildren(NapariQtNotification):
        w.close()
    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)


def wait(app, cond, timeout: float = 300.0) -> None:
    """Process Qt events until ``cond()`` is true (or raise after ``timeout`` seconds)."""
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("timed out")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    ap.add_argument("--only", choices=("docks", "html"), default="docks")
    args = ap.parse_args(argv)
    if args.only == "html":
        args.out.mkdir(parents=True, exist_ok=True)
        print(html_report_shot(args.out, Path(tempfile.mkdtemp(prefix="scanqc_html_"))))
        return 0
    import warnings

    import torch

    torch.set_num_threads(1)
    # keep napari's backend notices out of the picture (they would show as a toast)
    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    warnings.filterwarnings("ignore", message=".*System theme detection.*")
    import napari
    from qtpy.QtWidgets import QApplication

    from scanqc.widgets.batch import BatchWidget
    from scanqc.widgets.dataset import DatasetWidget
    from scanqc.widgets.score import ScoreWidget

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="scanqc_shots_"))
    ds = build_dataset(args.data, tmp / "xr_chest")
    os.environ["SCANQC_LABELS"] = str(tmp / "labels.sqlite")
    overrides, model_text = encoder_overrides()

    viewer = napari.Viewer(title=f"scanqc - {model_text}", show=False)
    viewer.window.resize(1600, 1000)
    app = QApplication.instance()
    dataset = DatasetWidget(viewer)
    viewer.window.add_dock_widget(dataset, name="Dataset", area="left")
    score = ScoreWidget(viewer)
    viewer.window.add_dock_widget(score, name="Score", area="right")
    score.config_overrides = {**overrides, "workers": 1, "max_slices": 32}
    viewer.window.show()
    viewer.window._qt_window.resize(1600, 1000)  # after show: a saved geometry may win
    dataset.open_folder(ds)
    wait(app, lambda: len(dataset.state.entries) >= 40)
    state = dataset.state
    refs = [e.scan_id for e in state.entries if "/chest/" in e.path][:12]
    state.set_labels(refs, reference=True)
    score._update_reference_label()
    t0 = time.time()
    score.score_dataset()
    wait(app, lambda: score.run_status != "running")
    print(f"Score dock: {score.status.text()} ({time.time() - t0:.1f} s)", file=sys.stderr)
    scored = [r for r in score.rows.values() if r.get("status") == "ok"]
    real = [r for r in scored if r["name"] not in ("blank.png", "noise.png")
            and "other/blank" not in (r.get("path") or "")
            and "other/noise" not in (r.get("path") or "")]
    # bad_score saturates at 1: the largest distance breaks ties
    worst = max(real or scored, key=lambda r: (r["bad_score"], r.get("mean_distance") or 0))
    for r in sorted(scored, key=lambda r: -r["bad_score"])[:14]:
        print(f"  {r['bad_score']:.3f} {r.get('mean_distance') or 0:.3f} "
              f"{'F' if r.get('flagged') else ' '} {r.get('path')}", file=sys.stderr)
    dataset.select_scan(worst["scan_id"])
    wait(app, lambda: score.details is not None and state.current == worst["scan_id"], 120)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    close_toasts(viewer, app)
    viewer.window._qt_window.grab().save(str(args.out / "score_dock.png"))

    batch = BatchWidget(viewer)
    viewer.window.remove_dock_widget(score)
    viewer.window.add_dock_widget(batch, name="Batch", area="right")
    batch.config_overrides = overrides
    batch.workers_spin.setValue(1)
    batch.out_edit.setText(str(tmp / "report.csv"))
    batch.html_edit.setText(str(tmp / "report.html"))
    batch.run()
    wait(app, lambda: batch.run_status != "running")
    print(f"Batch dock: {batch.status.text()}", file=sys.stderr)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    close_toasts(viewer, app)
    viewer.window._qt_window.grab().save(str(args.out / "batch_dock.png"))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
