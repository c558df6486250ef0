"""Shared fixtures: synthetic scans written into tmp_path, and the shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("SCANQC_NOTHREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCANQC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_data_or_skip() -> Path:
    """Return ../shared/data, or skip the test when it is absent."""
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    return shared_data_or_skip()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def tiny_model(monkeypatch):
    """A seeded tiny random encoder standing in for the bundled one (``load_encoder``)."""
    from batch import tiny_encoder

    model = tiny_encoder()
    monkeypatch.setattr("scanqc.models.encoder.load_encoder",
                        lambda name="encoder", device="auto": model)
    return model
