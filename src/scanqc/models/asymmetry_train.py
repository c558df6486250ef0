"""Training of the asymmetry encoder: Siamese pairs with GMM soft labels, two networks.

Reconstruction of Van Vorst & Shen 2024 (arXiv 2401.05570; see docs/asymmetry.md):

* a pair is a patch and the location-matched patch of the mirrored side (the volume mirrored
  about its mid-sagittal plane), so no labels are needed;
* the distances ``d`` between the pair embeddings are fitted with a two-component 1-D Gaussian
  mixture and the soft dissimilarity label is ``s = P(far component | d)``;
* the loss is ``(1 - s) d^2 / 2 + s max(0, m - d)^2 / 2``;
* two networks are trained side by side, each on the soft labels computed from the *other*
  network's distances (co-teaching style cross-regularisation).

Inputs are prepared volumes (:class:`PairVolume`: the working-resolution volume, its mirror,
and a foreground mask); preparing them needs the mid-plane search in ``scanqc.scoring``
(``scanqc.scoring.asymmetry.prepare_pair_volume``), which this layer may not import.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scanqc.models.asymmetry_net import CROP, AsymmetryEncoder
from scanqc.progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)


@dataclass
class PairVolume:
    """A volume and its mirror image at the working resolution, with a foreground mask.

    Attributes:
        work: ``(Z, H, W)`` float32 in [0, 1].
        mirror: Same shape: ``work`` mirrored about the mid-sagittal plane.
        mask: Same shape, bool: voxels where patch centres may be sampled.
    """

    work: np.ndarray
    mirror: np.ndarray
    mask: np.ndarray


#: Largest prior weight of the "far" (asymmetric) component. Left-right differences are
#: rare in normal anatomy; without this bound the mixture can flip so that almost every pair
#: is labelled "far" and training only pushes pairs apart (the collapse seen in the first
#: bundled model, mean soft label 0.98).
MAX_FAR_WEIGHT = 0.2


def _fit_mixture(d: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a 2-component 1-D GMM; return ``(means, stds, weights)`` with index 1 = far."""
    from sklearn.mixture import GaussianMixture

    x = d.reshape(-1, 1)
    lo, hi = np.percentile(d, [30.0, 95.0])
    # one shared variance: with separate variances a narrow "near" spike lets the broad
    # component claim nearly every pair as "far" whatever its prior weight
    gmm = GaussianMixture(
        2,
        covariance_type="tied",
        reg_covar=1e-6,
        random_state=seed,
        means_init=np.array([[lo], [hi]]),
        weights_init=np.array([0.9, 0.1]),
    )
    gmm.fit(x)
    order = np.argsort(gmm.means_.ravel())
    means = gmm.means_.ravel()[order]
    stds = np.full(2, float(np.sqrt(np.asarray(gmm.covariances_).ravel()[0])))
    weights = gmm.weights_.ravel()[order]
    return means, stds, weights


def _posterior_far(
    d: np.ndarray, means: np.ndarray, stds: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``P(far | d)`` with the far prior capped at :data:`MAX_FAR_WEIGHT`.

    Below the near component's mean the label is 0 (a Gaussian far component with a larger
    spread would otherwise claim the smallest distances too).
    """
    w_far = min(float(weights[1]), MAX_FAR_WEIGHT)
    ll = -0.5 * ((d[:, None] - means[None]) / stds[None]) ** 2 - np.log(stds[None])
    ll += np.log(np.array([1.0 - w_far, w_far]))[None]
    ll -= ll.max(axis=1, keepdims=True)
    p = np.exp(ll)
    s = p[:, 1] / p.sum(axis=1)
    s[d <= means[0]] = 0.0
    return s.astype(np.float32)


def soft_labels(distances: np.ndarray, seed: int = 0) -> np.ndarray:
    """Return ``s = P(far component | d)`` from a 2-component Gaussian mixture on ``d``.

    The far component's prior is capped at :data:`MAX_FAR_WEIGHT` (asymmetry is the
    exception). Degenerate inputs (fewer than 8 values or no spread) give all zeros.
    """
    d = np.asarray(distances, dtype=np.float64).ravel()
    if d.shape[0] < 8 or float(d.std()) < 1e-6:
        return np.zeros(d.shape[0], dtype=np.float32)
    return _posterior_far(d, *_fit_mixture(d, seed))


class SoftLabeller:
    """A GMM on a buffer of recent distances, refitted every ``refit`` calls."""

    def __init__(self, buffer: int = 4096, refit: int = 10, seed: int = 0) -> None:
        self.buffer = int(buffer)
        self.refit = int(refit)
        self.seed = seed
        self._d = np.zeros(0, dtype=np.float64)
        self._fit: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._n = 0

    def __call__(self, distances: np.ndarray) -> np.ndarray:
        """Add ``distances`` to the buffer and return their soft labels."""
        d = np.asarray(distances, dtype=np.float64).ravel()
        self._d = np.concatenate([self._d, d])[-self.buffer :]
        due = self._fit is None or self._n % self.refit == 0
        if due and self._d.size >= 16 and float(self._d.std()) > 1e-6:
            self._fit = _fit_mixture(self._d, self.seed)
        self._n += 1
        if self._fit is None:
            return np.zeros(d.size, dtype=np.float32)
        return _posterior_far(d, *self._fit)


def siamese_soft_loss(d: torch.Tensor, s: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean of ``(1 - s) d^2 / 2 + s max(0, m - d)^2 / 2``."""
    return ((1.0 - s) * 0.5 * d**2 + s * 0.5 * torch.clamp(margin - d, min=0.0) ** 2).mean()


def sample_pairs(
    volumes: Sequence[PairVolume], n: int, rng: np.random.Generator, jitter: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` location-matched crop pairs ``(N, 1, CROP, CROP)`` with light augmentation.

    Augmentation: the mirrored crop is shifted by up to ``jitter`` pixels (registration
    slack); both crops share a random flip and gamma; each gets its own small noise.
    """
    half = CROP // 2
    a = np.zeros((n, 1, CROP, CROP), np.float32)
    b = np.zeros_like(a)
    cands = [np.argwhere(v.mask) for v in volumes]
    weights = np.array([max(len(c), 1) for c in cands], dtype=float)
    weights /= weights.sum()
    for i in range(n):
        k = int(rng.choice(len(volumes), p=weights))
        vol, cand = volumes[k], cands[k]
        if len(cand) == 0:
            continue
        z, y, x = cand[rng.integers(len(cand))]
        pw = np.pad(vol.work[z], half + jitter)
        pm = np.pad(vol.mirror[z], half + jitter)
        y0, x0 = y + jitter, x + jitter
        a[i, 0] = pw[y0 : y0 + CROP, x0 : x0 + CROP]
        dy, dx = rng.integers(-jitter, jitter + 1, size=2)
        b[i, 0] = pm[y0 + dy : y0 + dy + CROP, x0 + dx : x0 + dx + CROP]
        if rng.random() < 0.5:
            a[i, 0], b[i, 0] = a[i, 0, :, ::-1], b[i, 0, :, ::-1]
        if rng.random() < 0.5:
            a[i, 0], b[i, 0] = a[i, 0, ::-1, :], b[i, 0, ::-1, :]
        g = float(np.exp(rng.normal(0.0, 0.2)))
        a[i, 0] = np.clip(a[i, 0], 0, 1) ** g
        b[i, 0] = np.clip(b[i, 0], 0, 1) ** g
    sig = rng.uniform(0.0, 0.03, size=(n, 1, 1, 1)).astype(np.float32)
    a += rng.normal(0.0, 1.0, a.shape).astype(np.float32) * sig
    b += rng.normal(0.0, 1.0, b.shape).astype(np.float32) * sig
    return a, b


@dataclass
class TrainHistory:
    """Loss curve and final distance statistics of a training run."""

    loss_a: list[float]
    loss_b: list[float]
    mean_soft_label: list[float]


def train_siamese(
    volumes: Sequence[PairVolume],
    *,
    steps: int = 300,
    batch: int = 64,
    lr: float = 1e-3,
    margin: float = 1.0,
    seed: int = 0,
    init: AsymmetryEncoder | None = None,
    width: int = 16,
    dim: int = 32,
    device: str = "cpu",
    negatives: float = 0.25,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[AsymmetryEncoder, TrainHistory]:
    """Train two encoders on mirrored patch pairs with cross soft labels; return the first.

    Location-matched pairs get the soft labels. Without any pair that is surely dissimilar,
    the objective is minimised by a constant embedding (all distances 0, all labels "near");
    a fraction ``negatives`` of each batch therefore pairs a patch with the mirrored patch of
    a *different* location (label 1), which keeps the embedding informative.

    Args:
        volumes: Prepared volumes (at least one with a non-empty mask).
        steps: Optimiser steps.
        batch: Pairs per step.
        lr: Adam learning rate.
        margin: Contrastive margin ``m`` (embeddings are unit vectors, so ``d <= 2``).
        seed: Seeds numpy, torch and the GMM.
        init: Start both networks from this model (fine-tuning) instead of random weights.
        width: Encoder width when ``init`` is None.
        dim: Embedding size when ``init`` is None.
        device: Torch device.
        negatives: Fraction of extra location-mismatched pairs per batch (label 1).
        progress: ``(done, total, message)`` callback.
        cancel: Cancel token, checked every step.

    Returns:
        The trained network A (in eval mode) and the loss history.
    """
    if not volumes or not any(v.mask.any() for v in volumes):
        raise ValueError("no training volumes with foreground")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if init is not None:
        net_a = copy.deepcopy(init)
        net_b = copy.deepcopy(init)
        # perturb B slightly so the two networks do not start identical
        with torch.no_grad():
            for p in net_b.parameters():
                p.add_(0.01 * p.std().nan_to_num(0.0) * torch.randn_like(p))
    else:
        net_a = AsymmetryEncoder(width, dim)
        net_b = AsymmetryEncoder(width, dim)
    net_a.to(device).train()
    net_b.to(device).train()
    opt_a = torch.optim.Adam(net_a.parameters(), lr=lr)
    opt_b = torch.optim.Adam(net_b.parameters(), lr=lr)
    lab_a, lab_b = SoftLabeller(seed=seed), SoftLabeller(seed=seed + 1)
    hist = TrainHistory([], [], [])
    for step in range(steps):
        check(cancel)
        xa, xb = sample_pairs(volumes, batch, rng)
        ta = torch.from_numpy(xa).to(device)
        tb = torch.from_numpy(xb).to(device)
        n_neg = int(round(negatives * batch))
        perm = torch.from_numpy(np.roll(np.arange(batch), 1 + int(rng.integers(batch - 1))))
        perm = perm[:n_neg].to(device)
        ea, eb_ = net_a(ta), net_a(tb)
        fa, fb = net_b(ta), net_b(tb)
        d_a = torch.linalg.norm(ea - eb_, dim=1)
        d_b = torch.linalg.norm(fa - fb, dim=1)
        # cross soft labels: A learns from B's distances and B from A's
        s_for_a = torch.from_numpy(lab_b(d_b.detach().cpu().numpy())).to(device)
        s_for_b = torch.from_numpy(lab_a(d_a.detach().cpu().numpy())).to(device)
        loss_a = siamese_soft_loss(d_a, s_for_a, margin)
        loss_b = siamese_soft_loss(d_b, s_for_b, margin)
        if n_neg > 0:  # mismatched locations: surely dissimilar
            ones = torch.ones(n_neg, device=device)
            nd_a = torch.linalg.norm(ea[:n_neg] - eb_[perm], dim=1)
            nd_b = torch.linalg.norm(fa[:n_neg] - fb[perm], dim=1)
            loss_a = loss_a + negatives * siamese_soft_loss(nd_a, ones, margin)
            loss_b = loss_b + negatives * siamese_soft_loss(nd_b, ones, margin)
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        opt_b.zero_grad()
        loss_b.backward()
        opt_b.step()
        hist.loss_a.append(loss_a.item())
        hist.loss_b.append(loss_b.item())
        hist.mean_soft_label.append(float(s_for_a.mean()))
        if step % 10 == 0 or step == steps - 1:
            report(progress, step + 1, steps, f"asymmetry training loss {loss_a.item():.4f}")
    net_a.eval()
    return net_a, hist


def fine_tune(
    model: AsymmetryEncoder,
    volumes: Sequence[PairVolume],
    *,
    steps: int = 200,
    lr: float = 3e-4,
    seed: int = 0,
    **kwargs: object,
) -> tuple[AsymmetryEncoder, TrainHistory]:
    """Fine-tune ``model`` on the user's volumes (same objective, lower learning rate).

    ``model`` itself is not modified; a trained copy is returned. Extra keyword arguments
    go to :func:`train_siamese` (``batch``, ``margin``, ``device``, ``progress``, ``cancel``).
    """
    return train_siamese(volumes, steps=steps, lr=lr, seed=seed, init=model, **kwargs)
