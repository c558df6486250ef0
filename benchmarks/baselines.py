"""Baselines for the bad-data AUC benchmark.

* **Isolation Forest on a 6-bin histogram** (Belton et al.'s baseline): each scan's
  gray data is windowed to [0, 1] with ``scanqc.io.intensity.normalize`` (modality-aware
  robust window; CT in HU gets the fixed CT window) and summarised by a 6-bin histogram
  over [0, 1] normalised to sum 1 (Belton used ``cv2.calcHist`` on 8-bit pixels over
  [0, 256]; our window replaces the 8-bit range so 16-bit data is handled). Model:
  ``IsolationForest(n_estimators=100, contamination=0.01, random_state=42)`` fitted on the
  good scans given (the benchmark passes the reference set); score = ``-score_samples``.
* **kNN fallback**: :func:`scanqc.scoring.outlier.knn_outlier_scores` on the same
  embeddings scanqc uses, computed over the whole unlabelled benchmark pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanqc.io.intensity import normalize
from scanqc.io.scan import Scan
from scanqc.scoring.outlier import knn_outlier_scores

HIST_BINS = 6


def histogram_feature(scan: Scan, bins: int = HIST_BINS) -> np.ndarray:
    """Return the normalised ``bins``-bin histogram of the windowed gray data in [0, 1]."""
    w = normalize(scan.gray(), scan.modality)
    h, _ = np.histogram(w, bins=bins, range=(0.0, 1.0))
    return (h / max(h.sum(), 1)).astype(np.float64)


def isolation_forest_scores(train: Sequence[Scan], test: Sequence[Scan]) -> np.ndarray:
    """Fit Belton's Isolation Forest on ``train`` histograms; return ``-score_samples(test)``."""
    from sklearn.ensemble import IsolationForest

    xtr = np.stack([histogram_feature(s) for s in train])
    xte = np.stack([histogram_feature(s) for s in test])
    model = IsolationForest(n_estimators=100, contamination=0.01, random_state=42).fit(xtr)
    return -model.score_samples(xte)


def knn_fallback_scores(embeddings: np.ndarray) -> np.ndarray:
    """Return scanqc's unsupervised kNN ``bad_score`` for every row of ``embeddings``."""
    return np.array([s.bad_score for s in knn_outlier_scores(embeddings)])
