"""Reference-set fine-tuning after Belton et al. (MIDL 2021) and FewSOME (CVPRW 2023).

The user marks ~20-30 good scans as references. We keep the pretrained
:class:`~scanqc.models.encoder.SliceEncoder` frozen and train a small residual projection
head on its slice embeddings (the head starts as the identity, so before training the
model equals the base encoder):

* scan vector ``v(S)`` = L2-normalised ``[mean, max]`` over the L2-normalised projected slice
  embeddings (max over slices as in Belton; mean added for stability);
* **pull** (Belton's contrastive loss with every pair similar): ``1/2 d(v_i, v_j)^2`` for
  reference ``i`` and a partner ``j`` drawn from the OTHER references (never ``i`` itself;
  ``j = (i + k) mod n`` with ``k`` uniform in ``1..n-1``: no self-pairs, no ``-1`` index);
* **anchor** (FewSOME): ``anchor_weight * d(v_i, a_i)^2`` where ``a_i`` is the vector of
  reference ``i`` under the frozen initial model, so embeddings cannot collapse;
* ``d(a, b) = ||a - b|| / sqrt(dim)`` (FewSOME's distance normalisation).

Fixes of the defects of the original code (see docs/models.md): references at scoring time are
exactly the training references; partners exclude self; indices are correct.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from scanqc.models.device import get_device
from scanqc.models.encoder import embed_slices
from scanqc.progress import CancelToken, ProgressCallback, check, report


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Disable TF32 on CUDA inside the block (CPU and GPU results then agree to ~1e-5)."""
    mm, cd = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = mm
        torch.backends.cudnn.allow_tf32 = cd


class ProjectionHead(nn.Module):
    """Residual MLP ``x + W2 relu(W1 x)``; ``W2`` starts at zero (the head starts as identity)."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(N, D)`` slice embeddings and L2-normalise them."""
        return F.normalize(x + self.fc2(F.relu(self.fc1(x))), dim=-1)


def pool_torch(slice_vectors: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`scanqc.models.encoder.pool_slices`: unit ``[mean, max]``."""
    pooled = torch.cat([slice_vectors.mean(dim=0), slice_vectors.max(dim=0).values])
    return F.normalize(pooled, dim=0)


def _pad(base: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``R`` slice-embedding sets ``(N_i, D)`` into ``(R, Nmax, D)`` plus a mask."""
    nmax = max(int(b.shape[0]) for b in base)
    x = base[0].new_zeros((len(base), nmax, base[0].shape[1]))
    mask = torch.zeros((len(base), nmax), dtype=torch.bool, device=base[0].device)
    for i, b in enumerate(base):
        x[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return x, mask


def pool_batch(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Batched :func:`pool_torch`: ``(R, N, D)`` projected slices + mask -> ``(R, 2D)``."""
    m = mask[..., None]
    mean = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    mx = h.masked_fill(~m, float("-inf")).max(dim=1).values
    return F.normalize(torch.cat([mean, mx], dim=1), dim=1)


def normalized_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a - b|| / sqrt(dim)`` over the last axis."""
    return torch.linalg.vector_norm(a - b, dim=-1) / math.sqrt(a.shape[-1])


@dataclass
class ReferenceModel:
    """A frozen base encoder plus the head fitted on one reference set.

    Attributes:
        encoder: Frozen base :class:`SliceEncoder` (eval mode).
        head: Fitted :class:`ProjectionHead`.
        device: Torch device of both.
        config: Settings used (recorded when saved).
        history: Loss per epoch.
        reference_vectors: ``(R, 2D)`` scan vectors of the references after fitting.
    """

    encoder: nn.Module
    head: ProjectionHead
    device: Any
    config: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    reference_vectors: np.ndarray | None = None

    def _base(self, slices_or_embeddings: np.ndarray) -> torch.Tensor:
        arr = np.asarray(slices_or_embeddings, dtype=np.float32)
        if arr.ndim == 2:  # base slice embeddings (N, D)
            if arr.shape[1] != self.head.fc1.in_features:
                raise ValueError(f"embeddings have dimension {arr.shape[1]}, the encoder "
                                 f"gives {self.head.fc1.in_features}")
            emb = arr
        elif arr.ndim == 3:  # slices (N, H, W)
            with exact_float32():
                emb = embed_slices(self.encoder, arr, device=self.device)
        else:
            raise ValueError(f"expected slices (N, H, W) or embeddings (N, D), got {arr.shape}")
        return torch.from_numpy(np.ascontiguousarray(emb)).to(self.device)

    def embed(self, slices: np.ndarray) -> np.ndarray:
        """Projected unit slice embeddings ``(N, D)``.

        Args:
            slices: Slices ``(N, H, W)`` in [0, 1], or base embeddings ``(N, D)``.
        """
        self.head.eval()
        with torch.inference_mode(), exact_float32():
            return self.head(self._base(slices)).cpu().numpy()

    def embed_scan(self, slices: np.ndarray) -> np.ndarray:
        """Unit scan vector ``(2D,)`` (pooled as in training)."""
        self.head.eval()
        with torch.inference_mode(), exact_float32():
            return pool_torch(self.head(self._base(slices))).cpu().numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Head tensors (CPU), for :func:`safetensors.torch.save_file`."""
        return {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}

    def save(self, path: str | Path) -> None:
        """Write the head as safetensors (config as string metadata)."""
        from safetensors.torch import save_file

        meta = {k: str(v) for k, v in self.config.items()}
        save_file(self.state_dict(), str(path), metadata=meta)


def load_reference_head(path: str | Path, encoder: nn.Module, device: Any = "auto") -> \
        ReferenceModel:
    """Load a head saved by :meth:`ReferenceModel.save` on top of ``encoder``.

    Raises:
        scanqc.models.weights.ModelLoadError: missing or corrupt file.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from scanqc.models.weights import ModelLoadError

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(path, "reference head file is missing")
    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        dim = state["fc1.weight"].shape[1]
        head = ProjectionHead(dim, state["fc1.weight"].shape[0])
        head.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - one-line error for any corrupt file
        raise ModelLoadError(path, f"not a valid reference head ({exc})") from exc
    dev = get_device(device)
    return ReferenceModel(encoder.to(dev).eval(), head.to(dev).eval(), dev, meta)


def draw_partners(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Return ``(n, k)`` partner indices, never the reference itself.

    Row ``i`` holds indices drawn uniformly from the other ``n - 1`` references.
    """
    offs = torch.randint(1, n, (n, k), generator=gen)
    return (torch.arange(n)[:, None] + offs) % n


def fit_reference_model(
    references: Sequence[np.ndarray],
    encoder: nn.Module | None = None,
    epochs: int = 60,
    lr: float = 2e-3,
    anchor_weight: float = 1.0,
    seed: int = 0,
    device: Any = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    pairs_per_reference: int = 4,
    hidden: int = 256,
) -> ReferenceModel:
    """Fit a :class:`ReferenceModel` to a reference set (Belton pull + FewSOME anchor).

    Args:
        references: One array per reference scan: slices ``(N_i, H, W)`` in [0, 1] (from
            :func:`scanqc.models.preprocess.scan_to_slices`) or base slice embeddings
            ``(N_i, D)``.
        encoder: Frozen base encoder; default: the bundled one.
        epochs: Optimiser steps (each over all references, ``pairs_per_reference``
            partners each).
        lr: Adam learning rate of the head.
        anchor_weight: Weight ``alpha`` of the anchor term.
        seed: Seeds the head initialisation and the pair sampling.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: ``progress(done, total, message)``.
        cancel: Cancel token; raises :class:`scanqc.progress.Cancelled`.
        pairs_per_reference: Partners drawn per reference and epoch.
        hidden: Hidden width of the head.

    Raises:
        ValueError: fewer than 2 references.
    """
    from scanqc.models.encoder import load_encoder

    if len(references) < 2:
        raise ValueError("need at least 2 reference scans to fit a reference model")
    dev = get_device(device)
    if encoder is None:
        encoder = load_encoder("encoder", dev)
    encoder = encoder.to(dev).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    dim = int(encoder.embed_dim)
    torch.manual_seed(seed)
    head_cpu = ProjectionHead(dim, hidden)  # initialised on CPU: same weights on any device
    head = head_cpu.to(dev)
    model = ReferenceModel(encoder, head, dev, {
        "epochs": epochs, "lr": lr, "anchor_weight": anchor_weight, "seed": seed,
        "pairs_per_reference": pairs_per_reference, "hidden": hidden, "dim": dim,
        "n_references": len(references)})
    n = len(references)
    report(progress, 0, epochs + n, "embedding references")
    base = []
    for i, ref in enumerate(references):
        check(cancel)
        base.append(model._base(ref))
        report(progress, i + 1, epochs + n, "embedding references")
    x_all, mask = _pad(base)
    with torch.no_grad(), exact_float32():
        anchors = pool_batch(head(x_all), mask)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    # the head steps are tiny: one CPU thread avoids OpenMP oversubscription on busy machines
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        _fit_loop(model, head, opt, x_all, mask, anchors, gen, epochs, anchor_weight,
                  pairs_per_reference, dev, progress, cancel)
    finally:
        torch.set_num_threads(threads)
    return model


def _fit_loop(model, head, opt, x_all, mask, anchors, gen, epochs, anchor_weight,
              pairs_per_reference, dev, progress, cancel) -> None:  # noqa: D103
    n = x_all.shape[0]
    with exact_float32():
        for epoch in range(epochs):
            check(cancel)
            head.train()
            vecs = pool_batch(head(x_all), mask)
            partners = draw_partners(n, pairs_per_reference, gen)
            i_idx = torch.arange(n)[:, None].expand_as(partners).reshape(-1).to(dev)
            j_idx = partners.reshape(-1).to(dev)
            pull = 0.5 * normalized_distance(vecs[i_idx], vecs[j_idx]).pow(2).mean()
            anchor = normalized_distance(vecs, anchors).pow(2).mean()
            loss = pull + anchor_weight * anchor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.history.append(float(loss.detach()))
            report(progress, n + epoch + 1, epochs + n, f"fine-tuning {epoch + 1}/{epochs}")
        head.eval()
        with torch.no_grad():
            model.reference_vectors = pool_batch(head(x_all), mask).cpu().numpy()


def reference_spread(vectors: np.ndarray) -> float:
    """Largest pairwise Euclidean distance among reference vectors (Belton's threshold)."""
    v = np.asarray(vectors, dtype=np.float64)
    d = np.sqrt(((v[:, None] - v[None]) ** 2).sum(-1))
    return float(d.max()) if len(v) > 1 else 0.0
