"""Run the SIGKILL crash-safety tests with many kills each and print a markdown table.

Each test kills a writer process (label store, batch report in CSV / JSON lines / parquet,
resume cache) with SIGKILL at random moments, ``--iterations`` times in a row, and checks
after every kill that the file opens and holds every change the writer had confirmed.

Usage::

    .venv/bin/python benchmarks/sigkill_repeat.py --iterations 100

Exit status 1 when any test failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTS = (
    ("label store (SQLite)", "tests/test_labels_sigkill.py"),
    ("batch report, CSV", "tests/test_sigkill_batch.py::test_report_survives_sigkill[csv]"),
    ("batch report, JSON lines",
     "tests/test_sigkill_batch.py::test_report_survives_sigkill[json]"),
    ("batch report, parquet",
     "tests/test_sigkill_batch.py::test_report_survives_sigkill[parquet]"),
    ("resume cache (SQLite)", "tests/test_sigkill_batch.py::test_resume_cache_survives_sigkill"),
    ("`scanqc score` end to end, then --resume",
     "tests/test_sigkill_batch.py::test_score_cli_killed_then_resumed"),
)


def main(argv: list[str] | None = None) -> int:
    """Run every SIGKILL test with ``--iterations`` kills; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100, help="kills per test")
    ap.add_argument("-k", default="", help="only the tests whose node id contains this")
    args = ap.parse_args(argv)
    env = dict(os.environ, SCANQC_SIGKILL_ITERATIONS=str(args.iterations))
    rows = []
    failed = 0
    for name, node in TESTS:
        if args.k not in node:
            continue
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", node, "-q", "-p", "no:cacheprovider", "-x"],
            cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        ok = proc.returncode == 0
        failed += not ok
        rows.append((name, node, ok, seconds))
        if not ok:
            print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
    print("| writer | test | kills in a row | result | time |")
    print("|---|---|---|---|---|")
    for name, node, ok, seconds in rows:
        kills = max(1, args.iterations // 10) if "score_cli" in node else args.iterations
        print(f"| {name} | `{node}` | {kills} | {'pass' if ok else 'FAIL'} | "
              f"{seconds:.0f} s |")
    print()
    only = f" -k '{args.k}'" if args.k else ""
    print(f"command: .venv/bin/python benchmarks/sigkill_repeat.py --iterations "
          f"{args.iterations}{only}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, load average at the end "
          f"{', '.join(f'{x:.2f}' for x in load) if load else '?'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
