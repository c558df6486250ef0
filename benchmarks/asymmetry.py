"""Asymmetry benchmark (and the recipe that trains the bundled asymmetry model).

Usage (from the repository root)::

    .venv/bin/python benchmarks/asymmetry.py train   # writes src/scanqc/resources/models/asymmetry
    .venv/bin/python benchmarks/asymmetry.py bench   # markdown table to stdout

``bench`` inserts synthetic lesions (spheres/ellipsoids 5-30 mm, hyper- and hypo-intense,
+-20..60 %, smooth edges) on one side of real head volumes from ../shared/data and measures,
for the Siamese map and the intensity-difference baseline:

* localisation: the heatmap peak lies inside the lesion (correct side), and inside the lesion
  or its mirror image (side-agnostic);
* AUC of the scan-level score, lesion copies vs lesion-free copies (different noise draws).

Everything is seeded. ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "niivue-demo-images"

#: Permissive (BSD-2 repository licence / MNI template licence) head volumes: training.
TRAIN_FILES = {
    "register/MNI152_T1_2mm.nii.gz": "FSL MNI152 template licence (permissive, COPYING_EXT.txt)",
    "register/T1_head_ext2.nii.gz": "BSD-2-Clause (niivue-demo-images)",
    "register/T2w.nii.gz": "BSD-2-Clause (niivue-demo-images)",
    "register/dwi.nii.gz": "BSD-2-Clause (niivue-demo-images)",
    "register/fmri.nii.gz": "BSD-2-Clause (niivue-demo-images)",
    "MR_Gd.nii.gz": "BSD-2-Clause repository; figshare skull-stripped CE-MRI (Lindner 2018)",
    "CT_AVM.nii.gz": "BSD-2-Clause repository; PRISM database (IbisNeuronav)",
}
#: CC BY-NC volumes: evaluation only (never used for training, never shipped).
EVAL_ONLY = ["chris_t1.nii.gz", "chris_PD.nii.gz"]


def _load(rel: str):
    from scanqc.io.load import load_scan

    return load_scan(DATA / rel)


def train(args: argparse.Namespace) -> int:
    """Train the bundled model on the permissive volumes and write it with its metadata."""
    import torch

    from scanqc.models.asymmetry_net import save_model
    from scanqc.models.asymmetry_train import train_siamese
    from scanqc.scoring.asymmetry import prepare_pair_volume

    torch.set_num_threads(1)
    t0 = time.time()
    vols = []
    for rel in TRAIN_FILES:
        scan = _load(rel)
        vols.append(prepare_pair_volume(scan))
        print(f"prepared {rel}: {vols[-1].work.shape}", file=sys.stderr)
    model, hist = train_siamese(
        vols,
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        progress=lambda d, t, m: print(f"{d}/{t} {m}", file=sys.stderr) if d % 50 == 1 else None,
    )
    meta = {
        "name": "asymmetry",
        "description": "Siamese patch encoder for contralateral asymmetry (GMM soft labels, "
        "two cross-regularised networks); see MODEL_CARD.md",
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "training_files": [
            {"path": f"niivue-demo-images/{k}", "licence": v} for k, v in TRAIN_FILES.items()
        ],
        "final_loss_a": float(np.mean(hist.loss_a[-20:])),
        "mean_soft_label_last": float(np.mean(hist.mean_soft_label[-20:])),
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    save_model(model, out, meta)
    print(json.dumps({k: meta[k] for k in ("final_loss_a", "train_seconds")}))
    return 0


def _insert_lesion(norm: np.ndarray, sp, center, radii_mm, contrast: float) -> np.ndarray:
    """Multiply ``norm`` by ``1 + contrast`` inside a smooth-edged ellipsoid; return the mask."""
    zz, yy, xx = np.ogrid[: norm.shape[0], : norm.shape[1], : norm.shape[2]]
    r = np.sqrt(
        ((zz - center[0]) * sp[0] / radii_mm[0]) ** 2
        + ((yy - center[1]) * sp[1] / radii_mm[1]) ** 2
        + ((xx - center[2]) * sp[2] / radii_mm[2]) ** 2
    )
    edge = 1.5 / max(min(radii_mm), 1.0)  # ~1.5 mm soft edge
    weight = 1.0 / (1.0 + np.exp((r - 1.0) / edge))
    norm *= (1.0 + contrast * weight).astype(np.float32)
    return r <= 1.0


def bench(args: argparse.Namespace) -> int:
    """Run the synthetic-lesion benchmark and print a markdown table."""
    import torch
    from sklearn.metrics import roc_auc_score

    from scanqc.io.intensity import normalize
    from scanqc.io.scan import Scan
    from scanqc.models.asymmetry_net import load_model
    from scanqc.scoring.asymmetry import (
        _prepare_volume,
        asymmetry_map,
        intensity_difference_map,
    )
    from scanqc.scoring.midplane import mirror_volume

    torch.set_num_threads(1)
    model = load_model(args.model)[0] if args.model else load_model()[0]
    rng = np.random.default_rng(args.seed)
    files = list(args.files or [*EVAL_ONLY, *list(TRAIN_FILES)[: args.n_train_vols]])
    rows = []
    t0 = time.time()
    for rel in files:
        scan = _load(rel)
        g = scan.gray()
        if g.ndim != 3:
            continue
        sp = tuple(float(s) for s in scan.spacing)
        base = normalize(g, scan.modality)
        prep = _prepare_volume(Scan(base, sp, scan.affine, "volume"), None)
        plane = prep.plane
        # candidate centres: well inside the brain/head mask, >= r + 5 mm from the plane
        mask = prep.mask
        from scipy import ndimage

        inner = ndimage.binary_erosion(mask, iterations=3)
        cand = np.argwhere(inner)
        n = np.asarray(plane.normal)
        ctr = (np.asarray(mask.shape) - 1) / 2.0
        dist_mm = ((cand - ctr) * np.asarray(sp)) @ n - plane.offset_mm
        for k in range(args.per_volume):
            size = float(rng.choice([5, 8, 12, 16, 20, 25, 30]))
            radii = size / 2 * rng.uniform(0.7, 1.3, size=3)
            radii *= (size / 2) / np.exp(np.log(radii).mean())
            contrast = float(rng.choice([-1, 1]) * rng.choice([0.2, 0.3, 0.4, 0.5, 0.6]))
            ok = np.abs(dist_mm) > radii.max() + 5
            if not ok.any():
                continue
            c = cand[ok][rng.integers(ok.sum())]
            vol = base.copy()
            les = _insert_lesion(vol, sp, c, radii, contrast)
            mir_les = mirror_volume(les.astype(np.float32), plane, order=0) > 0.5
            noise = float(rng.uniform(0.005, 0.02))
            vol += rng.normal(0, noise, vol.shape).astype(np.float32)
            clean = base + rng.normal(0, noise, base.shape).astype(np.float32)
            for lesion_copy, v in ((True, vol), (False, clean)):
                s = Scan(np.clip(v, 0, 1), sp, scan.affine, "volume")
                for meth in ("siamese", "intensity"):
                    if meth == "siamese":
                        r = asymmetry_map(s, model, plane=plane)
                    else:
                        r = intensity_difference_map(s, plane=plane)
                    peak = np.unravel_index(int(np.argmax(r.heatmap)), r.heatmap.shape)
                    speak = np.unravel_index(int(np.argmax(r.symmetric_map)), r.heatmap.shape)
                    rows.append(
                        {
                            "file": rel,
                            "size": size,
                            "contrast": contrast,
                            "lesion": lesion_copy,
                            "method": meth,
                            "score": r.score,
                            "hit": bool(les[peak]) if lesion_copy else None,
                            "hit_either": bool(les[speak] or mir_les[speak])
                            if lesion_copy
                            else None,
                        }
                    )
            print(f"{rel} #{k} size {size} c {contrast:+.1f} ({time.time() - t0:.0f}s)",
                  file=sys.stderr)
    import pandas as pd

    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    bins = [(5, 8, "5-8 mm"), (10, 16, "10-16 mm"), (20, 30, "20-30 mm"), (10, 30, ">= 10 mm")]
    lines = [
        "| lesion size | method | n | peak in lesion (side) | peak in lesion or mirror | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for lo, hi, name in bins:
        for meth in ("siamese", "intensity"):
            d = df[df.method == meth]
            les = d[d.lesion & (d["size"] >= lo) & (d["size"] <= hi)]
            neg = d[~d.lesion & (d["size"] >= lo) & (d["size"] <= hi)]
            if len(les) == 0:
                continue
            y = np.r_[np.ones(len(les)), np.zeros(len(neg))]
            auc = roc_auc_score(y, np.r_[les.score, neg.score]) if len(neg) else float("nan")
            lines.append(
                f"| {name} | {meth} | {len(les)} | {les.hit.mean():.0%} | "
                f"{les.hit_either.mean():.0%} | {auc:.2f} |"
            )
    table = "\n".join(lines)
    print(table)
    took = time.time() - t0
    print(f"\nfiles: {', '.join(files)}; seed {args.seed}; {took:.0f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch", type=int, default=48)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=str(ROOT / "src/scanqc/resources/models/asymmetry"))
    t.set_defaults(func=train)
    b = sub.add_parser("bench")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--per-volume", type=int, default=8)
    b.add_argument("--n-train-vols", type=int, default=2)
    b.add_argument("--files", nargs="*")
    b.add_argument("--model", default=None)
    b.add_argument("--csv", default=None)
    b.set_defaults(func=bench)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
