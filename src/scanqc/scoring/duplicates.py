"""Exact and near duplicates within a dataset.

:func:`fingerprint` is cheap and returns a small picklable :class:`Fingerprint`, so the
batch engine computes it in its workers; :func:`find_duplicates` then groups the
fingerprints of the whole dataset.

* exact: BLAKE2b of the pixel bytes plus shape and dtype (cleanvision uses MD5 of the
  pixels);
* near: a 64-bit perceptual hash (pHash: DCT of a 32x32 thumbnail of the windowed
  middle slice, 8x8 low frequencies against their median), compared by Hamming
  distance. Candidates come from band buckets (pigeonhole: with ``max_distance`` d,
  two hashes within d bits agree exactly on at least one of d + 1 bands), so the search
  is near-linear, not quadratic.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.fft import dctn

from scanqc.io.intensity import normalize, robust_window
from scanqc.io.scan import Scan, ScanWarning

#: Default Hamming distance (of 64 bits) for near duplicates.
NEAR_DUPLICATE_BITS = 4


@dataclass(frozen=True)
class Fingerprint:
    """What duplicate detection needs from one scan (small and picklable).

    Attributes:
        exact: Hex digest of pixel bytes, shape and dtype.
        phash: 64-bit perceptual hash of the windowed middle slice ("" if undefined).
        shape: Spatial shape.
    """

    exact: str
    phash: int
    shape: tuple[int, ...]


def _thumbnail(img: np.ndarray, size: int = 32) -> np.ndarray:
    zoom = (size / img.shape[0], size / img.shape[1])
    # Pre-smooth so the thumbnail is an area average, not an aliased sample.
    sig = [max(0.0, 0.5 / z - 0.5) for z in zoom]
    sm = ndi.gaussian_filter(img, sig) if any(s > 0 for s in sig) else img
    out = ndi.zoom(sm, zoom, order=1, grid_mode=True, mode="nearest")
    return out[:size, :size]


def phash(img: np.ndarray) -> int:
    """64-bit pHash of a 2D image in [0, 1].

    DCT of a 32x32 thumbnail; the 8x8 low-frequency block against its median (DC
    excluded from the median).
    """
    small = _thumbnail(np.asarray(img, dtype=np.float64), 32)
    coef = dctn(small, norm="ortho")[:8, :8].ravel()
    med = np.median(coef[1:])
    bits = coef > med
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def fingerprint(scan: Scan) -> Fingerprint:
    """Compute the :class:`Fingerprint` of ``scan``."""
    data = np.ascontiguousarray(scan.data)
    h = hashlib.blake2b(digest_size=16)
    h.update(str((data.shape, data.dtype.str)).encode())
    h.update(memoryview(data).cast("B"))
    g = scan.slices()
    mid = g[g.shape[0] // 2]
    step = max(1, int(np.ceil(max(mid.shape) / 256)))
    mid = mid[::step, ::step]
    p = 0
    if mid.size and min(mid.shape) >= 2:
        w = normalize(mid, window=robust_window(mid, scan.modality))
        p = phash(w) if float(w.std()) > 0 else 0
    return Fingerprint(exact=h.hexdigest(), phash=p, shape=tuple(scan.spatial_shape))


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return int(bin(a ^ b).count("1"))


def find_duplicates(
    items: Iterable[tuple[Hashable, Fingerprint]],
    max_distance: int = NEAR_DUPLICATE_BITS,
) -> dict[Hashable, list[ScanWarning]]:
    """Find exact and near duplicates among fingerprints.

    Args:
        items: ``(scan_id, fingerprint)`` pairs.
        max_distance: Largest Hamming distance (bits of 64) for a near duplicate; 0 turns
            near-duplicate search off.

    Returns:
        ``{scan_id: [ScanWarning]}`` for the scans with a duplicate only:
        ``exact_duplicate`` (warn; ``value`` = number of copies) and ``near_duplicate``
        (info; ``value`` = smallest Hamming distance). Messages name the other scan ids
        (at most 3).
    """
    ids: list[Hashable] = []
    fps: list[Fingerprint] = []
    for sid, fp in items:
        ids.append(sid)
        fps.append(fp)
    out: dict[Hashable, list[ScanWarning]] = defaultdict(list)
    by_exact: dict[str, list[int]] = defaultdict(list)
    for i, fp in enumerate(fps):
        by_exact[fp.exact].append(i)
    exact_group = {}
    for members in by_exact.values():
        if len(members) > 1:
            for i in members:
                exact_group[i] = members
                others = [str(ids[j]) for j in members if j != i]
                out[ids[i]].append(ScanWarning(
                    "exact_duplicate",
                    f"identical pixels to {_names(others)}",
                    severity="warn", value=float(len(members) - 1)))
    if max_distance > 0:
        nb = max_distance + 1
        width = int(np.ceil(64 / nb))
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        reps = [i for i, fp in enumerate(fps) if fp.phash and exact_group.get(i, [i])[0] == i]
        for i in reps:
            for b in range(nb):
                key = (fps[i].phash >> (b * width)) & ((1 << width) - 1)
                buckets[(b, key)].append(i)
        near: dict[int, dict[int, int]] = defaultdict(dict)
        for members in buckets.values():
            if len(members) < 2:
                continue
            for a_pos, i in enumerate(members):
                for j in members[a_pos + 1:]:
                    if j in near[i]:
                        continue
                    dist = hamming(fps[i].phash, fps[j].phash)
                    if dist <= max_distance:
                        near[i][j] = dist
                        near[j][i] = dist
        for i, peers in near.items():
            if not peers:
                continue
            for k in exact_group.get(i, [i]):
                others = [str(ids[j]) for j in sorted(peers, key=peers.get)]
                dist = min(peers.values())
                out[ids[k]].append(ScanWarning(
                    "near_duplicate",
                    f"near duplicate of {_names(others)} (pHash distance {dist})",
                    severity="info", value=float(dist)))
    return dict(out)


def _names(ids: list[str], limit: int = 3) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more
