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


def test_no_pickle_for_files_in_src():
    """No torch.load / np.load(allow_pickle) anywhere; no pickle where files are read.

    The widgets' own process pipes may pickle objects between scanqc's own processes (as
    multiprocessing does); nothing read from disk (weights, reference sets, scans, label
    stores) may be unpickled, so ``pickle`` is banned from every other package.
    """
    anywhere = re.compile(r"torch\.load\(|import dill|allow_pickle\s*=\s*True")
    files = re.compile(r"import pickle|pickle\.load|from pickle")
    hits = [str(p) for p in SRC.rglob("*.py") if anywhere.search(p.read_text())]
    hits += [str(p) for p in SRC.rglob("*.py")
             if "widgets" not in p.relative_to(SRC).parts and files.search(p.read_text())]
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


def test_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle

    def refuse(*_a, **_k):
        raise AssertionError("pickle used while loading weights")

    m, d = _save_tiny(tmp_path)
    for mod, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    m2, _ = registry.load_model_dir(d)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(),
                                                   m2.state_dict().values(), strict=True))


def test_truncated_weights_give_one_line_error(tmp_path):
    from scanqc.models.weights import sha256_file

    _, d = _save_tiny(tmp_path)
    raw = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(raw[: len(raw) // 2])  # an interrupted copy
    meta = json.loads((d / METADATA_FILE).read_text())
    meta["sha256"] = sha256_file(d / WEIGHTS_FILE)  # even with a matching checksum
    (d / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="not a valid safetensors") as ei:
        registry.load_model_dir(d)
    _one_line(ei.value, WEIGHTS_FILE)
    (d / METADATA_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read metadata") as ei:
        registry.load_model_dir(d)
    _one_line(ei.value, METADATA_FILE)


def _card_meta() -> dict:
    return {
        "name": "encoder", "version": "9", "task": "t", "seed": 7, "embedding_dim": 32,
        "input": {"size": 128, "channels": 1, "intensity": "window"},
        "architecture": {"class": "SliceEncoder", "kwargs": TINY, "n_parameters": 10},
        "training_data": [{"set": "region_xr_v1", "licence": "CC BY 4.0", "files": 3}],
        "pytorch_version": "x", "monai_version": "y",
        "training": {"temperature": 0.2, "epochs": 5, "batch_size": 8, "lr": 0.1,
                     "threads": 2, "n_slices": 9, "n_scans": 3, "n_slices_2d": 3,
                     "final_loss": 1.0, "first_loss": 2.0, "wall_time_s": 90.0,
                     "knn_region_accuracy": 0.5, "knn_region_accuracy_random_init": 0.25,
                     "command": "scanqc train encoder --epochs 5 --seed 7"},
        "excluded": [{"set": "pykneer_knee_mri", "files": 80,
                      "why": "licence: GPL-3.0 (copyleft repo, in-house data)"}],
    }


def test_model_card_states_data_exclusions_seed_command_time_and_probe(tmp_path):
    from scanqc.models.ssl import write_model_card

    write_model_card(tmp_path, _card_meta())
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "| region_xr_v1 | CC BY 4.0 | 3 |" in card
    assert "| pykneer_knee_mri | 80 | licence: GPL-3.0" in card
    assert "seed 7" in card and "`scanqc train encoder --epochs 5 --seed 7`" in card
    assert "wall time 1.5 min" in card
    assert "1-NN region accuracy" in card and "0.5 (random init: 0.25)" in card


def test_exclusion_summary_has_a_reason_for_every_left_out_file(shared_data):
    from scanqc.models.ssl import exclusion_summary
    from scanqc.models.training_data import classify_files

    rows = exclusion_summary(shared_data)
    left_out = sum(not f.included for f in classify_files(shared_data))
    assert sum(r["files"] for r in rows) == left_out
    assert all(r["why"] for r in rows)
    assert any(r["set"] == "pykneer_knee_mri" and "GPL" in r["why"] for r in rows)


def test_bundled_model_card_is_complete():
    card = (registry.model_dir("encoder") / "MODEL_CARD.md").read_text()
    meta = json.loads((registry.model_dir("encoder") / METADATA_FILE).read_text())
    for needle in ("## Training data", "Excluded from training, and why", "licence",
                   f"seed {meta['seed']}", meta["training"]["command"], "wall time",
                   "1-NN region accuracy", f"{meta['training']['epochs']} epochs"):
        assert needle in card, needle
