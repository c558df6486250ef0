"""Image-quality checks on synthetic images with a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from scanqc.io.scan import Scan
from scanqc.scoring import quality
from scanqc.scoring.checks import CheckContext, max_severity, run_checks, warnings_to_columns


def radiograph(value=3000.0, bg=100.0, dtype=np.uint16, shape=(256, 256), seed=0):
    """A bright body (with texture) on a dark background, like a radiograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    inside = ((y - shape[0] / 2) / (shape[0] * 0.35)) ** 2 + (
        (x - shape[1] / 2) / (shape[1] * 0.3)) ** 2 <= 1
    img = np.where(inside, value + 0.2 * value * np.sin(x / 6.0) * np.cos(y / 9.0), bg)
    img = img + rng.normal(0, value * 0.01, shape)
    return np.clip(img, 0, np.iinfo(dtype).max if dtype != np.float32 else None).astype(dtype)


def dx(img, **kw):
    return Scan(img, (0.2, 0.2), np.eye(4), "image", modality=kw.pop("modality", "DX"), **kw)


def codes(ws):
    return {w.code for w in ws}


def test_clean_radiograph_has_no_quality_warning():
    ws = run_checks(dx(radiograph()))
    assert max_severity(ws) in ("", "info"), ws


@pytest.mark.parametrize(("top", "dtype"), [(4095.0, np.uint16), (60000.0, np.uint16),
                                            (200.0, np.uint8)])
def test_bit_depths_do_not_trigger_dark_or_bright(top, dtype):
    img = radiograph(value=top * 0.8, bg=top * 0.02, dtype=dtype)
    assert not codes(run_checks(dx(img))) & {"dark", "bright", "clipped"}


def test_dark_and_bright_8bit():
    dark = (radiograph(value=200, bg=5, dtype=np.uint8) // 4).astype(np.uint8)  # p99 ~ 60
    assert "dark" in codes(quality.check_brightness(dx(dark)))
    bright = (253 - dark // 10).astype(np.uint8)  # 246..253: p5 above 95% of 255
    assert "bright" in codes(quality.check_brightness(dx(bright)))
    mr = Scan(dark, (1.0, 1.0), np.eye(4), "image", modality="MR")
    assert quality.check_brightness(mr) == []  # MR intensities are arbitrary


def test_constant_image():
    ws = run_checks(dx(np.full((64, 64), 1234, np.uint16)))
    assert "constant_image" in codes(ws) and max_severity(ws) == "high"
    assert quality.check_constant(dx(radiograph())) == []


def test_pure_noise_is_noise_only():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 4096, (256, 256)).astype(np.uint16)
    ws = quality.check_noise_only(dx(noise))
    assert codes(ws) == {"noise_only"} and ws[0].severity == "high"
    assert quality.check_noise_only(dx(radiograph())) == []
    vol = Scan(rng.normal(100, 20, (20, 64, 64)).astype(np.float32), (2.0, 1.0, 1.0),
               np.eye(4), "volume", modality="MR")
    assert codes(quality.check_noise_only(vol)) == {"noise_only"}


def test_clipped_top_of_bit_depth():
    img = radiograph(value=3000)
    img[:, :60] = 4095  # a saturated band: 12-bit full scale
    ws = quality.check_clipped(dx(img))
    assert codes(ws) == {"clipped"} and ws[0].region == "high"
    img8 = radiograph(value=200, dtype=np.uint8)
    img8[:80] = 255
    assert codes(quality.check_clipped(dx(img8))) == {"clipped"}
    # values up to 4000 in 16-bit: not at the 12-bit ceiling
    assert quality.check_clipped(dx(radiograph(value=3500))) == []


def test_inverted_radiograph():
    img = radiograph(value=3000, bg=100)
    inv = (4095 - img).astype(np.uint16)
    ws = quality.check_inverted(dx(inv, metadata={"PhotometricInterpretation": "MONOCHROME1"}))
    assert codes(ws) == {"inverted"} and "MONOCHROME1" in ws[0].message
    assert quality.check_inverted(dx(img)) == []
    # not applied to cross-sectional modalities
    assert quality.check_inverted(Scan(inv, (1.0, 1.0), np.eye(4), "image", modality="MR")) == []


def test_low_information_and_blur():
    img = np.zeros((256, 256), np.uint8)
    img[100:150, 100:150] = 200
    assert "low_information" in codes(quality.check_low_information(dx(img)))
    sharp = radiograph(value=200, bg=10, dtype=np.uint8)
    assert quality.check_low_information(dx(sharp)) == []
    checker = ((np.indices((256, 256)) // 32).sum(axis=0) % 2 * 200 + 20).astype(np.float32)
    blurred = ndi.gaussian_filter(checker, 8)
    sb = quality.quality_metrics(dx(checker))["blur"]
    bb = quality.quality_metrics(dx(blurred))["blur"]
    assert bb < sb
    assert "blurry" in codes(quality.check_blur(dx(blurred)))
    assert quality.check_blur(dx(checker)) == []


def test_derived_map():
    rng = np.random.default_rng(3)
    t = ndi.gaussian_filter(rng.normal(0, 1, (30, 48, 48)), 2) * 8
    t[:, :8] = 0
    scan = Scan(t.astype(np.float32), (2.0, 2.0, 2.0), np.eye(4), "volume")
    assert codes(quality.check_derived_map(scan)) == {"derived_map"}
    mr = Scan(np.abs(t).astype(np.float32) + 1, (2.0, 2.0, 2.0), np.eye(4), "volume")
    assert quality.check_derived_map(mr) == []


def test_quality_metrics_mriqc_like():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:64, :64]
    head = ((y - 32) ** 2 + (x - 32) ** 2) < 20**2
    vol = np.stack([np.where(head, 500.0, 0.0) + np.abs(rng.normal(0, 10, (64, 64)))
                    for _ in range(16)]).astype(np.float32)
    m = quality.quality_metrics(Scan(vol, (2.0, 1.0, 1.0), np.eye(4), "volume", modality="MR"))
    assert m["snr"] > 20  # mean 500, sd ~10
    assert m["fber"] > 100
    assert 0 <= m["efc"] <= 1 and 0 <= m["qi1"] < 0.05
    assert 0.25 < m["body_fraction"] < 0.45
    noisier = np.stack([np.where(head, 500.0, 0.0) + np.abs(rng.normal(0, 80, (64, 64)))
                        for _ in range(16)]).astype(np.float32)
    m2 = quality.quality_metrics(Scan(noisier, (2.0, 1.0, 1.0), np.eye(4), "volume",
                                      modality="MR"))
    assert m2["snr"] < m["snr"] and m2["snr_dietrich"] < m["snr_dietrich"]
    assert all(isinstance(v, float) for v in m.values())


def test_nan_inf_and_failing_check_do_not_raise(monkeypatch):
    img = radiograph().astype(np.float32)
    img[10:20, 10:20] = np.nan
    img[30, 30] = np.inf
    ws = run_checks(dx(img))
    assert "check_failed" not in codes(ws)

    def boom(scan, data=None):
        raise RuntimeError("kaput")

    monkeypatch.setattr(quality, "check_blur", boom)
    ws = run_checks(dx(radiograph()))
    failed = [w for w in ws if w.code == "check_failed"]
    assert len(failed) == 1 and failed[0].severity == "info" and "kaput" in failed[0].message
    all_nan = np.full((32, 32), np.nan, np.float32)
    ws = run_checks(dx(all_nan))
    assert "constant_image" in codes(ws)


def test_run_checks_skip_and_timings():
    timings: dict[str, float] = {}
    ws = run_checks(dx(np.full((64, 64), 7, np.uint16)),
                    CheckContext(skip=frozenset({"constant_image"})), timings=timings)
    assert "constant_image" not in codes(ws) and "constant_image" not in timings
    assert "prepare" in timings and all(v >= 0 and math.isfinite(v) for v in timings.values())


def test_columns_and_severity():
    from scanqc.io.scan import ScanWarning

    ws = [ScanWarning("a", "first | x", "info"), ScanWarning("b", "second", "high"),
          ScanWarning("a", "third", "warn")]
    c, m = warnings_to_columns(ws)
    assert c == "a;b"
    assert m.count(" | ") == 2 and "first / x" in m
    assert max_severity(ws) == "high" and max_severity([]) == ""
    assert warnings_to_columns([]) == ("", "")


def test_columns_read_back_with_each_warnings_severity():
    from scanqc.io.scan import ScanWarning
    from scanqc.scoring.checks import warnings_from_columns

    ws = [ScanWarning("no_spacing", "no pixel spacing: x: y", "info"),
          ScanWarning("fov_cut", "anatomy cut | top", "warn"),
          ScanWarning("noise_only", "looks like noise", "high")]
    back = warnings_from_columns(*warnings_to_columns(ws), severity="high")
    assert [(w.code, w.severity) for w in back] == [(w.code, w.severity) for w in ws]
    assert back[0].message == "no pixel spacing: x: y" and back[1].message == "anatomy cut / top"
    # another version's messages, or codes only: the row's severity
    old = warnings_from_columns("a;b", "a: first | b: second", severity="warn")
    assert [(w.code, w.message, w.severity) for w in old] == [("a", "first", "warn"),
                                                               ("b", "second", "warn")]
    assert [w.code for w in warnings_from_columns("a;b", "", "info")] == ["a", "b"]
    assert warnings_from_columns("", "") == []


def test_check_scan_returns_warnings_and_metrics():
    from scanqc.scoring.checks import check_scan

    img = radiograph()
    ws, m = check_scan(dx(img))
    assert [w.code for w in ws] == [w.code for w in run_checks(dx(img))]
    assert m == quality.quality_metrics(dx(img))
    ws, m = check_scan(dx(np.full((16, 16), 3, np.uint16)))
    assert "constant_image" in codes(ws) and isinstance(m, dict)


def _loop_neighbour_correlation(win):
    """The per-slice loop :func:`neighbour_correlation` replaced (reference)."""
    vals = []
    if win.shape[0] > 6:
        win = win[np.linspace(0, win.shape[0] - 1, 6).round().astype(int)]
    for img in win:
        if float(img.std()) < 1e-6:
            continue
        for a, b in ((img[1:, :], img[:-1, :]), (img[:, 1:], img[:, :-1])):
            a0, b0 = a - a.mean(), b - b.mean()
            den = np.sqrt(float((a0 * a0).sum()) * float((b0 * b0).sum()))
            if den > 0:
                vals.append(float((a0 * b0).sum()) / den)
    return float(np.mean(vals)) if vals else float("nan")


def test_neighbour_correlation_equals_per_slice_loop_and_skips_constant_slices():
    from scanqc.scoring.quality import neighbour_correlation

    rng = np.random.default_rng(3)
    smooth = ndi.gaussian_filter(rng.random((10, 40, 50)), (0, 2, 2)).astype(np.float32)
    noise = rng.random((10, 40, 50)).astype(np.float32)
    stack = np.where(np.arange(10)[:, None, None] % 2 == 0, smooth, noise)
    stack[4] = 0.5  # constant slice: no correlation, skipped
    for win in (stack, smooth, noise, stack[:3], stack[0]):
        w3 = win[None] if win.ndim == 2 else win
        assert neighbour_correlation(win) == pytest.approx(_loop_neighbour_correlation(w3),
                                                           rel=1e-5)
    assert neighbour_correlation(smooth) > 0.9 > 0.1 > abs(neighbour_correlation(noise))
    assert np.isnan(neighbour_correlation(np.full((3, 8, 8), 0.2, np.float32)))
    assert np.isnan(neighbour_correlation(np.zeros((2, 2, 8), np.float32)))


@pytest.mark.parametrize("shape", [(1, 1), (1, 900), (900, 1), (3, 3), (1, 1, 1), (2, 2, 2),
                                   (300, 1, 1), (1, 1, 300), (2, 5, 70)])
def test_degenerate_and_extreme_scans_give_no_failed_check_and_no_runtime_warning(shape):
    """Odd shapes and extreme values: every check runs, NaN measures stay silent."""
    import warnings

    from scanqc.models.preprocess import scan_to_slices

    rng = np.random.default_rng(5)
    arrays = [
        (rng.random(shape) * 1e30).astype(np.float32),
        np.where(rng.random(shape) < 0.5, np.inf, -np.inf).astype(np.float32),
        rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=shape),
        np.zeros(shape, np.uint16),
        rng.random(shape) < 0.5,
    ]
    for a in arrays:
        for modality in ("", "CT", "MR"):
            scan = Scan(a, (1.0,) * a.ndim, np.eye(4), "volume" if a.ndim == 3 else "image",
                        modality=modality)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                ws = run_checks(scan)
                slices, _ = scan_to_slices(scan, 32, 8)
            assert "check_failed" not in codes(ws), (a.dtype, modality, ws)
            assert slices.shape[1:] == (32, 32) and np.isfinite(slices).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_efc_from_value_counts_equals_the_sum_over_pixels(dtype):
    """8/16-bit data: EFC summed over the counts of each value equals MRIQC's pixel sum."""
    rng = np.random.default_rng(5)
    top = 250 if dtype == np.uint8 else 4000
    x = np.clip(rng.normal(top / 3, top / 6, (7, 40, 33)), 0, top).round().astype(np.float32)
    x[:, :5] = 0
    v = x.astype(np.float64).ravel()
    b = v / np.sqrt((v * v).sum())
    n = v.size
    expected = (b * np.log(b + 1e-16)).sum() / (n / np.sqrt(n) * np.log(1 / np.sqrt(n)))
    assert quality.efc(x, integer=True) == pytest.approx(expected, rel=1e-12)
    assert quality.efc(x, integer=False) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(quality.efc(np.zeros((4, 4), np.float32), integer=True))
    assert math.isnan(quality.efc(np.ones(1, np.float32)))


def test_tiny_images_are_flagged_whatever_their_content():
    """Icons and 16 x 16 test images get tiny_image (high); 64 x 64 EPI or NM do not."""
    tiny = run_checks(dx(radiograph(shape=(16, 16))))
    assert {w.code: w.severity for w in tiny}["tiny_image"] == "high"
    assert "16 x 16 pixels" in next(w.message for w in tiny if w.code == "tiny_image")
    vol = Scan(np.zeros((5, 16, 40), np.int16), (1.0, 1.0, 1.0), np.eye(4), "volume")
    assert [w.code for w in quality.check_tiny(vol)] == ["tiny_image"]  # 40 x 16
    for shape in ((32, 32), (64, 64)):
        assert quality.check_tiny(dx(radiograph(shape=shape))) == []
