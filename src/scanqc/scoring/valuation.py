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
  (interlacing), solved for all ``i`` at once by vectorised bisection on
  ``delta = lambda_1 - mu`` (no cancellation): one eigendecomposition plus ``O(N d)`` per
  iteration.
* ``method="brute"``: ``N`` SVDs of ``Z`` without row ``i`` (tests, small ``N``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from scanqc.progress import CancelToken, ProgressCallback, check, report

Method = Literal["exact", "approx", "brute"]

#: Bisection steps of the exact solver (each halves the bracket; 64 reach float64 limits).
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
    sigma1, v1 = _top_sv(arr)
    if sigma1 <= 0:
        return np.zeros(arr.shape[0]), 0.0
    w = arr @ v1
    return scale * w * w / (2.0 * sigma1), sigma1


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
    # eigen-decomposition of the scatter through the thin SVD (better conditioned)
    _u, s, vt = np.linalg.svd(arr, full_matrices=False)
    lam = s * s  # descending, length min(n, d); missing eigenvalues are 0
    sigma1 = float(s[0])
    if sigma1 <= 0:
        return np.zeros(n), 0.0
    lam1 = lam[0]
    lam_rest = lam[1:]
    lam2 = float(lam_rest[0]) if lam_rest.size else 0.0
    if lam_rest.size < d:  # the null space of the scatter: eigenvalue 0
        lam2 = max(lam2, 0.0) if lam_rest.size else 0.0
    gap = lam1 - lam2
    out = np.empty(n)
    block = 4096
    for start in range(0, n, block):
        check(cancel)
        rows = arr[start:start + block]
        w = rows @ vt.T  # (b, k) coordinates in the eigenbasis
        w2 = scale * w * w
        w1 = w2[:, 0]
        wr = w2[:, 1:]
        # the part of z outside the span of vt (eigenvalue 0 of the scatter)
        resid = np.maximum(scale * np.einsum("ij,ij->i", rows, rows) - w2.sum(axis=1), 0.0)
        # f(delta) = 1 - w1/delta - sum_j wr_j / (lam_j - lam1 + delta) - resid/(delta - lam1)
        # is increasing in delta on (0, gap); its root is lam1 - mu_max
        lo = np.zeros(len(rows))
        hi = np.full(len(rows), gap)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for _ in range(BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                f = 1.0 - w1 / mid
                if wr.shape[1]:
                    f = f - (wr / (lam_rest[None, :] - lam1 + mid[:, None])).sum(axis=1)
                f = f - resid / (mid - lam1)
                pos = f > 0
                hi = np.where(pos, mid, hi)
                lo = np.where(pos, lo, mid)
        delta = np.clip(0.5 * (lo + hi), 0.0, gap)
        delta = np.where(w1 <= 0, 0.0, delta)  # v1 untouched: sigma1 stays
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
