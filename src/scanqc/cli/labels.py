"""``scanqc labels``: export and import the label store of a dataset as CSV.

* ``scanqc labels export DATASET --out labels.csv [--store PATH] [--include-identifiers]``
* ``scanqc labels import DATASET labels.csv [--store PATH]``

The store defaults to ``<dataset_parent>/<dataset_name>.scanqc-labels.sqlite`` (or
``$SCANQC_LABELS``); see docs/labels.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scanqc.io.labels import LabelStore, default_store_path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``scanqc labels`` and its ``export``/``import`` sub-commands."""
    parser = subparsers.add_parser(
        "labels",
        help="export or import the reference/good/bad labels of a dataset (CSV)",
        description="Export or import the labels kept in a dataset's label store.",
    )
    sub = parser.add_subparsers(dest="labels_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    exp = sub.add_parser("export", help="write the labels to a CSV file (no identifiers)")
    exp.add_argument("dataset", type=Path, help="dataset root folder")
    exp.add_argument("--out", "-o", type=Path, required=True, help="CSV file to write")
    exp.add_argument("--store", type=Path, default=None,
                     help="label store (default: beside the dataset, or $SCANQC_LABELS)")
    exp.add_argument("--include-identifiers", action="store_true",
                     help="add an abs_path column (may contain names; off by default)")
    exp.set_defaults(func=run_export)

    imp = sub.add_parser("import", help="apply labels from a CSV file to the dataset's store")
    imp.add_argument("dataset", type=Path, help="dataset root folder (discovered to match paths)")
    imp.add_argument("csv", type=Path,
                     help="CSV with path or scan_id, label, reason, region, note")
    imp.add_argument("--store", type=Path, default=None,
                     help="label store (default: beside the dataset, or $SCANQC_LABELS)")
    imp.set_defaults(func=run_import)
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Write the store of ``args.dataset`` to ``args.out``."""
    store_path = default_store_path(args.dataset, args.store)
    if not store_path.is_file():
        raise ValueError(f"{store_path}: no label store (label some scans first, or --store)")
    sources = None
    if args.include_identifiers and Path(args.dataset).is_dir():
        # the store keeps paths with identifying names redacted: the files themselves
        # give the real ones back (scan_id -> file or series folder)
        from scanqc.io.discover import discover

        sources = {}
        for e in discover([args.dataset], root=args.dataset):
            series = e.kind == "series" and len(e.paths) > 1
            sources[e.scan_id] = os.path.abspath(os.path.dirname(e.path) if series else e.path)
    with LabelStore.open(store_path) as store:
        n = store.export_csv(args.out, include_identifiers=args.include_identifiers,
                             sources=sources)
    print(f"wrote {n} labels to {args.out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Discover ``args.dataset`` and apply the labels of ``args.csv`` to its store."""
    from scanqc.io.discover import discover

    if not args.dataset.is_dir():
        raise ValueError(f"{args.dataset}: not a folder")
    if not args.csv.is_file():
        raise ValueError(f"{args.csv}: no such file")
    entries = discover([args.dataset], root=args.dataset)
    store_path = default_store_path(args.dataset, args.store)
    with LabelStore.open(store_path, root=args.dataset) as store:
        res = store.import_csv(args.csv, entries, root=args.dataset)
    print(f"{res.matched} rows matched, {len(res.unmatched)} unmatched "
          f"({len(entries)} scans found); store: {store_path}")
    for name in res.unmatched[:20]:
        print(f"  unmatched: {name}", file=sys.stderr)
    if len(res.unmatched) > 20:
        print(f"  ... and {len(res.unmatched) - 20} more", file=sys.stderr)
    return 0
