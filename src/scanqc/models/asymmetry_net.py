"""Siamese patch encoder for contralateral asymmetry (after Van Vorst & Shen 2024).

A small fully convolutional 2D trunk turns an axial slice (in [0, 1], resampled to
:data:`PIXEL_MM` mm pixels) into a feature map at 1/4 resolution. The embedding of a
``PATCH`` x ``PATCH`` patch is the average of the trunk features over the patch's central
window, then a linear head and L2 normalisation. Training feeds larger crops
(``CROP`` pixels, see :mod:`scanqc.models.asymmetry_train`) and averages the central window, so
dense inference over a whole slice (:meth:`AsymmetryEncoder.dense`) computes exactly the
same embeddings as patch-wise inference, at every 4th pixel, at a fraction of the cost.

Weights are stored as safetensors (no pickle) with a ``metadata.json`` holding the
sha256 of the weights file, the architecture and the training provenance.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

#: Side of the patch the embedding describes, in working pixels.
PATCH = 32
#: Side of the crop fed in training (context so that no padding reaches the patch features).
CROP = 56
#: Working pixel size in mm (in-plane resampling before patches are taken).
PIXEL_MM = 1.5
#: Down-sampling factor of the trunk.
STRIDE = 4

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "resources" / "models" / "asymmetry"


@dataclass
class AsymmetryModelInfo:
    """Provenance of a loaded model (from ``metadata.json``)."""

    name: str = "asymmetry"
    path: str = ""
    sha256: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class AsymmetryEncoder(nn.Module):
    """Patch encoder: conv trunk (1/4 resolution) + window average + linear + L2 norm.

    Args:
        width: Channels of the first block (later blocks use 2x and 4x).
        dim: Embedding dimension.
    """

    def __init__(self, width: int = 16, dim: int = 32) -> None:
        super().__init__()
        w = int(width)
        self.width = w
        self.dim = int(dim)
        self.trunk = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(4 * w, self.dim, 1)
        self.window = PATCH // STRIDE

    def _embed_map(self, feat: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(feat, self.window, stride=1)
        return F.normalize(self.head(pooled), dim=1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Embed ``(N, 1, H, W)`` crops by their central ``PATCH`` window -> ``(N, dim)``."""
        feat = self.trunk(crops)
        h, w = feat.shape[-2:]
        k = self.window
        y0, x0 = (h - k) // 2, (w - k) // 2
        centre = feat[:, :, y0 : y0 + k, x0 : x0 + k]
        return self._embed_map(centre)[:, :, 0, 0]

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """Embed every patch of ``(N, 1, H, W)`` slices on a 4-pixel grid.

        Returns:
            ``(N, dim, H // 4 - PATCH // 4 + 1, W // 4 - PATCH // 4 + 1)``; grid cell
            ``(i, j)`` is the patch whose top-left pixel is ``(4 i, 4 j)``, i.e. centred at
            ``(4 i + PATCH / 2, 4 j + PATCH / 2)``.
        """
        return self._embed_map(self.trunk(images))


def config_of(model: AsymmetryEncoder) -> dict[str, Any]:
    """Return the architecture settings needed to rebuild ``model``."""
    return {
        "arch": "AsymmetryEncoder",
        "width": model.width,
        "dim": model.dim,
        "patch": PATCH,
        "crop": CROP,
        "pixel_mm": PIXEL_MM,
        "stride": STRIDE,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(
    model: AsymmetryEncoder, directory: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``metadata.json`` (with sha256) into ``directory``."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    wpath = out / "model.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(wpath))
    meta = dict(metadata or {})
    meta.update({"config": config_of(model), "weights": wpath.name, "sha256": _sha256(wpath)})
    (out / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return wpath


def load_model(
    directory: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[AsymmetryEncoder, AsymmetryModelInfo]:
    """Load an encoder from ``directory`` (default: the bundled model), checking its sha256.

    Raises:
        FileNotFoundError: Weights or metadata are missing.
        ValueError: The checksum does not match or the weights do not fit the architecture.
    """
    from safetensors.torch import load_file

    d = Path(directory) if directory is not None else BUNDLED_DIR
    wpath, mpath = d / "model.safetensors", d / "metadata.json"
    if not wpath.is_file() or not mpath.is_file():
        raise FileNotFoundError(f"{d}: asymmetry model missing (model.safetensors, metadata.json)")
    try:
        meta = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{mpath}: unreadable metadata ({exc})") from exc
    digest = _sha256(wpath)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise ValueError(f"{wpath}: sha256 mismatch (file corrupt or replaced)")
    cfg = meta.get("config", {})
    model = AsymmetryEncoder(width=int(cfg.get("width", 16)), dim=int(cfg.get("dim", 32)))
    try:
        state = load_file(str(wpath), device="cpu")
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise ValueError(f"{wpath}: cannot load weights ({' '.join(str(exc).split())})") from exc
    model.eval().to(device)
    return model, AsymmetryModelInfo(path=str(d), sha256=digest, metadata=meta)


_CACHE: dict[tuple[str, str], AsymmetryEncoder] = {}


def load_bundled(device: str = "cpu") -> AsymmetryEncoder:
    """Return the bundled encoder, cached per device."""
    key = (str(BUNDLED_DIR), str(device))
    if key not in _CACHE:
        _CACHE[key] = load_model(BUNDLED_DIR, device)[0]
    return _CACHE[key]
