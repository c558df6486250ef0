"""``scanqc train``: the bundled models.

``scanqc train encoder`` (SimCLR pretraining of the slice encoder, CPU) and ``scanqc train
asymmetry`` (fine-tune the asymmetry patch encoder on the user's volumes).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from scanqc.cli.arg_types import positive_float, positive_int


def add_parser(subparsers: Any) -> None:
    """Register ``scanqc train``."""
    p = subparsers.add_parser(
        "train", help="train the bundled models (self-supervised encoder)",
        description="Train scanqc's bundled models from permissively licensed data.")
    sub = p.add_subparsers(dest="train_what", metavar="MODEL")
    enc = sub.add_parser(
        "encoder", help="SimCLR pretraining of the slice encoder",
        description="Select the permissively licensed files of DATA (manifest.csv), cache "
        "their slices and train the SliceEncoder with SimCLR. Reproducible from --seed.")
    enc.add_argument("--data", required=True, help="data folder holding manifest.csv")
    enc.add_argument("--out", required=True, help="output model folder")
    enc.add_argument("--epochs", type=positive_int, default=40)
    enc.add_argument("--seed", type=int, default=0)
    enc.add_argument("--batch-size", type=positive_int, default=128)
    enc.add_argument("--lr", type=positive_float, default=2e-3)
    enc.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    enc.add_argument("--per-plane", type=positive_int, default=16,
                     help="slices per plane taken from each volume")
    enc.set_defaults(func=run)
    asym = sub.add_parser(
        "asymmetry", help="fine-tune the asymmetry patch encoder on your own volumes",
        description="Fine-tune the Siamese asymmetry patch encoder (default: the bundled one) "
        "on the volumes under PATH (same soft-label objective, lower learning rate) and write "
        "a model folder for `scanqc asymmetry --model DIR`. The encoder is used by image pairs "
        "(mammograms) and by the siamese:sum / siamese:w0.25 methods; the default volume map "
        "does not use it (docs/asymmetry.md).")
    asym.add_argument("paths", nargs="+", metavar="PATH", help="volumes (files or folders)")
    asym.add_argument("--out", required=True, help="output model folder")
    asym.add_argument("--model", default=None, metavar="DIR",
                      help="start from this model folder (default: the bundled model)")
    asym.add_argument("--steps", type=positive_int, default=200)
    asym.add_argument("--seed", type=int, default=0)
    asym.set_defaults(func=run_asymmetry)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_asymmetry(args: argparse.Namespace) -> int:
    """Run ``scanqc train asymmetry``: fine-tune on the user's volumes, write the model."""
    import json
    import time

    from scanqc.io.load import open_scans
    from scanqc.io.scan import ScanReadError
    from scanqc.models.asymmetry_net import load_model, save_model
    from scanqc.models.asymmetry_train import fine_tune
    from scanqc.scoring.asymmetry import prepare_pair_volume

    t0 = time.time()
    base, info = load_model(args.model)
    vols, used = [], []
    for entry, scan in open_scans(args.paths):
        if scan is None or isinstance(scan, ScanReadError):
            print(f"skipped {entry.path}: {scan or entry.error or 'not an image'}",
                  file=sys.stderr)
            continue
        if scan.spatial_ndim != 3 or scan.spatial_shape[0] < 8:
            print(f"skipped {entry.path}: not a volume of at least 8 slices", file=sys.stderr)
            continue
        try:
            vols.append(prepare_pair_volume(scan))
        except (ValueError, RuntimeError, MemoryError) as exc:
            print(f"skipped {entry.path}: {' '.join(str(exc).split())}", file=sys.stderr)
            continue
        used.append(entry.path)
        del scan
    if not vols:
        print("scanqc train asymmetry: no usable volume under PATH", file=sys.stderr)
        return 1

    def progress(done: int, total: int, message: str) -> None:
        if done % 25 == 0 or done == total:
            print(f"{done}/{total} {message}", file=sys.stderr, flush=True)

    model, hist = fine_tune(base, vols, steps=args.steps, seed=args.seed, progress=progress)
    meta = {
        "name": "asymmetry",
        "description": "asymmetry patch encoder fine-tuned by scanqc train asymmetry",
        "fine_tuned_from": str(args.model or "bundled"),
        "base_sha256": getattr(info, "sha256", None),
        "seed": args.seed,
        "steps": args.steps,
        "training_files": used,
        "final_loss_a": float(sum(hist.loss_a[-20:]) / max(1, len(hist.loss_a[-20:]))),
        "train_seconds": round(time.time() - t0, 1),
    }
    out = save_model(model, args.out, meta)
    print(json.dumps({"out": str(out), "volumes": len(used), "steps": args.steps,
                      "final_loss_a": round(meta["final_loss_a"], 4),
                      "seconds": meta["train_seconds"]}))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``scanqc train encoder``."""
    from pathlib import Path

    from scanqc.models.ssl import SSLConfig, train_encoder

    if not (Path(args.data) / "manifest.csv").is_file():
        raise ValueError(f"{args.data}: no manifest.csv (need the development data folder)")
    config = SSLConfig(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                       lr=args.lr, threads=args.threads, per_plane=args.per_plane)
    parts = ["--data", str(args.data), "--out", str(args.out), "--epochs", str(args.epochs),
             "--seed", str(args.seed)]
    defaults = {"batch_size": 128, "lr": 2e-3, "threads": 2, "per_plane": 16}
    for key, default in defaults.items():
        if getattr(args, key) != default:
            parts += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    command = "scanqc train encoder " + " ".join(shlex.quote(a) for a in parts)

    def say(msg: str) -> None:
        print(msg, flush=True)

    meta = train_encoder(args.data, args.out, config, log_fn=say, command=command)
    tr = meta["training"]
    print(f"wrote {args.out}: final loss {tr['final_loss']:.4f}, "
          f"{meta['weights_bytes'] / 1e6:.1f} MB, {tr['wall_time_s'] / 60:.1f} min, "
          f"1-NN region accuracy {tr['knn_region_accuracy']}", file=sys.stdout)
    return 0
