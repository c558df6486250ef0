"""Benchmark: how long the Dataset dock takes to show the next scan (the arrow-key step).

Opens a folder in :class:`scanqc.widgets.dataset.DatasetWidget` inside a shown napari
viewer, then selects its scans one after the other, in table order, as the down-arrow key
does (``select_scan``: the dock's 60 ms debounce, the read in a worker thread, the image
layer shown), and measures for each scan the time from the selection until its image is
on the canvas (the owned layer carries the scan's id and the GUI thread has drawn it).
Scans that are not readable (errors, skipped DICOMDIR indexes) are left out.

Run under Xvfb::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x1024x24" \\
        .venv/bin/python benchmarks/dataset_open_latency.py [FOLDER] [--n 60]

FOLDER defaults to ../shared/data/region_xr_v1 (521 radiographs); the first ``--n``
readable scans of the table are stepped through, after one warm-up step. Prints a JSON
object per run and a markdown row: median, 90th percentile and maximum latency, the time
spent in :func:`scanqc.widgets._present.show_scan` (median), and how many steps replaced
the image layer instead of updating it.

``--review`` is the review of flagged scans: the Score dock is opened too, the dataset is
scored first (*Score dataset*, kNN fallback without references), and the flagged scans are
stepped through in table order. Besides the image, each step then waits for the dock's
details of the scan (its warnings listed and drawn on the canvas); ``details`` figures are
the time from the selection until they are shown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ["SCANQC_NOTHREADS"] = "0"
DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "region_xr_v1"


def _wait(app, cond, timeout: float) -> bool:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            return False
        app.processEvents()
        time.sleep(0.0005)
    return True


def run(folder: Path, n: int, timeout: float, review: bool = False) -> dict:
    """Step through the first ``n`` readable scans of ``folder``; the measured figures."""
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    import scanqc.widgets.dataset as dataset_mod
    from scanqc.widgets._present import owned_layers
    from scanqc.widgets.dataset import DatasetWidget

    shows: list[float] = []
    real_show = dataset_mod.show_scan

    def timed_show(*a, **k):
        t = time.perf_counter()
        try:
            return real_show(*a, **k)
        finally:
            shows.append(time.perf_counter() - t)

    dataset_mod.show_scan = timed_show
    viewer = napari.Viewer(show=True)
    widget = DatasetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Dataset", area="right")
    app = QApplication.instance()
    widget.open_folder(folder)
    if not _wait(app, lambda: widget._discovery is None and not widget.state.loading
                 and widget.model.rowCount() > 0, timeout):
        raise SystemExit(f"{folder}: not listed within {timeout} s")
    score = None
    if review:
        from scanqc.widgets.score import ScoreWidget

        score = ScoreWidget(viewer)
        viewer.window.add_dock_widget(score, name="Score", area="right")
        score.score_dataset()
        if not _wait(app, lambda: score.run_status not in ("idle", "running"), 600):
            raise SystemExit("scoring did not finish within 600 s")
    ids = [widget.proxy.index(r, 1).data(256 + 2) for r in range(widget.proxy.rowCount())]
    ids = [s for s in ids if widget.state.entry(s) is not None
           and widget.state.entry(s).status == "ok"
           and (score is None or widget.state.rows.get(s, {}).get("flagged"))][: n + 1]
    details: list[float] = []
    layers_seen: set[int] = set()
    latencies: list[float] = []
    missed = 0
    for i, sid in enumerate(ids):
        t0 = time.perf_counter()
        widget.select_scan(sid)

        def shown(sid: str = sid) -> bool:
            return any((ly.metadata.get("scanqc") or {}).get("scan_id") == sid
                       for ly in owned_layers(viewer))

        ok = _wait(app, shown, 30.0)
        app.processEvents()  # the frame with the new image
        if not ok:
            missed += 1
            continue
        if i > 0:
            latencies.append(time.perf_counter() - t0)
        if score is not None and _wait(
                app, lambda sid=sid: score.details is not None and score.details.scan_id == sid,
                30.0):
            app.processEvents()
            if i > 0:
                details.append(time.perf_counter() - t0)
        if i == 0:
            shows.clear()
        layers_seen.update(id(ly) for ly in owned_layers(viewer))
    widget.close()
    viewer.close()
    dataset_mod.show_scan = real_show
    lat = np.asarray(latencies) * 1000
    return {
        "folder": str(folder),
        "steps": int(lat.size),
        "not_shown": missed,
        "median_ms": round(float(np.median(lat)), 1) if lat.size else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 1) if lat.size else None,
        "max_ms": round(float(lat.max()), 1) if lat.size else None,
        "show_scan_median_ms": round(float(np.median(shows)) * 1000, 1) if shows else None,
        "image_layers_created": len(layers_seen),
        "review": review,
        "details_median_ms": round(float(np.median(details)) * 1000, 1) if details else None,
        "details_p90_ms": round(float(np.percentile(details, 90)) * 1000, 1)
        if details else None,
        "load": "/".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--n", type=int, default=60, help="scans stepped through (default 60)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--review", action="store_true",
                    help="score the dataset in the Score dock, then step through the flagged "
                         "scans and also wait for their details")
    args = ap.parse_args()
    if not args.folder.exists():
        print(f"{args.folder}: not found (../shared/data absent?)", file=sys.stderr)
        return 2
    r = run(args.folder, args.n, args.timeout, args.review)
    print(json.dumps(r))
    print("| folder | steps | median | p90 | max | show_scan median | image layers created | "
          "details median / p90 |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {Path(r['folder']).name} | {r['steps']} | {r['median_ms']} ms | {r['p90_ms']} ms "
          f"| {r['max_ms']} ms | {r['show_scan_median_ms']} ms | {r['image_layers_created']} | "
          f"{r['details_median_ms']} / {r['details_p90_ms']} ms |")
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {r['load']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
