"""SimCLR pretraining of :class:`~scanqc.models.encoder.SliceEncoder` on CPU.

Chen et al. 2020 (SimCLR): two augmented views of every slice, a projection head, and the
NT-Xent loss (temperature 0.2) that pulls the two views of a slice together and pushes the
other slices of the batch away. The projection head is discarded; the encoder is shipped.

Data: 2D slices of the permissively licensed development files
(:mod:`scanqc.models.training_data`): every radiograph / 2D DICOM once, volumes cut in all
three planes. Slices are decoded and windowed ONCE into an in-memory uint8 cache at
``cache_size`` px (same windowing and aspect-preserving padding as inference), so an epoch
costs only the network.

Augmentations are batched torch ops on the whole batch (one ``affine_grid`` /
``grid_sample`` for crop + zoom + rotation + horizontal flip, then gamma, contrast,
brightness, Gaussian blur with a per-sample kernel, Gaussian noise). They are
anatomy-preserving (no vertical flips, rotations <= 15 degrees, crops keep >= ~40 % of the
field). Per-sample MONAI/TorchIO transforms were about 10x slower than the network on 2
CPU cores, hence the batched versions; the parameter ranges follow MONAI's ``RandAffine``,
``RandAdjustContrast``, ``RandGaussianSmooth`` and ``RandGaussianNoise``.

Reproducibility: ``torch``, ``numpy`` and ``random`` are seeded, all randomness of the data
order and the augmentations comes from one ``torch.Generator``; with the same seed, data,
thread count and torch version the weights are bit-identical on CPU.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from scanqc.io.intensity import robust_window
from scanqc.io.scan import ScanReadError
from scanqc.models.encoder import DEFAULT_WIDTHS, SliceEncoder, count_parameters
from scanqc.models.preprocess import DEFAULT_SIZE, resize_and_pad, volume_planes
from scanqc.models.training_data import (
    TrainingFile,
    licence_summary,
    read_scan,
    select_training_files,
    training_scans,
)
from scanqc.progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, ``numpy`` and ``torch``; return a torch generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


# --------------------------------------------------------------------------- data


@dataclass
class SliceCache:
    """Decoded training slices.

    Attributes:
        images: uint8 ``(N, S, S)`` windowed slices (0..255 = 0..1).
        source: Index into ``files`` of each slice.
        is_2d: True for slices of 2D images (radiographs), False for volume slices.
        files: The scans read, ``(path, TrainingFile)``.
        failed: ``(path, one-line error)`` of scans that could not be read.
    """

    images: np.ndarray
    source: np.ndarray
    is_2d: np.ndarray
    files: list[tuple[str, TrainingFile]]
    failed: list[tuple[str, str]] = field(default_factory=list)


def build_slice_cache(
    files: list[TrainingFile],
    cache_size: int = 160,
    per_plane: int = 16,
    min_mean: float = 0.02,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SliceCache:
    """Read and window every training scan once into a uint8 slice cache.

    Args:
        files: Rows from :func:`select_training_files`.
        cache_size: Side of the cached slices in pixels.
        per_plane: Slices per plane of each volume (all three planes).
        min_mean: Drop nearly empty slices (mean below this after windowing).
        progress: Progress callback.
        cancel: Cancel token.
    """
    scans = training_scans(files)
    images, source, is_2d, failed = [], [], [], []
    for i, (path, _row) in enumerate(scans):
        check(cancel)
        report(progress, i, len(scans), f"reading {Path(path).name}")
        try:
            scan = read_scan(path)
        except ScanReadError as exc:
            failed.append((path, str(exc)))
            log.warning("skipping %s", exc)
            continue
        gray = scan.gray()
        window = robust_window(gray, scan.modality)
        spacing = tuple(scan.spacing or ())
        if gray.ndim == 3 and gray.shape[0] > 1:
            planes = volume_planes(gray, spacing, window, cache_size, per_plane)
            stack = np.concatenate(planes)
            flat = False
        else:
            from scanqc.io.intensity import normalize

            g = gray[0] if gray.ndim == 3 else gray
            pix = spacing[-2:] if len(spacing) >= 2 else (1.0, 1.0)
            stack = resize_and_pad(normalize(g, window=window), pix, cache_size)
            flat = True
        keep = stack.reshape(len(stack), -1).mean(axis=1) >= min_mean
        # drop thin strips (e.g. the side planes of a 20-slice series): < 25 % of a side
        keep &= (stack.max(axis=2) > 0).mean(axis=1) >= 0.25
        keep &= (stack.max(axis=1) > 0).mean(axis=1) >= 0.25
        stack = stack[keep]
        images.append(np.round(stack * 255).astype(np.uint8))
        source += [i] * len(stack)
        is_2d += [flat] * len(stack)
    report(progress, len(scans), len(scans), "slices cached")
    if not images:
        raise ValueError("no training slices could be read")
    return SliceCache(np.concatenate(images), np.asarray(source), np.asarray(is_2d),
                      scans, failed)


# --------------------------------------------------------------------------- augmentation


def augment(x: torch.Tensor, out_size: int, gen: torch.Generator) -> torch.Tensor:
    """Return one random anatomy-preserving view of each image of ``x`` ``(B,1,S,S)``.

    Geometry: zoom-in crop (scale 0.6-1.0 of the field), rotation +-15 degrees, shift within
    the free border, aspect jitter +-10 %, horizontal flip p=0.5, resampled to ``out_size``.
    Intensity: gamma exp(+-0.4), contrast 0.7-1.3, brightness +-0.08, Gaussian blur
    (p=0.3, sigma 0.3-1.5 px), Gaussian noise (p=0.5, std 0-0.04); clipped to [0, 1].
    """
    b = x.shape[0]

    def u(lo: float, hi: float, n: int = b) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    scale = u(0.6, 1.0)
    aspect = torch.exp(u(-0.1, 0.1))
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    ang = u(-15, 15) * math.pi / 180
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    tx = u(-1, 1) * (1 - sx).clamp(min=0)
    ty = u(-1, 1) * (1 - sy).clamp(min=0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([
        torch.stack([cos * sx * flip, -sin * sy, tx], 1),
        torch.stack([sin * sx * flip, cos * sy, ty], 1),
    ], 1)
    grid = F.affine_grid(theta, (b, 1, out_size, out_size), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # intensity
    gamma = torch.exp(u(-0.4, 0.4)).view(b, 1, 1, 1)
    y = y.clamp(0, 1).pow(gamma)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * u(0.7, 1.3).view(b, 1, 1, 1) + mean + u(-0.08, 0.08).view(b, 1, 1, 1)
    # blur with a per-sample Gaussian kernel (grouped conv)
    sigma = torch.where(torch.rand(b, generator=gen) < 0.3, u(0.3, 1.5), torch.zeros(b))
    k = 7
    r = torch.arange(k, dtype=torch.float32) - k // 2
    g1 = torch.exp(-(r[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    g1 = g1 / g1.sum(dim=1, keepdim=True)
    ker = (g1[:, :, None] * g1[:, None, :])[:, None]
    y = F.conv2d(F.pad(y.transpose(0, 1), (k // 2,) * 4, mode="replicate"), ker, groups=b)
    y = y.transpose(0, 1)
    noise_std = torch.where(torch.rand(b, generator=gen) < 0.5, u(0.0, 0.04), torch.zeros(b))
    y = y + torch.randn(y.shape, generator=gen) * noise_std.view(b, 1, 1, 1)
    return y.clamp(0, 1)


# --------------------------------------------------------------------------- loss / model


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent loss of SimCLR for two batches of projections of the same images."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


class SimCLRModel(nn.Module):
    """Encoder + 2-layer projection head (the head is dropped after training)."""

    def __init__(self, encoder: SliceEncoder, proj_dim: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        d = encoder.embed_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections of ``x``."""
        return self.head(self.encoder(x))


@dataclass
class SSLConfig:
    """Settings of :func:`train_simclr` (all recorded in ``metadata.json``)."""

    epochs: int = 40
    seed: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    size: int = DEFAULT_SIZE
    cache_size: int = 160
    per_plane: int = 16
    repeat_2d: int = 2
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    threads: int = 2
    warmup_epochs: int = 2


def train_simclr(
    cache: SliceCache,
    config: SSLConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    log_fn: Callable[[str], None] | None = None,
) -> tuple[SliceEncoder, list[float]]:
    """Train a :class:`SliceEncoder` with SimCLR on the cached slices.

    Returns:
        ``(encoder in eval mode, mean loss per epoch)``.
    """
    torch.set_num_threads(max(1, int(config.threads)))
    gen = seed_everything(config.seed)
    encoder = SliceEncoder(config.widths)
    model = SimCLRModel(encoder)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    data = torch.from_numpy(cache.images)
    idx_2d = np.flatnonzero(cache.is_2d)
    idx_3d = np.flatnonzero(~cache.is_2d)
    epoch_idx = torch.from_numpy(
        np.concatenate([np.tile(idx_2d, max(1, config.repeat_2d)), idx_3d]).astype(np.int64))
    steps_per_epoch = max(1, len(epoch_idx) // config.batch_size)
    total = steps_per_epoch * config.epochs
    warm = steps_per_epoch * config.warmup_epochs

    def lr_at(step: int) -> float:
        if step < warm:
            return config.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return config.lr * 0.5 * (1 + math.cos(math.pi * t))

    history: list[float] = []
    step = 0
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        perm = epoch_idx[torch.randperm(len(epoch_idx), generator=gen)]
        losses = []
        for s in range(steps_per_epoch):
            check(cancel)
            bi = perm[s * config.batch_size:(s + 1) * config.batch_size]
            x = data[bi].float().div_(255.0)[:, None]
            v1 = augment(x, config.size, gen)
            v2 = augment(x, config.size, gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = nt_xent(model(v1), model(v2), config.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            report(progress, step, total, f"epoch {epoch + 1}/{config.epochs}")
        history.append(float(np.mean(losses)))
        msg = (f"epoch {epoch + 1}/{config.epochs} loss {history[-1]:.4f} "
               f"lr {lr_at(step - 1):.2e} elapsed {time.perf_counter() - t0:.0f}s")
        log.info(msg)
        if log_fn is not None:
            log_fn(msg)
    encoder.eval()
    return encoder, history


def knn_region_accuracy(encoder: SliceEncoder, files: list[TrainingFile], size: int) -> float:
    """Leave-one-out 1-NN region accuracy of slice embeddings (a cheap sanity metric)."""
    from scanqc.models.encoder import embed_slices
    from scanqc.models.preprocess import scan_to_slices

    vecs, labels = [], []
    for f in files:
        try:
            sl, _ = scan_to_slices(read_scan(f.path), size=size, max_slices=1)
        except (ScanReadError, ValueError):
            continue
        vecs.append(embed_slices(encoder, sl)[0])
        labels.append(f.region)
    if len(vecs) < 3:
        return float("nan")
    v = np.stack(vecs)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    nn_idx = sim.argmax(axis=1)
    lab = np.asarray(labels)
    return float(np.mean(lab[nn_idx] == lab))


def exclusion_summary(data_root: str | Path) -> list[dict[str, Any]]:
    """What the training selection leaves out of ``data_root``, grouped, with the reason.

    Licence exclusions: one row per (set, licence); broken, undecodable or non-anatomical
    files: one row per set listing the reasons; optional sets: one row each.

    Returns:
        ``[{"set", "files", "why"}]`` sorted by set.
    """
    from collections import defaultdict

    from scanqc.models.training_data import classify_files

    licence: dict[tuple[str, str], int] = defaultdict(int)
    quality: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for f in classify_files(data_root):
        if f.included:
            continue
        if f.reason.startswith("excluded: licence"):
            why = f.reason.removeprefix("excluded: licence ").strip()
            licence[(f.set, f"licence: {why}")] += 1
        elif f.reason.startswith("optional"):
            why = f.reason.removeprefix("optional: ").strip()
            licence[(f.set, f"permissive ({why}) but off by default: 28 px thumbnails add "
                            "little anatomy")] += 1
        else:
            quality[f.set][f.reason.removeprefix("excluded: ").strip()] += 1
    rows = [{"set": k[0], "files": n, "why": k[1]} for k, n in licence.items()]
    for set_name, reasons in quality.items():
        detail = "; ".join(f"{r} x{n}" for r, n in sorted(reasons.items()))
        rows.append({"set": set_name, "files": sum(reasons.values()),
                     "why": f"not usable as normal anatomy ({detail})"})
    return sorted(rows, key=lambda r: (r["set"], r["why"]))


def write_model_card(out_dir: Path, meta: dict[str, Any],
                     data_root: str | Path | None = None) -> None:
    """Write ``MODEL_CARD.md`` from the metadata.

    Args:
        out_dir: Model folder.
        meta: Its ``metadata.json`` content.
        data_root: Data folder, used to list the exclusions when ``meta`` has no
            ``"excluded"`` entry (weights trained before it existed).
    """
    tr = meta.get("training", {})
    lines = [
        f"# {meta['name']} {meta['version']}: scanqc bundled slice encoder",
        "",
        f"Task: {meta['task']}",
        "",
        "## Architecture",
        f"- `{meta['architecture']['class']}` ({meta['architecture']['n_parameters']:,} "
        f"parameters), kwargs `{meta['architecture']['kwargs']}`",
        f"- input: {meta['input']['channels']} x {meta['input']['size']} x "
        f"{meta['input']['size']}, {meta['input']['intensity']}",
        f"- embedding: {meta['embedding_dim']}-d per slice (global average pool); scan vector "
        "= L2-normalised [mean, max] of the L2-normalised slice embeddings",
        "",
        "## Training",
        f"- SimCLR / NT-Xent, temperature {tr.get('temperature')}, {tr.get('epochs')} epochs, "
        f"batch {tr.get('batch_size')}, AdamW lr {tr.get('lr')} (cosine), seed {meta['seed']}, "
        f"{tr.get('threads')} CPU threads",
        f"- {tr.get('n_slices')} cached slices from {tr.get('n_scans')} scans "
        f"({tr.get('n_slices_2d')} from 2D images); volumes cut in three planes",
        f"- final loss {tr.get('final_loss'):.4f} (first epoch {tr.get('first_loss'):.4f}); "
        f"wall time {tr.get('wall_time_s', 0) / 60:.1f} min",
        f"- torch {meta['pytorch_version']}, MONAI {meta['monai_version']}",
        f"- 1-NN region accuracy (leave-one-out, permissive region_xr_v1 radiographs, no "
        f"labels used in training): {tr.get('knn_region_accuracy')} "
        f"(random init: {tr.get('knn_region_accuracy_random_init')})",
        "",
        f"Reproduce: `{tr.get('command')}`",
        "",
        "## Training data (permissive licences only)",
        "",
        "| set | licence | files |",
        "|---|---|---|",
    ]
    lines += [f"| {d['set']} | {d['licence']} | {d['files']} |" for d in meta["training_data"]]
    excluded = meta.get("excluded")
    if excluded is None and data_root is not None:
        excluded = exclusion_summary(data_root)
    lines += [""]
    if excluded:
        lines += [
            "## Excluded from training, and why",
            "",
            "Decided file by file by `scanqc.models.training_data.classify_files` (licence "
            "rules written from each set's SOURCE.md; manifest flags for broken files).",
            "",
            "| set | files | why |",
            "|---|---|---|",
        ]
        lines += [f"| {e['set']} | {e['files']} | {e['why']} |" for e in excluded]
    else:
        lines += [
            "Excluded (not used for these weights): CC BY-NC files of niivue-demo-images, "
            "mini-MIAS (research only), pyKNEEr (GPL-3.0), DICOMSamples and the Roboflow "
            "spine export (no licence), OAI knee crops, RSNA bone-age hands and RSNA "
            "challenge CXRs, TBX11K, UFBA dental panoramics, Open-i abdomen figures; plus "
            "deliberately broken or non-anatomical files (see `scanqc.models.training_data`).",
        ]
    lines += [
        "",
        "## Limitations",
        f"- Trained on {tr.get('n_slices')} slices of {tr.get('n_scans')} scans (mostly "
        "upper-limb and chest radiographs, head MR, chest/abdomen CT): a generic anatomy "
        "descriptor, not a diagnostic model. Use it for similarity, outlier and "
        "reference-set scoring; regions absent from the training data (foot, spine, "
        "mammography ...) are embedded less reliably.",
        "- Weights are stored as safetensors (no pickle); `metadata.json` holds the sha256.",
        "",
    ]
    (out_dir / "MODEL_CARD.md").write_text("\n".join(lines), encoding="utf-8")


def train_encoder(
    data_root: str | Path,
    out_dir: str | Path,
    config: SSLConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    log_fn: Callable[[str], None] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Select data, cache slices, train with SimCLR and save weights + metadata + card.

    Returns:
        The metadata written to ``out_dir/metadata.json``.
    """
    from scanqc.models.training_data import region_xr_labels
    from scanqc.models.weights import save_model

    config = config or SSLConfig()
    torch.set_num_threads(max(1, int(config.threads)))
    t0 = time.perf_counter()
    files = select_training_files(data_root)
    cache = build_slice_cache(files, config.cache_size, config.per_plane, cancel=cancel)
    if log_fn:
        log_fn(f"cached {len(cache.images)} slices from {len(cache.files)} scans "
               f"({int(cache.is_2d.sum())} 2D) in {time.perf_counter() - t0:.0f}s; "
               f"{len(cache.failed)} unreadable")
    encoder, history = train_simclr(cache, config, progress, cancel, log_fn)
    wall = time.perf_counter() - t0
    xr = region_xr_labels(data_root, permissive_only=True)
    acc = knn_region_accuracy(encoder, xr, config.size)
    seed_everything(config.seed)
    acc0 = knn_region_accuracy(SliceEncoder(config.widths).eval(), xr, config.size)
    used = {p for p, _ in cache.files} - {p for p, _ in cache.failed}
    used_rows = [f for f in files
                 if f.path in used or str(Path(f.path).parent) in used]
    meta: dict[str, Any] = {
        "name": "encoder",
        "version": "1.0.0",
        "task": "self-supervised 2D slice embedding for bad-data detection (SimCLR)",
        "input": {"size": config.size, "channels": 1,
                  "intensity": "scanqc.io.intensity.normalize (one window per volume) to "
                               "[0, 1]; aspect-preserving resize with zero padding"},
        "embedding_dim": encoder.embed_dim,
        "scan_pooling": "L2-normalised concat(mean, max) of L2-normalised slice embeddings",
        "architecture": {"class": "SliceEncoder", "kwargs": encoder.config,
                         "n_parameters": count_parameters(encoder)},
        "training_data": [{"set": s, "licence": lic, "files": n}
                          for s, lic, n in licence_summary(used_rows)],
        "seed": config.seed,
        "training": {
            "method": "SimCLR", "epochs": config.epochs, "batch_size": config.batch_size,
            "lr": config.lr, "weight_decay": config.weight_decay,
            "temperature": config.temperature, "cache_size": config.cache_size,
            "per_plane": config.per_plane, "repeat_2d": config.repeat_2d,
            "threads": config.threads, "n_slices": int(len(cache.images)),
            "n_slices_2d": int(cache.is_2d.sum()), "n_scans": len(used),
            "loss_history": [round(v, 5) for v in history],
            "first_loss": history[0], "final_loss": history[-1],
            "wall_time_s": round(wall, 1),
            "knn_region_accuracy": round(acc, 3),
            "knn_region_accuracy_random_init": round(acc0, 3),
            "unreadable": [Path(p).name for p, _ in cache.failed],
            "command": command,
        },
    }
    out = Path(out_dir)
    meta["excluded"] = exclusion_summary(data_root)
    meta = save_model(encoder, out, meta)
    write_model_card(out, meta)
    return meta
