"""EXAMINE data valuation: the marginal of the largest singular value (METHODS.md section 3).

After Huang, Lei, Li, "Efficient Medical Image Assessment via Self-supervised Learning"
(DALI@MICCAI 2022, arXiv 2209.14434). For embeddings ``Z`` (``N x d``, one row per scan)

    MSV_i = sigma1(Z) - sigma1(Z without row i)  >= 0,     EXAMINE_i = exp(MSV_i).

``exp`` is monotone, so **ranking by EXAMINE equals ranking by MSV**; we return both.

Both tails mean something:

* **high** EXAMINE: the scan carries much of the dominant structure of the data set
  (representative, valuable) - a candidate to **label first**;
* **low** EXAMINE: the scan adds little to that structure (atypical or low-information) -
  a **bad-data candidate** to look at.

Centring (``center=True``, the default). Without centring the top right singular vector
``v1`` of unit-norm embeddings is (almost) the mean direction, so MSV degenerates to
"alignment with the mean" and nearly every scan scores alike. With centring, ``sigma1`` is
the spread along the first principal axis and MSV measures how much a scan contributes to
that spread. The leave-one-out is exact *including re-centring*: removing row ``i`` from
the scatter matrix ``S = Zc^T Zc`` (``Zc`` centred with the full mean) gives the scatter of
the re-centred remainder ``S - N/(N-1) zc_i zc_i^T`` (a rank-one downdate).

Computation (all float64):

* ``method="approx"``: first-order perturbation, ``MSV_i ~ w_i^2 / (2 sigma1)`` with
  ``w_i = v1^T z_i`` (times ``N/(N-1)`` when centred): one SVD plus ``O(N d)``.
* ``method="exact"``: the top eigenvalue of every downdate ``S - a z_i z_i^T`` from the
  secular equation ``1 = a sum_j w_ij^2 / (lambda_j - mu)`` on ``[lambda_2, lambda_1]``
  (interlacing), solved for all ``i`` at once by a vectorised, bracketed Newton iteration
  on ``delta = lambda_1 - mu`` (no cancellation): one eigendecomposition of the ``d x d``
  scatter plus ``O(N d)`` per iteration (a handful of iterations).
* ``method="brute"``: ``N`` SVDs of ``Z`` without row ``i`` (tests, small ``N``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from scanqc.progress import CancelToken, ProgressCallback, check, report

Method = Literal["exact", "approx", "brute"]

#: Most iterations of the exact solver per row (safeguarded Newton; bisection alone needs
#: 64 to reach float64 limits, Newton typically under 10).
BISECTION_STEPS = 64


@dataclass
class ExamineResult:
    """EXAMINE scores of a set of embeddings.

    Attributes:
        msv: ``(N,)`` marginal of the largest singular value (>= 0).
        examine: ``(N,)`` ``exp(msv)`` (same ranking as ``msv``).
        sigma1: Largest singular value of the (centred) full matrix.
        method: ``"exact"``, ``"approx"`` or ``"brute"``.
        centered: Whether the embeddings were centred.
    """

    msv: np.ndarray
    examine: np.ndarray
    sigma1: float
    method: str
    centered: bool

    def label_first(self) -> np.ndarray:
        """Indices from most to least representative (high EXAMINE first)."""
        return np.argsort(-self.msv, kind="stable")

    def atypical_first(self) -> np.ndarray:
        """Indices from least to most representative (bad-data candidates first)."""
        return np.argsort(self.msv, kind="stable")


def _prepare(z: np.ndarray, center: bool) -> tuple[np.ndarray, float]:
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"embeddings must be a 2D array (N, d), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("embeddings contain NaN or infinite values")
    n = arr.shape[0]
    if center:
        arr = arr - arr.mean(axis=0, keepdims=True)
        scale = n / (n - 1) if n > 1 else 1.0
    else:
        scale = 1.0
    return arr, scale


def _top_sv(arr: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest singular value and its right singular vector."""
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        return 0.0, np.zeros(arr.shape[1])
    _u, s, vt = np.linalg.svd(arr, full_matrices=False)
    return float(s[0]), vt[0]


def msv_approx(z: np.ndarray, center: bool = True) -> tuple[np.ndarray, float]:
    """First-order MSV: ``(v1^T z_i)^2 / (2 sigma1)`` (see the module docstring).

    Returns:
        ``(msv (N,), sigma1)``.
    """
    arr, scale = _prepare(z, center)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        return np.zeros(arr.shape[0]), 0.0
    lam, vec = _eigen(arr)
    sigma1 = float(np.sqrt(lam[0]))
    if sigma1 <= 0:
        return np.zeros(arr.shape[0]), 0.0
    w = arr @ vec[:, 0]
    return scale * w * w / (2.0 * sigma1), sigma1


def _eigen(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and eigenvectors (columns) of ``arr^T arr``.

    For ``N >= d`` the ``d x d`` scatter is formed and decomposed (``O(N d^2)`` in one
    matrix product, several times faster than the thin SVD); eigenvalue errors are then of
    the order ``eps * lambda_1``, far below what the ranking needs. For ``N < d`` the thin
    SVD is used (the scatter would be rank deficient and larger).
    """
    n, d = arr.shape
    if n >= d:
        lam, vec = np.linalg.eigh(arr.T @ arr)
        return np.maximum(lam[::-1], 0.0), vec[:, ::-1]
    _u, sv, vt = np.linalg.svd(arr, full_matrices=False)
    return sv * sv, vt.T


def _solve_downdates(w1: np.ndarray, wr: np.ndarray, dist: np.ndarray, resid: np.ndarray,
                     lam1: float, gap: float) -> np.ndarray:
    """Roots ``delta`` in ``(0, gap)`` of ``F(delta) = delta (1 + h(delta)) - w1``.

    ``h(delta) = sum_j wr_j / (dist_j - delta) + resid / (lam1 - delta)`` with
    ``dist_j = lam1 - lam_j >= gap``. ``F`` is increasing and convex on ``(0, gap)``, so
    Newton from a point right of the root (``delta0 = w1`` when ``w1 < gap``; ``F(w1) =
    w1 h(w1) >= 0``) descends monotonically to the root; a bracket ``[lo, hi]`` catches
    the remaining cases (bisection when a step leaves it). Rows converge separately; a
    handful of iterations suffice where bisection needed 64.
    """
    m = len(w1)
    lo = np.zeros(m)
    hi = np.full(m, gap)
    x = np.where(w1 < gap, w1, 0.5 * gap)
    out = np.zeros(m)
    active = np.flatnonzero(w1 > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(BISECTION_STEPS):
            if not active.size:
                break
            xa = x[active]
            inv = 1.0 / (dist[None, :] - xa[:, None])
            t = wr[active] * inv
            inv0 = 1.0 / (lam1 - xa)
            h = t.sum(axis=1) + resid[active] * inv0
            dh = (t * inv).sum(axis=1) + resid[active] * inv0 * inv0
            f = xa * (1.0 + h) - w1[active]
            df = 1.0 + h + xa * dh
            pos = f > 0
            hi[active] = np.where(pos, xa, hi[active])
            lo[active] = np.where(pos, lo[active], xa)
            nxt = xa - f / df
            eps = 4 * np.finfo(float).eps
            done = (f == 0) | (np.abs(nxt - xa) <= eps * xa) | \
                ((hi[active] - lo[active]) <= eps * hi[active])
            out[active[done]] = np.where(f[done] == 0, xa[done], nxt[done])
            bad = ~np.isfinite(nxt) | (nxt <= lo[active]) | (nxt >= hi[active])
            x[active] = np.where(bad, 0.5 * (lo[active] + hi[active]), nxt)
            active = active[~done]
        out[active] = x[active]
    return np.clip(out, 0.0, gap)


def msv_exact(
    z: np.ndarray,
    center: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[np.ndarray, float]:
    """Exact MSV for every row through the secular equation of the rank-one downdate.

    Args:
        z: Embeddings ``(N, d)``.
        center: Centre the embeddings (and re-centre each leave-one-out remainder).
        progress: ``progress(done, total, message)`` per block of rows.
        cancel: Checked per block of rows.

    Returns:
        ``(msv (N,), sigma1)``.
    """
    arr, scale = _prepare(z, center)
    n, d = arr.shape
    if n == 0 or d == 0:
        return np.zeros(n), 0.0
    lam, vec = _eigen(arr)  # descending; eigenvalues beyond min(n, d) are 0
    lam1 = float(lam[0])
    if lam1 <= 0:
        return np.zeros(n), 0.0
    sigma1 = float(np.sqrt(lam1))
    lam_rest = lam[1:]
    lam2 = float(lam_rest[0]) if lam_rest.size else 0.0
    gap = lam1 - lam2
    out = np.zeros(n)
    if gap <= 0:  # a repeated top eigenvalue: removing one row cannot lower it
        report(progress, n, n, "EXAMINE")
        return out, sigma1
    dist = lam1 - lam_rest
    block = 4096
    for start in range(0, n, block):
        check(cancel)
        rows = arr[start:start + block]
        w2 = scale * (rows @ vec) ** 2  # squared coordinates in the eigenbasis
        # the part of z outside the span of vec (eigenvalue 0 of the scatter)
        resid = np.maximum(scale * np.einsum("ij,ij->i", rows, rows) - w2.sum(axis=1), 0.0)
        delta = _solve_downdates(w2[:, 0], w2[:, 1:], dist, resid, lam1, gap)
        mu = np.maximum(lam1 - delta, 0.0)
        out[start:start + block] = delta / (sigma1 + np.sqrt(mu))
        report(progress, min(start + block, n), n, "EXAMINE")
    return out, sigma1


def msv_brute(z: np.ndarray, center: bool = True) -> tuple[np.ndarray, float]:
    """MSV by ``N`` leave-one-out SVDs (re-centring each remainder when ``center``)."""
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"embeddings must be a 2D array (N, d), got shape {arr.shape}")
    full = arr - arr.mean(axis=0) if center else arr
    sigma1, _ = _top_sv(full)
    out = np.empty(arr.shape[0])
    for i in range(arr.shape[0]):
        rest = np.delete(arr, i, axis=0)
        if center and rest.shape[0]:
            rest = rest - rest.mean(axis=0)
        out[i] = sigma1 - (_top_sv(rest)[0] if rest.shape[0] else 0.0)
    return out, sigma1


def examine(
    z: np.ndarray,
    method: Method = "exact",
    center: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ExamineResult:
    """EXAMINE scores of embeddings ``z`` ``(N, d)``.

    Args:
        z: One embedding per scan.
        method: ``"exact"`` (secular equation), ``"approx"`` (rank-one first order) or
            ``"brute"`` (N SVDs).
        center: Centre the embeddings first (default; see the module docstring for why).
        progress: Progress callback (exact method).
        cancel: Cancel token (exact and brute methods).

    Returns:
        An :class:`ExamineResult`; ``examine = exp(msv)`` ranks like ``msv``.

    Raises:
        ValueError: ``z`` is not a finite 2D array, or an unknown method.
    """
    if method == "exact":
        msv, s1 = msv_exact(z, center=center, progress=progress, cancel=cancel)
    elif method == "approx":
        msv, s1 = msv_approx(z, center=center)
    elif method == "brute":
        check(cancel)
        msv, s1 = msv_brute(z, center=center)
    else:
        raise ValueError(f"unknown EXAMINE method {method!r} (exact, approx, brute)")
    msv = np.maximum(msv, 0.0)  # round-off only; the marginal is >= 0 by interlacing
    return ExamineResult(msv=msv, examine=np.exp(msv), sigma1=s1, method=method,
                         centered=center)
