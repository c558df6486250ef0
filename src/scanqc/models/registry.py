"""Find bundled models in ``scanqc/resources/models/<name>/`` and build them from metadata."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from scanqc.models.weights import ModelLoadError, load_state_dict, read_metadata

#: Architecture classes a metadata file may name (no arbitrary imports from metadata).
ARCHITECTURES = ("SliceEncoder",)


def models_root() -> Path:
    """Folder holding the bundled model folders."""
    return Path(str(resources.files("scanqc") / "resources" / "models"))


def model_dir(name: str) -> Path:
    """Folder of bundled model ``name`` (may not exist)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}")
    return models_root() / name


def list_models() -> list[str]:
    """Names of bundled models that have a ``metadata.json``."""
    root = models_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "metadata.json").is_file())


def build_model(metadata: dict[str, Any]) -> Any:
    """Instantiate the architecture named in ``metadata`` (random weights)."""
    from scanqc.models.encoder import SliceEncoder

    arch = metadata.get("architecture") or {}
    cls = arch.get("class", "SliceEncoder")
    if cls not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cls!r}")
    return SliceEncoder(**(arch.get("kwargs") or {}))


def load_model_dir(path: str | Path, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load a model folder (metadata + safetensors, sha256 checked) in eval mode.

    Raises:
        ModelLoadError: missing/corrupt files or weights that do not fit the architecture.
    """
    from scanqc.models.device import get_device

    path = Path(path)
    meta = read_metadata(path)
    state = load_state_dict(path, meta.get("sha256"))
    try:
        model = build_model(meta)
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(path / "model.safetensors",
                             f"weights do not fit the architecture ({exc})") from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(get_device(device)), meta


def load_model(name: str = "encoder", device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load bundled model ``name``; see :func:`load_model_dir`."""
    return load_model_dir(model_dir(name), device)
