"""Cost of the QC checks compared with the time to read each scan.

    .venv/bin/python benchmarks/checks_cost.py [--xr-sample 60] [--data DIR] [--repeat 3]
        [--synthetic 300]

For the clean scans of ../shared/data (see ``checks_false_warnings.py``) plus the bad-data
examples, reads each scan with ``scanqc.io.load.load_scan`` and runs
``scanqc.scoring.checks.run_checks`` (the checks and the quality metrics; best of
``--repeat`` runs each, after one warm-up scan). ``--synthetic N`` adds the first N tiny
scans of the throughput benchmark's synthetic set (24x64x64 NIfTI and 64x64 PNG, see
``throughput.py``) as their own row. Prints a markdown table per data set (summed read
and check time, ratio) and per file for the volumes, the slowest checks, and the load.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checks_false_warnings import DEFAULT_DATA, clean_scan_paths  # noqa: E402

BAD_EXAMPLES = (
    "totalsegmentator_examples/example_ct_sm.nii.gz",
    "totalsegmentator_examples/example_mr_sm.nii.gz",
    "totalsegmentator_examples/example_ct_dicom",
    "torchio_dicom_series/dicom",
    "niivue-demo-images/Iguana.nii.gz",
    "niivue-demo-images/spmMotor.nii.gz",
    "niivue-demo-images/CT_AVM.nii.gz",
    "niivue-demo-images/chris_t1.nii.gz",
    "dicomsamples_jl/MG_Explicit_Little.dcm",
    "pylibjpeg-data/JPEGLosslessP14SV1_1s_1f_u_16_16.dcm",
    "pylibjpeg-data/966_fixed.dcm",
    "pylibjpeg-data/RG2_JLSN.dcm",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--xr-sample", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--synthetic", type=int, default=0,
                    help="also N synthetic tiny scans of benchmarks/throughput.py")
    args = ap.parse_args(argv)
    import os

    load_before = os.getloadavg()
    if not (args.data / "manifest.csv").is_file():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    from scanqc.io.load import load_scan
    from scanqc.scoring.checks import run_checks

    paths = clean_scan_paths(args.data, args.xr_sample)
    paths += [args.data / p for p in BAD_EXAMPLES if (args.data / p) not in paths]
    sets = {p: str(p.relative_to(args.data)).split("/")[0] for p in paths}
    if args.synthetic:
        from throughput import generate

        syn = sorted(p for p in generate(1000).rglob("s*") if p.is_file())[:args.synthetic]
        paths += syn
        sets.update(dict.fromkeys(syn, "synthetic-tiny (throughput.py)"))
    run_checks(load_scan(paths[0]))  # warm-up (imports, caches)
    per_set: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    per_check: dict[str, float] = defaultdict(float)
    rows = []
    for p in paths:
        t_read = float("inf")
        try:
            for _ in range(max(1, args.repeat)):
                t = time.perf_counter()
                scan = load_scan(p)
                t_read = min(t_read, time.perf_counter() - t)
        except Exception:  # noqa: BLE001
            continue
        best = float("inf")
        timings: dict[str, float] = {}
        for _ in range(max(1, args.repeat)):
            tm: dict[str, float] = {}
            t = time.perf_counter()
            run_checks(scan, timings=tm)
            dt = time.perf_counter() - t
            if dt < best:
                best, timings = dt, tm
        for k, v in timings.items():
            per_check[k] += v
        s = per_set[sets[p]]
        s[0] += t_read
        s[1] += best
        s[2] += 1
        if scan.is_volume and not sets[p].startswith("synthetic"):
            rows.append((str(p.relative_to(args.data)), scan.data.shape, t_read, best))
    print("| set | scans | read s | checks s | checks / read |")
    print("|---|---|---|---|---|")
    tot_r = tot_c = 0.0
    tot_n = 0
    synthetic = []
    for name, (r, c, n) in sorted(per_set.items()):
        if name.startswith("synthetic"):
            synthetic.append((name, r, c, n))
            continue
        tot_r, tot_c, tot_n = tot_r + r, tot_c + c, tot_n + int(n)
        print(f"| {name} | {int(n)} | {r:.2f} | {c:.2f} | {c / r:.0%} |")
    print(f"| **all ../shared/data** | {tot_n} | {tot_r:.2f} | {tot_c:.2f} "
          f"| {tot_c / tot_r:.0%} |")
    for name, r, c, n in synthetic:
        print(f"| {name} | {int(n)} | {r:.2f} | {c:.2f} | {c / r:.0%} |")
    print()
    print("| volume | shape | read ms | checks ms | checks / read |")
    print("|---|---|---|---|---|")
    for rel, shape, r, c in rows:
        print(f"| {rel} | {'x'.join(map(str, shape))} | {r * 1e3:.0f} | {c * 1e3:.0f} "
              f"| {c / r:.0%} |")
    print()
    total = sum(per_check.values())
    print("slowest parts: " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(per_check.items(), key=lambda kv: -kv[1])[:5]))
    print(f"\nread and checks: best of {args.repeat} each; load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.1f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
