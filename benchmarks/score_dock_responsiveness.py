"""Benchmark: score a real dataset from the Score dock without blocking napari.

Lists ``--data`` (default ``../shared/data``) in the shared dataset state of a shown napari
viewer, marks ``--refs`` chest radiographs of ``region_xr_v1`` as references (label store in
a temporary folder: the dataset is not written to), opens the Score dock with its defaults
(bundled encoder, worker processes) and clicks *Score dataset*. Measures:

* the time until every row is scored and the dock says done,
* the largest gap between ticks of a 10 ms ``QTimer`` on the GUI thread (UI blocked) while
  the engine runs and rows arrive, and how many gaps exceed 100 ms,
* when each gap over 100 ms happened: before the first row (the engine starting in the
  worker thread: its imports hold the GIL), while rows arrive, or at the end,
* then a second run cancelled after ``--cancel-after`` seconds: how long the engine takes to
  stop after the click (the worker thread has returned), and how many rows the dock got.

Run under Xvfb::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x1024x24" \\
        .venv/bin/python benchmarks/score_dock_responsiveness.py [--refs 20]

Prints a JSON object per run, a markdown table, the command and the machine. Exit status 0
when the scored run finished with a row for every entry.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ["SCANQC_NOTHREADS"] = "0"
TICK_MS = 10
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _wait(app, until, timeout: float) -> bool:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        app.processEvents()
        if until():
            return True
        time.sleep(0.002)
    return False


def measure(app, dock, action, timeout: float, cancel_after: float | None = None) -> dict:
    """Run ``action`` (a click) and tick the GUI thread until the dock is no longer running."""
    from qtpy.QtCore import QTimer

    gaps: list[float] = []
    long_gaps: list[tuple[float, float, str]] = []
    last = [time.perf_counter()]
    received: dict[str, int] = {}
    ingest = dock._ingest

    def counting(rows):  # the rows the dock receives during this run
        received.update((str(r["scan_id"]), 1) for r in rows)
        return ingest(rows)

    dock._ingest = counting

    def tick() -> None:
        now = time.perf_counter()
        gap = (now - last[0]) * 1000 - TICK_MS
        gaps.append(gap)
        if gap > 100:
            phase = "end" if dock.run_status != "running" else (
                "rows arriving" if received else "before the first row")
            long_gaps.append((round(now - t0, 2), round(gap), phase))
        last[0] = now

    t0 = time.perf_counter()
    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(TICK_MS)
    action()
    stopped_at = None
    if cancel_after is not None:
        _wait(app, lambda: time.perf_counter() - t0 > cancel_after, cancel_after + 1)
        stopped_at = time.perf_counter()
        dock.cancel_btn.click()
    done = _wait(app, lambda: dock.run_status not in ("running",), timeout)
    t1 = time.perf_counter()
    timer.stop()
    del dock._ingest
    out = {"status": dock.run_status if done else "timeout", "seconds": round(t1 - t0, 2),
           "rows_received": len(received),
           "max_ui_gap_ms": round(max(gaps), 1) if gaps else None,
           "gaps_over_100ms": sum(g > 100 for g in gaps), "ticks": len(gaps),
           "long_gaps": long_gaps}
    if stopped_at is not None:
        out["stop_after_cancel_s"] = round(t1 - stopped_at, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--refs", type=int, default=20)
    ap.add_argument("--cancel-after", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    import napari
    from qtpy.QtWidgets import QApplication

    from scanqc.io.discover import discover
    from scanqc.io.labels import LabelStore
    from scanqc.widgets._state import get_state
    from scanqc.widgets.score import ScoreWidget

    load_before = os.getloadavg()
    entries = discover([str(args.data)], root=str(args.data))
    chest = sorted((e for e in entries if e.status == "ok" and "region_xr_v1/chest" in
                    Path(e.path).as_posix()), key=lambda e: e.path)[: args.refs]
    viewer = napari.Viewer(show=True)
    tmp = tempfile.TemporaryDirectory()
    state = get_state(viewer)
    state.set_dataset(args.data, entries, LabelStore.open(Path(tmp.name) / "labels.sqlite",
                                                          root=args.data))
    state.set_labels([e.scan_id for e in chest], reference=True)
    dock = ScoreWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Score", area="right")
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    runs = {"score": measure(app, dock, dock.score_btn.click, args.timeout)}
    runs["cancelled"] = measure(app, dock, dock.score_btn.click, args.timeout,
                                cancel_after=args.cancel_after)
    dock.close()
    viewer.close()
    tmp.cleanup()
    n = len(entries)
    for name, res in runs.items():
        print(json.dumps({"run": name, "entries": n, "references": len(chest), **res}))
    print("\n| run | entries | status | s | rows received | largest UI gap (ms) | gaps > 100 ms "
          "| stop after Cancel (s) |\n|---|---|---|---|---|---|---|---|")
    for name, res in runs.items():
        print(f"| {name} | {n} | {res['status']} | {res['seconds']} | {res['rows_received']} | "
              f"{res['max_ui_gap_ms']} | {res['gaps_over_100ms']} of {res['ticks']} | "
              f"{res.get('stop_after_cancel_s', '')} |")
    load_after = os.getloadavg()
    print(f"\ncommand: python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}")
    print(f"machine: {os.cpu_count()} CPUs; load average before "
          f"{'/'.join(f'{x:.1f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.1f}' for x in load_after)}")
    ok = runs["score"]["status"] == "done" and runs["score"]["rows_received"] == n
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
