"""Exact and near duplicates within a dataset.

:func:`fingerprint` is cheap and returns a small picklable :class:`Fingerprint`, so the
batch engine computes it in its workers; :func:`find_duplicates` then groups the
fingerprints of the whole dataset.

* exact: CRC-32 of the pixel bytes and a 32-bit fold of the sum of their 64-bit words
  (7 GB/s and 50 GB/s: about 1 ms for a clinical volume, a fifth of a cryptographic hash's
  time), with shape and dtype (cleanvision uses MD5 of the pixels);
* near: a 64-bit perceptual hash (pHash: DCT of a 32x32 thumbnail of the windowed
  middle slice, 8x8 low frequencies against their median), compared by Hamming
  distance. Candidates come from band buckets (pigeonhole: with ``max_distance`` d,
  two hashes within d bits agree exactly on at least one of d + 1 bands), so the search
  is near-linear, not quadratic.

:data:`NEAR_DUPLICATE_BITS` is 2 of 64. On ../shared/data no two different scans are that
close (the closest pairs, hand radiographs of different children of the same size, are at
4 bits), while of 20 radiographs saved as JPEG (quality 70) all are within 2 bits, resized to
80 % 19, re-windowed (x1.2 - 10) 14, cropped by 5 pixels 4: a crop is not a near duplicate at
this setting. The hash starts from the middle slice strided to at most
:data:`THUMB_SOURCE` pixels (the same figures as from 256, and cheaper): with the checksums
1.6 ms for a 48 x 256 x 256 volume, 2.0 ms for a 2048 x 2048 image, 0.25 ms for a 300 px
radiograph.

:class:`DuplicateIndex` finds them while a batch streams: each scan is compared with the
scans seen before it, and the later copy gets the warning (the one to remove).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.fft import dctn

from scanqc.io.intensity import normalize, robust_window
from scanqc.io.scan import Scan, ScanWarning, luminance

#: Default Hamming distance (of 64 bits) for near duplicates.
NEAR_DUPLICATE_BITS = 2
#: Largest side (pixels) of the strided middle slice the perceptual hash starts from.
THUMB_SOURCE = 128


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
    """A ``size x size`` thumbnail, in float32.

    Gaussian pre-smoothing (an area average, not an aliased sample), then linear zoom. A box
    filter is 20x faster but brought two hand radiographs of different children
    (RSNA bone age, same size) within 2 bits; this thumbnail keeps every pair of different
    scans of ../shared/data at 4 bits or more.
    """
    img = np.asarray(img, dtype=np.float32)
    zoom = (size / img.shape[0], size / img.shape[1])
    sig = [max(0.0, 0.5 / z - 0.5) for z in zoom]
    sm = ndi.gaussian_filter(img, sig) if any(s > 0 for s in sig) else img
    out = ndi.zoom(sm, zoom, order=1, grid_mode=True, mode="nearest")
    return out[:size, :size].astype(np.float64)


def phash(img: np.ndarray) -> int:
    """64-bit pHash of a 2D image in [0, 1].

    DCT of a 32x32 thumbnail; the 8x8 low-frequency block against its median (DC
    excluded from the median).
    """
    small = _thumbnail(img, 32)
    coef = dctn(small, norm="ortho")[:8, :8].ravel()
    med = np.median(coef[1:])
    bits = coef > med
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def fingerprint(scan: Scan, windowed: np.ndarray | None = None) -> Fingerprint:
    """Compute the :class:`Fingerprint` of ``scan``.

    Args:
        scan: The scan.
        windowed: Optionally, its middle slice already strided and windowed to [0, 1] (for
            a 2D image the checks' ``CheckData.win[0]``, the same values): used when its
            shape is the strided slice's, so the image is not windowed twice.
    """
    data = np.ascontiguousarray(scan.data)
    raw = memoryview(data).cast("B")
    head = str((data.shape, data.dtype.str)).encode()
    # a second, differently built 32 bits: the sum of the 64-bit words (10x faster than
    # Adler-32; the CRC covers the order and the bytes past the last whole word)
    words = data.reshape(-1).view(np.uint8)[: data.nbytes // 8 * 8].view(np.uint64)
    total = int(np.add.reduce(words, dtype=np.uint64)) if words.size else 0
    exact = f"{zlib.crc32(raw, zlib.crc32(head)):08x}{(total ^ (total >> 32)) & 0xFFFFFFFF:08x}"
    # the middle slice, strided, then gray: not a float copy of the whole scan first
    mid = data[data.shape[0] // 2] if data.ndim == (4 if scan.rgb else 3) else data
    step = max(1, int(np.ceil(max(mid.shape[:2]) / THUMB_SOURCE)))
    mid = mid[::step, ::step]
    if scan.rgb:
        mid = luminance(mid)
    p = 0
    if mid.size and min(mid.shape[:2]) >= 2:
        if windowed is not None and windowed.shape == mid.shape[:2]:
            w = windowed
        else:
            w = normalize(mid, window=robust_window(mid, scan.modality))
        p = phash(w) if float(w.std()) > 0 else 0
    return Fingerprint(exact=exact, phash=p, shape=tuple(scan.spatial_shape))


def to_text(fp: Fingerprint) -> str:
    """A fingerprint as one short string (kept with a report row and in the resume cache)."""
    return f"{fp.exact}:{fp.phash:016x}"


def from_text(text: str) -> Fingerprint | None:
    """The fingerprint :func:`to_text` wrote (None for anything else)."""
    exact, _, phash = str(text or "").partition(":")
    try:
        return Fingerprint(exact=exact, phash=int(phash, 16), shape=()) if exact else None
    except ValueError:
        return None


class DuplicateIndex:
    """Exact and near duplicates among the scans of a stream, each against those before it.

    Args:
        max_distance: Largest Hamming distance (of 64 bits) for a near duplicate; 0 turns
            the near-duplicate search off.
    """

    def __init__(self, max_distance: int = NEAR_DUPLICATE_BITS) -> None:
        self.max_distance = int(max_distance)
        self._exact: dict[str, str] = {}  # exact hash -> name of the first scan
        self._keys_of: dict[str, str] = {}  # exact hash -> identity of the first scan
        self._bands: dict[tuple[int, int], list[tuple[int, str, str]]] = defaultdict(list)
        self._width = int(np.ceil(64 / (self.max_distance + 1)))

    def _keys(self, phash: int) -> list[tuple[int, int]]:
        mask = (1 << self._width) - 1
        return [(b, (phash >> (b * self._width)) & mask) for b in range(self.max_distance + 1)]

    def add(self, name: str, fp: Fingerprint, key: str | None = None) -> list[ScanWarning]:
        """Add one scan; return its warnings against the scans added before it.

        Args:
            name: How the warnings name this scan to later ones (e.g. its report path).
            fp: Its fingerprint.
            key: The scan's identity (default ``name``): a scan added again under the same
                key (scored twice in one session) is not a copy of itself.
        """
        key = name if key is None else key
        first = self._exact.get(fp.exact)
        if first is not None and self._keys_of.get(fp.exact) == key:
            return []
        if first is not None:
            return [ScanWarning("exact_duplicate", f"identical pixels to {first}",
                                severity="warn", value=1.0)]
        self._exact[fp.exact] = name
        self._keys_of[fp.exact] = key
        if not fp.phash or self.max_distance <= 0:
            return []
        best: dict[str, int] = {}
        bands = self._keys(fp.phash)
        for band in bands:
            for other, other_name, other_key in self._bands.get(band, ()):
                if other_name not in best and other_key != key:
                    dist = hamming(fp.phash, other)
                    if dist <= self.max_distance:
                        best[other_name] = dist
        for band in bands:
            self._bands[band].append((fp.phash, name, key))
        if not best:
            return []
        others = sorted(best, key=best.get)
        dist = best[others[0]]
        return [ScanWarning("near_duplicate",
                            f"near duplicate of {_names(others)} (pHash distance {dist})",
                            severity="info", value=float(dist))]


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
