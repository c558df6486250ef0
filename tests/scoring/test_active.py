"""Active learning: strategies, the label-next queue, cross-validated accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.progress import Cancelled, CancelToken
from scanqc.scoring.active import (
    STRATEGIES,
    LabelNextQueue,
    compute_ranking,
    cross_val_accuracy,
    entropy,
    k_center_greedy,
    least_confidence,
    margin,
    mutual_information,
    rank_unlabelled,
)


def _blobs(rng: np.random.Generator, per: int = 30, k: int = 3, d: int = 8, sep: float = 4.0):
    centres = rng.normal(size=(k, d)) * sep
    x = np.concatenate([c + rng.normal(size=(per, d)) for c in centres])
    y = np.repeat([f"c{i}" for i in range(k)], per)
    return x, y


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_return_permutations_of_the_unlabelled(rng, strategy) -> None:
    x, y = _blobs(rng)
    labelled = [0, 1, 30, 31, 60, 61]
    order = rank_unlabelled(x, labelled, y[labelled].tolist(), strategy, seed=3)
    assert sorted(order) == sorted(set(range(len(x))) - set(labelled))
    top = rank_unlabelled(x, labelled, y[labelled].tolist(), strategy, batch_size=5, seed=3)
    assert len(top) == 5 and not set(top) & set(labelled)
    if strategy != "random":  # deterministic given the seed
        assert top == order[:5]


def test_uncertainty_measures() -> None:
    p = np.array([[0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.5, 0.5, 0.0]])
    assert np.argmax(entropy(p)) == 1
    assert np.argmax(least_confidence(p)) == 1
    assert np.argmax(margin(p)) == 2  # the two top classes tie
    agree = np.stack([p[:1]] * 4)
    disagree = np.stack([[[1.0, 0, 0]], [[0, 1.0, 0]], [[0, 0, 1.0]], [[1.0, 0, 0]]])
    assert mutual_information(agree)[0] == pytest.approx(0, abs=1e-9)
    assert mutual_information(disagree)[0] > 0.9


def test_entropy_picks_the_point_between_classes(rng) -> None:
    x = np.concatenate([rng.normal(size=(40, 2)) * 0.7 + [-4, 0],
                        rng.normal(size=(40, 2)) * 0.7 + [4, 0], [[0.0, 0.0]]])
    y = np.repeat(["left", "right", "?"], [40, 40, 1])
    labelled = list(range(0, 40, 4)) + list(range(40, 80, 4))
    order = rank_unlabelled(x, labelled, y[labelled].tolist(), "entropy")
    assert order[0] == 80
    # and in general: the order is by decreasing entropy of the probe's probabilities
    from scanqc.scoring.active import fit_probe

    unl = [i for i in range(len(x)) if i not in labelled]
    h = entropy(fit_probe(x[labelled], y[labelled]).predict_proba(x[unl]))
    assert np.all(np.diff(h[[unl.index(i) for i in order]]) <= 1e-12)
    for s in ("margin", "least_confidence"):
        order = rank_unlabelled(x, labelled, y[labelled].tolist(), s)
        assert order.index(80) < 5, s


def test_cold_start_falls_back_to_diversity(rng) -> None:
    x, y = _blobs(rng)
    r = compute_ranking(x, [0, 1], ["c0", "c0"], "entropy")
    assert r.used == "diversity" and r.classes == []
    assert compute_ranking(x, [0, 30], ["c0", "c1"], "entropy").used == "entropy"


def test_k_center_greedy_covers_every_cluster_first(rng) -> None:
    x, _ = _blobs(rng, per=20, k=4, sep=10.0)
    order, dist = k_center_greedy(x, [0], list(range(1, 80)), n=3)
    assert {i // 20 for i in order} == {1, 2, 3}
    assert dist == sorted(dist, reverse=True)


def test_bad_inputs(rng) -> None:
    x, y = _blobs(rng)
    with pytest.raises(ValueError, match="unknown strategy"):
        rank_unlabelled(x, [], [], "bald")
    with pytest.raises(ValueError, match="labels"):
        rank_unlabelled(x, [0, 1], ["a"], "entropy")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        compute_ranking(x, [0, 30], ["c0", "c1"], "disagreement", cancel=token)


def test_cross_val_accuracy(rng) -> None:
    x, y = _blobs(rng, per=20, sep=6.0)
    assert cross_val_accuracy(x, y) > 0.9
    noise = rng.normal(size=x.shape)
    assert cross_val_accuracy(noise, y) < 0.7
    assert np.isnan(cross_val_accuracy(x[:5], y[:5]))  # one class


def test_queue_serves_and_recomputes_after_a_batch(rng) -> None:
    x, y = _blobs(rng, per=30)
    ids = [f"s{i}" for i in range(len(x))]
    q = LabelNextQueue(x, ids, strategy="entropy", retrain_every=3)
    first = q.next()
    assert first is not None and q.recomputes == 1
    assert q.ranking is not None and q.ranking.used == "diversity"  # no labels yet
    served = {first}
    truth = dict(zip(ids, y, strict=True))
    for _ in range(2):
        q.add_label(served_id := q.next(), truth[served_id])
        served.add(served_id)
    assert q.recomputes == 1  # two new labels: not due yet
    nxt = q.next()
    assert nxt not in served
    q.add_label(nxt, truth[nxt])
    assert q.recomputes == 2 and q.ranking.n_labels == 3
    assert all(q.ids[i] not in {nxt} for i in q._queue)
    # label until the classifier has two classes; entropy then really is used
    while len(set(q.labels.values())) < 2 or q.due:
        sid = q.next()
        q.add_label(sid, truth[sid])
    assert q.ranking.used == "entropy"
    assert q.peek(5) and not set(q.peek(5)) & {q.ids[i] for i in q.labels}


def test_queue_without_auto_and_strategy_change(rng) -> None:
    x, y = _blobs(rng)
    q = LabelNextQueue(x, strategy="random", retrain_every=2, auto=False)
    assert q.due and q.next() is None  # nothing computed yet
    fn, args, kw = q.job()
    q.apply(fn(*args, **kw))
    assert not q.due and q.next() is not None
    q.set_labels({"0": "c0", "40": "c1"})
    assert q.due
    q.set_strategy("margin")
    fn, args, kw = q.job()
    r = fn(*args, **kw)
    assert r.used == "margin" and r.n_labels == 2
    q.apply(r)
    assert "0" not in q.peek(100) and "40" not in q.peek(100)


def test_margin_diverse_takes_uncertain_but_spread_scans(rng) -> None:
    from scanqc.scoring.active import DIVERSE_MIN, fit_probe

    x, y = _blobs(rng, per=40, k=3, d=4, sep=2.0)
    labelled = [0, 1, 40, 41, 80, 81]
    batch = rank_unlabelled(x, labelled, y[labelled].tolist(), "margin_diverse", batch_size=8)
    unl = [i for i in range(len(x)) if i not in labelled]
    m = margin(fit_probe(x[labelled], y[labelled]).predict_proba(x[unl]))
    top = {unl[j] for j in np.argsort(-m, kind="stable")[:DIVERSE_MIN]}
    assert set(batch) <= top
    plain = rank_unlabelled(x, labelled, y[labelled].tolist(), "margin", batch_size=8)

    def spread(idx):
        d = np.linalg.norm(x[idx][:, None] - x[idx][None], axis=-1)
        return np.min(d + np.eye(len(idx)) * 1e9)

    assert spread(batch) >= spread(plain)
