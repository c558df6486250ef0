"""Region probe: training, safetensors round trip, few-label adaptation, user classes."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scanqc.models import region_probe as rp  # noqa: E402
from scanqc.models.weights import ModelLoadError  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny full-batch problems: threads only add contention on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _clusters(classes, n_per, dim=32, noise=0.15, seed=0, centers=None):
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = rng.normal(size=(len(classes), dim))
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.concatenate([c + noise * rng.normal(size=(n_per, dim)) for c in centers])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = [c for c in classes for _ in range(n_per)]
    return x.astype(np.float32), y, centers


def test_label_map_covers_manifest_labels():
    for fine in ("knee", "hand", "wrist", "shoulder", "hip", "head_neck", "cervical_spine",
                 "lumbar_spine", "upper_abdomen", "abdomen_pelvis",
                 "lower_chest_upper_abdomen", "heart", "none", "nonhuman", "trunk"):
        assert rp.map_label(fine) in (*rp.CLASSES, None), fine
    assert rp.map_label("knee") == "lower_limb"
    assert rp.map_label("Wrist") == "upper_limb"
    assert rp.map_label("none") == "non_anatomical"
    assert rp.map_label("nonhuman") is None
    assert rp.map_label("Hip Implant") == "hip_implant"  # a user class is kept


def test_train_predict_and_unknown():
    classes = ["head", "chest", "upper_limb"]
    x, y, centers = _clusters(classes, 30)
    probe = rp.train_probe(x, y, epochs=200)
    xt, yt, _ = _clusters(classes, 10, seed=1, centers=centers)
    names, conf = probe.predict(xt)
    assert np.mean([a == b for a, b in zip(names, yt, strict=True)]) > 0.95
    # classes without examples are never predicted
    p = probe.predict_proba(xt)
    assert p[:, probe.classes.index("breast")].max() < 0.01
    probe.threshold = 0.999
    names, _ = probe.predict(xt)
    assert rp.UNKNOWN in names
    with pytest.raises(ValueError, match="dimension"):
        probe.predict_proba(np.zeros((1, 5), np.float32))


def test_safetensors_round_trip(tmp_path):
    x, y, _ = _clusters(["head", "chest"], 20)
    probe = rp.train_probe(x, y, hidden=8, epochs=50)
    probe.threshold = 0.42
    probe.add_class("implant")
    meta = rp.save_probe(probe, tmp_path / "region", {"note": "test"})
    assert (tmp_path / "region" / "model.safetensors").read_bytes()[:8] != b"\x80\x04"  # no pickle
    loaded = rp.load_probe(tmp_path / "region")
    assert loaded.classes == probe.classes and loaded.threshold == pytest.approx(0.42)
    assert loaded.metadata["note"] == "test" and meta["sha256"]
    np.testing.assert_allclose(loaded.predict_proba(x), probe.predict_proba(x), atol=1e-6)
    # a corrupted weights file is refused with a one-line error
    wpath = tmp_path / "region" / "model.safetensors"
    wpath.write_bytes(wpath.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        rp.load_probe(tmp_path / "region")


def test_adapt_five_labels_per_class():
    classes = ["head", "chest", "abdomen", "pelvis", "upper_limb", "lower_limb"]
    x5, y5, centers = _clusters(classes, 5, seed=3)
    fresh = rp.RegionProbe(x5.shape[1])
    xt, yt, _ = _clusters(classes, 20, seed=4, centers=centers)
    before = np.mean([a == b for a, b in zip(fresh.predict(xt)[0], yt, strict=True)])
    adapted = rp.adapt(fresh, x5, y5)
    after = np.mean([a == b for a, b in zip(adapted.predict(xt)[0], yt, strict=True)])
    assert after >= 0.9 > before
    assert fresh is not adapted


def test_adapt_adds_user_class_and_keeps_old_ones():
    base = ["head", "chest", "upper_limb"]
    x, y, centers = _clusters(base + ["hip_implant"], 30, seed=5)
    old_rows = [i for i, lab in enumerate(y) if lab != "hip_implant"]
    probe = rp.train_probe(x[old_rows], [y[i] for i in old_rows], epochs=200)
    assert "hip_implant" not in probe.classes
    n_before = len(probe.classes)
    # user labels: 5 of the new class and a few of one old class
    new_rows = [i for i, lab in enumerate(y) if lab == "hip_implant"][:5]
    chest_rows = [i for i, lab in enumerate(y) if lab == "chest"][:3]
    rows = new_rows + chest_rows
    adapted = rp.adapt(probe, x[rows], ["Hip implant"] * 5 + ["chest"] * 3)
    assert len(adapted.classes) == n_before + 1 and adapted.classes[-1] == "hip_implant"
    xt, yt, _ = _clusters(base + ["hip_implant"], 10, seed=6, centers=centers)
    pred = adapted.predict(xt)[0]
    acc = np.mean([a == b for a, b in zip(pred, yt, strict=True)])
    assert acc >= 0.9
    assert sum(p == "head" for p in pred) >= 8  # an unlabelled old class still works


def test_add_class_does_not_change_predictions():
    x, y, _ = _clusters(["head", "chest"], 20)
    probe = rp.train_probe(x, y, epochs=100)
    p0 = probe.predict(x)[0]
    probe.add_class("phantom_x")
    assert probe.predict(x)[0] == p0


def test_calibrate_threshold_bounds():
    x, y, centers = _clusters(["head", "chest"], 20)
    probe = rp.train_probe(x, y, epochs=100)
    thr = rp.calibrate_threshold(probe, x, y)
    assert 0.3 <= thr <= 0.9 and probe.threshold == thr


def test_grouped_split_keeps_groups_apart():
    labels = [c for c in ("a", "b", "c") for _ in range(40)]
    groups = [f"{lab}{i // 2}" for i, lab in enumerate(labels)]  # two scans per patient
    tr, te = rp.grouped_split(labels, groups, 0.25, seed=0)
    assert set(tr).isdisjoint(te) and len(tr) + len(te) == len(labels)
    assert {groups[i] for i in tr}.isdisjoint({groups[i] for i in te})
    assert {labels[i] for i in te} == {"a", "b", "c"}
    assert 0.15 < len(te) / len(labels) < 0.35


def test_evaluate_confusion():
    res = rp.evaluate(["a", "b"], np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]),
                      ["a", "b", "b"])
    assert res["accuracy"] == pytest.approx(2 / 3)
    assert res["confusion"] == [[1, 0], [1, 1]]
    assert res["per_class"]["b"] == {"n": 2, "recall": 0.5}
    assert "| b | 1 | 1 | 2 | 0.50 |" in rp.confusion_markdown(res)


def test_synthetic_non_anatomical():
    s = rp.synthetic_non_anatomical(16, size=32, seed=1)
    assert s.shape == (16, 32, 32) and s.dtype == np.float32
    assert s.min() >= 0 and s.max() <= 1
    assert len({round(float(v.std()), 3) for v in s}) > 4  # varied patterns


def test_region_samples_licences(shared_data):
    shipped = rp.region_samples(shared_data, permissive_only=True)
    every = rp.region_samples(shared_data, permissive_only=False)
    assert shipped and len(every) > len(shipped)
    assert all(s.permissive for s in shipped)
    assert all(s.region in rp.CLASSES for s in every)
    srcs = {s.source for s in shipped}
    assert not any("KneeOA" in s or "CADMA" in s or "bone-age" in s for s in srcs)
    # region_xr_v1 groups are the labels.csv patient/study ids (the file when empty)
    with open(shared_data / "region_xr_v1" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = {r["patient_or_study_id"] for r in rows if r["patient_or_study_id"]}
    xr = [s for s in every if s.source.startswith("region_xr_v1")]
    assert all(s.group.split(":", 1)[1] in ids | {os.path.basename(s.path)} for s in xr)
    by_group = {}
    for s in xr:
        by_group.setdefault(s.group, set()).add(s.region)
    assert max(len(v) for v in by_group.values()) <= 2
    assert len(by_group) > 300


def test_slice_annotations_and_per_row_labels():
    s = rp.RegionSample("x.nii.gz", "abdomen", "g", "set", "Apache-2.0", True, "abdomen_pelvis",
                        ((0.0, 0.4, "pelvis"), (0.5, 1.0, "abdomen")))
    assert s.slice_labels([0.0, 0.3, 0.45, 0.6, 1.0]) == ["pelvis", "pelvis", None, "abdomen",
                                                          "abdomen"]
    plain = rp.RegionSample("y.png", "chest", "g2", "set", "CC BY 4.0", True, "chest")
    assert plain.slice_labels([0.5]) == ["chest"]
    e = np.arange(10, dtype=np.float32).reshape(5, 2)
    x, y = rp.stack_slices([e, e[:1]], [s.slice_labels([0.0, 0.3, 0.45, 0.6, 1.0]), "chest"],
                           [0, 1])
    assert y == ["pelvis", "pelvis", "abdomen", "abdomen", "chest"]
    np.testing.assert_array_equal(x[2], e[3])  # the unlabelled boundary row is left out
    with pytest.raises(ValueError, match="labels"):
        rp.stack_slices([e], [["chest"]], [0])
    # files of one subject share a split group
    a = rp.subject_group("totalsegmentator_examples",
                         "totalsegmentator_examples/example_ct.nii.gz")
    b = rp.subject_group("totalsegmentator_examples",
                         "totalsegmentator_examples/example_ct_sm.nii.gz")
    c = rp.subject_group("totalsegmentator_examples",
                         "totalsegmentator_examples/example_mr_sm.nii.gz")
    assert a == b != c


def test_annotated_volume_in_region_samples(shared_data):
    samples = {os.path.relpath(s.path, shared_data): s
               for s in rp.region_samples(shared_data, permissive_only=True)}
    ct = samples["totalsegmentator_examples/example_ct.nii.gz"]
    assert ct.spans and {c for _, _, c in ct.spans} == {"pelvis", "abdomen"}
    _, pos = rp.sample_slices(ct.path, max_slices=12, return_positions=True)
    labs = ct.slice_labels(pos)
    assert labs[0] == "pelvis" and labs[-1] == "abdomen"  # axis 0 runs feet to head
    assert all(0.0 <= p <= 1.0 for p in pos) and list(pos) == sorted(pos)
