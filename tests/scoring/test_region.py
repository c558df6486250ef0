"""Region prediction per scan: slice ranges, header mismatch, cleanlab ranking, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scanqc.io.scan import Scan
from scanqc.scoring.region import rank_region_issues, slice_ranges

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_encoder():
    from scanqc.models.encoder import SliceEncoder

    torch.manual_seed(0)
    return SliceEncoder(widths=(4, 8, 8), deep_stages=1).eval()


def _fixed_probe(in_dim, region="chest", logit=5.0):
    """A probe that ignores its input and answers ``region`` (softmax of the biases)."""
    from scanqc.models.region_probe import RegionProbe

    probe = RegionProbe(in_dim, threshold=0.5)
    with torch.no_grad():
        probe.head.weight.zero_()
        probe.head.bias.zero_()
        probe.head.bias[probe.classes.index(region)] = logit
    return probe


def _image(header=None):
    rng = np.random.default_rng(0)
    return Scan(rng.random((48, 40)).astype(np.float32), (1.0, 1.0), np.eye(4), "image",
                modality="CR", metadata=dict(header or {}), name="x.png")


# ----------------------------------------------------------------- slice ranges


def test_slice_ranges_ordered_and_cover_all():
    idx = np.arange(0, 100, 10)
    labs = ["chest"] * 3 + ["abdomen"] * 4 + ["pelvis"] * 3
    out = slice_ranges(idx, labs, n_slices=100)
    assert [r for _, r in out] == ["chest", "abdomen", "pelvis"]
    assert out[0][0] == (0, 29) and out[1][0] == (30, 69) and out[2][0] == (70, 99)


def test_slice_ranges_smooth_single_outliers_and_short_runs():
    labs = ["head"] * 5 + ["chest"] + ["head"] * 2 + ["neck"] * 6
    out = slice_ranges(range(len(labs)), labs, n_slices=len(labs))
    assert [r for _, r in out] == ["head", "neck"]
    assert out[0][0][0] == 0 and out[-1][0][1] == len(labs) - 1
    # contiguous
    assert all(out[k][0][1] + 1 == out[k + 1][0][0] for k in range(len(out) - 1))
    # unsorted input is sorted; a one-slice scan gives one range
    assert slice_ranges([5], ["head"], n_slices=12) == [((0, 11), "head")]
    assert slice_ranges([], []) == []


# ----------------------------------------------------------------- predict_region


def test_mismatch_only_when_confident_and_header_disagrees():
    from scanqc.scoring.region import predict_region

    enc = _tiny_encoder()
    sure = _fixed_probe(enc.embed_dim, "chest", 5.0)  # p ~ 0.94
    pred = predict_region(_image({"BodyPartExamined": "KNEE"}), enc, sure)
    assert pred.region == "chest" and pred.confidence > 0.9
    assert pred.mismatch and pred.header_region == "lower limb"
    assert pred.warnings[0].code == "region_header_mismatch"
    assert pred.per_slice == [((0, 0), "chest")]
    # header agrees, or says nothing: no warning
    assert not predict_region(_image({"BodyPartExamined": "CHEST"}), enc, sure).mismatch
    assert not predict_region(_image({}), enc, sure).mismatch
    # low confidence: unknown and no warning
    unsure = _fixed_probe(enc.embed_dim, "chest", 1.0)  # p ~ 0.21
    pred = predict_region(_image({"BodyPartExamined": "KNEE"}), enc, unsure)
    assert pred.region == "unknown" and not pred.mismatch and not pred.warnings
    cols = pred.columns()
    assert set(cols) >= {"region", "region_confidence", "region_coverage", "header_region",
                         "region_mismatch"}


def test_volume_per_slice_covers_every_slice():
    from scanqc.scoring.region import predict_region

    enc = _tiny_encoder()
    vol = np.random.default_rng(1).random((30, 32, 32)).astype(np.float32)
    scan = Scan(vol, (2.0, 1.0, 1.0), np.eye(4), "volume", modality="CT",
                metadata={"StudyDescription": "CT ABDOMEN"})
    pred = predict_region(scan, enc, _fixed_probe(enc.embed_dim, "abdomen", 6.0),
                          max_slices=10)
    assert pred.region == "abdomen" and not pred.mismatch
    assert pred.per_slice == [((0, 29), "abdomen")] and pred.coverage == ["abdomen"]
    assert abs(sum(pred.probs.values()) - 1) < 1e-5


def test_volume_agrees_when_a_covered_part_matches_header():
    from scanqc.scoring.region import _header_warnings

    scan = Scan(np.zeros((4, 4, 4)), (1, 1, 1), np.eye(4), "volume",
                metadata={"BodyPartExamined": "PELVIS"})
    assert _header_warnings(scan, "chest", 0.95, [("chest", 0.95)], 0.7)
    assert not _header_warnings(scan, "chest", 0.95, [("chest", 0.95), ("pelvis", 0.9)], 0.7)
    # a user class never gives a header mismatch
    assert not _header_warnings(scan, "hip_implant", 0.99, [], 0.7)


# ----------------------------------------------------------------- cleanlab ranking


def test_rank_region_issues_puts_wrong_label_first():
    classes = ["head", "chest", "upper_limb"]
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9],
                      [0.85, 0.1, 0.05], [0.2, 0.7, 0.1]])
    labels = ["head", "chest", "upper_limb", "upper_limb", "chest"]  # row 3 is mislabelled
    issues = rank_region_issues(labels, probs, classes)
    assert issues[0].index == 3 and issues[0].predicted == "head"
    assert issues[0].quality < issues[-1].quality
    assert [i.index for i in rank_region_issues(["x", "head"], probs[:2], classes)] == [1]
    by_index = rank_region_issues([0, 1, 2, 2, 1], probs)  # integer labels, no names
    assert by_index[0].index == 3 and by_index[0].predicted == "0"


# ----------------------------------------------------------------- CLI


def test_cli_region_predict_tiny_file(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    from scanqc.cli.main import main
    from scanqc.models.region_probe import save_probe
    from scanqc.models.weights import save_model

    enc = _tiny_encoder()
    save_model(enc, tmp_path / "enc", {"name": "encoder", "architecture": {
        "class": "SliceEncoder", "kwargs": enc.config}})
    save_probe(_fixed_probe(enc.embed_dim, "head", 6.0), tmp_path / "probe")
    vol = np.random.default_rng(2).random((16, 20, 12)).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "tiny.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    rc = main(["region", "predict", str(tmp_path / "tiny.nii.gz"), str(tmp_path / "broken.nii.gz"),
               "--encoder", str(tmp_path / "enc"), "--probe", str(tmp_path / "probe"),
               "--json"])
    out = capsys.readouterr()
    assert rc == 0
    rows = [json.loads(line) for line in out.out.splitlines() if line.strip()]
    assert len(rows) == 1 and rows[0]["region"] == "head"
    assert rows[0]["region_coverage"].startswith("head 0-")
    assert "broken.nii.gz" in out.err and len(out.err.strip().splitlines()) == 1
    # missing probe: one-line error, exit code 2
    rc = main(["region", "predict", str(tmp_path / "tiny.nii.gz"), "--encoder",
               str(tmp_path / "enc"), "--probe", str(tmp_path / "nothing")])
    assert rc == 2 and "metadata" in capsys.readouterr().err


# ----------------------------------------------------------------- shipped weights


def test_bundled_probe_matches_bundled_encoder_and_sample_data():
    from scanqc.io.load import load_scan
    from scanqc.models.registry import model_dir
    from scanqc.models.weights import read_metadata, sha256_file
    from scanqc.scoring.region import predict_region

    probe_dir, enc_dir = model_dir("region"), model_dir("encoder")
    if not (probe_dir / "model.safetensors").is_file() or \
            not (enc_dir / "model.safetensors").is_file():
        pytest.skip("bundled region probe or encoder not built")
    meta = read_metadata(probe_dir)
    # the probe was trained on exactly the shipped encoder (retrain it after the encoder)
    assert meta["encoder"]["sha256"] == sha256_file(enc_dir / "model.safetensors")
    assert all(f["licence"] in ("MIT", "BSD-2-Clause", "Apache-2.0", "CC BY 4.0",
                                "MNI152 permission notice") for f in meta["training_files"])
    # both sample images derive from training files: a sanity check, not an evaluation
    samples = model_dir("encoder").parents[1] / "sample_data"
    assert predict_region(load_scan(samples / "chest_xr.png")).region == "chest"
    assert predict_region(load_scan(samples / "wrist_xr.png")).region == "upper_limb"


# ----------------------------------------------------------------- from probabilities / embeddings


def _probs(classes, labels, sure=0.9):
    """One probability row per label: ``sure`` on it, the rest spread evenly."""
    p = np.full((len(labels), len(classes)), (1 - sure) / (len(classes) - 1))
    for i, lab in enumerate(labels):
        p[i, classes.index(lab)] = sure
    return p


def test_region_from_probs_volume_main_region_and_ordered_coverage():
    from scanqc.scoring.region import region_from_probs

    classes = ["head", "chest", "abdomen", "pelvis"]
    labs = ["pelvis"] * 12 + ["abdomen"] * 20  # an abdomen-pelvis CT, feet first
    idx = np.arange(0, 64, 2)
    pred = region_from_probs(_probs(classes, labs), classes, 0.5, idx, n_slices=64,
                             is_volume=True, header={"BodyPartExamined": "ABDOMEN"})
    # the scan's region is the class covering most slices, with its own confidence
    assert pred.region == "abdomen" and pred.confidence == pytest.approx(0.9)
    assert pred.coverage == ["pelvis", "abdomen"]
    assert pred.per_slice[0][0][0] == 0 and pred.per_slice[-1][0][1] == 63
    assert not pred.mismatch and pred.header_region == "abdomen"
    # a header naming neither covered region is flagged, even though the mean
    # probability of each class over the whole volume is below the threshold
    pred = region_from_probs(_probs(classes, labs), classes, 0.7, idx, n_slices=64,
                             is_volume=True, header={"BodyPartExamined": "HEAD"})
    assert max(pred.probs.values()) < 0.7 and pred.mismatch
    assert pred.warnings[0].code == "region_header_mismatch"
    # any confidently covered part agreeing with the header: consistent
    assert not region_from_probs(_probs(classes, labs), classes, 0.5, idx, n_slices=64,
                                 is_volume=True, header={"BodyPartExamined": "PELVIS"}
                                 ).mismatch
    # nothing above the threshold: unknown, no warning
    pred = region_from_probs(_probs(classes, labs, sure=0.3), classes, 0.5, idx,
                             is_volume=True, header={"BodyPartExamined": "HEAD"})
    assert pred.region == "unknown" and not pred.mismatch and pred.coverage == []
    with pytest.raises(ValueError):
        region_from_probs(np.zeros((0, 4)), classes, 0.5)


def test_no_mismatch_for_a_header_region_the_probe_never_saw():
    """The shipped probe has no licensed knee images: a KNEE header mismatch is a warn."""
    from scanqc.scoring.region import region_from_probs, untrained_classes

    classes = ["head", "chest", "lower_limb"]
    p = _probs(classes, ["chest"], sure=0.95)  # a knee radiograph, confidently "chest"
    knee = {"BodyPartExamined": "KNEE"}
    (w,) = region_from_probs(p, classes, 0.5, header=knee).warnings
    assert w.severity == "high"
    pred = region_from_probs(p, classes, 0.5, header=knee, untrained=("lower_limb",))
    assert pred.mismatch and pred.header_region == "lower limb"
    (w,) = pred.warnings
    assert w.severity == "warn" and "no training data for lower limb" in w.message
    # a header the probe can check still gives a high-severity warning
    (w,) = region_from_probs(p, classes, 0.5, header={"BodyPartExamined": "HEAD"},
                             untrained=("lower_limb",)).warnings
    assert w.severity == "high"

    class Probe:
        metadata = {"classes_without_data": ["neck", "lower_limb"]}

    assert untrained_classes(Probe()) == ("neck", "lower_limb")
    assert untrained_classes(object()) == ()


def test_adapting_on_labels_of_a_class_makes_it_checkable():
    from scanqc.models.region_probe import RegionProbe, adapt

    rng = np.random.default_rng(0)
    probe = RegionProbe(8, classes=["head", "chest", "lower_limb"])
    probe.metadata = {"classes_without_data": ["lower_limb", "spine"]}
    x = rng.normal(size=(12, 8)).astype(np.float32)
    new = adapt(probe, x, ["lower_limb"] * 6 + ["head"] * 6, epochs=5)
    assert new.metadata["classes_without_data"] == ["spine"]
    assert probe.metadata["classes_without_data"] == ["lower_limb", "spine"]  # not modified


def test_region_from_embeddings_uses_header_dict():
    from scanqc.scoring.region import region_from_embeddings, region_header

    scan = Scan(np.zeros((4, 4), np.float32), (1.0, 1.0), np.eye(4), "image",
                metadata={"BodyPartExamined": "KNEE", "PatientName": "x",
                          "StudyDescription": ["CT", "CHEST"]})
    hdr = region_header(scan)
    assert hdr == {"BodyPartExamined": "KNEE", "StudyDescription": "CT\\CHEST"}
    probe = _fixed_probe(8, "chest", 6.0)
    emb = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)
    pred = region_from_embeddings(emb, probe, header=hdr, is_volume=False)
    assert pred.region == "chest" and pred.mismatch and pred.header_region == "lower limb"
    assert pred.columns()["region_mismatch"] is True
    # the same answer as from the scan itself
    assert region_from_embeddings(emb, probe, header=scan, is_volume=False).mismatch


def test_region_unlike_references_rules():
    from scanqc.scoring.header import regions_compatible
    from scanqc.scoring.region import region_unlike_references

    chest = [("chest", 0.99), ("chest", 0.95), ("chest", 0.6)]
    ws = region_unlike_references("upper_limb", 0.97, chest)
    assert [w.code for w in ws] == ["region_unlike_references"] and ws[0].severity == "warn"
    assert ws[0].message == "predicted region upper limb (97%), the references' chest"
    # the same region, an overlapping one, an unsure or unknown prediction: nothing
    assert region_unlike_references("chest", 0.99, chest) == []
    assert region_unlike_references("abdomen", 0.99, chest) == []  # overlaps the chest
    assert region_unlike_references("upper_limb", 0.7, chest) == []
    assert region_unlike_references("unknown", 0.99, chest) == []
    assert region_unlike_references(None, None, chest) == []
    # fewer than two sure references: nothing to compare with
    assert region_unlike_references("head", 0.99, [("chest", 0.99), ("chest", 0.5)]) == []
    assert region_unlike_references("head", 0.99, [("unknown", 0.99)] * 3) == []
    # a mixed reference set widens what is alike
    assert region_unlike_references("head", 0.99, [*chest, ("head", 0.9)]) == []
    # limbs: compatible for header checks (a shoulder film labelled chest), not here
    assert regions_compatible("chest", "upper limb") and not regions_compatible(
        "chest", "upper_limb", limbs=False)
    assert regions_compatible("head", "neck", limbs=False)


def test_typical_region_and_region_unlike_dataset():
    from scanqc.scoring.region import region_unlike_dataset, typical_region

    preds = [("chest", 0.95)] * 28 + [("upper_limb", 0.99), ("unknown", 0.99), ("head", 0.5)]
    assert typical_region(preds) == "chest"  # 28 of the 29 sure predictions
    assert typical_region(preds[:15]) is None  # too few
    assert typical_region([("chest", 0.95)] * 20 + [("head", 0.95)] * 4) is None  # 83 %
    ws = region_unlike_dataset("upper_limb", 0.99, "chest")
    assert [(w.code, w.severity) for w in ws] == [("region_unlike_dataset", "info")]
    assert ws[0].message == "predicted region upper limb (99%), most scans' chest"
    assert region_unlike_dataset("upper_limb", 0.99, None) == []
    assert region_unlike_dataset("abdomen", 0.99, "chest") == []
