"""Asymmetry on real mammogram pairs: mini-MIAS lesion coordinates (issue 9).

Usage (from the repository root)::

    .venv/bin/python benchmarks/asymmetry_mias.py [--data ../shared/data/mini_mias_subset]
        [--png docs/images/asymmetry_mias.png]

mini-MIAS stores the two MLO views of a woman as consecutive numbers (mdb001/mdb002, ...);
``../shared/data/mini_mias_subset`` holds three complete pairs (001/002, 003/004, 005/006;
023 and 028 have no partner there). ``labels_all_322.csv`` gives each abnormality's centre
``(x, y)`` and radius ``r`` in pixels of the 1024 x 1024 image, with ``y`` counted from the
*bottom* row (the MIAS convention); the images are 200 micron pixels.

For every pair, :func:`scanqc.scoring.asymmetry.asymmetry_pair` (the bundled Siamese patch
encoder, foreground boxes aligned, the partner mirrored) gives one heatmap per image; the
baseline is the plain mirrored intensity difference ``|A - mirror(B)|`` on the same aligned
pair, smoothed as the method smooths and restricted to the method's mask (``pair_mask``:
the largest foreground component of each image, intersected, eroded by 8 mm).
Reported per image with an abnormality: whether the heatmap peak lies inside a lesion circle
(``r`` from the labels); per image: the image-level score (maximum of its own heatmap), and
the AUC of that score, images with an abnormality against normal images. MIAS is research
use only: evaluation here, never training.

The sample is tiny (three pairs, four lesions, three normal images); it shows behaviour on
real film mammograms, not a rate to quote without that caveat.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "mini_mias_subset"
#: Complete left/right pairs present in the subset (odd number first).
PAIRS = (("mdb001", "mdb002"), ("mdb003", "mdb004"), ("mdb005", "mdb006"))
#: mini-MIAS pixel size (mm).
PIXEL_MM = 0.2


def lesions(data: Path) -> dict[str, list[tuple[float, float, float]]]:
    """``{name: [(row, col, radius px), ...]}`` from ``labels_all_322.csv`` (rows flipped)."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    with open(data / "labels_all_322.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            name = rec["Name"].strip()
            out.setdefault(name, [])
            if rec["x"].strip() and rec["y"].strip() and rec["r"].strip():
                out[name].append((1024 - float(rec["y"]), float(rec["x"]), float(rec["r"])))
    return out


def _load(path: Path):
    from scanqc.io.load import load_scan
    from scanqc.io.scan import Scan

    s = load_scan(path)
    # the PGM carries no pixel size: mini-MIAS is 200 micron
    return Scan(s.data, (PIXEL_MM, PIXEL_MM), np.diag([PIXEL_MM, PIXEL_MM, 1.0, 1.0]),
                "image", modality=s.modality, paths=s.paths, name=s.name)


def baseline_pair(left, right):
    """Plain mirrored intensity difference for an aligned pair: (heat left, heat right)."""
    from scanqc.io.intensity import normalize
    from scanqc.scoring import asymmetry as A

    ln = normalize(left.gray(), left.modality)
    rn = np.ascontiguousarray(normalize(right.gray(), right.modality)[:, ::-1])
    box_l = A._bbox(A._largest_component(A._foreground(ln[None])[0]))
    box_r = A._bbox(A._largest_component(A._foreground(rn[None])[0]))
    sp3 = (1.0, PIXEL_MM, PIXEL_MM)
    out = []
    for a, b in ((ln, A._align(rn, box_r, ln.shape, box_l)),
                 (rn, A._align(ln, box_l, rn.shape, box_r))):
        mask = A.pair_mask(a, b, (PIXEL_MM, PIXEL_MM))  # the method's own mask
        out.append((A._smooth((np.abs(a - b) * mask[0])[None], sp3) * mask)[0])
    return out[0], out[1][:, ::-1]


def _inside(peak: tuple[int, int], les: list[tuple[float, float, float]]) -> bool:
    return any((peak[0] - r0) ** 2 + (peak[1] - c0) ** 2 <= rad**2 for r0, c0, rad in les)


def _auc(pos: list[float], neg: list[float]) -> float:
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (len(pos) * len(neg)))


def run(data: Path, png: str | None = None) -> int:
    """Evaluate both methods on the pairs; print a markdown table."""
    import torch

    from scanqc.models.asymmetry_net import load_model
    from scanqc.scoring.asymmetry import asymmetry_pair

    torch.set_num_threads(1)
    labels = lesions(data)
    model = load_model()[0]
    rows = []
    maps = {}
    t0 = time.time()
    for a_name, b_name in PAIRS:
        a, b = _load(data / f"{a_name}.pgm"), _load(data / f"{b_name}.pgm")
        t = time.time()
        ra, rb = asymmetry_pair(a, b, model)
        took = time.time() - t
        ba, bb = baseline_pair(a, b)
        for name, img, heat, base in ((a_name, a, ra.heatmap, ba), (b_name, b, rb.heatmap, bb)):
            les = labels.get(name, [])
            maps[name] = (img.gray(), heat, base, les)
            for meth, h in (("siamese-pair", heat), ("intensity (baseline)", base)):
                peak = np.unravel_index(int(np.argmax(h)), h.shape)
                rows.append({"image": name, "method": meth, "lesions": len(les),
                             "hit": _inside(peak, les) if les else None,
                             "score": float(h.max()), "seconds": took, "peak": peak})
        print(f"{a_name}/{b_name}: {took:.1f} s", file=sys.stderr)
    print("| image | abnormality (r px) | method | peak in lesion | image score "
          "| peak (row, col) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        les = labels.get(r["image"], [])
        desc = ", ".join(f"{int(x[2])}" for x in les) or "normal"
        hit = "-" if r["hit"] is None else ("yes" if r["hit"] else "no")
        print(f"| {r['image']} | {desc} | {r['method']} | {hit} | {r['score']:.3g} | "
              f"{tuple(int(v) for v in r['peak'])} |")
    print()
    print("| method | images with an abnormality | peak in lesion "
          "| AUC (abnormal vs normal images) |")
    print("|---|---|---|---|")
    for meth in ("siamese-pair", "intensity (baseline)"):
        d = [r for r in rows if r["method"] == meth]
        pos = [r["score"] for r in d if r["lesions"]]
        neg = [r["score"] for r in d if not r["lesions"]]
        hits = [r["hit"] for r in d if r["lesions"]]
        print(f"| {meth} | {len(pos)} | {sum(hits)} of {len(hits)} | {_auc(pos, neg):.2f} "
              f"({len(pos)} vs {len(neg)}) |")
    took = time.time() - t0
    print(f"\n{len(PAIRS)} pairs from {data}; {took:.0f} s wall; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch 1 thread; "
          f"load average {os.getloadavg()[0]:.2f} at end")
    if png:
        _montage(maps, png)
    return 0


def _montage(maps, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    fig, ax = plt.subplots(3, len(names), figsize=(2.2 * len(names), 7))
    for j, name in enumerate(names):
        img, heat, base, les = maps[name]
        for i, (im, title) in enumerate(((img, name), (heat, "siamese-pair"), (base, "baseline"))):
            ax[i, j].imshow(im, cmap="gray" if i == 0 else "inferno")
            ax[i, j].set_title(title, fontsize=8)
            ax[i, j].axis("off")
            for r0, c0, rad in les:
                ax[i, j].add_patch(plt.Circle((c0, r0), rad, fill=False, color="cyan", lw=1))
            if i:
                p = np.unravel_index(int(np.argmax(im)), im.shape)
                ax[i, j].plot(p[1], p[0], "+", color="lime", ms=10, mew=2)
    plt.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(path, dpi=70)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT)
    p.add_argument("--png", default=None, help="write a montage (image, heatmaps, lesions)")
    args = p.parse_args(argv)
    if not (args.data / "labels_all_322.csv").is_file():
        print(f"no mini-MIAS labels in {args.data}", file=sys.stderr)
        return 1
    return run(args.data, args.png)


if __name__ == "__main__":
    raise SystemExit(main())
