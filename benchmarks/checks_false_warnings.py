"""False-warning rate of each QC check on the clean scans of ../shared/data.

Clean = manifest rows with empty ``flags`` and ``decode == ok``: every non-``region_xr_v1``
row (DICOM series read once per folder) plus a fixed random sample of ``region_xr_v1``.

    .venv/bin/python benchmarks/checks_false_warnings.py [--xr-sample 100] [--data DIR]

Prints, per warning code and severity, how many clean scans got it, and the share of
clean scans with a ``high`` warning.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
#: Multi-file DICOM series: rows under these folders are one scan.
SERIES_DIRS = ("pykneer_knee_mri/DESS_echo1", "totalsegmentator_examples/example_ct_dicom",
               "torchio_dicom_series/dicom")


def clean_scan_paths(data: Path, xr_sample: int = 100, seed: int = 0) -> list[Path]:
    """Paths (files or series folders) of the clean scans, region_xr_v1 sampled."""
    with open(data / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    clean = [r for r in rows if not r["flags"].strip() and r["decode"].strip() == "ok"]
    other = [r for r in clean if r["set"] != "region_xr_v1"]
    xr = [r for r in clean if r["set"] == "region_xr_v1"]
    random.Random(seed).shuffle(xr)
    out: list[Path] = []
    seen: set[str] = set()
    for r in other + xr[:xr_sample]:
        p = r["path"]
        for d in SERIES_DIRS:
            if p.startswith(d + "/"):
                p = d
        if p not in seen:
            seen.add(p)
            out.append(data / p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--xr-sample", type=int, default=100)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not (args.data / "manifest.csv").is_file():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    from scanqc.io.load import load_scan
    from scanqc.scoring.checks import max_severity, run_checks

    paths = clean_scan_paths(args.data, args.xr_sample)
    per_code: Counter[tuple[str, str]] = Counter()
    n = n_high = n_err = 0
    reader_codes: set[str] = set()
    for p in paths:
        try:
            scan = load_scan(p)
        except Exception as exc:  # noqa: BLE001
            n_err += 1
            if args.verbose:
                print(f"skip {p.relative_to(args.data)}: {exc}")
            continue
        reader_codes |= {w.code for w in scan.warnings}
        ws = run_checks(scan)
        n += 1
        seen = {(w.code, w.severity) for w in ws}
        per_code.update(seen)
        if max_severity(ws) == "high":
            n_high += 1
        if args.verbose and ws:
            print(p.relative_to(args.data), "|", "; ".join(f"{w.code}/{w.severity}"
                                                            for w in ws))
    print(f"clean scans checked: {n} (unreadable: {n_err})")
    print(f"with a high-severity warning: {n_high} ({n_high / max(n, 1):.1%})")
    print("| code | severity | scans | rate | from reader |")
    print("|---|---|---|---|---|")
    for (code, sev), k in sorted(per_code.items(), key=lambda kv: (-kv[1], kv[0])):
        src = "yes" if code in reader_codes else ""
        print(f"| {code} | {sev} | {k} | {k / max(n, 1):.1%} | {src} |")
    from scanqc.scoring.checks import CHECKS

    hit = {c for c, _ in per_code}
    quiet = sorted(set(CHECKS) - hit - {"brightness", "blurry", "slice_gaps", "clipped"})
    print("checks with no warning on the clean scans: " + ", ".join(quiet)
          + (", dark, bright" if not hit & {"dark", "bright"} else "")
          + (", blurry" if "blurry" not in hit else "")
          + (", clipped" if "clipped" not in hit else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
