"""EXAMINE: exact leave-one-out MSV, the rank-one approximation, and both tails."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from scanqc.progress import Cancelled, CancelToken
from scanqc.scoring.valuation import examine, msv_brute, msv_exact


def _low_rank(rng: np.random.Generator, n: int, d: int, rank: int = 3, noise: float = 0.05,
              offset: float = 0.0) -> np.ndarray:
    scales = np.linspace(3.0, 1.0, rank)
    return (rng.normal(size=(n, rank)) * scales) @ rng.normal(size=(rank, d)) \
        + noise * rng.normal(size=(n, d)) + offset


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize(("n", "d"), [(25, 6), (7, 12), (30, 2)])
def test_exact_equals_brute_force_leave_one_out(rng, center, n, d) -> None:
    z = _low_rank(rng, n, d, rank=min(3, d), offset=1.5)
    exact = examine(z, "exact", center=center).msv
    # brute force written out here, independent of the module: N SVDs
    z64 = z.astype(np.float64)
    full = z64 - z64.mean(0) if center else z64
    s1 = np.linalg.svd(full, compute_uv=False)[0]
    brute = []
    for i in range(n):
        rest = np.delete(z64, i, axis=0)
        rest = rest - rest.mean(0) if center else rest
        brute.append(s1 - np.linalg.svd(rest, compute_uv=False)[0])
    np.testing.assert_allclose(exact, brute, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(msv_brute(z, center)[0], brute, rtol=1e-9, atol=1e-12)


def test_scores_are_non_negative_and_examine_is_exp(rng) -> None:
    z = _low_rank(rng, 60, 16)
    for method in ("exact", "approx", "brute"):
        res = examine(z, method)
        assert (res.msv >= 0).all()
        np.testing.assert_allclose(res.examine, np.exp(res.msv))
        assert np.array_equal(np.argsort(-res.examine, kind="stable"), res.label_first())


def test_exact_and_approx_rank_alike_on_low_rank_data(rng) -> None:
    z = _low_rank(rng, 400, 32, rank=4)
    exact = examine(z, "exact").msv
    approx = examine(z, "approx").msv
    assert spearmanr(exact, approx)[0] >= 0.95


def test_tails_point_at_dominant_and_atypical_rows(rng) -> None:
    # most rows spread along one axis; row 0 sits at the far end, row 1 off the axis
    n, d = 200, 8
    axis = np.zeros(d)
    axis[0] = 1.0
    z = rng.normal(size=(n, 1)) * axis + 0.05 * rng.normal(size=(n, d))
    z[0] = 6.0 * axis
    z[1] = 0.0
    z[1, 3] = 0.3
    res = examine(z)
    assert res.label_first()[0] == 0
    assert res.msv[1] < np.quantile(res.msv, 0.1)


def test_centering_matters_for_unit_vectors(rng) -> None:
    # unit vectors around a common mean: without centring v1 is the mean direction and
    # every row scores almost alike
    z = rng.normal(size=(300, 16)) * 0.2 + 3.0
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    raw = examine(z, center=False).msv
    cen = examine(z, center=True).msv
    assert raw.std() / raw.mean() < 0.1
    assert cen.std() / cen.mean() > 0.5


def test_bad_inputs_and_cancel(rng) -> None:
    with pytest.raises(ValueError, match="2D"):
        examine(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        examine(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="unknown"):
        examine(np.zeros((3, 2)), method="svd")  # type: ignore[arg-type]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        msv_exact(rng.normal(size=(10, 3)), cancel=token)
    assert examine(np.zeros((4, 3))).msv.tolist() == [0.0] * 4


def test_progress_is_reported(rng) -> None:
    calls = []
    examine(rng.normal(size=(50, 4)), progress=lambda d, t, m: calls.append((d, t)))
    assert calls[-1] == (50, 50)


@pytest.mark.slow
def test_exact_and_approx_agree_on_real_embeddings(shared_data) -> None:
    torch = pytest.importorskip("torch")
    from scanqc.models.encoder import SliceEncoder, embed_scan
    from scanqc.models.training_data import read_scan, region_xr_labels

    try:  # the bundled self-supervised encoder, as the acceptance asks
        from scanqc.models.encoder import load_encoder

        model = load_encoder("encoder", "cpu")
    except Exception:  # noqa: BLE001 - no bundled weights: a seeded random encoder
        torch.manual_seed(0)
        model = SliceEncoder().eval()
    files = region_xr_labels(shared_data)[::12][:40]
    z = np.stack([embed_scan(read_scan(f.path), model=model).vector for f in files])
    exact = examine(z, "exact").msv
    assert spearmanr(exact, examine(z, "approx").msv)[0] >= 0.95
    np.testing.assert_allclose(exact, examine(z, "brute").msv, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("center", [True, False])
def test_exact_matches_brute_with_a_tiny_spectral_gap(rng, center) -> None:
    # the 8 sign/swap images of each (x, y) give two top directions of exactly equal
    # variance; a 1e-6 stretch leaves a tiny gap, so most rows' first-order drop exceeds it
    # and the solver must fall back on its bracket
    base = rng.normal(size=(15, 2)) * 2.0
    rest = rng.normal(size=(15, 6)) * 0.3
    rows = []
    for (x, y), r in zip(base, rest, strict=True):
        for a, b in ((x, y), (y, x)):
            for sa in (1, -1):
                for sb in (1, -1):
                    rows.append(np.r_[sa * a, sb * b, r])
    z = np.asarray(rows)
    z[:, 0] *= 1 + 1e-6
    exact = examine(z, "exact", center=center).msv
    np.testing.assert_allclose(exact, msv_brute(z, center)[0], rtol=1e-6, atol=1e-12)
    assert exact.max() > 0
