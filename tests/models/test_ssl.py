from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from scanqc.models.ssl import SSLConfig, augment, build_slice_cache, nt_xent, train_simclr
from scanqc.models.training_data import TrainingFile


def test_nt_xent_prefers_matching_views():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    assert nt_xent(z, z + 0.01 * torch.randn(16, 8)) < nt_xent(z, torch.randn(16, 8))


def test_augment_shape_range_and_seed():
    x = torch.rand(6, 1, 40, 40)
    a = augment(x, 32, torch.Generator().manual_seed(1))
    b = augment(x, 32, torch.Generator().manual_seed(1))
    c = augment(x, 32, torch.Generator().manual_seed(2))
    assert a.shape == (6, 1, 32, 32)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.fixture
def files(tmp_path, rng):
    out = []
    for i in range(6):
        p = tmp_path / f"x{i}.png"
        img = np.zeros((48, 40), np.uint8)
        img[8 + i:40, 6:30 + i] = rng.integers(60, 255, size=(32 - i, 24 + i), dtype=np.uint8)
        Image.fromarray(img).save(p)
        out.append(TrainingFile(str(p), "s", "chest", "MIT", "", True, "image"))
    vol = np.zeros((20, 24, 24), np.int16)
    vol[4:16, 4:20, 4:20] = rng.integers(100, 900, size=(12, 16, 16))
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
    out.append(TrainingFile(str(p), "s", "head", "MIT", "", True, "volume"))
    return out


def test_cache_and_reproducible_training(files):
    cache = build_slice_cache(files, cache_size=40, per_plane=3)
    assert cache.images.dtype == np.uint8 and cache.images.shape[1:] == (40, 40)
    assert cache.is_2d.sum() == 6 and (~cache.is_2d).sum() > 0
    cfg = SSLConfig(epochs=2, seed=5, batch_size=8, size=32, widths=(4, 8, 8, 16, 16),
                    threads=1, warmup_epochs=1)
    e1, h1 = train_simclr(cache, cfg)
    e2, h2 = train_simclr(cache, cfg)
    assert h1 == h2 and len(h1) == 2
    for (k, v1), v2 in zip(e1.state_dict().items(), e2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
    e3, _ = train_simclr(cache, SSLConfig(**{**cfg.__dict__, "seed": 6}))
    assert not torch.equal(e1.state_dict()["features.0.0.weight"],
                           e3.state_dict()["features.0.0.weight"])


def test_cli_parser_registers_train():
    from scanqc.cli.main import build_parser

    args = build_parser().parse_args(["train", "encoder", "--data", "d", "--out", "o",
                                      "--epochs", "3", "--seed", "7"])
    assert args.epochs == 3 and args.seed == 7 and callable(args.func)
