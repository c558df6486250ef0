from __future__ import annotations

import numpy as np
import pytest
import torch

from scanqc.models.encoder import SliceEncoder
from scanqc.models.siamese import (
    draw_partners,
    fit_reference_model,
    load_reference_head,
    reference_spread,
)
from scanqc.progress import Cancelled, CancelToken

D = 32


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return SliceEncoder((4, 8, 8, 16, D)).eval()


@pytest.fixture
def refs():
    """20 synthetic references given as base slice embeddings (16 slices each)."""
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(1, D)) + 0.3 * rng.normal(size=(16, D))).astype(np.float32)
            for _ in range(20)]


def _initial_vectors(encoder, refs):
    m0 = fit_reference_model(refs, encoder, epochs=0, device="cpu")
    return np.stack([m0.embed_scan(r) for r in refs])


def test_fine_tune_reduces_spread_without_collapse(encoder, refs):
    v0 = _initial_vectors(encoder, refs)
    m = fit_reference_model(refs, encoder, epochs=30, lr=3e-3, anchor_weight=1.0,
                            device="cpu")
    v1 = m.reference_vectors
    assert v1.shape == v0.shape
    assert reference_spread(v1) < 0.9 * reference_spread(v0)
    assert v1.var(axis=0).sum() > 0.25 * v0.var(axis=0).sum()  # no collapse
    assert m.history[-1] < m.history[0]
    # the FewSOME anchor is what prevents collapse: without it the set shrinks much more
    m_free = fit_reference_model(refs, encoder, epochs=30, lr=3e-3, anchor_weight=0.0,
                                 device="cpu")
    assert reference_spread(m_free.reference_vectors) < 0.5 * reference_spread(v1)
    # embed_scan on the references reproduces the stored vectors
    assert np.allclose(m.embed_scan(refs[0]), v1[0], atol=1e-5)


def test_partners_never_self():
    gen = torch.Generator().manual_seed(0)
    p = draw_partners(5, 400, gen)
    assert p.shape == (5, 400)
    assert not (p == torch.arange(5)[:, None]).any()
    for i in range(5):
        assert set(p[i].tolist()) == set(range(5)) - {i}


def test_deterministic_from_seed(encoder, refs):
    a = fit_reference_model(refs, encoder, epochs=10, seed=3, device="cpu")
    b = fit_reference_model(refs, encoder, epochs=10, seed=3, device="cpu")
    assert np.array_equal(a.reference_vectors, b.reference_vectors)


def test_cancel_stops_training(encoder, refs):
    token = CancelToken()
    seen = []

    def progress(done, total, msg):
        seen.append(done)
        if "fine-tuning 3/" in msg:
            token.cancel()

    with pytest.raises(Cancelled):
        fit_reference_model(refs, encoder, epochs=50, device="cpu", progress=progress,
                            cancel=token)
    assert max(seen) < len(refs) + 50


def test_slices_input_and_save_load(tmp_path, encoder, rng):
    refs = [rng.random((4, 64, 64), dtype=np.float32) for _ in range(3)]
    m = fit_reference_model(refs, encoder, epochs=5, device="cpu")
    assert m.embed(refs[0]).shape == (4, D)
    path = tmp_path / "head.safetensors"
    m.save(path)
    m2 = load_reference_head(path, encoder, device="cpu")
    assert np.allclose(m2.embed_scan(refs[1]), m.embed_scan(refs[1]), atol=1e-6)


def test_needs_two_references(encoder, refs):
    with pytest.raises(ValueError):
        fit_reference_model(refs[:1], encoder, device="cpu")


def test_corrupt_head_file(tmp_path, encoder):
    from scanqc.models.weights import ModelLoadError

    bad = tmp_path / "head.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(ModelLoadError):
        load_reference_head(bad, encoder, device="cpu")
    with pytest.raises(ModelLoadError):
        load_reference_head(tmp_path / "missing.safetensors", encoder, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(rng):
    torch.manual_seed(0)
    enc = SliceEncoder().eval()
    refs = [rng.random((8, 128, 128), dtype=np.float32) for _ in range(6)]
    cpu = fit_reference_model(refs, enc, epochs=30, device="cpu")
    gpu = fit_reference_model(refs, enc, epochs=30, device="cuda")
    assert np.abs(cpu.reference_vectors - gpu.reference_vectors).max() < 1e-3
    assert np.abs(cpu.embed(refs[0]) - gpu.embed(refs[0])).max() < 1e-3
