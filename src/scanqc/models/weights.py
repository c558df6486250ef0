"""Weights on disk: safetensors (never pickle) plus a MONAI-bundle-style ``metadata.json``.

A model folder holds ``model.safetensors``, ``metadata.json`` and ``MODEL_CARD.md``.
``metadata.json`` keys (MONAI bundle ``metadata.json`` in spirit): ``name``, ``version``,
``task``, ``input`` (``size``, ``channels``, ``intensity``), ``embedding_dim``,
``architecture`` (``class`` and ``kwargs``), ``training_data`` (list of ``{set, licence,
files}``), ``seed``, ``pytorch_version``, ``monai_version``, ``sha256`` (of the weights
file), plus free-form ``training`` details.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"


class ModelLoadError(RuntimeError):
    """Weights or metadata are missing, corrupt or do not match. One-line message."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = " ".join(str(cause).split())
        super().__init__(f"{self.path}: {self.cause}")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """Read ``metadata.json`` of a model folder.

    Raises:
        ModelLoadError: missing or not valid JSON.
    """
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise ModelLoadError(path, "metadata file is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(path, f"cannot read metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelLoadError(path, "metadata is not a JSON object")
    return meta


def load_state_dict(model_dir: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Load ``model.safetensors`` of a model folder (CPU tensors), checking its SHA-256.

    Raises:
        ModelLoadError: missing file, checksum mismatch, or not a valid safetensors file.
    """
    from safetensors.torch import load_file

    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(path, "weights file is missing")
    if expected_sha256:
        actual = sha256_file(path)
        if actual.lower() != str(expected_sha256).lower():
            raise ModelLoadError(
                path, f"sha256 mismatch (expected {expected_sha256[:12]}..., got "
                f"{actual[:12]}...): the file is corrupt or was replaced")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise ModelLoadError(path, f"not a valid safetensors file ({exc})") from exc


def save_model(model: Any, model_dir: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s state dict as safetensors plus ``metadata.json`` (with sha256).

    Args:
        model: A torch module, or a ``{name: tensor}`` state dict.
        model_dir: Output folder (created).
        metadata: Metadata; ``sha256``, ``pytorch_version``, ``monai_version`` are filled in.

    Returns:
        The metadata written.
    """
    import torch
    from safetensors.torch import save_file

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    wpath = out / WEIGHTS_FILE
    save_file(tensors, str(wpath), metadata={"format": "pt", "name": str(metadata.get("name"))})
    meta = dict(metadata)
    meta["pytorch_version"] = torch.__version__
    try:
        import monai

        meta["monai_version"] = monai.__version__
    except ImportError:  # pragma: no cover - monai is a dependency
        meta["monai_version"] = None
    meta["sha256"] = sha256_file(wpath)
    meta["weights_bytes"] = wpath.stat().st_size
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta
