"""Helpers shared by the batch tests: synthetic datasets and a tiny encoder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def write_volume(path: Path, seed: int, kind: str = "normal", shape=(10, 32, 32)) -> Path:
    """A small NIfTI: a bright blob in noise ('normal') or pure noise ('noise')."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    if kind == "noise":
        vol = rng.random(shape) * 800
    elif kind == "stripes":
        vol = 800.0 * ((x // 3) % 2) + 30 * rng.standard_normal(shape)
    else:
        r2 = (y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2
        vol = 900 * np.exp(-r2 / (2 * (shape[1] / 5) ** 2)) + 20 * rng.standard_normal(shape)
    vol = np.clip(vol, 0, None).astype(np.int16)
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path


def write_png(path: Path, seed: int) -> Path:
    """A small 8-bit PNG radiograph-like image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:40]
    img = 180 * np.exp(-((y - 24) ** 2 + (x - 20) ** 2) / 150.0) + 10 * rng.random((48, 40))
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


def make_dataset(root: Path, n_vol: int = 4, n_img: int = 2, corrupt: bool = True,
                 odd: int = 0) -> Path:
    """Write ``n_vol`` volumes, ``n_img`` PNGs, ``odd`` noise volumes and a corrupt file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    for i in range(n_vol):
        write_volume(root / "sub" / f"vol{i}.nii.gz", i)
    for i in range(n_img):
        write_png(root / f"img{i}.png", 100 + i)
    for i in range(odd):
        write_volume(root / f"odd{i}.nii.gz", 200 + i, kind="noise")
    if corrupt:
        (root / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    return root


def tiny_encoder():
    """A seeded, randomly initialised small SliceEncoder (fast on CPU)."""
    import torch

    from scanqc.models.encoder import SliceEncoder

    torch.manual_seed(0)
    return SliceEncoder(widths=(8, 16, 16, 32), deep_stages=1).eval()


def config(**kw):
    """A ScoreConfig using the tiny encoder, small inputs, inline by default."""
    from scanqc.batch.engine import ScoreConfig

    kw.setdefault("workers", 0)
    kw.setdefault("size", 64)
    kw.setdefault("max_slices", 6)
    kw.setdefault("device", "cpu")
    kw.setdefault("encoder", tiny_encoder())
    return ScoreConfig(**kw)


def crashy_prepare(entry, options):
    """Per-scan function whose worker dies on files named 'crash*' and hangs on 'hang*'."""
    from scanqc.batch.pipeline import prepare_entry

    name = os.path.basename(entry.path)
    if name.startswith("crash"):
        os._exit(3)
    if name.startswith("hang"):
        time.sleep(120)
    return prepare_entry(entry, options)


def by_id(rows):
    """Rows keyed by scan_id (asserting ids are unique)."""
    out = {r["scan_id"]: r for r in rows}
    assert len(out) == len(rows), "duplicate scan ids in the report"
    return out


#: Paths prepared by :func:`counting_prepare` (inline runner only: same process).
CALLS: list[str] = []


def counting_prepare(entry, options):
    """prepare_entry that records which scans it read (use with workers=0)."""
    from scanqc.batch.pipeline import prepare_entry

    CALLS.append(entry.path)
    return prepare_entry(entry, options)
