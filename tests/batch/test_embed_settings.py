"""Engine settings that only change speed: torch threads and the forward batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batch import config, make_dataset
from scanqc.batch.embedder import Embedder, auto_torch_threads
from scanqc.batch.engine import score_all


def test_auto_threads_leave_the_workers_their_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert auto_torch_threads(config(workers=2)) == 6
    assert auto_torch_threads(config(workers=8)) == 1  # never zero
    assert auto_torch_threads(config(workers=0)) is None  # inline: torch's default
    assert auto_torch_threads(config(workers=2, scheduler="local")) is None


def test_thread_count_is_restored_after_a_run(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=1, n_img=1, corrupt=False)
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    rows = score_all([root], config=config(torch_threads=other))
    assert len(rows) == 2
    assert torch.get_num_threads() == before


def test_forward_batch_does_not_change_embeddings():
    rng = np.random.default_rng(0)
    slices = rng.random((37, 64, 64)).astype(np.float32)
    a = Embedder(config(forward_batch=5)).embed(slices)
    b = Embedder(config(forward_batch=64)).embed(slices)
    assert a.shape == b.shape == (37, a.shape[1])
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_score_rows_agree_on_cpu_and_cuda(tmp_path):
    """The engine is device-agnostic: the same report on the GPU, within float tolerance."""
    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=2, corrupt=True, odd=1)
    refs = [str(root / "sub" / f"vol{i}.nii.gz") for i in range(2)]
    rows = {}
    for device in ("cpu", "cuda"):
        out = score_all([root], references=refs, config=config(workers=0, device=device))
        rows[device] = {r["scan_id"]: r for r in out}
    assert rows["cpu"].keys() == rows["cuda"].keys()
    for sid, cpu in rows["cpu"].items():
        gpu = rows["cuda"][sid]
        assert gpu["status"] == cpu["status"] and gpu["warnings"] == cpu["warnings"]
        if cpu["status"] == "ok":
            assert gpu["flagged"] == cpu["flagged"]
            np.testing.assert_allclose(gpu["bad_score"], cpu["bad_score"], atol=1e-4)
            np.testing.assert_allclose(gpu["mean_distance"], cpu["mean_distance"], atol=1e-4)
