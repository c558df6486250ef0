"""Long fuzz run of the readers: N malformed inputs through discover + load_scan.

Usage::

    nice -n 10 .venv/bin/python benchmarks/fuzz_long.py --n 10000 --seed 1 [--data ../shared/data]

Uses the same generators and harness as ``tests/fuzz`` (``tests/fuzz/mutations.py``), driven
by ``random.Random(seed)`` instead of hypothesis: case ``i`` is reproducible with
``--seed S --start i --n 1``. Prints counts per outcome and per cause, every failure with
its case number, the slowest cases and the peak RSS; exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz.mutations import (  # noqa: E402
    RandomDraw,
    clear_folder,
    make_case,
    peak_rss_mb,
    real_seeds,
    run_case,
    synthetic_seeds,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="number of cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                    help="shared data folder for real seed files (optional)")
    ap.add_argument("--max-scan-bytes", default=str(256 << 20))
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--no-bombs", action="store_true", help="leave out gzip bombs")
    ap.add_argument("--pipeline", action="store_true",
                    help="also run the checks and the slice preparation on every loaded scan")
    args = ap.parse_args(argv)
    os.environ["SCANQC_MAX_SCAN_BYTES"] = args.max_scan_bytes
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # nibabel/tifffile complain about every bad header

    seeds = dict(synthetic_seeds())
    data = Path(args.data)
    if (data / "manifest.csv").is_file():
        seeds.update(real_seeds(data))
    print(f"seeds: {len(seeds)} ({sum(k.startswith('real:') for k in seeds)} real)", flush=True)

    outcomes: collections.Counter[str] = collections.Counter()
    causes: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    slow: list[tuple[float, int, str]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scanqc-fuzz-") as tmp:
        folder = Path(tmp) / "case"
        folder.mkdir()
        for i in range(args.start, args.start + args.n):
            rng = random.Random(f"{args.seed}:{i}")
            clear_folder(folder)
            case = make_case(RandomDraw(rng), folder, seeds, bombs=not args.no_bombs)
            out = run_case(case, timeout=args.timeout, pipeline=args.pipeline)
            kinds[case.kind.split(":")[0].split("+")[0]] += 1
            slow.append((out.seconds, i, case.kind))
            if out.failures:
                outcomes["FAIL"] += 1
                for f in out.failures:
                    failures.append(f"case {i} ({case.kind}, seed {case.seed}): {f}")
            else:
                res = out.results
                if any(r.startswith("scan") for r in res) and not any(
                    r.startswith("error") for r in res
                ):
                    outcomes["loaded"] += 1
                elif any(r.startswith(("error", "discover_error")) for r in res):
                    outcomes["error (one line)"] += 1
                elif any(r.startswith("discover_skipped") for r in res):
                    outcomes["skipped"] += 1
                else:
                    outcomes["nothing found"] += 1
            for r in set(out.results):
                causes[r] += 1
            if (i - args.start + 1) % 500 == 0:
                print(f"  {i - args.start + 1} cases, {time.perf_counter() - t0:.0f} s, "
                      f"{outcomes['FAIL']} failures", flush=True)
    total = time.perf_counter() - t0
    print(f"\ncases: {args.n} (seed {args.seed}) in {total:.0f} s; "
          f"peak RSS {peak_rss_mb():.0f} MiB")
    print("outcomes:")
    for k, v in outcomes.most_common():
        print(f"  {v:6d}  {k}")
    print("input kinds:")
    for k, v in kinds.most_common():
        print(f"  {v:6d}  {k}")
    print("results (per case, distinct):")
    for k, v in causes.most_common(60):
        print(f"  {v:6d}  {k}")
    print("slowest cases:")
    for s, i, k in sorted(slow, reverse=True)[:5]:
        print(f"  {s:6.2f} s  case {i} ({k})")
    print(f"failures: {len(failures)}")
    for f in failures[:200]:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
