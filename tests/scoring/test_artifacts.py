"""MR artefact measures on synthetic phantoms with a known truth (ghosting, motion, plane)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from scanqc.io.scan import Scan
from scanqc.scoring import artifacts as A
from scanqc.scoring.body_mask import prepare
from scanqc.scoring.corruptions import wrong_plane
from scanqc.scoring.quality import quality_metrics


def phantom(shape=(12, 128, 128), seed=0, noise=2.0):
    """A textured "head" with an irregular outline and a bright rim (scalp fat).

    ``noise`` > 0 adds magnitude (Rician-like) noise; 0 leaves a zero-filled background.
    Stored as integers, like scanner data.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    cy, cx = shape[1] / 2, shape[2] / 2
    angle = np.arctan2(y - cy, x - cx)
    outline = 1 + 0.08 * (0.5 * np.sin(3 * angle + seed) + 0.3 * np.sin(5 * angle + 2 * seed))
    r = np.sqrt(((y - cy) / (0.38 * shape[1])) ** 2 + ((x - cx) / (0.30 * shape[2])) ** 2)
    r /= outline
    texture = ndi.gaussian_filter(rng.normal(size=shape), (1, 3, 3))
    texture /= texture.std()
    vol = np.where(r < 1, 100.0 + 15.0 * texture, 0.0)
    vol += np.where((r > 0.9) & (r < 1), 80.0, 0.0)
    vol = ndi.gaussian_filter(vol, (0, 1.5, 1.5))
    if noise:
        vol = np.abs(vol + rng.normal(0, noise, shape))
    return np.round(vol)


def mr(vol, affine=None):
    return Scan(np.asarray(vol, np.float32), (2.0, 1.0, 1.0),
                np.eye(4) if affine is None else affine, "volume", modality="MR")


def ghosted(vol, n=4, intensity=0.8, axis=1):
    """Every n-th phase-encoding line of k-space scaled by 1 - intensity (TorchIO's model)."""
    spec = np.fft.fftshift(np.fft.fftn(vol, axes=(1, 2)), axes=(1, 2))
    centre = spec.shape[axis] // 2
    keep = np.take(spec, [centre], axis=axis).copy()
    sl = [slice(None)] * 3
    sl[axis] = slice(None, None, n)
    spec[tuple(sl)] *= 1 - intensity
    sl[axis] = slice(centre, centre + 1)
    spec[tuple(sl)] = keep
    return np.real(np.fft.ifftn(np.fft.ifftshift(spec, axes=(1, 2)), axes=(1, 2)))


def moved(vol, shift=10.0, angle=10.0, start=0.4):
    """Motion during the scan: k-space lines after ``start`` come from a moved head."""
    other = ndi.shift(ndi.rotate(vol, angle, axes=(1, 2), reshape=False, order=1),
                      (0, shift, shift / 2), order=1)
    a = np.fft.fftshift(np.fft.fftn(vol, axes=(1, 2)), axes=(1, 2))
    b = np.fft.fftshift(np.fft.fftn(other, axes=(1, 2)), axes=(1, 2))
    k0 = int(start * vol.shape[2])
    a[:, :, :k0] = b[:, :, :k0]
    return np.real(np.fft.ifftn(np.fft.ifftshift(a, axes=(1, 2)), axes=(1, 2)))


@pytest.mark.parametrize("n,axis", [(2, 1), (4, 2), (7, 1)])
def test_kspace_roughness_separates_ghosting(n, axis):
    clean = [A.line_power_roughness(phantom(seed=s)) for s in range(3)]
    ghost = [A.line_power_roughness(ghosted(phantom(seed=s), n=n, axis=axis))
             for s in range(3)]
    assert max(clean) < 0.08  # real clean MR: about 0.01-0.05
    assert min(ghost) > 3 * max(clean)


def test_kspace_roughness_grows_with_ghost_intensity():
    vol = phantom()
    values = [A.line_power_roughness(ghosted(vol, n=4, intensity=i)) for i in (0.0, 0.3, 0.9)]
    assert values[0] < values[1] < values[2]
    assert values[1] > 2 * values[0]


def test_kspace_roughness_handles_small_large_and_constant_images():
    assert math.isnan(A.line_power_roughness(np.zeros((4, 8, 8))))
    assert math.isnan(A.line_power_roughness(np.ones((1, 64, 64))))
    big = phantom(shape=(1, 600, 520), noise=0.5)[0]  # block-averaged to <= 256 per axis
    small = phantom(shape=(1, 150, 130))[0]
    v_big, v_small = A.line_power_roughness(big), A.line_power_roughness(small)
    assert np.isfinite(v_big) and v_big < 0.1 and np.isfinite(v_small)
    assert A.line_power_roughness(ghosted(big[None], n=2)) > 3 * v_big


def test_gsr_sees_nyquist_ghost():
    vol = phantom(noise=0.0)
    clean, ghost = (A.ghost_to_signal_ratio(prepare(mr(v)).raw, prepare(mr(v)).mask)
                    for v in (vol, ghosted(vol, n=2, intensity=0.6, axis=1)))
    assert abs(clean) < 0.01
    assert ghost > clean + 0.05
    assert math.isnan(A.ghost_to_signal_ratio(np.zeros((2, 8, 8)), np.zeros((2, 8, 8), bool)))


def test_air_mask_is_the_in_plane_diamond_dilation(rng):
    mask = rng.random((3, 40, 33)) > 0.97
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndi.generate_binary_structure(2, 1)
    expected = ~ndi.binary_dilation(mask, structure=structure, iterations=2)
    np.testing.assert_array_equal(A.air_mask(mask, 2), expected)
    assert A.air_mask(np.zeros((1, 5, 5), bool)).all()


@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_air_fractions_separate_motion_and_ghosts(noise):
    vol = phantom(noise=noise, seed=1)

    def fractions(v):
        d = prepare(mr(v))
        return A.air_fractions(d.raw, d.mask)

    floor_c, signal_c = fractions(vol)
    floor_m, signal_m = fractions(moved(vol))
    ghosts = [fractions(ghosted(vol, n=n, intensity=0.7, axis=ax)) for n, ax in ((3, 2), (4, 1))]
    assert signal_c < 0.01
    # ghosts fill the air, even where they cover most of it (n=3): the noise estimate
    # from neighbour differences does not absorb them
    assert all(signal > 0.2 for _, signal in ghosts)
    assert signal_m > 0.02
    if noise == 0.0:  # zero-filled background: intact without artefacts
        assert floor_c > 0.95
        assert floor_m < 0.5 and all(floor < 0.5 for floor, _ in ghosts)
        assert signal_m > 0.3
    else:  # magnitude noise: the background is not at the floor, the noise is not signal
        assert floor_c < 0.3


def test_air_fractions_undefined_without_body_or_air():
    assert all(math.isnan(v) for v in A.air_fractions(np.ones((2, 8, 8)),
                                                       np.zeros((2, 8, 8), bool)))
    assert all(math.isnan(v) for v in A.air_fractions(np.ones((1, 8, 8)),
                                                       np.ones((1, 8, 8), bool)))


def test_slice_direction_follows_the_affine():
    # the affine maps the data index (z, y, x): with the identity, slices stack along R
    assert A.slice_direction(mr(phantom(shape=(20, 32, 32)))) == pytest.approx((1, 0, 0))
    # axial (the NIfTI reader's S, P, L order): z runs along S
    aff = np.array([[0, 0, -1, 0], [0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    s = mr(phantom(shape=(20, 32, 32)), affine=aff)
    assert A.slice_direction(s) == pytest.approx((0.0, 0.0, 1.0))
    cor = wrong_plane(s, plane="coronal")
    sag = wrong_plane(s, plane="sagittal")
    assert A.slice_direction(cor) == pytest.approx((0.0, 1.0, 0.0))
    assert A.slice_direction(sag) == pytest.approx((1.0, 0.0, 0.0))
    image = Scan(np.zeros((16, 16), np.uint8), (1.0, 1.0), np.eye(4), "image")
    assert A.slice_direction(image) == pytest.approx((0.0, 0.0, 1.0))
    bad = Scan(np.zeros((16, 16), np.uint8), (1.0, 1.0), np.full((4, 4), np.nan), "image")
    assert all(math.isnan(v) for v in A.slice_direction(bad))


def test_quality_metrics_carry_the_artifact_keys():
    vol = phantom()
    m = quality_metrics(mr(vol))
    g = quality_metrics(mr(ghosted(vol, n=4, axis=2)))
    assert set(A.ARTIFACT_KEYS) <= set(m)
    assert g["kspace_roughness"] > 3 * m["kspace_roughness"]
    assert m["slice_dir_r"] == pytest.approx(1.0)
    rgb = Scan(np.zeros((40, 40, 3), np.uint8) + 10, (1.0, 1.0), np.eye(4), "image", rgb=True)
    assert set(A.ARTIFACT_KEYS) <= set(quality_metrics(rgb))


def test_kspace_roughness_of_colour_and_integer_data_matches_gray_float():
    gray = phantom(shape=(1, 96, 80))[0]
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)  # luminance == gray
    as_float = A.line_power_roughness(gray.astype(np.uint8).astype(np.float64))
    assert A.line_power_roughness(rgb[None]) == pytest.approx(as_float, rel=1e-6)
    assert A.line_power_roughness(gray.astype(np.uint8)) == pytest.approx(as_float)
    with_nan = gray.copy()
    with_nan[0, 0] = np.nan
    assert np.isfinite(A.line_power_roughness(with_nan))


def test_acquisition_measures_only_for_mr_and_volumes():
    vol = phantom()
    radiograph = Scan(np.asarray(ghosted(vol, n=4, axis=2)[6], np.float32), (1.0, 1.0),
                      np.eye(4), "xr.png")
    m = quality_metrics(radiograph)
    assert not A.applies_to(radiograph)
    assert all(math.isnan(m[k]) for k in ("kspace_roughness", "air_floor_fraction",
                                          "air_signal_fraction", "gsr"))
    assert m["slice_dir_s"] == pytest.approx(1.0)  # the plane is still known
    mr_slice = Scan(radiograph.data, (1.0, 1.0), np.eye(4), "mr.dcm", modality="MR")
    assert A.applies_to(mr_slice) and A.applies_to(mr(vol))
    assert quality_metrics(mr_slice)["kspace_roughness"] > 0.05  # the ghost is seen


def _roughness_float64(planes):
    """The measure computed in float64 with numpy's FFT (the definition, for reference)."""
    p = np.asarray(planes, dtype=np.float64)
    best = math.nan
    for axis in (1, 2):
        step = max(1, math.ceil(p.shape[3 - axis] / A.MAX_LINES))
        sl = [slice(None)] * 3
        sl[3 - axis] = slice(None, None, step)
        x = p[tuple(sl)]
        f = max(1, math.ceil(x.shape[axis] / A.MAX_SIZE))
        if f > 1:
            n = (x.shape[axis] // f) * f
            sl = [slice(None)] * 3
            sl[axis] = slice(0, n)
            shape = list(x[tuple(sl)].shape)
            shape[axis:axis + 1] = [n // f, f]
            x = x[tuple(sl)].reshape(shape).mean(axis=axis + 1)
        spec = np.fft.rfft(x - x.mean(), axis=axis)
        power = (np.abs(spec) ** 2).sum(axis=(0, 3 - axis))
        log_p = np.log10(power + power.max() * 1e-12)
        value = float(np.abs(log_p[2:-1] - 0.5 * (log_p[1:-2] + log_p[3:])).mean())
        best = value if math.isnan(best) else max(best, value)
    return best


@pytest.mark.parametrize("shape", [(4, 96, 80), (3, 600, 300)])
def test_float32_kspace_measure_matches_the_float64_definition(shape):
    vol = phantom(shape, seed=2)
    for planes in (vol, ghosted(vol, n=3)):
        assert A.line_power_roughness(planes) == pytest.approx(_roughness_float64(planes),
                                                               rel=1e-4)
    assert A.line_power_roughness(vol.astype(np.int16)) == pytest.approx(
        _roughness_float64(vol), rel=1e-4)


def _air_fractions_definition(raw, mask):
    """The background measures as documented, in float64 over every pixel."""
    raw = np.asarray(raw, dtype=np.float64)
    in_air = A.air_mask(mask)
    air = raw[in_air]
    floor = raw.min()
    base = np.percentile(A._sample(air), 5)
    level = np.median(A._sample(raw[mask])) - base
    at_floor = np.mean(air <= floor + A.AIR_FLOOR_TOL * (level + base - floor))
    pairs = in_air[:, :, 1:] & in_air[:, :, :-1]
    diff = np.abs(raw[:, :, 1:] - raw[:, :, :-1])[pairs]
    sigma = 1.4826 * np.median(A._sample(diff)) / math.sqrt(2.0)
    signal = np.mean(air - base > max(A.AIR_NOISE_K * sigma, A.AIR_SIGNAL_TOL * level))
    return float(at_floor), float(signal)


def _gsr_definition(raw, mask):
    raw = np.asarray(raw, dtype=np.float64)
    best = -np.inf
    for axis in (1, 2):
        ghost = np.roll(mask, mask.shape[axis] // 2, axis=axis) & ~mask
        rest = ~mask & ~ghost
        best = max(best, (raw[ghost].mean() - raw[rest].mean()) / np.median(raw[mask]))
    return float(best)


@pytest.mark.parametrize("noise", [0.0, 3.0, 40.0])
def test_background_measures_equal_their_float64_definition(noise):
    """The sampled neighbour differences and the background sums give the full result."""
    vol = phantom((6, 160, 130), seed=3, noise=noise)
    for v in (vol, ghosted(vol, n=4, intensity=0.5), moved(vol)):
        d = prepare(mr(v))
        assert d.raw.dtype == np.float32
        assert A.air_fractions(d.raw, d.mask) == pytest.approx(
            _air_fractions_definition(d.raw, d.mask), rel=1e-9, abs=1e-12)
        assert A.ghost_to_signal_ratio(d.raw, d.mask) == pytest.approx(
            _gsr_definition(d.raw, d.mask), rel=1e-6)
        # integer and float64 input: the same values
        for raw in (d.raw.astype(np.float64), d.raw.astype(np.int32)):
            assert A.air_fractions(raw, d.mask) == pytest.approx(
                _air_fractions_definition(raw, d.mask), rel=1e-9, abs=1e-12)
