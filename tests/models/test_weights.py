from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scanqc.models import registry
from scanqc.models.device import get_device
from scanqc.models.encoder import SliceEncoder, clear_encoder_cache, load_encoder
from scanqc.models.training_data import PERMISSIVE
from scanqc.models.weights import METADATA_FILE, WEIGHTS_FILE, ModelLoadError, save_model

SRC = Path(__file__).resolve().parents[2] / "src" / "scanqc"
TINY = {"widths": [4, 8, 8, 16, 32]}


def _save_tiny(tmp_path: Path) -> tuple[SliceEncoder, Path]:
    torch.manual_seed(0)
    m = SliceEncoder(**TINY).eval()
    d = tmp_path / "tiny"
    save_model(m, d, {"name": "tiny", "version": "0",
                      "architecture": {"class": "SliceEncoder", "kwargs": m.config}})
    return m, d


def test_round_trip(tmp_path, rng):
    m, d = _save_tiny(tmp_path)
    meta = json.loads((d / METADATA_FILE).read_text())
    assert len(meta["sha256"]) == 64 and meta["pytorch_version"] == torch.__version__
    m2, meta2 = registry.load_model_dir(d)
    x = torch.from_numpy(rng.random((2, 1, 32, 32), dtype=np.float32))
    with torch.inference_mode():
        assert torch.equal(m(x), m2(x))
    assert not any(p.requires_grad for p in m2.parameters())


def _one_line(err: ModelLoadError, name: str) -> None:
    msg = str(err)
    assert "\n" not in msg and name in msg


def test_missing_weights(tmp_path):
    _, d = _save_tiny(tmp_path)
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelLoadError, match="missing") as ei:
        registry.load_model_dir(d)
    _one_line(ei.value, WEIGHTS_FILE)


def test_missing_metadata(tmp_path):
    _, d = _save_tiny(tmp_path)
    (d / METADATA_FILE).unlink()
    with pytest.raises(ModelLoadError, match="missing") as ei:
        registry.load_model_dir(d)
    _one_line(ei.value, METADATA_FILE)


def test_sha256_mismatch_detected(tmp_path):
    _, d = _save_tiny(tmp_path)
    raw = bytearray((d / WEIGHTS_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (d / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as ei:
        registry.load_model_dir(d)
    _one_line(ei.value, WEIGHTS_FILE)


def test_corrupt_file_with_matching_checksum(tmp_path):
    from scanqc.models.weights import sha256_file

    _, d = _save_tiny(tmp_path)
    (d / WEIGHTS_FILE).write_bytes(b"\x00garbage, not safetensors" * 10)
    meta = json.loads((d / METADATA_FILE).read_text())
    meta["sha256"] = sha256_file(d / WEIGHTS_FILE)
    (d / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="not a valid safetensors") as ei:
        registry.load_model_dir(d)
    _one_line(ei.value, WEIGHTS_FILE)


def test_weights_that_do_not_fit_architecture(tmp_path):
    _, d = _save_tiny(tmp_path)
    meta = json.loads((d / METADATA_FILE).read_text())
    meta["architecture"]["kwargs"]["widths"] = [4, 8, 8, 16, 64]
    (d / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="do not fit"):
        registry.load_model_dir(d)


def test_unknown_architecture_is_not_imported(tmp_path):
    _, d = _save_tiny(tmp_path)
    meta = json.loads((d / METADATA_FILE).read_text())
    meta["architecture"]["class"] = "os.system"
    (d / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError):
        registry.load_model_dir(d)


def test_no_pickle_anywhere_in_src():
    bad = re.compile(r"torch\.load\(|import pickle|pickle\.load|from pickle|import dill|"
                     r"allow_pickle\s*=\s*True")
    hits = [str(p) for p in SRC.rglob("*.py") if bad.search(p.read_text())]
    assert not hits, hits


def test_get_device():
    assert get_device("cpu").type == "cpu"
    assert get_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")


def test_invalid_model_name():
    with pytest.raises(ValueError):
        registry.model_dir("../etc")


def test_bundled_encoder_loads_and_is_documented(rng):
    d = registry.model_dir("encoder")
    assert "encoder" in registry.list_models()
    meta = json.loads((d / METADATA_FILE).read_text())
    for key in ("name", "version", "task", "input", "embedding_dim", "architecture",
                "training_data", "seed", "pytorch_version", "monai_version", "sha256"):
        assert key in meta, key
    assert (d / WEIGHTS_FILE).stat().st_size < 20 * 1024**2
    assert (d / "MODEL_CARD.md").is_file()
    assert meta["training_data"] and all(t["licence"] in PERMISSIVE
                                         for t in meta["training_data"])
    clear_encoder_cache()
    m = load_encoder("encoder", "cpu")
    assert load_encoder("encoder", "cpu") is m  # cached
    x = torch.from_numpy(rng.random((2, 1, 128, 128), dtype=np.float32))
    with torch.inference_mode():
        assert m(x).shape == (2, meta["embedding_dim"])
