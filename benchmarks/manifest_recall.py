"""Which of the bad files that ../shared/data's manifest names does a report find?

    .venv/bin/scanqc score ../shared/data --no-labels --include-identifiers -o /tmp/r.csv
    .venv/bin/python benchmarks/manifest_recall.py /tmp/r.csv [--data ../shared/data]

``manifest.csv`` gives every file's bad-data flags (``flags``, ``;``-separated). A file
counts as found when its report row has status ``error`` or ``skipped``, is flagged, or
has a ``warn`` or ``high`` warning, and as flagged (the stricter count) only in the first
two cases. Series rows are matched to their files by folder.
``--include-identifiers`` keeps the folder names the report would otherwise redact, so
that the paths match. Prints a markdown table per flag (files, found, the first missed
files) and the clean files with a finding (their warn and high codes), with a count per
code. Flags that describe a property, not a defect (fractures, augmented copies, lossy or
multi-frame encodings, DICOMDIR indexes) are left out (:data:`NOT_DEFECTS`): a file with
only such flags is clean (the 521 radiographs of region_xr_v1 among them).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NOT_DEFECTS = frozenset({
    "fracture", "augmented", "dicomdir", "phantom?", "lossy", "multiframe", "gzip_wrapped",
    "acr_nema_style", "no_preamble_no_file_meta", "lossy_jpegls", "windowed_uint8",
    "header_modified", "tiny_28x28",
})


def _flagged(row: dict) -> bool:
    return row["status"] in ("error", "skipped") or str(row["flagged"]).lower() == "true"


def _found(row: dict) -> bool:
    return _flagged(row) or row["max_severity"] in ("warn", "high")


def _major(row: dict) -> str:
    """The warn and high warning codes of a row (what made it a finding)."""
    from scanqc.scoring.checks import row_warnings

    return ";".join(dict.fromkeys(f"{w.code} ({w.severity})" for w in row_warnings(row)
                                  if w.severity in ("warn", "high")))


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a CSV report of scanqc score on --data")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    manifest = pd.read_csv(args.data / "manifest.csv", dtype=str).fillna("")
    report = pd.read_csv(args.report, dtype=str).fillna("")
    rows: dict[str, dict] = {}
    series: dict[str, list[dict]] = collections.defaultdict(list)  # folder -> its series
    for rec in report.to_dict("records"):
        rows.setdefault(rec["path"], rec)
        rows.setdefault(rec["path"].split(" - ")[0], rec)  # "folder - SeriesDescription"
        if rec.get("kind") == "series":
            series[str(Path(rec["path"].split(" - ")[0]).parent)].append(rec)

    def find(path: str) -> dict | None:
        if path in rows:
            return rows[path]
        near = series.get(str(Path(path).parent), [])
        if len(near) == 1:  # a file of the one series of its folder (named by its first file)
            return near[0]
        return next((v for k, v in rows.items() if path.startswith(k.rstrip("/") + "/")
                     or k.startswith(path.rstrip("/") + "/")), None)

    stats: dict[str, list] = collections.defaultdict(lambda: [0, 0, 0, []])
    clean, clean_found, unmatched = 0, [], 0
    for path, flags in zip(manifest["path"], manifest["flags"], strict=True):
        row = find(path)
        if row is None:
            unmatched += 1
            continue
        found = _found(row)
        defects = [f for f in flags.split(";") if f and f not in NOT_DEFECTS]
        if not defects:  # no flag, or only properties (fractures, augmented copies ...)
            clean += 1
            if found:
                clean_found.append((path, _major(row) or row["status"]))
        for flag in (f for f in flags.split(";") if f and f not in NOT_DEFECTS):
            s = stats[flag]
            s[0] += 1
            s[1] += found
            s[2] += _flagged(row)
            if not found:
                s[3].append(Path(path).name)
    print("| manifest flag | files | found | of them flagged | missed |\n|---|---|---|---|---|")
    for flag, (n, k, f, missed) in sorted(stats.items(), key=lambda kv: (-kv[1][0], kv[0])):
        print(f"| {flag} | {n} | {k} | {f} | {', '.join(missed[:3])} |")
    n_bad = sum(s[0] for s in stats.values())
    n_found = sum(s[1] for s in stats.values())
    n_flagged = sum(s[2] for s in stats.values())
    print(f"\nfiles with a manifest flag (counted per flag): {n_found} of {n_bad} found, "
          f"{n_flagged} flagged or refused; clean files with a finding: {len(clean_found)} of "
          f"{clean}; manifest rows without a report row: {unmatched}")
    per_code = collections.Counter(c for _p, codes in clean_found for c in codes.split(";"))
    if per_code:
        print("  by finding: " + ", ".join(f"{c} {k}" for c, k in per_code.most_common()))
    for path, codes in clean_found:
        print(f"  clean with a finding: {path} ({codes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
