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


@pytest.mark.parametrize("method", ["siamese", "intensity"])
def test_heatmap_peak_inside_lesion_on_oblique_head(method: str) -> None:
    torch.set_num_threads(1)
    vol, lesion = phantom_head(lesion=(-13.0, -12.0, 0.0, 5.0, 1.0))
    scan = _scan(vol)
    if method == "siamese":
        res = asymmetry_map(scan, _model())
    else:
        res = intensity_difference_map(scan)
    assert res.heatmap.shape == vol.shape and res.heatmap.dtype == np.float32
    # the plane was found off the array centre, rotated
    assert abs(res.plane.yaw_deg + 10.0) < 2.0
    peak = np.unravel_index(int(np.argmax(res.heatmap)), vol.shape)
    assert lesion[peak], (peak, np.argwhere(lesion).mean(0))
    top = res.top_regions[0]
    assert top.slices[0] <= peak[0] <= top.slices[1]
    clean = asymmetry_map(_scan(phantom_head()[0]), _model()) if method == "siamese" else (
        intensity_difference_map(_scan(phantom_head()[0])))
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
