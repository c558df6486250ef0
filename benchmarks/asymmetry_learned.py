"""Experiment (issue 9): a learned left-right detector against the ``intensity-z`` map.

A small 3D CNN sees a volume and its mirror warped onto it (the pipeline's own analysis
copy, plane and demons warp) and predicts, voxel by voxel, where the volume holds an
anomaly that the other side does not. It is trained on synthetic anomalies that are *not*
the benchmark's: irregular blobs (a sphere of 2.5-17 mm radius deformed by smooth noise),
multiplicative, textured or replacement intensity changes of +-12..80 %, soft edges 0.5-3 mm,
0-3 per volume anywhere in the head, on gamma-, bias- and noise-augmented copies. It is
evaluated leave-one-volume-out on the development split with the benchmark's own lesions
(``benchmarks/asymmetry.py``'s :func:`lesion_cases`), next to ``intensity-z`` on the same
scans, and as a sum with it (both maps scaled to their maximum).

Result and conclusion: docs/asymmetry.md ("Learned detector"). Nothing here is shipped.

Usage (from the repository root; about 15 minutes per fold on one thread)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/asymmetry_learned.py \\
        --train register/MNI152_T1_2mm.nii.gz register/T1_head_ext2.nii.gz register/fmri.nii.gz \\
        --eval register/T2w.nii.gz --seeds 1 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asymmetry as bench  # noqa: E402  (benchmarks/asymmetry.py: data, lesion draws)

#: Voxel size (mm) of the network's grid.
NET_MM = 2.0
LOG_EPS = 0.05


def _to_net(vol: np.ndarray, sp) -> np.ndarray:
    fac = [s / NET_MM for s in sp]
    if all(abs(f - 1) < 1e-3 for f in fac):
        return vol.astype(np.float32)
    return ndimage.zoom(vol.astype(np.float32), fac, order=1, prefilter=False)


def features(norm: np.ndarray, warped: np.ndarray, mask: np.ndarray, sp) -> np.ndarray:
    """Input channels on the ``NET_MM`` grid: log scan, log warped mirror (both standardised
    within the mask), their difference, the signed tolerant residual, the mask."""
    from scanqc.scoring import asymmetry as A
    from scanqc.scoring.asymmetry_blob import signed_tolerant_residual, smooth

    a, b = smooth(norm, sp, A.PRESMOOTH_MM), smooth(warped, sp, A.PRESMOOTH_MM)
    la, lb = np.log(np.maximum(a, 0) + LOG_EPS), np.log(np.maximum(b, 0) + LOG_EPS)
    r = signed_tolerant_residual(la, lb, sp, A.TOLERANCE_MM)
    med, sd = (float(np.median(la[mask])), float(la[mask].std()) + 1e-3) if mask.any() else (0, 1)
    chans = [(la - med) / sd, (lb - med) / sd, (la - lb) * 3, r * 3, mask.astype(np.float32)]
    return np.stack([_to_net(c, sp) for c in chans]).astype(np.float32)


def make_net():
    """U-Net-like 3D CNN at 2/4/8 mm, ~100 k parameters, one logit per voxel."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv(i: int, o: int, d: int = 1) -> nn.Module:
        return nn.Conv3d(i, o, 3, padding=d, dilation=d)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Sequential(conv(5, 12), nn.ReLU(), conv(12, 12), nn.ReLU())
            self.c2 = nn.Sequential(conv(12, 24), nn.ReLU(), conv(24, 24), nn.ReLU())
            self.c3 = nn.Sequential(conv(24, 32), nn.ReLU(), conv(32, 32, 2), nn.ReLU())
            self.d2 = nn.Sequential(nn.Conv3d(56, 24, 1), nn.ReLU(), conv(24, 24), nn.ReLU())
            self.d1 = nn.Sequential(nn.Conv3d(36, 12, 1), nn.ReLU(), nn.Conv3d(12, 1, 1))

        def forward(self, x):  # noqa: D102
            s = x.shape[2:]
            x = F.pad(x, [0, (-s[2]) % 4, 0, (-s[1]) % 4, 0, (-s[0]) % 4])
            f1 = self.c1(x)
            f2 = self.c2(F.max_pool3d(f1, 2))
            f3 = self.c3(F.max_pool3d(f2, 2))
            up = F.interpolate(f3, size=f2.shape[2:], mode="trilinear", align_corners=False)
            g2 = self.d2(torch.cat([up, f2], 1))
            up = F.interpolate(g2, size=f1.shape[2:], mode="trilinear", align_corners=False)
            return self.d1(torch.cat([up, f1], 1))[:, :, : s[0], : s[1], : s[2]]

    return Net()


# --------------------------------------------------------------------------- training data


def _prepare(rel: str) -> dict:
    """Lesion-free analysis copy of a volume, its plane, mask and the pipeline's demons warp
    (as sampling coordinates, so that a lesioned copy's mirror is warped the same way)."""
    from scanqc.io.intensity import normalize
    from scanqc.io.scan import Scan
    from scanqc.scoring import asymmetry as A
    from scanqc.scoring.midplane import estimate_midplane

    scan = bench._load(rel)
    sp = tuple(float(s) for s in scan.spacing)
    base = normalize(scan.gray(), scan.modality)
    plane = estimate_midplane(base, sp)
    prep, _ = A._prepare_analysis(Scan(base, sp, scan.affine, "volume"), plane)
    return {"prep": prep, "coords": A.demons_coordinates(prep.norm, prep.mirror, prep.spacing)}


def _anomaly(vol: np.ndarray, fg: np.ndarray, sp, rng) -> np.ndarray:
    """Insert one irregular anomaly into ``vol`` in place; return its mask."""
    idx = np.argwhere(ndimage.binary_erosion(fg, iterations=2))
    if len(idx) == 0:
        return np.zeros(vol.shape, bool)
    c = idx[rng.integers(len(idx))]
    rad = rng.uniform(2.5, 17.0)
    ext = [int(np.ceil((rad * 1.6 + 4) / s)) for s in sp]
    lo = [max(0, int(ci) - e) for ci, e in zip(c, ext, strict=True)]
    hi = [min(n, int(ci) + e + 1) for ci, e, n in zip(c, ext, vol.shape, strict=True)]
    zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    ax = rng.uniform(0.6, 1.4, 3)
    d = np.sqrt(((zz - c[0]) * sp[0] / ax[0]) ** 2 + ((yy - c[1]) * sp[1] / ax[1]) ** 2
                + ((xx - c[2]) * sp[2] / ax[2]) ** 2) / rad
    shape = tuple(h - b for b, h in zip(lo, hi, strict=True))
    nz = ndimage.gaussian_filter(rng.normal(size=shape), [rad / 2 / s for s in sp])
    field = d + rng.uniform(0.0, 0.4) * nz / (nz.std() + 1e-6)
    edge = rng.uniform(0.5, 3.0) / rad
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    w = (1.0 / (1.0 + np.exp(np.clip((field - 1.0) / edge, -50, 50))) * fg[box]).astype(np.float32)
    sub = vol[box]
    change = rng.choice([-1, 1]) * rng.uniform(0.12, 0.8)
    kind = rng.integers(3)
    if kind == 0:  # multiplicative
        new = sub * (1 + change)
    elif kind == 1:  # multiplicative with its own texture
        tex = ndimage.gaussian_filter(rng.normal(size=shape), rng.uniform(0.5, 2.0))
        new = sub * (1 + change * (1 + 0.4 * tex / (tex.std() + 1e-6)))
    else:  # replaced by a level relative to the local mean, with noise
        core = w > 0.5
        mean = float(sub[core].mean()) if core.any() else float(sub.mean())
        new = np.full_like(sub, mean * (1 + change)) + rng.normal(0, 0.02, shape)
    vol[box] = np.clip(sub * (1 - w) + new * w, 0, 1.5)
    out = np.zeros(vol.shape, bool)
    out[box] = w > 0.5
    return out


def _deform(vol: np.ndarray, sp, rng, amplitude_mm: float, scale_mm: float = 12.0) -> np.ndarray:
    """``vol`` under a random smooth displacement of at most ``amplitude_mm`` (not symmetric
    about the plane: the two sides move differently, like natural left-right variation)."""
    grid = np.indices(vol.shape, dtype=np.float32)
    for ax in range(3):
        d = ndimage.gaussian_filter(rng.normal(size=vol.shape), [scale_mm / s for s in sp])
        d *= rng.uniform(0.3, 1.0) * amplitude_mm / (np.abs(d).max() + 1e-9) / sp[ax]
        grid[ax] += d.astype(np.float32)
    return ndimage.map_coordinates(vol, grid, order=1, mode="nearest").astype(np.float32)


def training_sample(p: dict, rng, deform_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy with 0-3 anomalies: ``(features float16, target bool)``.

    With ``deform_mm`` > 0 the copy is first deformed (:func:`_deform`) and the pipeline's
    mask and demons warp are computed again for it, as the pipeline would.
    """
    from scanqc.scoring import asymmetry as A
    from scanqc.scoring.midplane import mirror_volume

    prep = p["prep"]
    sp, fg, coords = prep.spacing, prep.mask, p["coords"]
    vol = np.clip(prep.norm, 0, None) ** rng.uniform(0.75, 1.35)
    bias = ndimage.zoom(rng.normal(0, 1, (3, 3, 3)), [n / 3 for n in vol.shape], order=1)
    if bias.shape == vol.shape:
        vol = vol * (1 + rng.uniform(0, 0.12) * bias)
    vol = vol.astype(np.float32)
    if deform_mm > 0:
        vol = _deform(vol, sp, rng, deform_mm)
        head = A._foreground(vol)
        fg = head & (mirror_volume(head.astype(np.float32), prep.plane, spacing=sp) > 0.5)
        coords = A.demons_coordinates(vol, mirror_volume(vol, prep.plane, spacing=sp), sp)
    target = np.zeros(vol.shape, bool)
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        target |= _anomaly(vol, fg, sp, rng)
    vol = np.clip(vol + rng.normal(0, rng.uniform(0.0, 0.03), vol.shape), 0, None)
    vol = vol.astype(np.float32)
    mir = mirror_volume(vol, prep.plane, spacing=sp)
    warped = ndimage.map_coordinates(mir, coords, order=1, mode="nearest")
    x = features(vol, warped.astype(np.float32), fg, sp)
    return x.astype(np.float16), _to_net((target & fg).astype(np.float32), sp) > 0.5


def train(samples: list, steps: int, crop: int = 48, batch: int = 4, seed: int = 0):
    """Adam, cosine schedule, BCE (positive weight 10) over the mask, random crops (60 %
    centred on an anomaly), random flips."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pos = [np.argwhere(y) for _, y in samples]
    inside = [np.argwhere(x[4] > 0.5) for x, _ in samples]
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = samples[i]
        src = pos[i] if len(pos[i]) and rng.random() < 0.6 else inside[i]
        c = src[rng.integers(len(src))] + rng.integers(-crop // 4, crop // 4 + 1, 3)
        sl, pads = [], []
        for ci, n in zip(c, y.shape, strict=True):
            lo = min(max(int(ci) - crop // 2, 0), max(n - crop, 0))
            sl.append(slice(lo, lo + crop))
            pads.append(crop - min(crop, n - lo))
        xc = np.pad(x[(slice(None), *sl)].astype(np.float32), [(0, 0)] + [(0, q) for q in pads])
        yc = np.pad(y[tuple(sl)].astype(np.float32), [(0, q) for q in pads])
        for ax in (1, 2, 3):
            if rng.random() < 0.5:
                xc, yc = np.flip(xc, ax), np.flip(yc, ax - 1)
        return xc.copy(), yc.copy()

    t0 = time.time()
    losses = []
    for step in range(steps):
        b = [one(int(rng.integers(len(samples)))) for _ in range(batch)]
        x = torch.from_numpy(np.stack([q[0] for q in b]))
        y = torch.from_numpy(np.stack([q[1] for q in b]))[:, None]
        m = x[:, 4:5] > 0.5
        loss = F.binary_cross_entropy_with_logits(net(x)[m], y[m], pos_weight=torch.tensor(10.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)",
                  file=sys.stderr)
    return net.eval()


# --------------------------------------------------------------------------- evaluation


def evaluate(net, rel: str, fi: int, seeds, per_volume: int, negatives: int) -> list[dict]:
    """The benchmark's scans of ``rel``: peak-in-lesion of intensity-z, the learned map and
    their sum (both scaled to their maximum), all restricted to the pipeline's inner mask."""
    import torch

    from scanqc.scoring import asymmetry as A

    stash = {}
    demons = A._demons

    def keep(f, m, sp):
        stash["warped"] = demons(f, m, sp)
        return stash["warped"]

    rows = []
    A._demons = keep
    try:
        for seed in seeds:
            for s, plane, les, _, size, contrast in bench.lesion_cases(rel, fi, seed, per_volume,
                                                                        negatives):
                comp = A._components(s, None, plane, None, None)
                z = A._result(s, comp, "intensity-z")
                prep = comp.prep
                x = features(prep.norm, stash["warped"], prep.mask, prep.spacing)
                with torch.no_grad():
                    logit = net(torch.from_numpy(x)[None])[0, 0].numpy()
                prob = ndimage.gaussian_filter(1 / (1 + np.exp(-logit)), 1.0)
                inner = A._to_shape(comp.inner.astype(np.float32), comp.native, order=0) > 0.5
                learned = A._to_shape(A._to_shape(prob, prep.norm.shape), comp.native) * inner
                lmax = max(float(learned.max()), 1e-6)
                maps = {"intensity-z": (z.heatmap, z.score), "learned": (learned, lmax),
                        "sum": (z.heatmap / max(float(z.heatmap.max()), 1e-6) + learned / lmax,
                                z.score + 3 * lmax)}
                for meth, (heat, score) in maps.items():
                    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
                    rows.append({"file": rel, "seed": seed, "size": size, "contrast": contrast,
                                 "lesion": les is not None, "method": meth, "score": score,
                                 "hit": bool(les[peak]) if les is not None else None})
                print(f"{rel} seed {seed} size {size} c {contrast:+.1f} "
                      + " ".join(f"{r['method']}:{r['hit']}" for r in rows[-3:]), file=sys.stderr)
    finally:
        A._demons = demons
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    import pandas as pd
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True, help="niivue-demo-images volumes")
    ap.add_argument("--eval", required=True, help="a development volume not in --train")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--samples", type=int, default=60, help="training copies per volume")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--per-volume", type=int, default=16)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--deform", type=float, default=0.0,
                    help="random smooth deformation (mm) of each training copy")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    if args.eval in args.train or args.eval in bench.EVAL_ONLY:
        ap.error("--eval must be a development volume that is not trained on")
    torch.set_num_threads(1)
    t0 = time.time()
    samples = []
    for i, rel in enumerate(args.train):
        p = _prepare(rel)
        rng = np.random.default_rng([7, i])
        samples += [training_sample(p, rng, args.deform) for _ in range(args.samples)]
        print(f"{rel}: {args.samples} training copies ({time.time() - t0:.0f}s)", file=sys.stderr)
    net = train(samples, args.steps)
    del samples
    rows = evaluate(net, args.eval, bench.DEV_FILES.index(args.eval), args.seeds,
                    args.per_volume, args.negatives)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    big = df[df.lesion & (df["size"] >= 10)]
    print(f"eval {args.eval}, seeds {args.seeds}, trained on {args.train}")
    print("| method | lesions >= 10 mm | peak in lesion | AUC |\n|---|---|---|---|")
    for meth in df.method.unique():
        d = df[df.method == meth]
        pos = d[d.lesion & (d["size"] >= 10)].score.to_numpy()
        neg = d[~d.lesion].score.to_numpy()
        hits = big[big.method == meth].hit
        print(f"| {meth} | {len(hits)} | {int(hits.sum())} ({hits.mean():.0%}) | "
              f"{bench._auc(pos, neg):.2f} |")
    print(f"{time.time() - t0:.0f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
