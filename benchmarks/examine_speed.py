"""EXAMINE speed and exact-vs-approximate agreement.

Times EXAMINE (the exact secular-equation solver and the rank-one approximation) on 10,000
embeddings of the encoder's width (512 by default) and reports the Spearman correlation of
the two rankings on:

* the real embeddings of ../shared/data (the active-learning benchmark's cache, or embedded
  here with the bundled encoder), with brute-force leave-one-out SVDs of 50 rows as a
  check;
* 10,000 rows resampled from those real embeddings (each a real row plus 5 % noise), so
  the 10,000-scan timing runs on data with the real spectrum;
* 10,000 synthetic rows (8 strong directions + noise) and isotropic Gaussian rows (no
  structure: the worst case for the approximation).

Prints a markdown table, the command and the machine (with the load average).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/examine_speed.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from scanqc.scoring.valuation import examine

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _timed(z: np.ndarray, method: str, repeat: int = 3) -> tuple[float, np.ndarray]:
    best = np.inf
    msv = np.zeros(0)
    for _ in range(repeat):
        t = time.perf_counter()
        msv = examine(z, method).msv
        best = min(best, time.perf_counter() - t)
    return best, msv


def _row(name: str, z: np.ndarray, repeat: int = 3, brute: bool = False) -> str:
    t_exact, exact = _timed(z, "exact", repeat)
    t_approx, approx = _timed(z, "approx", repeat)
    rho = spearmanr(exact, approx)[0]
    extra = ""
    if brute:  # leave-one-out SVDs for 50 rows (all N would take minutes)
        z64 = np.asarray(z, dtype=np.float64)
        s1 = np.linalg.svd(z64 - z64.mean(0), compute_uv=False)[0]
        rows = np.random.default_rng(1).choice(len(z64), min(50, len(z64)), replace=False)
        err = 0.0
        for i in rows:
            rest = np.delete(z64, i, axis=0)
            err = max(err, abs(exact[i] - (s1 - np.linalg.svd(rest - rest.mean(0),
                                                                compute_uv=False)[0])))
        extra = f"{err:.1e} (50 rows; exact max {exact.max():.1e})"
    return (f"| {name} | {z.shape[0]:,} x {z.shape[1]} | {t_exact:.2f} s | {t_approx:.2f} s | "
            f"{rho:.4f} | {extra or '-'} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    p.add_argument("--no-real", action="store_true", help="skip the real embeddings")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="encoder folder for the real embeddings (default: bundled)")
    args = p.parse_args(argv)
    load0 = os.getloadavg()
    rng = np.random.default_rng(0)
    rows = []
    if not args.no_real:
        from active_learning import DATA, load_embeddings

        x, _y, _g, tag = load_embeddings(DATA, Path("/tmp"), args.model_dir)
        rows.append(_row(f"real ({tag})", x, args.repeat, brute=True))
        pick = rng.integers(0, len(x), args.n)
        noise = rng.normal(size=(args.n, x.shape[1])) * x.std(axis=0, keepdims=True) * 0.05
        xr = (x[pick] + noise).astype(np.float32)
        rows.append(_row("real rows resampled + 5 % noise", xr, args.repeat))
    # synthetic: a few strong directions plus isotropic noise, unit rows like the encoder's
    z = (rng.normal(size=(args.n, 8)) * np.linspace(3, 1, 8)) @ rng.normal(size=(8, args.d))
    z += rng.normal(size=z.shape)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    rows.append(_row("synthetic, 8 strong directions + noise", z.astype(np.float32),
                     args.repeat))
    z_iso = rng.normal(size=(args.n, args.d)).astype(np.float32)
    rows.append(_row("isotropic Gaussian (no structure, worst case)", z_iso, 1))
    print("| data | N x d | exact | approx | Spearman(exact, approx) | max abs(exact - brute) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    load1 = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nCommand: `{' '.join([Path(sys.executable).name] + sys.argv)}`  \n"
          f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; times are the best "
          f"of {args.repeat}; load average before {', '.join(f'{v:.2f}' for v in load0)}, "
          f"after {load1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
