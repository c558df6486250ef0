"""Which scans does the engine call unlike the references, and why?

    .venv/bin/python benchmarks/unlike_references.py [--set brain_mr|chest_xr|all] [--data DIR]

Runs ``scanqc.batch.engine.score`` (the bundled encoder, 2 workers) with a fixed reference
set over a folder of ../shared/data and prints, per scan, the ``*_unlike_references`` and
reference ``short_coverage`` warnings (scoring/acquisition.py), then the count of scans with
one. Sets:

* ``brain_mr``: 4 structural brain MRs of niivue-demo-images (``chris_t1``, ``chris_PD``,
  ``MR_Gd``, ``register/T1_head_ext2``) over all of niivue-demo-images (EPI, ASL, MRA, CT,
  a template, a lizard ...).
* ``chest_xr``: 10 chest radiographs of region_xr_v1 over the whole of region_xr_v1 (521
  PNG radiographs without pixel size: only the dimension rule can fire, so every finding
  would be a false one).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
CODES = ("modality_unlike_references", "dimension_unlike_references", "region_unlike_references",
         "plane_unlike_references", "resolution_unlike_references", "short_coverage")


def reference_sets(data: Path) -> dict[str, tuple[Path, list[Path]]]:
    """name -> (folder scored, reference paths)."""
    nv = data / "niivue-demo-images"
    xr = data / "region_xr_v1"
    with open(xr / "labels.csv", newline="") as fh:
        chest = sorted(r["file"] for r in csv.DictReader(fh) if r["region"] == "chest")[:10]
    return {
        "brain_mr": (nv, [nv / "chris_t1.nii.gz", nv / "chris_PD.nii.gz", nv / "MR_Gd.nii.gz",
                          nv / "register" / "T1_head_ext2.nii.gz"]),
        "chest_xr": (xr, [xr / f for f in chest]),
    }


def run(folder: Path, refs: list[Path]) -> list[dict]:
    """Score ``folder`` against ``refs`` with the engine; the rows."""
    from scanqc.batch.engine import ScoreConfig, score_all

    return score_all([folder], references=[str(r) for r in refs],
                     config=ScoreConfig(workers=2, include_identifiers=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="all", choices=["all", "brain_mr", "chest_xr"])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    sets = reference_sets(args.data)
    for name, (folder, refs) in sets.items():
        if args.set not in ("all", name):
            continue
        rows = run(folder, refs)
        ref_names = {str(r.relative_to(folder)) for r in refs}
        print(f"\n## {name}: {len(refs)} references, {len(rows)} rows under {folder.name}/\n")
        print("| scan | reference | findings |\n|---|---|---|")
        hits = 0
        for r in sorted(rows, key=lambda r: r["path"]):
            found = [d for d in str(r.get("warnings_detail") or "").split(" | ")
                     if d.split(" ")[0] in CODES and "references" in d]
            hits += bool(found)
            if found or r["path"] in ref_names:
                print(f"| {r['path']} | {'yes' if r['path'] in ref_names else ''} | "
                      f"{'; '.join(found) or '-'} |")
        ok = sum(r["status"] == "ok" for r in rows)
        print(f"\n{hits} of {ok} scored scans unlike the references")
    return 0


if __name__ == "__main__":
    sys.exit(main())
