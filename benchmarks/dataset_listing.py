"""Benchmark: list a 5,000-scan folder in the Dataset dock without blocking the UI.

Writes N tiny NIfTI volumes (half ``.nii.gz``, half ``.nii``, 100 per sub-folder) into a
temporary folder (or ``--dir``), opens it in :class:`scanqc.widgets.dataset.DatasetWidget`
inside a shown napari viewer, and measures:

* the time from the click until the first rows show and until all rows are listed
  (discovery in a child process, rows inserted in parts on the GUI thread),
* the largest gap between ticks of a 10 ms ``QTimer`` on the GUI thread (UI blocked), from
  the click until 3 s after the table is listed (the table is scrolled to the bottom at
  that point, so the visible rows' thumbnails load inside the window), also per phase:
  before the first rows (the GUI thread has no scanqc work then), while rows arrive, after,
* full (generation 2) garbage collections of the GUI process in that window, with their
  length (``gc.callbacks``): a CPython pause that is not scanqc code but that its
  allocations can set off,
* the peak resident memory of the GUI process (``ru_maxrss``; the discovery child process
  is separate and small).

Run under Xvfb::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x1024x24" \\
        .venv/bin/python benchmarks/dataset_listing.py --n 5000 [--dir /tmp/bench_ds] [--repeat 3]

* the longest single call of the dock's own GUI-thread handlers (a part inserted, a
  progress update, the end of the listing): scanqc's share of any gap.

``--repeat`` opens the folder again in the same viewer (a later listing replaces the
previous one). Prints a JSON object, a markdown table (one row per listing), the command
and the machine (with the load average before and after: on a shared machine the UI gap
mostly measures the other jobs).
Targets: listed in < 10 s, peak memory < 1 GB, no UI gap > 100 ms. Exit status 0 when met.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ["SCANQC_NOTHREADS"] = "0"

#: Tick of the GUI-thread timer (ms).
TICK_MS = 10
#: Seconds measured after the table is listed (thumbnails of the visible rows load).
AFTER_S = 3.0


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


def machine() -> dict:
    """CPU, cores, load average and library versions."""
    import napari
    import qtpy

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "napari": napari.__version__, "qt": f"{qtpy.API_NAME} {qtpy.QT_VERSION}",
            "platform": platform.platform()}


def run(root: Path, n: int, timeout: float, repeat: int = 1) -> list[dict]:
    """Open ``root`` in the Dataset dock ``repeat`` times; the measured figures of each."""
    import napari
    from qtpy.QtWidgets import QApplication

    from scanqc.widgets.dataset import DatasetWidget

    viewer = napari.Viewer(show=True)
    widget = DatasetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Dataset", area="right")
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    results = []
    for i in range(repeat):
        results.append(listing(app, widget, root, n, timeout))
        results[-1]["listing"] = i + 1
        if i + 1 < repeat:
            widget.table.scrollToTop()
    widget.close()
    viewer.close()
    return results


def listing(app, widget, root: Path, n: int, timeout: float) -> dict:
    """Click "Open" on ``root`` once and measure until 3 s after it is listed."""
    from qtpy.QtCore import QElapsedTimer, QTimer

    gaps: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]
    # phases: before the first part arrives (the GUI thread has no scanqc work then: gaps
    # there are the machine's), while parts arrive, and after the table is listed
    phase = ["before_first_rows"]
    long_gaps: list[tuple[float, int]] = []
    by_phase: dict[str, float] = {}
    t0 = time.perf_counter()

    def tick() -> None:
        now = clock.elapsed()
        gap = now - last[0]
        gaps.append(gap)
        by_phase[phase[0]] = max(by_phase.get(phase[0], 0.0), gap)
        if gap > 50 and len(long_gaps) < 200:
            long_gaps.append((round(time.perf_counter() - t0, 2), gap))
        last[0] = now

    full_gcs: list[tuple[float, float]] = []  # (time since click, ms)
    gc_start = [0.0]

    def on_gc(stage: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if stage == "start":
            gc_start[0] = time.perf_counter()
        else:
            full_gcs.append((round(gc_start[0] - t0, 2),
                             round((time.perf_counter() - gc_start[0]) * 1000, 1)))

    first_at = listed_at = None
    first_part: list[float] = []

    def on_part(_ids: object) -> None:
        if not first_part:
            first_part.append(time.perf_counter() - t0)
            phase[0] = "listing"

    widget.state.entries_added.connect(on_part)
    handler_ms: dict[str, float] = {}
    originals = {}
    for name in ("_on_discovery_chunk", "_on_discovery_progress", "_on_discovered"):
        originals[name] = getattr(widget, name)

        def timed(*a, _fn=originals[name], _name=name, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                ms = (time.perf_counter() - t) * 1000
                handler_ms[_name] = round(max(handler_ms.get(_name, 0.0), ms), 1)

        setattr(widget, name, timed)  # the dock binds them when "Open" is clicked

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    last[0] = clock.elapsed()
    timer.start()
    gc.callbacks.append(on_gc)
    widget.open_folder(root)
    try:
        while time.perf_counter() - t0 < timeout:
            app.processEvents()
            now = time.perf_counter() - t0
            if first_at is None and first_part:
                first_at = first_part[0]
            if (listed_at is None and widget._discovery is None and not widget.state.loading
                    and widget.model.rowCount() >= n):
                listed_at = now
                phase[0] = "after_listed"
                # scroll as a user would: only the visible rows get thumbnails
                widget.table.scrollToBottom()
            if listed_at is not None and now > listed_at + AFTER_S:
                break
            time.sleep(0.001)
    finally:
        timer.stop()
        gc.callbacks.remove(on_gc)
        widget.state.entries_added.disconnect(on_part)
        for name in originals:
            delattr(widget, name)
    load_after = os.getloadavg()
    thumbs = sum(1 for v in widget.model.thumbnails.values() if v is not None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = widget.model.rowCount()
    return {
        "n_files": n,
        "rows_listed": rows,
        "first_rows_s": round(first_at, 2) if first_at is not None else None,
        "listed_s": round(listed_at, 2) if listed_at is not None else None,
        "max_ui_gap_ms": round(max(gaps), 1) if gaps else None,
        "max_ui_gap_ms_by_phase": by_phase,
        "gaps_over_50ms": long_gaps,
        "ticks": len(gaps),
        "full_gc_pauses": full_gcs,
        "longest_handler_ms": handler_ms,
        "thumbnails_loaded": thumbs,
        "peak_rss_mb": round(peak_mb, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
    }


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None, help="reuse/create the folder here")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="open the folder this many times in the same viewer")
    args = parser.parse_args()
    command = "QT_QPA_PLATFORM=xcb xvfb-run -a -s \"-screen 0 1280x1024x24\" " + \
        shlex.join([".venv/bin/python", "benchmarks/dataset_listing.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "ds"
        os.environ["SCANQC_LABELS"] = str(Path(tmp) / "labels.sqlite")  # nothing beside --dir
        if not root.is_dir() or len(list(root.rglob("scan_*"))) != args.n:
            t = time.perf_counter()
            make_dataset(root, args.n)
            print(f"wrote {args.n} files in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        results = run(root, args.n, args.timeout, args.repeat)
        os.environ.pop("SCANQC_LABELS", None)
    for res in results:
        res["ok"] = bool(res["listed_s"] is not None and res["listed_s"] < 10
                         and res["peak_rss_mb"] < 1024 and res["max_ui_gap_ms"] < 100)
    m = machine()
    print(json.dumps({"runs": results, "machine": m, "command": command}, indent=2))
    print("\n| listing | files | first rows (s) | listed (s) | largest UI gap (ms) "
          "| ticks > 50 ms | longest dock handler (ms) | full GCs in window (ms) "
          "| peak RSS (MB) | load avg (1 min) before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        gcs = res["full_gc_pauses"]
        print(f"| {res['listing']} | {res['n_files']} | {res['first_rows_s']} "
              f"| {res['listed_s']} | {res['max_ui_gap_ms']:.0f} "
              f"| {len(res['gaps_over_50ms'])} of {res['ticks']} "
              f"| {max(res['longest_handler_ms'].values(), default=0):.0f} "
              f"| {', '.join(f'{ms:.0f}' for _, ms in gcs) or 'none'} "
              f"| {res['peak_rss_mb']:.0f} "
              f"| {res['load_before'][0]:.1f} / {res['load_after'][0]:.1f} |")
    print(f"\ncommand: {command}\nmachine: {m['cpu']}, {m['cpus']} cores, Python {m['python']},"
          f" napari {m['napari']}, {m['qt']}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
