"""``scanqc region``: train the region probe, or predict the anatomical region of scans."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from scanqc.cli.arg_types import non_negative_int, positive_int


def add_parser(subparsers: Any) -> None:
    """Register ``scanqc region train`` and ``scanqc region predict``."""
    p = subparsers.add_parser(
        "region", help="anatomical region classifier (train, predict)",
        description="Anatomical region of each scan from its pixels, per-slice coverage of "
        "volumes, and disagreement with the header (docs/region.md).")
    sub = p.add_subparsers(dest="region_cmd", metavar="ACTION")
    tr = sub.add_parser(
        "train", help="train the shipped region probe from permissively licensed data",
        description="Embed the permissively licensed, region-labelled files of DATA with "
        "the encoder, train a class-balanced linear probe, evaluate it on a patient-grouped "
        "held-out split and write model.safetensors, metadata.json and MODEL_CARD.md.")
    tr.add_argument("--data", required=True, help="data folder holding manifest.csv")
    tr.add_argument("--out", required=True, help="output model folder")
    tr.add_argument("--encoder", default=None, help="encoder folder (default: bundled)")
    tr.add_argument("--hidden", type=non_negative_int, default=0,
                    help="MLP hidden units (0: linear)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    tr.set_defaults(func=run_train)
    pr = sub.add_parser(
        "predict", help="predict the region of scans",
        description="Print region, confidence, per-slice coverage, header region and "
        "mismatch for each scan found under PATH.")
    pr.add_argument("paths", nargs="+", metavar="PATH")
    pr.add_argument("--probe", default=None, help="probe folder (default: bundled)")
    pr.add_argument("--encoder", default=None, help="encoder folder (default: bundled)")
    pr.add_argument("--tta", action="store_true", help="average with mirrored slices")
    pr.add_argument("--json", action="store_true", help="one JSON object per line")
    pr.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    pr.add_argument("--include-identifiers", action="store_true",
                    help="print folder and file names that hold the patient's name or an ID "
                         "as they are (default: [redacted])")
    pr.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:
    """Run ``scanqc region train``."""
    from pathlib import Path

    import torch

    from scanqc.models.region_probe import train_region_model

    torch.set_num_threads(max(1, int(args.threads)))
    if not (Path(args.data) / "manifest.csv").is_file():
        print(f"scanqc: {args.data}: no manifest.csv (need the development data folder)",
              file=sys.stderr)
        return 2
    command = "scanqc region train " + " ".join(
        shlex.quote(a) for a in ("--data", str(args.data), "--out", str(args.out),
                                 "--hidden", str(args.hidden), "--seed", str(args.seed)))
    meta = train_region_model(args.data, args.out, encoder_dir=args.encoder,
                              hidden=args.hidden, seed=args.seed, command=command)
    ev = meta["evaluation"]
    print(f"wrote {args.out}: {meta['training']['scans']} scans, held-out accuracy "
          f"{ev['accuracy']:.3f} (n={ev['n']}), threshold {meta['threshold']:.3f}")
    for err in meta["training"]["errors"]:
        print(f"skipped {err}", file=sys.stderr)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Run ``scanqc region predict``."""
    import torch

    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan
    from scanqc.io.scan import ScanReadError
    from scanqc.models.region_probe import load_bundled_probe, load_probe, resolve_encoder
    from scanqc.models.weights import ModelLoadError
    from scanqc.scoring.region import predict_region

    torch.set_num_threads(max(1, int(args.threads)))
    try:
        encoder, _ = resolve_encoder(args.encoder)
        probe = load_probe(args.probe) if args.probe else load_bundled_probe()
    except ModelLoadError as exc:
        print(f"scanqc: {exc}", file=sys.stderr)
        return 2
    from scanqc.io.privacy import export_text

    n_ok = 0
    entries = discover(args.paths)
    for entry in entries:
        names = {} if args.include_identifiers else entry.private_names

        def shown(text: str, names: dict[str, str] = names) -> str:
            return export_text(text, names)

        label = shown(entry.name or entry.path)
        if entry.status != "ok":
            print(shown(f"{entry.path}: {entry.status}: {entry.error}"), file=sys.stderr)
            continue
        try:
            scan = load_scan(entry)
            pred = predict_region(scan, encoder, probe, tta=args.tta)
        except (ScanReadError, ValueError) as exc:
            print(shown(f"{entry.path}: {' '.join(str(exc).split())}"), file=sys.stderr)
            continue
        n_ok += 1
        cols = pred.columns()
        if args.json:
            print(json.dumps({"scan_id": entry.scan_id, "name": label, **cols,
                              "warnings": [w.to_dict() for w in pred.warnings]}))
        else:
            flag = "  MISMATCH" if pred.mismatch else ""
            print(f"{label}\t{cols['region']}\t{cols['region_confidence']:.2f}\t"
                  f"{cols['region_coverage']}\theader={cols['header_region'] or '-'}{flag}")
    if not entries:
        print("scanqc: no scans found", file=sys.stderr)
    return 0 if n_ok else 1
