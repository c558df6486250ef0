"""Asymmetry maps: GMM soft labels, Siamese loss, training, and lesion localisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scanqc.io.scan import Scan

torch = pytest.importorskip("torch")

from scanqc.models.asymmetry_net import (  # noqa: E402
    BUNDLED_DIR,
    AsymmetryEncoder,
    load_model,
    save_model,
)
from scanqc.models.asymmetry_train import (  # noqa: E402
    fine_tune,
    siamese_soft_loss,
    soft_labels,
    train_siamese,
)
from scanqc.scoring.asymmetry import (  # noqa: E402
    asymmetry_map,
    asymmetry_pair,
    intensity_difference_map,
    prepare_pair_volume,
)


def phantom_head(shape=(32, 72, 72), yaw_deg=10.0, shift_vox=8.0, lesion=None, seed=0):
    """Symmetric synthetic head rotated by ``yaw_deg`` and shifted along axis 2.

    ``lesion = (u, v, w, radius, value)`` in head coordinates (voxels) plants a sphere on
    one side. Returns the volume and the lesion mask (array coordinates).
    """
    z, y, x = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    c = (np.asarray(shape) - 1) / 2.0
    zc, yc, xc = z - c[0], y - c[1], x - c[2] - shift_vox
    t = np.deg2rad(yaw_deg)
    u = np.cos(t) * xc - np.sin(t) * yc
    v = np.sin(t) * xc + np.cos(t) * yc
    vol = np.zeros(shape, np.float32)
    head = (zc / 13) ** 2 + (v / 30) ** 2 + (u / 24) ** 2
    vol[head <= 1] = 0.6
    vol[(head <= 1) & (head > 0.8)] = 1.0
    for s in (-1, 1):
        vol[((zc / 6) ** 2 + ((v + 4) / 10) ** 2 + ((u - s * 8) / 3.5) ** 2) <= 1] = 0.2
        vol[((zc - 4) ** 2 + (v - 15) ** 2 + (u - s * 13) ** 2) <= 9] = 0.9
    mask = np.zeros(shape, bool)
    if lesion is not None:
        lu, lv, lw, r, val = lesion
        mask = ((zc - lw) ** 2 + (v - lv) ** 2 + (u - lu) ** 2) <= r * r
        vol[mask] = val
    rng = np.random.default_rng(seed)
    return vol + rng.normal(0, 0.02, shape).astype(np.float32), mask


def _model() -> AsymmetryEncoder:
    if (BUNDLED_DIR / "model.safetensors").is_file():
        return load_model()[0]
    torch.manual_seed(0)
    return AsymmetryEncoder(width=8, dim=16).eval()


def test_soft_labels_in_unit_interval_and_increase_with_distance() -> None:
    rng = np.random.default_rng(0)
    d = np.r_[rng.normal(0.2, 0.05, 300), rng.normal(1.0, 0.1, 40)]
    s = soft_labels(d)
    assert s.shape == d.shape
    assert np.all((s >= 0) & (s <= 1))
    order = np.argsort(d)
    assert np.all(np.diff(s[order]) >= -1e-6)  # monotone in d
    assert s[d > 0.9].mean() > 0.9 and s[d < 0.3].mean() < 0.1
    assert np.all(soft_labels(np.full(20, 0.5)) == 0)  # degenerate: all "near"


def test_siamese_soft_loss_terms() -> None:
    d = torch.tensor([0.0, 0.5, 2.0])
    assert float(siamese_soft_loss(d[:1], torch.zeros(1))) == 0.0
    near = siamese_soft_loss(d, torch.zeros(3))
    assert np.isclose(float(near), np.mean(0.5 * np.array([0, 0.25, 4.0])))
    far = siamese_soft_loss(d, torch.ones(3), margin=1.0)
    assert np.isclose(float(far), np.mean([0.5, 0.125, 0.0]))


def _scan(vol: np.ndarray, sp=1.5) -> Scan:
    return Scan(data=vol, spacing=(sp, sp, sp), affine=np.diag([sp, sp, sp, 1.0]), kind="volume")


def test_train_and_fine_tune_tiny(tmp_path) -> None:
    torch.set_num_threads(1)
    vols = [prepare_pair_volume(_scan(phantom_head(seed=i)[0])) for i in range(2)]
    assert vols[0].work.shape == vols[0].mirror.shape == vols[0].mask.shape
    model, hist = train_siamese(vols, steps=3, batch=8, width=4, dim=8, seed=1)
    assert len(hist.loss_a) == 3 and np.all(np.isfinite(hist.loss_a))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, _ = fine_tune(model, vols, steps=2, batch=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    # safetensors round trip with checksum
    save_model(tuned, tmp_path / "m", {"seed": 1})
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert len(meta["sha256"]) == 64 and meta["config"]["dim"] == 8
    loaded, info = load_model(tmp_path / "m")
    x = torch.rand(2, 1, 56, 56)
    assert torch.allclose(loaded(x), tuned.eval()(x), atol=1e-6)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="sha256"):
        load_model(tmp_path / "m")


def test_dense_embedding_matches_patch_embedding() -> None:
    torch.manual_seed(0)
    m = AsymmetryEncoder(width=4, dim=8).eval()
    img = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        dense = m.dense(img)  # cell (i, j): patch with top-left (4i, 4j)
        # a 56-pixel crop centred on the patch at cell (8, 9) (patch centre 4*8+16, 4*9+16)
        cy, cx = 4 * 8 + 16, 4 * 9 + 16
        crop = img[:, :, cy - 28 : cy + 28, cx - 28 : cx + 28]
        e = m(crop)
    assert torch.allclose(dense[0, :, 8, 9], e[0], atol=1e-5)


@pytest.mark.parametrize("method", ["siamese", "intensity-z", "intensity"])
def test_heatmap_peak_inside_lesion_on_oblique_head(method: str) -> None:
    from scanqc.scoring.asymmetry import asymmetry_maps

    torch.set_num_threads(1)
    vol, lesion = phantom_head(lesion=(-13.0, -12.0, 0.0, 5.0, 1.0))
    scan = _scan(vol)
    if method == "siamese":
        res = asymmetry_map(scan, _model())
    elif method == "intensity-z":
        res = asymmetry_maps(scan, None, [method])[method]
    else:
        res = intensity_difference_map(scan)
    assert res.heatmap.shape == vol.shape and res.heatmap.dtype == np.float32
    # the plane was found off the array centre, rotated
    assert abs(res.plane.yaw_deg + 10.0) < 2.0
    peak = np.unravel_index(int(np.argmax(res.heatmap)), vol.shape)
    assert lesion[peak], (peak, np.argwhere(lesion).mean(0))
    top = res.top_regions[0]
    assert top.slices[0] <= peak[0] <= top.slices[1]
    clean = asymmetry_maps(_scan(phantom_head()[0]), _model(), [method])[method]
    assert res.score > clean.score


def test_asymmetry_pair_2d_images() -> None:
    vol, lesion = phantom_head(shape=(1, 96, 96), yaw_deg=0.0, shift_vox=0.0,
                               lesion=(10.0, -14.0, 0.0, 6.0, 1.0))
    clean, _ = phantom_head(shape=(1, 96, 96), yaw_deg=0.0, shift_vox=0.0, seed=3)
    left = Scan(vol[0], (1.0, 1.0), np.eye(4), "image")
    right = Scan(clean[0][:, ::-1].copy(), (1.0, 1.0), np.eye(4), "image")
    res_l, res_r = asymmetry_pair(left, right, _model())
    assert res_l.heatmap.shape == (96, 96) and res_r.heatmap.shape == (96, 96)
    peak = np.unravel_index(int(np.argmax(res_l.heatmap)), (96, 96))
    assert lesion[0][peak]
    assert res_l.heatmap.max() > res_r.heatmap.max()


def test_soft_labels_far_component_is_a_minority() -> None:
    """One broad population of distances (no real outliers): few pairs may be labelled far.

    An unconstrained mixture on such data can label nearly every pair "far" (the collapse of
    the first bundled model); the far prior is capped.
    """
    from scanqc.models.asymmetry_train import MAX_FAR_WEIGHT, SoftLabeller

    rng = np.random.default_rng(1)
    d = np.r_[rng.gamma(4.0, 0.05, 2000), rng.normal(0.02, 0.002, 300)]
    s = soft_labels(d)
    assert s.mean() <= MAX_FAR_WEIGHT + 0.05
    lab = SoftLabeller(buffer=4096, refit=1)
    s2 = lab(d)
    assert s2.mean() <= MAX_FAR_WEIGHT + 0.05
    # a real far group is still found
    d3 = np.r_[rng.normal(0.2, 0.03, 900), rng.normal(1.0, 0.05, 100)]
    s3 = soft_labels(d3)
    assert s3[900:].mean() > 0.9 and s3[:900].mean() < 0.05


def test_tolerant_difference_ignores_small_shifts_not_intensity_changes() -> None:
    from scanqc.scoring.asymmetry import _tolerant_difference

    rng = np.random.default_rng(0)
    base = np.full((20, 40, 40), 0.5, np.float32)
    base[:, 10:30, 10:20] = 0.9  # a bright structure
    shifted = np.roll(base, 1, axis=2)  # displaced by 1 mm: natural misalignment
    changed = base.copy()
    changed[8:12, 18:24, 25:31] *= 1.4  # a 6 mm blob 40 % brighter
    noise = rng.normal(0, 0.005, base.shape).astype(np.float32)
    d_shift, _ = _tolerant_difference(base + noise, shifted, (1.0, 1.0, 1.0))
    d_blob, _ = _tolerant_difference(changed + noise, base, (1.0, 1.0, 1.0))
    assert d_shift[2:-2, 2:-2, 2:-2].max() < 0.05
    assert d_blob[10, 21, 28] > 0.2
    # the plain difference does flag the displaced edge
    assert np.abs(base - shifted).max() > 0.3


@pytest.mark.parametrize("value", [1.0, 0.25])
def test_edge_side_rule_picks_the_lesion_side_for_bright_and_dark_lesions(value: float) -> None:
    from scanqc.scoring.asymmetry import _edge_side, _presmooth
    from scanqc.scoring.midplane import mirror_volume

    vol, lesion = phantom_head(yaw_deg=0.0, shift_vox=0.0, lesion=(-13.0, -12.0, 0.0, 5.0, value))
    from scanqc.scoring.midplane import estimate_midplane

    plane = estimate_midplane(vol, (1.5, 1.5, 1.5))
    mir = mirror_volume(vol, plane)
    mirror_lesion = mirror_volume(lesion.astype(np.float32), plane, order=0) > 0.5
    w, _, _ = _edge_side(*_presmooth(vol, mir, (1.5, 1.5, 1.5)), (1.5, 1.5, 1.5))
    assert w[lesion].mean() > 0.6
    assert w[mirror_lesion].mean() < 0.4


def test_fine_voxels_are_analysed_on_a_coarser_copy_and_mapped_back() -> None:
    """0.75 mm voxels: the maps are computed on the analysis copy (about 1.5 mm) and
    resampled, so the heatmap has the scan's shape and still peaks in the lesion."""
    from scanqc.scoring.asymmetry import ANALYSIS_MM, asymmetry_maps

    vol, lesion = phantom_head(lesion=(-13.0, -12.0, 0.0, 5.0, 1.0))
    fine = np.repeat(np.repeat(np.repeat(vol, 2, 0), 2, 1), 2, 2)
    les_f = np.repeat(np.repeat(np.repeat(lesion, 2, 0), 2, 1), 2, 2)
    scan = Scan(fine, (0.75, 0.75, 0.75), np.diag([0.75, 0.75, 0.75, 1.0]), "volume")
    res = asymmetry_maps(scan, None, ["intensity-z", "intensity"])
    for r in res.values():
        assert r.heatmap.shape == fine.shape and r.symmetric_map.shape == fine.shape
        assert min(r.info["analysis_spacing"]) >= ANALYSIS_MM - 0.1
    peak = np.unravel_index(int(np.argmax(res["intensity-z"].heatmap)), fine.shape)
    assert les_f[peak], peak
    with pytest.raises(ValueError, match="unknown"):
        asymmetry_maps(scan, None, ["nonsense"])


def test_signed_blob_statistic_cancels_displaced_thin_structure_keeps_lesion() -> None:
    """A displaced thin structure gives a +/- dipole of the signed residual, which smoothing
    at lesion scales cancels; a lesion gives a monopole that survives. Smoothing the
    unsigned residual keeps the dipole (the structure wins)."""
    from scanqc.scoring.asymmetry_blob import blob_z, signed_tolerant_residual

    sp = (1.0, 1.0, 1.0)
    base = np.full((24, 48, 48), 0.5, np.float32)
    base[:, 8:40, 10:12] = 0.9  # a thin bright sheet
    other = np.roll(base, 3, axis=2)  # the same sheet 3 mm away on the other side
    scan_side = base.copy()
    scan_side[9:15, 20:26, 30:36] *= 1.4  # a 6 mm blob 40 % brighter
    mask = np.ones(base.shape, bool)
    resid = signed_tolerant_residual(np.log(scan_side + 0.05), np.log(other + 0.05), sp, 0.0)
    scales = (3.0, 4.5, 6.0)
    z = blob_z(resid, mask, sp, lambda g: g, scales)
    za = blob_z(np.abs(resid), mask, sp, lambda g: g, scales)
    ratio = z[12, 23, 33] / z[4:-4, 10:38, 6:18].max()
    ratio_abs = za[12, 23, 33] / za[4:-4, 10:38, 6:18].max()
    assert ratio > 1.0 > ratio_abs
    assert ratio > 2.5 * ratio_abs


@pytest.mark.parametrize("value", [1.0, 0.25])
def test_projection_side_rule_picks_the_lesion_side(value: float) -> None:
    from scanqc.scoring.asymmetry import _presmooth
    from scanqc.scoring.asymmetry_blob import projection_side
    from scanqc.scoring.midplane import estimate_midplane, mirror_volume

    sp = (1.5, 1.5, 1.5)
    vol, lesion = phantom_head(yaw_deg=0.0, shift_vox=0.0, lesion=(-13.0, -12.0, 0.0, 5.0, value))
    plane = estimate_midplane(vol, sp)
    mir = mirror_volume(vol, plane)
    mirror_lesion = mirror_volume(lesion.astype(np.float32), plane, order=0) > 0.5
    a, b = _presmooth(vol, mir, sp)
    la, lb = np.log(np.maximum(a, 0) + 0.05), np.log(np.maximum(b, 0) + 0.05)
    w = projection_side(la, lb, (a > 0.1) & (b > 0.1), sp, 3.0, 8.0)
    assert w[lesion].mean() > 0.6
    assert w[mirror_lesion].mean() < 0.4


def test_demons_coordinates_warp_a_displaced_structure_and_reuse_on_other_volumes() -> None:
    from scipy import ndimage

    from scanqc.scoring.asymmetry import _demons, demons_coordinates

    z, y, x = np.mgrid[0:24, 0:48, 0:48]
    fixed = (np.sqrt((z - 12) ** 2 + (y - 24) ** 2 + (x - 20) ** 2) < 7).astype(np.float32)
    fixed = ndimage.gaussian_filter(fixed, 1.0)
    moving = np.roll(fixed, 3, axis=2)  # the same structure displaced by 3 mm
    sp = (2.0, 1.0, 1.0)
    coords = demons_coordinates(fixed, moving, sp)
    assert coords.shape == (3, *fixed.shape)
    warped = ndimage.map_coordinates(moving, coords, order=1, mode="nearest")
    before = float(np.abs(moving - fixed).sum())
    assert float(np.abs(warped - fixed).sum()) < 0.7 * before  # identity: 1.0
    # _demons is the same warp, and the coordinates warp any volume on that grid alike
    np.testing.assert_allclose(_demons(fixed, moving, sp), warped, atol=1e-6)
    other = np.roll(fixed * 2.0, 3, axis=2)
    np.testing.assert_allclose(ndimage.map_coordinates(other, coords, order=1, mode="nearest"),
                               2.0 * warped, atol=1e-5)
