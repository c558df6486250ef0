"""scanqc.scoring.order_stats: percentiles from one sort, as numpy computes them."""

import numpy as np
import pytest

from scanqc.io.intensity import robust_window
from scanqc.scoring.order_stats import median, percentile, percentiles


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16, np.uint8])
def test_percentiles_equal_numpy_linear_method(dtype):
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101, 1000, 16384):
        if np.dtype(dtype).kind == "f":
            v = (rng.normal(size=n) * 100).astype(dtype)
        else:
            v = rng.integers(0, 100, n).astype(dtype)
        q = [0, 1, 5, 37.5, 50, 99, 99.5, 100, *rng.uniform(0, 100, 4)]
        want = np.percentile(v.astype(np.float64), q)
        got = percentiles(v, q)
        if dtype == np.float64 or np.dtype(dtype).kind in "iu":
            assert got == [float(x) for x in want]  # the same arithmetic, bit for bit
        else:
            np.testing.assert_allclose(got, want, rtol=1e-7)


def test_percentile_of_a_view_and_of_ties():
    v = np.arange(20.0).reshape(4, 5)[:, ::2]  # a strided view, flattened by the helper
    assert percentile(v, 50) == float(np.percentile(v, 50))
    assert percentiles(np.full(7, 3.0), [1, 50, 99]) == [3.0, 3.0, 3.0]


def test_percentiles_do_not_reorder_the_input():
    v = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    before = v.copy()
    percentiles(v, [10, 90])
    np.testing.assert_array_equal(v, before)


def test_empty_sample_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        percentiles(np.array([]), [50])


def test_median_equals_numpy_median():
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 16384):
        v = rng.normal(size=n)
        assert median(v) == pytest.approx(float(np.median(v)), rel=1e-15)
        ties = np.clip(v.round(), 0, None)  # image-like: many equal values
        assert median(ties) == float(np.median(ties))


def test_float_window_equals_numpy_percentiles():
    """The window of float data (MR stored as floats) is np.percentile's, bit for bit."""
    rng = np.random.default_rng(2)
    vol = np.abs(rng.normal(300, 150, (20, 64, 64))).astype(np.float32)
    vol[:, :10] = 0  # background at the minimum is left out
    fg = vol.astype(np.float64).ravel()
    fg = fg[fg > 0]
    assert robust_window(vol) == tuple(float(x) for x in np.percentile(fg, [0.5, 99.5]))
