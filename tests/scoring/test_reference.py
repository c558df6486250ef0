"""Reference-set scoring on synthetic embeddings with known outliers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scanqc.io.scan import ScanWarning
from scanqc.scoring.reference import (
    ReferenceSet,
    combine_with_warnings,
    distance_to_score,
    leave_one_out_distances,
    max_pairwise_distance,
    reference_distances,
    score_against_references,
    slice_scores,
    suspicious_references,
)

D = 32


def _refs(rng, n=20, spread=0.3):
    return rng.normal(0.0, spread, size=(n, D))


def test_distances_are_normalised_by_sqrt_d():
    refs = np.zeros((3, D))
    z = np.ones((1, D))
    mean, mn = reference_distances(z, refs)
    assert mean[0] == pytest.approx(1.0)  # ||1|| / sqrt(D) = 1
    refs[1] = 1.0
    mean, mn = reference_distances(z, refs)
    assert mn[0] == pytest.approx(0.0)
    assert mean[0] == pytest.approx(2.0 / 3.0)


def test_mean_vs_min_statistic(rng):
    refs = _refs(rng)
    # a point sitting on one reference: min distance 0, mean distance well above it
    z = refs[3:4] + 1e-9
    mean, mn = reference_distances(z, refs)
    assert mn[0] < 1e-6 < mean[0]
    rs = ReferenceSet.from_embeddings([f"r{i}" for i in range(len(refs))], refs)
    s_mean = score_against_references(z, rs, statistic="mean")[0]
    s_min = score_against_references(z, rs, statistic="min")[0]
    assert s_mean.distance == pytest.approx(s_mean.mean_distance)
    assert s_min.distance == pytest.approx(s_min.min_distance)
    assert s_min.nearest_reference == "r3"
    assert s_min.bad_score < s_mean.bad_score


def test_threshold_is_max_pairwise_reference_distance(rng):
    refs = _refs(rng, n=7)
    rs = ReferenceSet.from_embeddings([str(i) for i in range(7)], refs)
    brute = max(
        np.linalg.norm(refs[i] - refs[j]) / math.sqrt(D) for i in range(7) for j in range(7)
    )
    assert max_pairwise_distance(refs) == pytest.approx(brute)
    for stat in ("mean", "min"):
        scores = score_against_references(refs, rs, statistic=stat)
        assert scores[0].threshold == pytest.approx(brute)
    # user threshold overrides, and flags follow distance > threshold
    z = rng.normal(0, 0.3, size=(50, D))
    scores = score_against_references(z, rs, threshold=0.4)
    assert all(s.threshold == 0.4 for s in scores)
    assert all(s.flagged == (s.distance > 0.4) for s in scores)


def test_loo_rule_is_tighter_for_min(rng):
    refs = _refs(rng)
    a = ReferenceSet.from_embeddings([str(i) for i in range(20)], refs)
    b = ReferenceSet.from_embeddings([str(i) for i in range(20)], refs, threshold_rule="loo")
    assert b.default_threshold("min") == pytest.approx(leave_one_out_distances(refs)[1].max())
    assert b.default_threshold("min") < a.default_threshold("min")


def test_outliers_score_higher_and_score_is_calibrated(rng):
    refs = _refs(rng)
    rs = ReferenceSet.from_embeddings([str(i) for i in range(20)], refs)
    inliers = rng.normal(0.0, 0.3, size=(40, D))
    outliers = rng.normal(0.0, 0.3, size=(10, D)) + rng.normal(0, 1.0, size=(1, D))
    s_in = [s.bad_score for s in score_against_references(inliers, rs)]
    s_out = [s.bad_score for s in score_against_references(outliers, rs)]
    assert min(s_out) > max(s_in)
    assert all(s.flagged for s in score_against_references(outliers, rs))
    assert np.mean([s.flagged for s in score_against_references(inliers, rs)]) < 0.2
    thr = rs.effective_threshold()
    assert float(distance_to_score(thr, thr, rs.scale())) == pytest.approx(0.5)
    loo_med = float(np.median(leave_one_out_distances(refs)[0]))
    assert float(distance_to_score(loo_med, thr, rs.scale())) == pytest.approx(0.1)


def test_bad_score_monotone_and_bounded(rng):
    refs = _refs(rng)
    rs = ReferenceSet.from_embeddings([str(i) for i in range(20)], refs)
    direction = rng.normal(size=D)
    z = np.stack([refs.mean(0) + t * direction for t in np.linspace(0, 50, 60)])
    scores = score_against_references(z, rs)
    d = np.array([s.distance for s in scores])
    b = np.array([s.bad_score for s in scores])
    order = np.argsort(d)
    assert np.all(np.diff(b[order]) >= 0)
    assert b.min() >= 0.0 and b.max() <= 1.0
    assert b[order][-1] > 0.999


def test_combined_score_with_high_warning(rng):
    high = [ScanWarning("blank", "all zero", "high")]
    warn = [ScanWarning("dark", "dark", "warn")]
    assert combine_with_warnings(0.2, high) == (pytest.approx(0.92), True)
    assert combine_with_warnings(0.2, warn) == (0.2, False)
    assert combine_with_warnings(0.99, high)[0] == pytest.approx(0.999)
    refs = _refs(rng)
    rs = ReferenceSet.from_embeddings([str(i) for i in range(20)], refs)
    z = refs[:2] + 0.01
    s = score_against_references(z, rs, warnings=[high, None])
    assert s[0].flagged and s[0].bad_score > 0.9 and s[0].distance_score < 0.5
    assert s[1].bad_score == s[1].distance_score


def test_suspicious_reference_detected(rng):
    refs = _refs(rng)
    refs[5] += 3.0  # a contaminated reference
    rs = ReferenceSet.from_embeddings([f"r{i}" for i in range(20)], refs)
    sus = suspicious_references(rs)
    assert set(sus) == {"r5"}
    assert sus["r5"].code == "suspicious_reference"
    clean = ReferenceSet.from_embeddings([f"r{i}" for i in range(20)], _refs(rng))
    assert suspicious_references(clean) == {}


def test_slice_scores_find_bad_slices(rng):
    pool = [rng.normal(0, 0.3, size=(12, D)) for _ in range(6)]
    refs = np.stack([p.max(0) for p in pool])
    rs = ReferenceSet.from_embeddings([str(i) for i in range(6)], refs, slice_embeddings=pool)
    vol = rng.normal(0, 0.3, size=(10, D))
    vol[[2, 7]] += 2.0
    ss = slice_scores(vol, rs, slice_index=np.arange(100, 110))
    assert set(ss.worst(2)) == {102, 107}
    assert ss.bad_scores[2] > 0.5 and ss.bad_scores[7] > 0.5
    assert np.median(ss.bad_scores) < 0.5


def test_save_load_roundtrip(tmp_path, rng):
    pool = [rng.normal(size=(n, D)).astype(np.float32) for n in (3, 5, 4)]
    rs = ReferenceSet.from_embeddings(
        ["a", "b", "c"], np.stack([p.mean(0) for p in pool]), slice_embeddings=pool,
        model={"name": "encoder", "sha256": "abc"}, statistic="min", threshold=0.7,
    )
    path = rs.save(tmp_path / "refs.safetensors")
    back = ReferenceSet.load(path)
    assert back.scan_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(back.embeddings, rs.embeddings)
    for x, y in zip(back.slice_embeddings, pool, strict=True):
        np.testing.assert_array_equal(x, y)
    assert back.model == {"name": "encoder", "sha256": "abc"}
    assert (back.statistic, back.threshold) == ("min", 0.7)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        ReferenceSet.load(bad)


def test_invalid_inputs(rng):
    with pytest.raises(ValueError):
        ReferenceSet.from_embeddings(["a"], rng.normal(size=(1, D)))
    rs = ReferenceSet.from_embeddings(["a", "b"], rng.normal(size=(2, D)))
    with pytest.raises(ValueError, match="widths differ"):
        score_against_references(rng.normal(size=(3, D + 1)), rs)
    with pytest.raises(ValueError, match="statistic"):
        score_against_references(rng.normal(size=(3, D)), rs, statistic="median")


def _quality(rng, n):
    from scanqc.scoring.reference import QUALITY_KEYS

    base = {k: 1.0 + i for i, k in enumerate(QUALITY_KEYS)}
    return [{k: v * (1 + 0.05 * rng.normal()) for k, v in base.items()} for _ in range(n)]


def test_quality_distance_fused_with_embedding_distance(rng):
    from scanqc.scoring.reference import (
        quality_calibration,
        quality_distances,
        quality_matrix,
    )

    refs = _refs(rng)
    rq = _quality(rng, 20)
    rs = ReferenceSet.from_embeddings([str(i) for i in range(20)], refs, quality=rq)
    assert rs.has_quality
    # three scans that look like references; the second has an artefact only the quality
    # measures see (e.g. ghosting: signal in the air), the third has no metrics
    z = refs[:3] + 0.01
    q = _quality(rng, 3)
    q[1]["qi1"] *= 20.0
    q[2] = None
    s = score_against_references(z, rs, quality=q)
    assert s[0].quality_score < 0.5 and not s[0].flagged
    assert s[1].quality_distance > s[1].quality_threshold and s[1].flagged
    assert s[1].bad_score == pytest.approx(max(s[1].distance_score, s[1].quality_score))
    assert s[1].bad_score > 0.5 > s[1].distance_score
    assert math.isnan(s[2].quality_score) and s[2].bad_score == s[2].distance_score
    # calibrated on the references only: the median reference (left out) scores 0.1
    rqm = quality_matrix(rq)
    thr, scale = quality_calibration(rqm)
    loo = [quality_distances(rqm[i:i + 1], np.delete(rqm, i, axis=0))[0] for i in range(20)]
    assert thr == pytest.approx(max(loo))
    assert distance_to_score(np.median(loo), thr, scale) == pytest.approx(0.1)
    # without quality for the scans the score is the embedding score alone
    plain = score_against_references(z, rs)
    assert [p.bad_score for p in plain] == [p.distance_score for p in plain]


def test_quality_needs_enough_references_and_roundtrips(tmp_path, rng):
    rs = ReferenceSet.from_embeddings(["a", "b"], _refs(rng, 2), quality=_quality(rng, 2))
    assert not rs.has_quality
    s = score_against_references(_refs(rng, 2), rs, quality=_quality(rng, 2))
    assert all(math.isnan(x.quality_score) for x in s)
    full = ReferenceSet.from_embeddings([str(i) for i in range(5)], _refs(rng, 5),
                                        quality=_quality(rng, 5))
    back = ReferenceSet.load(full.save(tmp_path / "q.safetensors"))
    np.testing.assert_allclose(back.quality, full.quality)
    with pytest.raises(ValueError, match="quality"):
        ReferenceSet.from_embeddings(["a", "b"], _refs(rng, 2), quality=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="quality rows"):
        score_against_references(_refs(rng, 3), full, quality=_quality(rng, 2))


def _two_protocols(rng, n=12):
    """Quality dicts of references from two protocols far apart on every measure."""
    from scanqc.scoring.reference import QUALITY_KEYS

    out = []
    for i in range(n):
        offset = 0.0 if i % 2 == 0 else 5.0  # protocol B: every measure much larger
        out.append({k: 10.0 + j + offset + 0.05 * rng.normal()
                    for j, k in enumerate(QUALITY_KEYS)})
    return out


def test_quality_scale_is_the_nearest_reference_spread(rng):
    from scanqc.scoring.reference import (
        QUALITY_KEYS,
        quality_distances,
        quality_matrix,
        quality_scales,
        quality_space,
    )

    rq = quality_matrix(_two_protocols(rng))
    scales = quality_scales(quality_space(rq))
    spread = np.nanstd(quality_space(rq), axis=0, ddof=1)
    # the spread inside a protocol (0.05 on the raw scale), not between protocols (2.5)
    j = QUALITY_KEYS.index("kspace_roughness")
    assert scales[j] < 0.2 * spread[j]
    # an artefact smaller than the difference between protocols but far outside one
    # protocol's spread moves the scan away from every reference
    base = rq[0].copy()
    art = base.copy()
    art[j] += 1.0
    d = quality_distances(np.stack([base + 0.01, art]), rq[1:])
    assert d[1] > 3 * d[0]


def test_quality_floors_keep_negligible_differences_small(rng):
    from scanqc.scoring.reference import QUALITY_FLOORS, QUALITY_KEYS, quality_distances

    refs = np.stack([np.array([1.0 + 0.1 * rng.normal() for _ in QUALITY_KEYS])
                     for _ in range(10)])
    j = QUALITY_KEYS.index("clipped_low")
    refs[:, j] = 1e-4 * np.abs(rng.normal(size=10))  # nearly constant over the references
    x = refs[:1].copy()
    x[0, j] = 0.01  # 1% clipped: below the floor of the measure
    assert QUALITY_FLOORS["clipped_low"] >= 0.01
    y = refs[:1].copy()
    y[0, j] = 0.5  # half of the anatomy clipped
    d = quality_distances(np.concatenate([x, y]), refs)
    assert d[0] < 0.2 < 2.0 < d[1]


def test_ratio_measures_compare_on_a_log_scale(rng):
    from scanqc.scoring.reference import QUALITY_KEYS, quality_space

    x = np.ones((2, len(QUALITY_KEYS)))
    j = QUALITY_KEYS.index("fber")
    x[:, j] = [10.0, -1.0]
    q = quality_space(x)
    assert q[0, j] == pytest.approx(1.0) and math.isnan(q[1, j])
    assert q[0, QUALITY_KEYS.index("efc")] == 1.0  # other measures unchanged
    with pytest.raises(ValueError, match="columns"):
        quality_space(np.ones((2, 3)))


def test_slice_direction_flags_a_series_in_another_plane(rng):
    from scanqc.scoring.reference import QUALITY_KEYS

    refs = _refs(rng)
    rq = _quality(rng, 20)
    for q in rq:
        q.update(slice_dir_r=0.0, slice_dir_a=0.02 * abs(rng.normal()), slice_dir_s=1.0)
    rs = ReferenceSet.from_embeddings([str(i) for i in range(20)], refs, quality=rq)
    axial, coronal = (dict(rq[0]), dict(rq[0]))
    coronal.update(slice_dir_a=1.0, slice_dir_s=0.0)
    s = score_against_references(refs[:2] + 0.01, rs, quality=[axial, coronal])
    assert not s[0].flagged and s[1].flagged
    assert s[1].quality_distance > s[1].quality_threshold
    assert {"slice_dir_r", "slice_dir_a", "slice_dir_s"} <= set(QUALITY_KEYS)
