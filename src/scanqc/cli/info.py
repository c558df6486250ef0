"""``scanqc info PATH...``: one JSON line per scan found (header only, or ``--load``).

Example::

    scanqc info data/ --root data/ --load > inventory.jsonl
    scanqc info suspicious.dcm --checks     # the QC checks of one file, without the model

Each line: ``scan_id, path, kind, format, modality, shape, spacing, series_description,
status (ok/error/skipped), error, warnings (codes)``. Bad files give ``status: "error"``
with a one-line cause; the exit code is 0 unless the command itself cannot run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scanqc.io.privacy import export_text
from scanqc.io.scan import Scan, ScanEntry, ScanReadError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``info`` sub-command."""
    p = subparsers.add_parser(
        "info",
        help="list the scans found under paths (one JSON line each)",
        description=(
            "List every scan found under PATH (files and folders, recursive): one JSON line "
            "per scan with id, kind, modality, shape, spacing, status and reader warnings. "
            "Never modifies the inputs."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="dataset root for stable scan ids (default: each PATH)")
    p.add_argument("--load", action="store_true",
                   help="also decode pixel data (slower; undecodable pixels -> status error)")
    p.add_argument("--checks", action="store_true",
                   help="also run the QC checks on each scan (implies --load; no model): "
                        "'checks' lists code, severity, message, slices, region and "
                        "advice (what it means); "
                        "'metrics' the image-quality measures")
    p.add_argument("--include-identifiers", action="store_true",
                   help="print folder and file names that hold the patient's name or an ID "
                        "as they are (default: [redacted])")
    p.set_defaults(func=run)
    return p


def _jsonable(v: Any) -> Any:
    if v is None:
        return None
    return [float(x) for x in v] if isinstance(v, (tuple, list)) else v


def _text(text: str, entry: ScanEntry) -> str:
    """``text`` as printed: valid Unicode, names in ``entry.private_names`` redacted."""
    return export_text(text, entry.private_names)


def entry_record(entry: ScanEntry) -> dict[str, Any]:
    """The JSON record of a discovered entry (header information only)."""
    return {
        "scan_id": entry.scan_id,
        "path": _text(entry.path, entry),  # valid Unicode, identifying names redacted
        "n_files": len(entry.paths),
        "name": _text(entry.name, entry),
        "kind": entry.kind,
        "format": entry.format,
        "modality": entry.modality,
        "shape": list(entry.shape) if entry.shape is not None else None,
        "spacing": _jsonable(entry.spacing),
        "series_description": entry.description,
        "status": entry.status,
        "error": _text(entry.error, entry),
        "warnings": [w.code for w in entry.warnings],
    }


def scan_record(entry: ScanEntry, result: Scan | ScanReadError | None) -> dict[str, Any]:
    """The JSON record of an entry after loading (``--load``)."""
    rec = entry_record(entry)
    if isinstance(result, Scan):
        rec.update(
            kind=result.kind,
            modality=result.modality or rec["modality"],
            shape=list(result.data.shape),
            spacing=[float(s) for s in result.spacing],
            dtype=str(result.data.dtype),
            orientation=result.orientation,
            rgb=bool(result.rgb),
            status="ok",
            error="",
            warnings=[w.code for w in result.warnings],
        )
    elif isinstance(result, ScanReadError):
        rec.update(status="error", error=_text(result.cause, entry))
    return rec


def check_record(entry: ScanEntry, scan: Scan) -> dict[str, Any]:
    """``checks`` and ``metrics`` of a loaded scan (``--checks``): the QC checks, no model."""
    import math

    from scanqc.scoring.advice import advice
    from scanqc.scoring.checks import check_scan

    warnings, metrics = check_scan(scan)
    checks = [{**w.to_dict(), "message": _text(w.message, entry), "advice": advice(w.code)}
              for w in warnings]
    finite = {k: round(float(v), 6) for k, v in (metrics or {}).items()
              if isinstance(v, (int, float)) and math.isfinite(float(v))}
    return {"checks": checks, "metrics": finite}


def run(args: argparse.Namespace) -> int:
    """Print one JSON line per scan; return 0 (bad files are reported, not fatal)."""
    out = sys.stdout
    if args.load or args.checks:
        from scanqc.io.load import open_scans

        for entry, result in open_scans(args.paths, root=args.root):
            if args.include_identifiers:
                entry.private_names = {}
            rec = scan_record(entry, result)
            if args.checks and isinstance(result, Scan):
                rec.update(check_record(entry, result))
            out.write(json.dumps(rec) + "\n")
            out.flush()
        return 0
    from scanqc.io.discover import discover

    for entry in discover(args.paths, root=args.root):
        if args.include_identifiers:
            entry.private_names = {}
        out.write(json.dumps(entry_record(entry)) + "\n")
    out.flush()
    return 0
