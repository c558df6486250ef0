"""EXAMINE speed and exact-vs-approximate agreement.

Prints the time of EXAMINE (exact secular-equation solver and the rank-one approximation)
on 10,000 synthetic 128-d embeddings, and the Spearman correlation of the two rankings on
those and on real embeddings of ../shared/data (the active-learning benchmark's cache, or
embedded here with the bundled encoder / a seeded random one).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/examine_speed.py
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--no-real", action="store_true", help="skip the real embeddings")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    # synthetic: a few strong directions plus isotropic noise, unit rows like the encoder's
    z = (rng.normal(size=(args.n, 8)) * np.linspace(3, 1, 8)) @ rng.normal(size=(8, args.d))
    z += rng.normal(size=z.shape)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    z = z.astype(np.float32)
    t_exact, exact = _timed(z, "exact")
    t_approx, approx = _timed(z, "approx")
    print(f"synthetic {args.n} x {args.d}: exact {t_exact:.3f} s, approx {t_approx:.3f} s, "
          f"Spearman(exact, approx) = {spearmanr(exact, approx)[0]:.4f}")
    z_iso = rng.normal(size=(args.n, args.d)).astype(np.float32)
    t_iso, exact_iso = _timed(z_iso, "exact", 1)
    print(f"isotropic Gaussian {args.n} x {args.d} (worst case, no structure): exact "
          f"{t_iso:.3f} s, Spearman = "
          f"{spearmanr(exact_iso, examine(z_iso, 'approx').msv)[0]:.4f}")
    if not args.no_real:
        from active_learning import DATA, load_embeddings

        x, _y, _g, tag = load_embeddings(DATA, Path("/tmp"))
        t_r, ex_r = _timed(x, "exact")
        ap_r = examine(x, "approx").msv
        br = examine(x, "brute").msv if len(x) <= 1000 else None
        extra = "" if br is None else \
            f", max |exact - brute| = {np.abs(ex_r - br).max():.2e}"
        print(f"real ({tag}) {x.shape[0]} x {x.shape[1]}: exact {t_r:.3f} s, Spearman(exact, "
              f"approx) = {spearmanr(ex_r, ap_r)[0]:.4f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
