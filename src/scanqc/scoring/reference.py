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
* **Combined score.** What scanqc reports: :func:`combine_with_warnings` lifts the score of
  a scan that has a ``"high"`` severity check warning to ``0.9 + 0.1 * distance_score``
  (flagged), i.e. ``max(distance score, severity score)`` with ties between warned scans
  broken by the distance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scanqc.io.scan import ScanWarning

Statistic = Literal["mean", "min"]
ThresholdRule = Literal["max_pairwise", "loo"]

#: Score given to a scan with a warning of this severity before the distance tie-break.
SEVERITY_SCORE: dict[str, float] = {"high": 0.9}
_FORMAT = "scanqc-reference-set/1"
_META_KEY = "scanqc_reference_set"
_MEDIAN_REFERENCE_SCORE = 0.1  # bad_score of the median reference (leave-one-out)


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
    """

    scan_ids: list[str]
    embeddings: np.ndarray
    slice_embeddings: list[np.ndarray] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    statistic: Statistic = "mean"
    threshold: float | None = None
    threshold_rule: ThresholdRule = "max_pairwise"

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
    ) -> ReferenceSet:
        """Build a reference set from scan-level (and optionally slice) embeddings."""
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
        meta = {
            "format": _FORMAT,
            "scan_ids": self.scan_ids,
            "model": self.model,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "has_slices": bool(self.slice_embeddings),
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
        return cls(
            scan_ids=list(meta["scan_ids"]),
            embeddings=tensors["embeddings"],
            slice_embeddings=slices,
            model=meta.get("model") or {},
            statistic=meta.get("statistic", "mean"),
            threshold=meta.get("threshold"),
            threshold_rule=meta.get("threshold_rule", "max_pairwise"),
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
        distance_score: Calibrated 0..1 score of the distance alone.
        bad_score: Reported score in 0..1 (``distance_score`` combined with check
            warnings when given), higher = more likely bad.
        flagged: ``distance > threshold`` or a high-severity warning.
        nearest_reference: scan id of the closest reference.
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
) -> list[ReferenceScore]:
    """Score scan embeddings against a reference set.

    Args:
        embeddings: ``(N, D)`` (or ``(D,)``) scan-level embeddings.
        reference_set: The known-good set.
        statistic: ``"mean"`` or ``"min"``; default the set's own.
        threshold: Override of the set's threshold.
        warnings: Optional check warnings per scan (same order); see
            :func:`combine_with_warnings`.

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
    out = []
    for i in range(z.shape[0]):
        ds = float(dscore[i])
        bad, forced = combine_with_warnings(ds, warnings[i] if warnings is not None else None)
        out.append(
            ReferenceScore(
                mean_distance=float(mean_d[i]),
                min_distance=float(min_d[i]),
                statistic=stat,
                distance=float(dist[i]),
                threshold=thr,
                distance_score=ds,
                bad_score=bad,
                flagged=bool(dist[i] > thr) or forced,
                nearest_reference=reference_set.scan_ids[int(nearest[i])],
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
    pool, owner = reference_set.slice_pool()
    s = _as_2d(slice_embeddings)
    dist = pairwise_distances(s, pool).min(axis=1)
    pp = pairwise_distances(pool, pool)
    pp[owner[:, None] == owner[None, :]] = np.inf
    loo = pp.min(axis=1)
    loo = loo[np.isfinite(loo)]
    thr = float(loo.max())
    gap = max(thr - float(np.median(loo)), 0.05 * thr, 1e-12)
    scale = gap / math.log((1 - _MEDIAN_REFERENCE_SCORE) / _MEDIAN_REFERENCE_SCORE)
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
