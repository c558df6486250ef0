"""``scanqc train encoder``: SimCLR pretraining of the bundled slice encoder (CPU)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any


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
    enc.add_argument("--epochs", type=int, default=40)
    enc.add_argument("--seed", type=int, default=0)
    enc.add_argument("--batch-size", type=int, default=128)
    enc.add_argument("--lr", type=float, default=2e-3)
    enc.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    enc.add_argument("--per-plane", type=int, default=16,
                     help="slices per plane taken from each volume")
    enc.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


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
