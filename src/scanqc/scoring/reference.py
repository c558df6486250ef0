"""Reference-set scoring: distances of scan embeddings to a set of known-good scans.

The method follows Belton et al. (MIDL 2021) and FewSOME (Belton et al., CVPRW 2023); see
``docs/scoring.md`` for the full description. Everything here works on embeddings
(numpy arrays), so it is independent of the encoder that made them.

* **Distance.** ``d(z, r) = ||z - r||_2 / sqrt(D)`` (FewSOME's normalisation, so values are
  comparable between encoders of different width ``D``).
* **Statistic.** A scan's distance to the set is the ``"mean"`` (Belton) or the ``"min"``
  (FewSOME) of its distances to the ``R`` references.
* **Threshold.** Belton's default: the largest pairwise distance between two references
  (:func:`max_pairwise_distance`), the same for both statistics. It is conservative for
  ``"min"``; ``threshold_rule="loo"`` instead takes the largest leave-one-out statistic of
  a reference against the others. The user may pass any threshold.
* **bad_score.** ``1 / (1 + exp(-(d - threshold) / scale))``: monotone in ``d``, in
  ``[0, 1]``, exactly 0.5 at the threshold. ``scale`` is set so that the *median*
  reference (its leave-one-out statistic) scores 0.1: ``scale = (t0 - m) / ln 9`` with
  ``t0`` the default threshold and ``m`` the median leave-one-out statistic (floored at
  ``0.05 * t0``).
* **flagged** = ``d > threshold``.
* **Image-quality distance** (optional, when the set holds the references' quality
  metrics and the caller passes each scan's): the image-quality measures of
  :func:`scanqc.scoring.quality.quality_metrics` (:data:`QUALITY_KEYS`, including the
  artefact measures of :mod:`scanqc.scoring.artifacts`), the ratio measures of
  :data:`QUALITY_LOG_KEYS` on a log10 scale, each divided by its nearest-reference
  spread (:func:`quality_scales`: the median difference between a reference and its
  nearest other reference, floored at :data:`QUALITY_FLOORS` so a measure that is nearly
  constant over the references, such as a clipped fraction, does not turn a negligible
  difference into a large one), and the scan's **minimum** RMS difference to a reference
  (:func:`quality_distances`). It is calibrated like the embedding distance,
  on the references only (threshold = largest leave-one-out value, median reference at
  0.1), and fused by ``max``: the encoder is trained to ignore noise and blur (SimCLR
  augmentations), so artefacts such as ghosting and motion move it little while they move
  the quality measures a lot.
* **Combined score.** What scanqc reports: :func:`combine_with_warnings` lifts the score of
  a scan that has a ``"high"`` severity check warning to ``0.9 + 0.1 * distance_score``
  (flagged), i.e. ``max(distance score, severity score)`` with ties between warned scans
  broken by the distance.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scanqc.io.scan import ScanWarning

Statistic = Literal["mean", "min"]
ThresholdRule = Literal["max_pairwise", "loo"]

#: Below this many references the default threshold (their own spread) is a poor estimate.
FEW_REFERENCES = 5


def few_references_note(n: int) -> str | None:
    """A one-line caution when ``n`` references are too few for a good default threshold.

    The default threshold is the references' own spread: with 2-4 scans it is estimated from
    1-6 pairwise distances and is usually too tight, so most scans get flagged. None when
    ``n`` is 0-1 (no reference scoring at all) or at least :data:`FEW_REFERENCES`.
    """
    if not 2 <= n < FEW_REFERENCES:
        return None
    return (f"only {n} reference scans: the flagging threshold is their own spread, which "
            f"{n} scans estimate poorly (expect many flags); mark 10-30 scans that look right")


#: Score given to a scan with a warning of this severity before the distance tie-break.
SEVERITY_SCORE: dict[str, float] = {"high": 0.9}
_FORMAT = "scanqc-reference-set/1"
_META_KEY = "scanqc_reference_set"
_MEDIAN_REFERENCE_SCORE = 0.1  # bad_score of the median reference (leave-one-out)

#: Keys of :func:`scanqc.scoring.quality.quality_metrics` compared with the references
#: (every measure that function returns; missing or NaN values count as no difference).
QUALITY_KEYS: tuple[str, ...] = (
    "snr", "snr_dietrich", "cnr", "efc", "fber", "qi1", "body_fraction", "entropy_bits",
    "blur", "neighbour_corr", "p01_bit", "p05_bit", "p99_bit", "clipped_high", "clipped_low",
    "kspace_roughness", "air_floor_fraction", "air_signal_fraction", "slice_dir_r",
    "slice_dir_a", "slice_dir_s",
)
#: Ratio measures compared on a log10 scale (their spread between scans is multiplicative);
#: values <= 0 count as missing.
QUALITY_LOG_KEYS: frozenset[str] = frozenset({"snr", "snr_dietrich", "cnr", "fber"})
#: Smallest per-measure scale of the quality distance (in the measure's units, log10 units
#: for :data:`QUALITY_LOG_KEYS`): the difference below which two scans count as equal on
#: that measure. Fractions: 2 percentage points; EFC and neighbour correlation: 0.02;
#: entropy: 0.2 bits; blur (edge-to-contrast ratio): 0.1; ratios: 0.05 decades (12%);
#: k-space roughness: 0.005; slice direction cosines: 0.1 (about 6 degrees).
QUALITY_FLOORS: dict[str, float] = {
    "snr": 0.05, "snr_dietrich": 0.05, "cnr": 0.05, "fber": 0.05,
    "efc": 0.02, "neighbour_corr": 0.02, "entropy_bits": 0.2, "blur": 0.1,
    "qi1": 0.02, "body_fraction": 0.02, "p01_bit": 0.02, "p05_bit": 0.02, "p99_bit": 0.02,
    "clipped_high": 0.02, "clipped_low": 0.02, "air_floor_fraction": 0.02,
    "air_signal_fraction": 0.02, "kspace_roughness": 0.005,
    "slice_dir_r": 0.1, "slice_dir_a": 0.1, "slice_dir_s": 0.1,
}
#: Fewest references with quality metrics for the quality distance to be used.
MIN_QUALITY_REFERENCES = 3


def _as_2d(z: np.ndarray) -> np.ndarray:
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"embeddings must be (N, D) or (D,), got shape {arr.shape}")
    return arr


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the ``(N, M)`` Euclidean distances divided by ``sqrt(D)``.

    Args:
        a: ``(N, D)`` or ``(D,)`` embeddings.
        b: ``(M, D)`` or ``(D,)`` embeddings.
    """
    a2, b2 = _as_2d(a), _as_2d(b)
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(
            f"embedding widths differ: {a2.shape[1]} vs {b2.shape[1]} "
            "(were they made by the same encoder?)"
        )
    sq = (a2**2).sum(1)[:, None] + (b2**2).sum(1)[None, :] - 2.0 * a2 @ b2.T
    return np.sqrt(np.maximum(sq, 0.0)) / math.sqrt(a2.shape[1])


def reference_distances(z: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``(mean, min)`` normalised distances of each row of ``z`` to ``refs``.

    Args:
        z: ``(N, D)`` or ``(D,)`` scan embeddings.
        refs: ``(R, D)`` reference embeddings.

    Returns:
        Two float arrays of shape ``(N,)``.
    """
    d = pairwise_distances(z, refs)
    return d.mean(axis=1), d.min(axis=1)


def leave_one_out_distances(refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return each reference's ``(mean, min)`` distance to the *other* references."""
    r = _as_2d(refs)
    if r.shape[0] < 2:
        raise ValueError("a reference set needs at least 2 references")
    d = pairwise_distances(r, r)
    off = ~np.eye(r.shape[0], dtype=bool)
    others = d[off].reshape(r.shape[0], r.shape[0] - 1)
    return others.mean(axis=1), others.min(axis=1)


def max_pairwise_distance(refs: np.ndarray) -> float:
    """Belton's threshold: the largest normalised distance between two references."""
    r = _as_2d(refs)
    if r.shape[0] < 2:
        raise ValueError("a reference set needs at least 2 references")
    return float(pairwise_distances(r, r).max())


def _stat_index(statistic: str) -> int:
    if statistic not in ("mean", "min"):
        raise ValueError(f"statistic must be 'mean' or 'min', got {statistic!r}")
    return 0 if statistic == "mean" else 1


def default_threshold(
    refs: np.ndarray, statistic: Statistic = "mean", rule: ThresholdRule = "max_pairwise"
) -> float:
    """Return the default flagging threshold for ``statistic``.

    Args:
        refs: ``(R, D)`` reference embeddings.
        statistic: ``"mean"`` or ``"min"``.
        rule: ``"max_pairwise"`` (Belton: the largest distance between two references,
            for either statistic) or ``"loo"`` (the largest leave-one-out ``statistic`` of
            one reference against the others; tighter for ``"min"``).
    """
    idx = _stat_index(statistic)
    if rule == "max_pairwise":
        return max_pairwise_distance(refs)
    if rule == "loo":
        return float(leave_one_out_distances(refs)[idx].max())
    raise ValueError(f"threshold rule must be 'max_pairwise' or 'loo', got {rule!r}")


def score_scale(
    refs: np.ndarray, statistic: Statistic = "mean", rule: ThresholdRule = "max_pairwise"
) -> float:
    """Return the logistic scale: the median reference maps to bad_score 0.1."""
    t0 = default_threshold(refs, statistic, rule)
    m = float(np.median(leave_one_out_distances(refs)[_stat_index(statistic)]))
    gap = max(t0 - m, 0.05 * t0, 1e-12)
    return gap / math.log((1 - _MEDIAN_REFERENCE_SCORE) / _MEDIAN_REFERENCE_SCORE)


def distance_to_score(distance: np.ndarray | float, threshold: float, scale: float) -> np.ndarray:
    """Map distances to ``bad_score`` in [0, 1]: logistic, 0.5 at ``threshold``."""
    x = (np.asarray(distance, dtype=np.float64) - threshold) / max(scale, 1e-12)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # == 1 / (1 + exp(-x)), overflow-free


def quality_matrix(
    metrics: Sequence[Mapping[str, Any] | None], keys: Sequence[str] = QUALITY_KEYS
) -> np.ndarray:
    """Stack per-scan quality metric dicts into ``(N, K)`` floats (NaN where missing)."""
    out = np.full((len(metrics), len(keys)), np.nan, dtype=np.float64)
    for i, m in enumerate(metrics):
        for j, k in enumerate(keys):
            v = (m or {}).get(k)
            try:
                out[i, j] = float(v) if v is not None else np.nan
            except (TypeError, ValueError):
                out[i, j] = np.nan
    return out


def quality_space(x: np.ndarray, keys: Sequence[str] = QUALITY_KEYS) -> np.ndarray:
    """Map ``(N, K)`` quality measures to the space the distance works in.

    Columns of :data:`QUALITY_LOG_KEYS` become ``log10`` (NaN for values <= 0); the others
    are unchanged.

    Raises:
        ValueError: When the width of ``x`` is not ``len(keys)``.
    """
    out = np.array(np.atleast_2d(np.asarray(x, dtype=np.float64)), copy=True)
    if out.shape[1] != len(keys):
        raise ValueError(f"quality measures have {out.shape[1]} columns for {len(keys)} keys")
    for j, k in enumerate(keys):
        if k in QUALITY_LOG_KEYS:
            col = out[:, j]
            with np.errstate(all="ignore"):
                out[:, j] = np.where(col > 0, np.log10(np.where(col > 0, col, 1.0)), np.nan)
    return out


def quality_scales(refs: np.ndarray, keys: Sequence[str] = QUALITY_KEYS) -> np.ndarray:
    """Per-measure scales of the quality distance: nearest-reference spread, floored.

    The distance of a scan is to its *nearest* reference, so the unit of each measure is
    how much a reference differs from its own nearest other reference (not the spread of
    the whole set, which mixes protocols and subjects and hides artefacts smaller than
    the differences between them). ``refs`` must already be in :func:`quality_space`.

    1. Standardise by the standard deviation over the references (floored at
       :data:`QUALITY_FLOORS`) and find each reference's nearest other reference (RMS
       over the measures, NaN differences as 0).
    2. Scale of a measure = median over the references of ``|r_i - r_nn(i)|``, divided by
       ``0.6745 * sqrt(2)`` (the standard deviation for Gaussian differences), floored at
       :data:`QUALITY_FLOORS` (0 for keys without one); 0 or undefined becomes 1.

    With fewer than 2 references the floored standard deviation (or 1) is used.
    """
    r = np.atleast_2d(np.asarray(refs, dtype=np.float64))
    floor = np.array([QUALITY_FLOORS.get(k, 0.0) for k in keys], dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        sd = np.nanstd(r, axis=0, ddof=1) if len(r) > 1 else np.full(r.shape[1], np.nan)
        sd = np.maximum(np.where(np.isfinite(sd), sd, 0.0), floor)
        sd = np.where(sd > 0, sd, 1.0)
        if len(r) < 2:
            return sd
        z = r / sd
        diff = z[:, None, :] - z[None]
        d = np.sqrt((np.where(np.isfinite(diff), diff, 0.0) ** 2).mean(axis=2))
        np.fill_diagonal(d, np.inf)
        nn = d.argmin(axis=1)
        spread = np.nanmedian(np.abs(r - r[nn]), axis=0) / (0.6745 * math.sqrt(2.0))
    scale = np.maximum(np.where(np.isfinite(spread), spread, 0.0), floor)
    return np.where(scale > 0, scale, 1.0)


def quality_distances(
    x: np.ndarray, refs: np.ndarray, keys: Sequence[str] = QUALITY_KEYS
) -> np.ndarray:
    """Minimum standardised RMS difference of each row of ``x`` to a reference row.

    Both are mapped by :func:`quality_space` (log10 of the ratio measures); each measure
    is divided by its :func:`quality_scales` value (the typical difference between a
    reference and its nearest other reference, floored at :data:`QUALITY_FLOORS`); NaN
    differences count as 0.

    Args:
        x: ``(N, K)`` quality measures of the scans (columns ``keys``).
        refs: ``(R, K)`` quality measures of the references.
        keys: The measure names of the columns (default :data:`QUALITY_KEYS`).

    Returns:
        ``(N,)`` distances.
    """
    x2, r = quality_space(x, keys), quality_space(refs, keys)
    sd = quality_scales(r, keys)
    diff = (x2[:, None, :] - r[None]) / sd
    diff = np.where(np.isfinite(diff), diff, 0.0)
    return np.sqrt((diff**2).mean(axis=2)).min(axis=1)


def quality_calibration(
    refs: np.ndarray, keys: Sequence[str] = QUALITY_KEYS
) -> tuple[float, float]:
    """``(threshold, scale)`` of the quality distance, from the references alone.

    The threshold is the largest leave-one-out quality distance of a reference to the
    others (statistics recomputed without it); the scale maps the median one to 0.1.
    """
    r = np.atleast_2d(np.asarray(refs, float))
    loo = np.array([quality_distances(r[i:i + 1], np.delete(r, i, axis=0), keys)[0]
                    for i in range(len(r))])
    t0 = float(loo.max())
    gap = max(t0 - float(np.median(loo)), 0.05 * t0, 1e-12)
    return t0, gap / math.log((1 - _MEDIAN_REFERENCE_SCORE) / _MEDIAN_REFERENCE_SCORE)


@dataclass
class ReferenceSet:
    """Embeddings of the user's known-good scans, and what made them.

    Attributes:
        scan_ids: One id per reference, in row order.
        embeddings: ``(R, D)`` scan-level embeddings.
        slice_embeddings: Optional per-reference ``(N_i, D_slice)`` slice embeddings (the
            pool used for per-slice scores; ``D_slice`` may differ from ``D``).
        model: Information about the encoder (name, sha256, input size ...); compared
            by callers to refuse mixing embeddings of different models.
        statistic: Default statistic, ``"mean"`` or ``"min"``.
        threshold: A user-chosen threshold, or None for the default rule.
        threshold_rule: ``"max_pairwise"`` (Belton) or ``"loo"``.
        quality: Optional ``(R, K)`` image-quality measures of the references (columns
            :data:`QUALITY_KEYS`, NaN where unknown); enables the quality distance.
    """

    scan_ids: list[str]
    embeddings: np.ndarray
    slice_embeddings: list[np.ndarray] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    statistic: Statistic = "mean"
    threshold: float | None = None
    threshold_rule: ThresholdRule = "max_pairwise"
    quality: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Validate shapes and coerce to float32."""
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2:
            raise ValueError(f"reference embeddings must be (R, D), got {self.embeddings.shape}")
        if len(self.scan_ids) != self.embeddings.shape[0]:
            raise ValueError(
                f"{len(self.scan_ids)} scan ids for {self.embeddings.shape[0]} embeddings"
            )
        if self.embeddings.shape[0] < 2:
            raise ValueError("a reference set needs at least 2 references")
        if not np.isfinite(self.embeddings).all():
            raise ValueError("reference embeddings contain NaN or Inf")
        _stat_index(self.statistic)
        if self.slice_embeddings is not None:
            if len(self.slice_embeddings) != len(self.scan_ids):
                raise ValueError("one slice-embedding array is needed per reference")
            # slice width may differ from the scan width (scanqc pools mean+max -> 2D)
            slices = [np.asarray(s, dtype=np.float32) for s in self.slice_embeddings]
            slices = [s[None] if s.ndim == 1 else s for s in slices]
            if any(s.ndim != 2 or s.shape[1] != slices[0].shape[1] for s in slices):
                raise ValueError("slice embeddings must be (N_i, D_slice) with one D_slice")
            self.slice_embeddings = slices
        self.scan_ids = [str(s) for s in self.scan_ids]
        if self.quality is not None:
            q = np.asarray(self.quality, dtype=np.float64)
            if q.shape != (len(self.scan_ids), len(QUALITY_KEYS)):
                raise ValueError(f"reference quality must be ({len(self.scan_ids)}, "
                                 f"{len(QUALITY_KEYS)}), got {q.shape}")
            self.quality = q

    @property
    def has_quality(self) -> bool:
        """True when enough references have quality measures for the quality distance."""
        if self.quality is None:
            return False
        return int(np.isfinite(self.quality).any(axis=1).sum()) >= MIN_QUALITY_REFERENCES

    @classmethod
    def from_embeddings(
        cls,
        scan_ids: Sequence[str],
        embeddings: np.ndarray | Sequence[np.ndarray],
        slice_embeddings: Sequence[np.ndarray] | None = None,
        model: dict[str, Any] | None = None,
        statistic: Statistic = "mean",
        threshold: float | None = None,
        threshold_rule: ThresholdRule = "max_pairwise",
        quality: Sequence[Mapping[str, Any] | None] | np.ndarray | None = None,
    ) -> ReferenceSet:
        """Build a reference set from scan-level (and optionally slice) embeddings.

        ``quality``: per-reference metric dicts of
        :func:`scanqc.scoring.quality.quality_metrics` (or an ``(R, K)`` array).
        """
        if quality is not None and not isinstance(quality, np.ndarray):
            quality = quality_matrix(list(quality))
        return cls(
            scan_ids=list(scan_ids),
            embeddings=np.stack([np.asarray(e) for e in embeddings])
            if not isinstance(embeddings, np.ndarray)
            else embeddings,
            slice_embeddings=list(slice_embeddings) if slice_embeddings is not None else None,
            model=dict(model or {}),
            statistic=statistic,
            threshold=threshold,
            threshold_rule=threshold_rule,
            quality=quality,
        )

    @property
    def dim(self) -> int:
        """Embedding width ``D``."""
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        """Number of references."""
        return int(self.embeddings.shape[0])

    def default_threshold(self, statistic: Statistic | None = None) -> float:
        """The rule-based threshold (ignores a user threshold)."""
        return default_threshold(self.embeddings, statistic or self.statistic, self.threshold_rule)

    def effective_threshold(self, statistic: Statistic | None = None) -> float:
        """The user threshold if set, else the default one."""
        if self.threshold is not None:
            return float(self.threshold)
        return self.default_threshold(statistic)

    def scale(self, statistic: Statistic | None = None) -> float:
        """Logistic scale of :func:`distance_to_score` for this set."""
        return score_scale(self.embeddings, statistic or self.statistic, self.threshold_rule)

    def slice_pool(self) -> tuple[np.ndarray, np.ndarray]:
        """Return all reference slice embeddings ``(S, D)`` and their owner index ``(S,)``."""
        if not self.slice_embeddings:
            raise ValueError("this reference set holds no slice embeddings")
        pool = np.concatenate(self.slice_embeddings, axis=0)
        owner = np.concatenate(
            [np.full(len(s), i, dtype=np.int64) for i, s in enumerate(self.slice_embeddings)]
        )
        return pool, owner

    def slice_calibration(self) -> tuple[float, float]:
        """``(threshold, scale)`` of per-slice scores (computed once per set, cached).

        The threshold is the largest distance of a reference slice to the slices of the
        *other* references; the scale maps the median of those distances to 0.1.
        """
        pool, owner = self.slice_pool()
        key = (pool.shape, float(pool.sum()))
        cached = self.__dict__.get("_slice_calibration")
        if cached is not None and cached[0] == key:
            return cached[1]
        pp = pairwise_distances(pool, pool)
        pp[owner[:, None] == owner[None, :]] = np.inf
        loo = pp.min(axis=1)
        loo = loo[np.isfinite(loo)]
        thr = float(loo.max())
        gap = max(thr - float(np.median(loo)), 0.05 * thr, 1e-12)
        result = (thr, gap / math.log((1 - _MEDIAN_REFERENCE_SCORE) / _MEDIAN_REFERENCE_SCORE))
        self.__dict__["_slice_calibration"] = (key, result)
        return result

    # -- persistence: one .safetensors file, JSON metadata, no pickle -----------------
    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (a ``.safetensors`` file; JSON in its metadata)."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {"embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32)}
        if self.slice_embeddings:
            pool, owner = self.slice_pool()
            tensors["slice_embeddings"] = np.ascontiguousarray(pool, dtype=np.float32)
            tensors["slice_owner"] = owner
        if self.quality is not None:
            tensors["quality"] = np.ascontiguousarray(self.quality, dtype=np.float64)
        meta = {
            "format": _FORMAT,
            "scan_ids": self.scan_ids,
            "model": self.model,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "has_slices": bool(self.slice_embeddings),
            "quality_keys": list(QUALITY_KEYS) if self.quality is not None else None,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={_META_KEY: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceSet:
        """Read a set written by :meth:`save`; raises ``ValueError`` (one line) if invalid."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta_raw = (f.metadata() or {}).get(_META_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # noqa: BLE001 - any parse failure is one message
            raise ValueError(f"{path}: not a scanqc reference set ({exc})") from exc
        if not meta_raw:
            raise ValueError(f"{path}: not a scanqc reference set (no metadata)")
        meta = json.loads(meta_raw)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: unsupported reference-set format {meta.get('format')!r}")
        slices = None
        if meta.get("has_slices"):
            pool, owner = tensors["slice_embeddings"], tensors["slice_owner"]
            slices = [pool[owner == i] for i in range(len(meta["scan_ids"]))]
        quality = None
        if "quality" in tensors:
            keys = list(meta.get("quality_keys") or [])
            src = tensors["quality"]
            quality = np.full((src.shape[0], len(QUALITY_KEYS)), np.nan)
            for j, k in enumerate(QUALITY_KEYS):
                if k in keys:
                    quality[:, j] = src[:, keys.index(k)]
        return cls(
            scan_ids=list(meta["scan_ids"]),
            embeddings=tensors["embeddings"],
            slice_embeddings=slices,
            model=meta.get("model") or {},
            statistic=meta.get("statistic", "mean"),
            threshold=meta.get("threshold"),
            threshold_rule=meta.get("threshold_rule", "max_pairwise"),
            quality=quality,
        )


@dataclass(frozen=True)
class ReferenceScore:
    """A scan's score against a reference set.

    Attributes:
        mean_distance: Mean normalised distance to the references (Belton).
        min_distance: Minimum normalised distance (FewSOME).
        statistic: Which of the two drives the score.
        distance: The value of ``statistic``.
        threshold: The threshold used.
        distance_score: Calibrated 0..1 score of the embedding distance alone.
        bad_score: Reported score in 0..1: ``max(distance_score, quality_score)``
            combined with check warnings when given; higher = more likely bad.
        flagged: ``distance > threshold``, ``quality_distance > quality_threshold`` or a
            high-severity warning.
        nearest_reference: scan id of the closest reference.
        quality_distance: Image-quality distance to the references (NaN if not used).
        quality_threshold: Its threshold (NaN if not used).
        quality_score: Its calibrated 0..1 score (NaN if not used).
    """

    mean_distance: float
    min_distance: float
    statistic: str
    distance: float
    threshold: float
    distance_score: float
    bad_score: float
    flagged: bool
    nearest_reference: str = ""
    quality_distance: float = math.nan
    quality_threshold: float = math.nan
    quality_score: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "mean_distance": self.mean_distance,
            "min_distance": self.min_distance,
            "statistic": self.statistic,
            "distance": self.distance,
            "threshold": self.threshold,
            "distance_score": self.distance_score,
            "bad_score": self.bad_score,
            "flagged": self.flagged,
            "nearest_reference": self.nearest_reference,
            "quality_distance": self.quality_distance,
            "quality_threshold": self.quality_threshold,
            "quality_score": self.quality_score,
        }


def severity_score(warnings: Sequence[ScanWarning] | None) -> float | None:
    """Return the highest :data:`SEVERITY_SCORE` among ``warnings`` (None if none counts)."""
    best = None
    for w in warnings or ():
        s = SEVERITY_SCORE.get(w.severity)
        if s is not None and (best is None or s > best):
            best = s
    return best


def combine_with_warnings(
    distance_score: float, warnings: Sequence[ScanWarning] | None
) -> tuple[float, bool]:
    """Combine a distance score with check warnings; return ``(bad_score, forced_flag)``.

    ``bad_score = max(distance_score, s + (1 - s) * distance_score)`` where ``s`` is the
    severity score of the worst counting warning (0.9 for ``"high"``); scans without such
    a warning keep their distance score. The second value is True when a warning counted.
    """
    s = severity_score(warnings)
    if s is None:
        return float(distance_score), False
    return float(max(distance_score, s + (1.0 - s) * distance_score)), True


def score_against_references(
    embeddings: np.ndarray,
    reference_set: ReferenceSet,
    statistic: Statistic | None = None,
    threshold: float | None = None,
    warnings: Sequence[Sequence[ScanWarning] | None] | None = None,
    quality: Sequence[Mapping[str, Any] | None] | np.ndarray | None = None,
) -> list[ReferenceScore]:
    """Score scan embeddings against a reference set.

    Args:
        embeddings: ``(N, D)`` (or ``(D,)``) scan-level embeddings.
        reference_set: The known-good set.
        statistic: ``"mean"`` or ``"min"``; default the set's own.
        threshold: Override of the set's threshold.
        warnings: Optional check warnings per scan (same order); see
            :func:`combine_with_warnings`.
        quality: Optional quality metric dicts per scan (same order; None for a scan
            without); used when the set :attr:`~ReferenceSet.has_quality`.

    Returns:
        One :class:`ReferenceScore` per row.
    """
    stat = statistic or reference_set.statistic
    idx = _stat_index(stat)
    z = _as_2d(embeddings)
    if warnings is not None and len(warnings) != z.shape[0]:
        raise ValueError(f"{len(warnings)} warning lists for {z.shape[0]} embeddings")
    d = pairwise_distances(z, reference_set.embeddings)
    mean_d, min_d = d.mean(axis=1), d.min(axis=1)
    nearest = d.argmin(axis=1)
    thr = float(threshold) if threshold is not None else reference_set.effective_threshold(stat)
    dist = (mean_d, min_d)[idx]
    dscore = distance_to_score(dist, thr, reference_set.scale(stat))
    qd = qs = np.full(z.shape[0], np.nan)
    qthr = math.nan
    if quality is not None and len(quality) != z.shape[0]:
        raise ValueError(f"{len(quality)} quality rows for {z.shape[0]} embeddings")
    if quality is not None and reference_set.has_quality:
        qx = quality if isinstance(quality, np.ndarray) else quality_matrix(list(quality))
        rq = reference_set.quality[np.isfinite(reference_set.quality).any(axis=1)]
        qthr, qscale = quality_calibration(rq)
        known = np.isfinite(qx).any(axis=1)
        qd = np.where(known, quality_distances(qx, rq), np.nan)
        qs = np.where(known, distance_to_score(np.nan_to_num(qd), qthr, qscale), np.nan)
    out = []
    for i in range(z.shape[0]):
        ds = float(dscore[i])
        fused = max(ds, float(qs[i])) if np.isfinite(qs[i]) else ds
        bad, forced = combine_with_warnings(fused,
                                            warnings[i] if warnings is not None else None)
        q_flag = bool(np.isfinite(qd[i]) and qd[i] > qthr)
        out.append(
            ReferenceScore(
                mean_distance=float(mean_d[i]),
                min_distance=float(min_d[i]),
                statistic=stat,
                distance=float(dist[i]),
                threshold=thr,
                distance_score=ds,
                bad_score=bad,
                flagged=bool(dist[i] > thr) or q_flag or forced,
                nearest_reference=reference_set.scan_ids[int(nearest[i])],
                quality_distance=float(qd[i]),
                quality_threshold=float(qthr),
                quality_score=float(qs[i]),
            )
        )
    return out


@dataclass(frozen=True)
class SliceScores:
    """Per-slice distances of one volume to the references' slice pool.

    Attributes:
        distances: ``(N,)`` min normalised distance of each slice to the pool.
        bad_scores: ``(N,)`` calibrated 0..1 scores (0.5 at ``threshold``).
        threshold: Largest leave-one-reference-out slice distance inside the pool.
        slice_index: Source slice index of each row.
    """

    distances: np.ndarray
    bad_scores: np.ndarray
    threshold: float
    slice_index: np.ndarray

    def worst(self, k: int = 5) -> list[int]:
        """Source slice indices of the ``k`` farthest slices, worst first."""
        order = np.argsort(-self.distances, kind="stable")[:k]
        return [int(self.slice_index[i]) for i in order]


def slice_scores(
    slice_embeddings: np.ndarray,
    reference_set: ReferenceSet,
    slice_index: np.ndarray | None = None,
) -> SliceScores:
    """Score each slice of a volume by its min distance to the reference slice pool.

    The threshold is the largest distance of a reference slice to the slices of the
    *other* references (so a slice unlike every slice seen in any reference lies above
    it); the logistic scale uses the median of those leave-one-out distances as for
    scan scores.
    """
    pool, _owner = reference_set.slice_pool()
    s = _as_2d(slice_embeddings)
    dist = pairwise_distances(s, pool).min(axis=1)
    thr, scale = reference_set.slice_calibration()
    idx = np.arange(len(s)) if slice_index is None else np.asarray(slice_index)
    return SliceScores(
        distances=dist,
        bad_scores=distance_to_score(dist, thr, scale),
        threshold=thr,
        slice_index=idx,
    )


def suspicious_references(
    reference_set: ReferenceSet, statistic: Statistic | None = None, iqr_factor: float = 1.5
) -> dict[str, ScanWarning]:
    """Find references that are outliers among the references themselves.

    FewSOME notes that reference sets get contaminated. Each reference's leave-one-out
    ``statistic`` (distance to the others) is compared with the others': a reference
    above ``Q3 + iqr_factor * IQR`` (and above 1.25 x the median) gets a
    ``suspicious_reference`` warning. Needs at least 4 references (else empty).

    Returns:
        ``{scan_id: ScanWarning}`` for the suspicious references.
    """
    stat = statistic or reference_set.statistic
    if len(reference_set) < 4:
        return {}
    loo = leave_one_out_distances(reference_set.embeddings)[_stat_index(stat)]
    q1, med, q3 = np.percentile(loo, [25, 50, 75])
    cut = max(q3 + iqr_factor * (q3 - q1), 1.25 * med)
    out = {}
    for sid, v in zip(reference_set.scan_ids, loo, strict=True):
        if v > cut:
            out[sid] = ScanWarning(
                code="suspicious_reference",
                message=(
                    f"reference is far from the other references ({stat} distance "
                    f"{v:.3f} > {cut:.3f}); check it is a good scan"
                ),
                severity="warn",
                value=float(v),
            )
    return out
