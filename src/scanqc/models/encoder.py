"""The per-slice 2D encoder and the scan embedding built on it.

``SliceEncoder`` is a small plain-torch CNN (about 1.1 M parameters with the default widths):
a strided stem, four stages of (strided 3x3 conv, 3x3 conv) with BatchNorm + ReLU, global
average pooling. The pooled vector is the embedding (dimension = last width, 256).

Scan embedding (documented pooling): every slice embedding is L2-normalised; the scan
vector is the **mean** of those unit vectors concatenated with their **element-wise max**
(Belton et al. max-pool over slices), and the concatenation is L2-normalised again. So
``ScanEmbedding.vector`` has dimension ``2 * D`` and unit length; ``ScanEmbedding.slices``
keeps the per-slice unit vectors ``(N, D)``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from scanqc.io.scan import Scan
from scanqc.models.device import get_device
from scanqc.models.preprocess import DEFAULT_SIZE, scan_to_slices

#: Default architecture kwargs of the bundled encoder.
DEFAULT_WIDTHS = (16, 32, 64, 128, 256)


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SliceEncoder(nn.Module):
    """2D CNN mapping ``(B, 1, H, W)`` slices in [0, 1] to ``(B, D)`` embeddings.

    Args:
        widths: Channel widths: stem, then one per stage (each stage halves the size).
        in_channels: Input channels (1: gray).
        deep_stages: How many of the last stages get a second 3x3 conv.
    """

    def __init__(
        self,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        in_channels: int = 1,
        deep_stages: int = 2,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        self.config: dict[str, Any] = {
            "widths": widths, "in_channels": int(in_channels), "deep_stages": int(deep_stages)
        }
        layers: list[nn.Module] = [_conv_bn(in_channels, widths[0], stride=2, k=5)]
        n_stages = len(widths) - 1
        for i in range(n_stages):
            layers.append(_conv_bn(widths[i], widths[i + 1], stride=2))
            if i >= n_stages - deep_stages:
                layers.append(_conv_bn(widths[i + 1], widths[i + 1]))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, D)`` embeddings (not normalised)."""
        return torch.flatten(self.pool(self.features(x)), 1)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def embed_slices(
    model: nn.Module,
    slices: np.ndarray,
    batch_size: int = 64,
    device: Any = None,
    normalize: bool = True,
) -> np.ndarray:
    """Embed ``(N, H, W)`` slices in [0, 1] with ``model`` in eval mode.

    Args:
        model: A :class:`SliceEncoder` (or any module mapping ``(B,1,H,W)`` to ``(B,D)``).
        slices: float array ``(N, H, W)``.
        batch_size: Slices per forward pass.
        device: Torch device; default: the device the model's parameters are on.
        normalize: L2-normalise each embedding.

    Returns:
        float32 ``(N, D)``.
    """
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    model.eval()
    arr = np.asarray(slices, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    outs = []
    with torch.inference_mode():
        for i in range(0, len(arr), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(arr[i:i + batch_size]))[:, None].to(device)
            z = model(x).float()
            if normalize:
                z = nn.functional.normalize(z, dim=1)
            outs.append(z.cpu().numpy())
    if not outs:
        dim = getattr(model, "embed_dim", 0)
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(outs).astype(np.float32, copy=False)


def pool_slices(slice_vectors: np.ndarray) -> np.ndarray:
    """Pool unit slice embeddings ``(N, D)`` into one unit scan vector ``(2D,)``.

    The vector is ``[mean, max]`` over slices, L2-normalised (see the module docstring).
    """
    v = np.asarray(slice_vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError("cannot pool an empty set of slice embeddings")
    pooled = np.concatenate([v.mean(axis=0), v.max(axis=0)])
    norm = float(np.linalg.norm(pooled))
    return (pooled / norm if norm > 0 else pooled).astype(np.float32)


@dataclass
class ScanEmbedding:
    """The embedding of one scan.

    Attributes:
        vector: ``(2D,)`` unit vector pooled over slices (mean and max, see module doc).
        slices: ``(N, D)`` unit slice embeddings.
        slice_index: ``(N,)`` index of each embedded slice in the scan.
    """

    vector: np.ndarray
    slices: np.ndarray
    slice_index: np.ndarray


_CACHE: dict[tuple[str, str], nn.Module] = {}
_CACHE_LOCK = threading.Lock()


def load_encoder(name: str = "encoder", device: Any = "auto") -> SliceEncoder:
    """Return the bundled encoder ``name`` in eval mode on ``device`` (cached).

    Raises:
        scanqc.models.weights.ModelLoadError: the weights are missing or corrupt.
    """
    from scanqc.models.registry import load_model

    dev = get_device(device)
    key = (name, str(dev))
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model, _meta = load_model(name, device=dev)
            _CACHE[key] = model
    return model  # type: ignore[return-value]


def clear_encoder_cache() -> None:
    """Forget cached encoders (tests; after retraining)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def embed_scan(
    scan: Scan,
    model: nn.Module | None = None,
    max_slices: int = 64,
    size: int = DEFAULT_SIZE,
    batch_size: int = 64,
    device: Any = "auto",
) -> ScanEmbedding:
    """Embed a scan: preprocess, embed each slice, pool.

    Args:
        scan: The scan.
        model: Encoder; default: the bundled one (:func:`load_encoder`).
        max_slices: Evenly sub-sample volumes to at most this many slices.
        size: Input size of the encoder.
        batch_size: Slices per forward pass.
        device: Used when ``model`` is None.
    """
    if model is None:
        model = load_encoder("encoder", device)
    slices, idx = scan_to_slices(scan, size=size, max_slices=max_slices)
    vecs = embed_slices(model, slices, batch_size=batch_size)
    return ScanEmbedding(vector=pool_slices(vecs), slices=vecs, slice_index=idx)
