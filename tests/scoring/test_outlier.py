"""kNN outlier fallback (no references)."""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.scoring.outlier import adaptive_k, knn_distances, knn_outlier_scores


def test_planted_outliers_flagged(rng):
    z = rng.normal(0, 1, size=(200, 16))
    z[[3, 50, 120]] += 8.0 * rng.normal(size=(3, 16))
    scores = knn_outlier_scores(z)
    flagged = {i for i, s in enumerate(scores) if s.flagged}
    assert {3, 50, 120} <= flagged
    assert len(flagged) < 15
    b = np.array([s.bad_score for s in scores])
    assert b.min() >= 0 and b.max() < 1
    assert set(np.argsort(-b)[:3]) == {3, 50, 120}
    assert scores[0].k == 10


def test_score_formula_matches_cleanlab_shape(rng):
    z = rng.normal(size=(30, 4))
    scores = knn_outlier_scores(z, k=5)
    d = np.array([s.knn_distance for s in scores])
    np.testing.assert_allclose([s.bad_score for s in scores], 1 - np.exp(-d / np.median(d)))


def test_k_adapts_to_small_datasets(rng):
    assert adaptive_k(4) == 3
    assert adaptive_k(500) == 10
    z = rng.normal(size=(4, 8))
    d, k = knn_distances(z)
    assert k == 3
    # mean distance to the 3 others, excluding self
    full = np.linalg.norm(z[:, None] - z[None], axis=-1) / np.sqrt(8)
    np.testing.assert_allclose(d, full.sum(1) / 3)
    with pytest.raises(ValueError):
        knn_distances(z[:1])


def test_duplicates_do_not_break_self_removal():
    z = np.zeros((5, 3))
    z[4] = 1.0
    d, _ = knn_distances(z, k=2)
    np.testing.assert_allclose(d[:4], 0.0)
    assert d[4] > 0


def test_blocked_distances_equal_brute_force(rng, monkeypatch):
    import scanqc.scoring.outlier as outlier

    monkeypatch.setattr(outlier, "BLOCK", 7)  # several blocks, one ragged
    z = rng.normal(size=(40, 6))
    z[13] = z[2]  # an exact duplicate is a neighbour at distance 0
    d, k = knn_distances(z, k=4)
    full = np.linalg.norm(z[:, None] - z[None], axis=-1) / np.sqrt(6)
    np.fill_diagonal(full, np.inf)
    expected = np.sort(full, axis=1)[:, :4].mean(axis=1)
    np.testing.assert_allclose(d, expected, atol=1e-9)
    assert k == 4
