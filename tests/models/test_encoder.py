from __future__ import annotations

import numpy as np
import pytest
import torch

from scanqc.io.scan import Scan
from scanqc.models.encoder import (
    SliceEncoder,
    count_parameters,
    embed_scan,
    embed_slices,
    pool_slices,
)

TINY = (4, 8, 8, 16, 32)


def _tiny(seed=0):
    torch.manual_seed(seed)
    return SliceEncoder(TINY).eval()


def test_output_shape_and_determinism(rng):
    m = _tiny()
    x = torch.from_numpy(rng.random((3, 1, 64, 64), dtype=np.float32))
    with torch.inference_mode():
        a, b = m(x), m(x)
    assert a.shape == (3, 32)
    assert torch.equal(a, b)
    assert torch.equal(_tiny(0)(x), _tiny(0)(x))  # same seed -> same weights
    assert not torch.allclose(_tiny(0)(x), _tiny(1)(x))


def test_embed_slices_unit_norm_and_batches(rng):
    m = _tiny()
    sl = rng.random((10, 64, 64), dtype=np.float32)
    e1 = embed_slices(m, sl, batch_size=3)
    e2 = embed_slices(m, sl, batch_size=64)
    assert e1.shape == (10, 32) and e1.dtype == np.float32
    assert np.allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    assert np.allclose(e1, e2, atol=1e-5)
    assert embed_slices(m, np.zeros((0, 64, 64), np.float32)).shape == (0, 32)


def test_embed_scan_pooling(rng):
    vol = (rng.random((20, 40, 50)) * 1000).astype(np.int16)
    scan = Scan(vol, (2.0, 1.0, 1.0), np.eye(4), "volume", modality="MR")
    emb = embed_scan(scan, model=_tiny(), max_slices=8, size=64)
    assert emb.slices.shape == (8, 32)
    assert emb.vector.shape == (64,)
    assert np.isclose(np.linalg.norm(emb.vector), 1.0, atol=1e-5)
    assert emb.slice_index.tolist()[0] == 0 and emb.slice_index.tolist()[-1] == 19
    assert np.allclose(emb.vector, pool_slices(emb.slices))


def test_pool_rejects_empty():
    with pytest.raises(ValueError):
        pool_slices(np.zeros((0, 4)))


def test_default_encoder_size():
    n = count_parameters(SliceEncoder())
    assert 0.5e6 <= n <= 2e6
    assert SliceEncoder().embed_dim in range(128, 257)


@pytest.mark.data
def test_real_scans_embed_with_bundled_encoder(shared_data):
    load = pytest.importorskip("scanqc.io.load")
    from scanqc.models.encoder import load_encoder

    model = load_encoder("encoder", "cpu")
    ct = load.load_scan(str(shared_data / "totalsegmentator_examples" / "example_ct.nii.gz"))
    xr = load.load_scan(str(shared_data / "region_xr_v1"
                            / "chest_kermany_normal_IM-0156-0001.png"))
    e_ct = embed_scan(ct, model=model, max_slices=16)
    e_xr = embed_scan(xr, model=model)
    assert e_ct.slices.shape == (16, model.embed_dim) and e_xr.slices.shape[0] == 1
    assert e_ct.vector.shape == e_xr.vector.shape == (2 * model.embed_dim,)
    # neighbouring CT slices are more alike than a CT slice and a radiograph
    near = float(e_ct.slices[7] @ e_ct.slices[8])
    far = float(e_ct.slices[7] @ e_xr.slices[0])
    assert near > far
