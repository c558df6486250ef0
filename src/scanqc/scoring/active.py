"""Active learning: which scan to label next (METHODS.md sections 3 and 4).

Pool-based loop: fit a small classifier (a class-balanced logistic-regression probe on the
frozen encoder embeddings) on the labels so far, score the unlabelled scans, serve the top
ones, retrain after every batch of new labels. The labels can be regions or any classes
the user defines.

Strategies (:data:`STRATEGIES`; higher score = label sooner):

* ``entropy``: ``-sum_c p_c log p_c`` of the probe's probabilities;
* ``margin``: ``-(p_1 - p_2)`` (small gap between the two top classes first);
* ``least_confidence``: ``1 - max_c p_c``;
* ``disagreement``: mutual information of a bootstrap ensemble of probes,
  ``H(mean p) - mean H(p)`` (the classification form of MONAI Label's epistemic score);
* ``margin_diverse``: batch-mode hybrid: the ``3 x batch`` scans of smallest margin, ordered
  by k-center greedy among themselves (uncertain *and* not redundant), then the rest by
  margin;
* ``diversity``: k-center greedy on the embeddings (farthest from everything labelled or
  already picked; the score is that distance when picked);
* ``examine``: EXAMINE (:mod:`scanqc.scoring.valuation`), most representative first; needs
  no labels;
* ``random``: a seeded shuffle.

Uncertainty needs a classifier with at least two classes; with fewer labels the uncertainty
strategies fall back to ``diversity`` (documented cold start), and the result says so.

Everything here is pure and worker-friendly: :func:`compute_ranking` takes ``progress`` and
``cancel``; :class:`LabelNextQueue` only holds state and applies results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanqc.progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)

#: Strategy names, in menu order.
STRATEGIES: tuple[str, ...] = (
    "examine", "entropy", "margin", "least_confidence", "disagreement", "margin_diverse",
    "diversity", "random",
)
#: Strategies that need a classifier.
UNCERTAINTY: frozenset[str] = frozenset({"entropy", "margin", "least_confidence",
                                         "disagreement", "margin_diverse"})
#: ``margin_diverse`` picks each batch by k-center greedy among this many times the batch
#: of the most uncertain scans (at least :data:`DIVERSE_MIN` candidates).
DIVERSE_POOL = 3
DIVERSE_MIN = 30
#: Members of the bootstrap ensemble of ``disagreement``.
ENSEMBLE_SIZE = 5


# -- classifier --------------------------------------------------------------------------


def fit_probe(x: np.ndarray, y: Sequence[str], seed: int = 0, c: float = 1.0) -> Any:
    """Fit a class-balanced multinomial logistic regression on standardised embeddings.

    Features are standardised first (a ``StandardScaler`` in the pipeline): unit-norm
    embeddings differ from each other only slightly, and without scaling the default
    regularisation flattens the probe.

    Args:
        x: Embeddings ``(n, d)`` of the labelled scans.
        y: Their labels (strings).
        seed: Random state.
        c: Inverse regularisation strength.

    Returns:
        A fitted scikit-learn pipeline (``classes_``, ``predict``, ``predict_proba``).

    Raises:
        ValueError: fewer than two classes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray([str(v) for v in y])
    if len(np.unique(y)) < 2:
        raise ValueError("a classifier needs labels of at least two classes")
    clf = make_pipeline(StandardScaler(), LogisticRegression(
        C=c, class_weight="balanced", max_iter=500, random_state=seed))
    clf.fit(np.asarray(x, dtype=np.float64), y)
    return clf


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of probabilities ``(n, k)``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def margin(p: np.ndarray) -> np.ndarray:
    """Negative gap between the two largest probabilities (higher = more uncertain)."""
    p = np.asarray(p, dtype=np.float64)
    if p.shape[1] < 2:
        return np.zeros(p.shape[0])
    top = np.sort(p, axis=1)[:, -2:]
    return -(top[:, 1] - top[:, 0])


def least_confidence(p: np.ndarray) -> np.ndarray:
    """``1 - max p`` per row."""
    return 1.0 - np.asarray(p, dtype=np.float64).max(axis=1)


def mutual_information(ps: np.ndarray) -> np.ndarray:
    """Ensemble disagreement ``H(mean p) - mean H(p)`` for ``ps`` ``(members, n, k)``."""
    ps = np.asarray(ps, dtype=np.float64)
    mean_h = np.mean([entropy(p) for p in ps], axis=0)
    return np.maximum(entropy(ps.mean(axis=0)) - mean_h, 0.0)


def _aligned_proba(clf: Any, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Probabilities of ``clf`` on ``x`` in the column order of ``classes`` (0 if unseen)."""
    p = clf.predict_proba(x)
    out = np.zeros((x.shape[0], len(classes)))
    pos = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(clf.classes_):
        out[:, pos[c]] = p[:, j]
    return out


def ensemble_proba(x_lab: np.ndarray, y_lab: np.ndarray, x: np.ndarray, members: int,
                   seed: int, cancel: CancelToken | None = None) -> np.ndarray:
    """Probabilities ``(members, n, k)`` of probes fit on bootstrap resamples."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y_lab)
    out = []
    for m in range(members):
        check(cancel)
        for _ in range(20):  # a resample must keep two classes
            idx = rng.integers(0, len(y_lab), len(y_lab))
            if len(np.unique(y_lab[idx])) >= 2:
                break
        else:
            idx = np.arange(len(y_lab))
        clf = fit_probe(x_lab[idx], y_lab[idx], seed=seed + m)
        out.append(_aligned_proba(clf, x, classes))
    return np.stack(out)


# -- label-free orders -------------------------------------------------------------------


def k_center_greedy(x: np.ndarray, selected: Sequence[int], candidates: Sequence[int],
                    n: int | None = None, seed: int = 0,
                    cancel: CancelToken | None = None) -> tuple[list[int], list[float]]:
    """Greedy k-center order of ``candidates``: each pick is farthest from all chosen so far.

    Args:
        x: Embeddings ``(N, d)``.
        selected: Already labelled indices (the initial centres; may be empty, then the
            first pick is the candidate closest to the mean, a seeded tie-break).
        candidates: Indices to order.
        n: How many to pick (default: all).
        seed: Breaks exact ties.
        cancel: Checked every 256 picks.

    Returns:
        ``(order, distance of each pick to its nearest centre when picked)``.
    """
    x = np.asarray(x, dtype=np.float64)
    cand = np.asarray(list(candidates), dtype=np.int64)
    n = len(cand) if n is None else min(int(n), len(cand))
    if n == 0:
        return [], []
    xc = x[cand]
    rng = np.random.default_rng(seed)
    jitter = rng.random(len(cand)) * 1e-12
    sel = list(selected)
    if sel:
        mind = np.full(len(cand), np.inf)
        for s in range(0, len(sel), 1024):
            block = x[np.asarray(sel[s:s + 1024])]
            d = ((xc[:, None, :] - block[None, :, :]) ** 2).sum(-1).min(axis=1)
            mind = np.minimum(mind, d)
    else:
        mind = ((xc - x.mean(axis=0)) ** 2).sum(axis=1)
        mind = mind.max() - mind  # first pick: the most central scan
    order: list[int] = []
    dists: list[float] = []
    taken = np.zeros(len(cand), dtype=bool)
    for k in range(n):
        if k % 256 == 0:
            check(cancel)
        score = np.where(taken, -np.inf, mind + jitter)
        j = int(np.argmax(score))
        order.append(int(cand[j]))
        dists.append(float(np.sqrt(max(mind[j], 0.0))) if sel or k else 0.0)
        taken[j] = True
        mind = np.minimum(mind, ((xc - xc[j]) ** 2).sum(axis=1))
        sel.append(int(cand[j]))
    return order, dists


# -- ranking -----------------------------------------------------------------------------


@dataclass
class Ranking:
    """The result of one ranking pass.

    Attributes:
        order: Unlabelled indices, label-first order.
        scores: Score of each index in ``order`` (higher = label sooner).
        strategy: Strategy asked for.
        used: Strategy actually used (``diversity`` on a cold start).
        n_labels: Number of labels the classifier saw.
        classes: Classes of the classifier (empty without one).
        cv_accuracy: Cross-validated accuracy on the labels so far (NaN when not defined).
    """

    order: list[int]
    scores: list[float]
    strategy: str
    used: str
    n_labels: int
    classes: list[str] = field(default_factory=list)
    cv_accuracy: float = float("nan")


def _check_inputs(embeddings: np.ndarray, labelled_idx: Sequence[int],
                  labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, d), got shape {x.shape}")
    lab = np.asarray(list(labelled_idx), dtype=np.int64)
    y = np.asarray([str(v) for v in labels])
    if len(lab) != len(y):
        raise ValueError(f"{len(lab)} labelled indices but {len(y)} labels")
    if len(lab) and (lab.min() < 0 or lab.max() >= len(x)):
        raise ValueError("labelled index out of range")
    return x, lab, y


def compute_ranking(
    embeddings: np.ndarray,
    labelled_idx: Sequence[int],
    labels: Sequence[str],
    strategy: str = "entropy",
    batch_size: int | None = None,
    seed: int = 0,
    cv: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Ranking:
    """Rank the unlabelled scans for labelling (retrains the probe; worker-friendly).

    Args:
        embeddings: ``(N, d)`` one embedding per scan.
        labelled_idx: Indices of labelled scans (duplicates: the last label wins).
        labels: Their labels, same length.
        strategy: One of :data:`STRATEGIES`.
        batch_size: Return only the first ``batch_size`` (default: all unlabelled).
        seed: Seed of ``random``, the ensemble and tie-breaks.
        cv: Also compute the cross-validated accuracy of the probe on the labels.
        progress: ``progress(done, total, message)``.
        cancel: Cancel token.

    Returns:
        A :class:`Ranking`.

    Raises:
        ValueError: unknown strategy, or inconsistent inputs.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    x, lab, y = _check_inputs(embeddings, labelled_idx, labels)
    last = {int(i): v for i, v in zip(lab, y, strict=True)}
    lab = np.asarray(sorted(last), dtype=np.int64)
    y = np.asarray([last[int(i)] for i in lab])
    mask = np.ones(len(x), dtype=bool)
    mask[lab] = False
    unl = np.flatnonzero(mask)
    n_out = len(unl) if batch_size is None else max(0, min(int(batch_size), len(unl)))
    report(progress, 0, 3, f"ranking by {strategy}")
    used = strategy
    classes = sorted(set(y.tolist()))
    if strategy in UNCERTAINTY and len(classes) < 2:
        used = "diversity"
    scores: np.ndarray
    order: list[int]
    if used == "random":
        order = [int(i) for i in np.random.default_rng(seed).permutation(unl)[:n_out]]
        score_list = [float(n_out - k) for k in range(len(order))]
    elif used == "diversity":
        order, score_list = k_center_greedy(x, lab.tolist(), unl.tolist(), n_out, seed, cancel)
    elif used == "examine":
        from scanqc.scoring.valuation import examine

        res = examine(x, method="exact", cancel=cancel)
        scores = res.msv[unl]
        pick = np.argsort(-scores, kind="stable")[:n_out]
        order = [int(unl[j]) for j in pick]
        score_list = [float(scores[j]) for j in pick]
    else:
        check(cancel)
        xl, xu = x[lab], x[unl]
        if used == "disagreement":
            ps = ensemble_proba(xl, y, xu, ENSEMBLE_SIZE, seed, cancel)
            scores = mutual_information(ps)
        else:
            clf = fit_probe(xl, y, seed=seed)
            p = clf.predict_proba(xu) if len(unl) else np.zeros((0, len(classes)))
            scores = {"entropy": entropy, "margin": margin, "margin_diverse": margin,
                      "least_confidence": least_confidence}[used](p)
        pick = np.lexsort((np.random.default_rng(seed).random(len(unl)), -scores))
        if used == "margin_diverse" and len(pick):
            m = max(DIVERSE_MIN, DIVERSE_POOL * (n_out if batch_size is not None else 10))
            head = [int(unl[j]) for j in pick[:m]]
            head, _d = k_center_greedy(x, lab.tolist(), head, None, seed, cancel)
            rank_of = {int(unl[j]): float(scores[j]) for j in pick}
            order = (head + [int(unl[j]) for j in pick[m:]])[:n_out]
            score_list = [rank_of[i] for i in order]
        else:
            pick = pick[:n_out]
            order = [int(unl[j]) for j in pick]
            score_list = [float(scores[j]) for j in pick]
    report(progress, 2, 3, "cross-validating" if cv else "done")
    acc = cross_val_accuracy(x[lab], y, seed=seed, cancel=cancel) if cv else float("nan")
    report(progress, 3, 3, "done")
    return Ranking(order=order, scores=score_list, strategy=strategy, used=used,
                   n_labels=len(lab), classes=classes if len(classes) >= 2 else [],
                   cv_accuracy=acc)


def rank_unlabelled(
    embeddings: np.ndarray,
    labelled_idx: Sequence[int],
    labels: Sequence[str],
    strategy: str = "entropy",
    batch_size: int | None = None,
    seed: int = 0,
) -> list[int]:
    """Indices of unlabelled scans, label-first order (see :func:`compute_ranking`)."""
    return compute_ranking(embeddings, labelled_idx, labels, strategy, batch_size, seed).order


def cross_val_accuracy(x: np.ndarray, y: Sequence[str], folds: int = 5, seed: int = 0,
                       cancel: CancelToken | None = None) -> float:
    """Stratified k-fold accuracy of the probe on labelled data (NaN if not defined).

    Uses ``min(folds, smallest class count)`` folds; classes with one example stay in
    every training fold. NaN with fewer than two classes or four labels.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray([str(v) for v in y])
    x = np.asarray(x, dtype=np.float64)
    values, counts = np.unique(y, return_counts=True)
    if len(values) < 2 or len(y) < 4:
        return float("nan")
    single = set(values[counts < 2].tolist())
    keep = np.array([v not in single for v in y])
    xs, ys = x[keep], y[keep]
    if len(np.unique(ys)) < 2:
        return float("nan")
    k = int(min(folds, np.unique(ys, return_counts=True)[1].min()))
    if k < 2:
        return float("nan")
    extra_x, extra_y = x[~keep], y[~keep]
    correct = 0
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for tr, te in skf.split(xs, ys):
        check(cancel)
        clf = fit_probe(np.concatenate([xs[tr], extra_x]),
                        np.concatenate([ys[tr], extra_y]), seed=seed)
        correct += int((clf.predict(xs[te]) == ys[te]).sum())
    return correct / len(ys)


# -- the queue ---------------------------------------------------------------------------


class LabelNextQueue:
    """Serves the scans to label one at a time; asks for a recompute after each batch.

    The queue holds no model: a caller (the widget's worker, the CLI, a test) runs
    :meth:`job` (a pure function call) and hands the :class:`Ranking` to :meth:`apply`.
    With ``auto=True`` (no GUI) :meth:`add_label` runs the recompute itself.

    Args:
        embeddings: ``(N, d)``.
        ids: One id per row (scan ids); default ``"0".."N-1"``.
        strategy: One of :data:`STRATEGIES`.
        retrain_every: Recompute after this many new labels.
        seed: Seed of the ranking.
        auto: Recompute inside :meth:`add_label` / :meth:`next` when due.
    """

    def __init__(self, embeddings: np.ndarray, ids: Sequence[str] | None = None,
                 strategy: str = "entropy", retrain_every: int = 10, seed: int = 0,
                 auto: bool = True) -> None:
        self.embeddings = np.asarray(embeddings, dtype=np.float64)
        n = len(self.embeddings)
        self.ids = [str(i) for i in (ids if ids is not None else range(n))]
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} embeddings")
        self._pos = {sid: i for i, sid in enumerate(self.ids)}
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}")
        self.strategy = strategy
        self.retrain_every = max(1, int(retrain_every))
        self.seed = seed
        self.auto = auto
        self.labels: dict[int, str] = {}
        self.ranking: Ranking | None = None
        self.history: list[tuple[int, float]] = []  # (n labels, cv accuracy)
        self._queue: list[int] = []
        self._served: set[int] = set()
        self._new_since = 0
        self.recomputes = 0

    # state ----------------------------------------------------------------------------

    @property
    def due(self) -> bool:
        """True when the ranking should be recomputed."""
        return self.ranking is None or self._new_since >= self.retrain_every

    def set_strategy(self, strategy: str) -> None:
        """Change the strategy (the next :meth:`next` recomputes)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}")
        if strategy != self.strategy:
            self.strategy = strategy
            self.ranking = None

    def set_labels(self, labels: dict[str, str]) -> None:
        """Replace all labels (``{id: label}``; unknown ids and empty labels ignored)."""
        new = {self._pos[k]: str(v) for k, v in labels.items() if k in self._pos and v}
        added = len(set(new) - set(self.labels)) + sum(
            1 for k, v in new.items() if k in self.labels and self.labels[k] != v)
        self.labels = new
        self._new_since += added

    def add_label(self, scan_id: str, label: str) -> None:
        """Record a label; recompute when a batch is complete and ``auto``."""
        i = self._pos.get(str(scan_id))
        if i is None or not label:
            return
        if self.labels.get(i) != str(label):
            self.labels[i] = str(label)
            self._new_since += 1
        if self.auto and self.due:
            self.recompute()

    def job(self) -> tuple[Callable[..., Ranking], tuple, dict[str, Any]]:
        """``(fn, args, kwargs)`` of the recompute, for a worker: ``fn(*args, **kwargs)``."""
        idx = sorted(self.labels)
        return (compute_ranking,
                (self.embeddings.copy(), idx, [self.labels[i] for i in idx]),
                {"strategy": self.strategy, "seed": self.seed, "cv": True})

    def recompute(self, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> Ranking:
        """Recompute synchronously and apply."""
        fn, args, kw = self.job()
        result = fn(*args, progress=progress, cancel=cancel, **kw)
        self.apply(result)
        return result

    def apply(self, ranking: Ranking) -> None:
        """Install a new ranking (labels added since the job started stay excluded)."""
        self.ranking = ranking
        self._queue = [i for i in ranking.order if i not in self.labels]
        self._served.clear()
        self._new_since = max(0, len(self.labels) - ranking.n_labels)
        self.recomputes += 1
        if ranking.n_labels and np.isfinite(ranking.cv_accuracy):
            self.history = [h for h in self.history if h[0] != ranking.n_labels]
            self.history.append((ranking.n_labels, float(ranking.cv_accuracy)))
            self.history.sort()

    def next(self) -> str | None:
        """The id of the next scan to label (``None`` when all are labelled or served).

        A served scan is not served again until the next recompute, so skipping is
        possible.
        """
        if self.auto and self.due:
            self.recompute()
        while self._queue:
            i = self._queue.pop(0)
            if i not in self.labels and i not in self._served:
                self._served.add(i)
                return self.ids[i]
        return None

    def peek(self, n: int = 10) -> list[str]:
        """The ids of the next ``n`` scans without serving them."""
        out = [i for i in self._queue if i not in self.labels and i not in self._served]
        return [self.ids[i] for i in out[:n]]


# -- embeddings of files -------------------------------------------------------------------


def embed_entries(
    entries: Sequence[Any],
    model: Any = None,
    max_slices: int = 16,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Embed discovered scans with the encoder (torch imported here, not at module level).

    Args:
        entries: :class:`~scanqc.io.scan.ScanEntry` objects (non-ok ones are skipped).
        model: Encoder; default: the bundled one.
        max_slices: Slices per volume.
        progress: Called after each scan.
        cancel: Checked before each scan.

    Returns:
        ``(scan_ids embedded, embeddings (n, D), {scan_id: one-line error})``.
    """
    from scanqc.io.load import load_scan
    from scanqc.io.scan import ScanReadError
    from scanqc.models.encoder import embed_scan, load_encoder

    if model is None:
        model = load_encoder("encoder", "cpu")
    ids: list[str] = []
    vecs: list[np.ndarray] = []
    errors: dict[str, str] = {}
    total = len(entries)
    for k, entry in enumerate(entries):
        check(cancel)
        report(progress, k, total, getattr(entry, "name", "") or entry.path)
        if entry.status != "ok":
            errors[entry.scan_id] = entry.error or entry.status
            continue
        try:
            scan = load_scan(entry)
            emb = embed_scan(scan, model=model, max_slices=max_slices)
        except ScanReadError as exc:
            errors[entry.scan_id] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad scan never stops the batch
            errors[entry.scan_id] = f"{entry.path}: {type(exc).__name__}: " + \
                " ".join(str(exc).split())
            continue
        ids.append(entry.scan_id)
        vecs.append(emb.vector)
    report(progress, total, total, "embedded")
    dim = vecs[0].shape[0] if vecs else 0
    return ids, (np.stack(vecs) if vecs else np.zeros((0, dim), dtype=np.float32)), errors
