"""Benchmark: list a 5,000-scan folder in the Dataset dock without blocking the UI.

Writes N tiny NIfTI volumes (half ``.nii.gz``, half ``.nii``) into a temporary folder
(or ``--dir``), opens it in :class:`scanqc.widgets.dataset.DatasetWidget` inside a shown
napari viewer, and measures:

* the time until all rows are listed (discovery in a worker + table fill),
* the largest gap between ticks of a 10 ms ``QTimer`` on the GUI thread (UI blocked),
  from the click until the table is listed and the visible thumbnails have loaded,
* the peak resident memory of the process.

Run under Xvfb::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x1024x24" \
        .venv/bin/python benchmarks/dataset_listing.py --n 5000

Targets: listed in < 10 s, peak memory < 1 GB, no UI gap > 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ["SCANQC_NOTHREADS"] = "0"


def make_dataset(root: Path, n: int) -> None:
    """Write ``n`` tiny NIfTI files in sub-folders of 100."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"site_{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".nii.gz" if i % 2 else ".nii"
        data = rng.integers(0, 1000, (8, 8, 4)).astype(np.int16)
        nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1])).to_filename(sub / f"scan_{i:05d}{ext}")


def run(root: Path, n: int, timeout: float) -> dict:
    """Open ``root`` in the Dataset dock and return the measured figures."""
    import napari
    from qtpy.QtCore import QElapsedTimer, QTimer
    from qtpy.QtWidgets import QApplication

    from scanqc.widgets.dataset import DatasetWidget

    viewer = napari.Viewer(show=True)
    widget = DatasetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Dataset", area="right")
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()

    gaps: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]

    phase = ["discovery"]
    long_gaps: list[tuple[float, float]] = []
    by_phase: dict[str, float] = {}

    def tick() -> None:
        now = clock.elapsed()
        gaps.append(now - last[0])
        by_phase[phase[0]] = max(by_phase.get(phase[0], 0.0), now - last[0])
        if now - last[0] > 50:
            long_gaps.append((round(time.perf_counter() - t0, 2), now - last[0]))
        last[0] = now

    t0 = time.perf_counter()
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()

    t0 = time.perf_counter()
    widget.open_folder(root)
    phase[0] = "discovery"
    listed_at = None
    while time.perf_counter() - t0 < timeout:
        app.processEvents()
        if listed_at is None and widget.model.rowCount() >= n:
            listed_at = time.perf_counter() - t0
            phase[0] = "browsing"
            # scroll through the table as a user would: only visible rows get thumbnails
            widget.table.scrollToBottom()
        if listed_at is not None and time.perf_counter() - t0 > listed_at + 3.0:
            break
        time.sleep(0.001)
    timer.stop()
    thumbs = sum(1 for v in widget.model.thumbnails.values() if v is not None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    widget.close()
    viewer.close()
    return {
        "n_files": n,
        "rows_listed": widget.model.rowCount(),
        "listed_s": round(listed_at, 2) if listed_at is not None else None,
        "max_ui_gap_ms": round(max(gaps), 1) if gaps else None,
        "max_ui_gap_ms_by_phase": by_phase,
        "gaps_over_50ms": long_gaps[:20],
        "ticks": len(gaps),
        "thumbnails_loaded": thumbs,
        "peak_rss_mb": round(peak_mb, 1),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None, help="reuse/create the folder here")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "ds"
        if not root.is_dir() or len(list(root.rglob("scan_*"))) != args.n:
            t = time.perf_counter()
            make_dataset(root, args.n)
            print(f"wrote {args.n} files in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        res = run(root, args.n, args.timeout)
        os.environ.pop("SCANQC_LABELS", None)
    res["ok"] = bool(res["listed_s"] is not None and res["listed_s"] < 10
                     and res["peak_rss_mb"] < 1024 and res["max_ui_gap_ms"] < 100)
    print(json.dumps(res, indent=2))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
