"""Unsupervised fallback when no reference set exists: kNN outlier distance in a dataset.

cleanlab's out-of-distribution formula on embeddings (``cleanlab.outlier``): ``d_i`` is the
mean distance of scan ``i`` to its ``k`` nearest *other* scans (k = 10, fewer in small
datasets); cleanlab's quality score is ``exp(-t * d_i / median(d))`` (t = 1), so scanqc's
``bad_score = 1 - exp(-t * d_i / median(d))`` (higher = more likely bad, in [0, 1)). A scan
is flagged when ``d_i > Q3 + 1.7 * IQR`` of the ``d`` values. Distances are Euclidean and
divided by ``sqrt(D)`` as in :mod:`scanqc.scoring.reference` (the score is a ratio, so the
normalisation only affects reported distances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_K = 10
IQR_FACTOR = 1.7


@dataclass(frozen=True)
class OutlierScore:
    """A scan's kNN outlier score within its dataset.

    Attributes:
        knn_distance: Mean normalised distance to the ``k`` nearest other scans.
        bad_score: ``1 - exp(-t * d / median(d))`` in [0, 1).
        flagged: ``d > Q3 + 1.7 * IQR``.
        threshold: The distance cut-off ``Q3 + 1.7 * IQR``.
        k: Neighbours used.
    """

    knn_distance: float
    bad_score: float
    flagged: bool
    threshold: float
    k: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "knn_distance": self.knn_distance,
            "bad_score": self.bad_score,
            "flagged": self.flagged,
            "threshold": self.threshold,
            "k": self.k,
        }


def adaptive_k(n: int, k: int = DEFAULT_K) -> int:
    """Return ``min(k, n - 1)`` (at least 1): the neighbours a dataset of ``n`` can give."""
    return max(1, min(int(k), int(n) - 1))


#: Rows per block of the exact distance computation (a few BLOCK x N float64 arrays).
BLOCK = 128


def knn_distances(embeddings: np.ndarray, k: int = DEFAULT_K) -> tuple[np.ndarray, int]:
    """Return each row's mean normalised distance to its ``k`` nearest other rows, and k.

    Exact brute force in blocks of :data:`BLOCK` rows (what scikit-learn's
    ``NearestNeighbors`` chooses for embeddings of this width anyway), in numpy: no
    scikit-learn import (about 1 s of CPU in a fresh process) in the batch engine. A row
    is never its own neighbour; exact duplicates of it are.

    Raises:
        ValueError: Fewer than 2 embeddings, or not a 2D array.
    """
    z = np.asarray(embeddings, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {z.shape}")
    if z.shape[0] < 2:
        raise ValueError("the kNN outlier score needs at least 2 scans")
    n = z.shape[0]
    kk = adaptive_k(n, k)
    sq = np.einsum("ij,ij->i", z, z)
    d = np.empty(n, dtype=np.float64)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (z[start:stop] @ z.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not its own neighbour
        near = np.partition(d2, kk - 1, axis=1)[:, :kk]
        d[start:stop] = np.sqrt(near).mean(axis=1)
    return d / math.sqrt(z.shape[1]), kk


def knn_outlier_scores(
    embeddings: np.ndarray, k: int = DEFAULT_K, t: float = 1.0, iqr_factor: float = IQR_FACTOR
) -> list[OutlierScore]:
    """Score every scan of a dataset by its kNN outlier distance (no references needed).

    Args:
        embeddings: ``(N, D)`` scan-level embeddings of the whole dataset.
        k: Neighbours (cleanlab's default 10; reduced to ``N - 1`` for small datasets).
        t: cleanlab's temperature.
        iqr_factor: Flag when ``d > Q3 + iqr_factor * IQR``.
    """
    d, kk = knn_distances(embeddings, k)
    med = max(float(np.median(d)), 1e-12)
    score = 1.0 - np.exp(-t * d / med)
    q1, q3 = np.percentile(d, [25, 75])
    cut = float(q3 + iqr_factor * (q3 - q1))
    return [
        OutlierScore(
            knn_distance=float(d[i]),
            bad_score=float(score[i]),
            flagged=bool(d[i] > cut),
            threshold=cut,
            k=kk,
        )
        for i in range(len(d))
    ]
