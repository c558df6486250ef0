"""``scanqc rank`` end to end on a small synthetic folder with a tiny random encoder."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from scanqc.cli.main import main


@pytest.fixture
def tiny_encoder(tmp_path: Path) -> Path:
    import torch

    from scanqc.models.encoder import SliceEncoder
    from scanqc.models.weights import save_model

    torch.manual_seed(0)
    model = SliceEncoder(widths=(4, 8, 8), deep_stages=1)
    out = tmp_path / "enc"
    save_model(model, out, {"name": "tiny", "architecture": {
        "class": "SliceEncoder", "kwargs": {"widths": [4, 8, 8], "deep_stages": 1}}})
    return out


@pytest.fixture
def folder(tmp_path: Path, rng) -> Path:
    root = tmp_path / "data"
    (root / "xr").mkdir(parents=True)
    yy, xx = np.mgrid[:64, :64]
    for i in range(8):
        if i % 2:  # "hands": a bright disc
            img = ((xx - 32) ** 2 + (yy - 32) ** 2 < (10 + i) ** 2) * 200.0
        else:  # "chests": vertical bars
            img = ((xx // (4 + i)) % 2) * 180.0
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "xr" / f"img{i}.png")
    vol = rng.normal(100, 20, (6, 32, 32)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "vol.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"not a nifti at all")
    return root


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("strategy", ["examine", "diversity", "random"])
def test_rank_without_labels(folder, tiny_encoder, tmp_path, strategy) -> None:
    out = tmp_path / "ranking.csv"
    rc = main(["rank", str(folder), "--strategy", strategy, "--model-dir", str(tiny_encoder),
               "--out", str(out)])
    assert rc == 0
    rows = _read(out)
    assert list(rows[0]) == ["scan_id", "path", "rank", "score", "strategy", "status", "error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 9
    assert [int(r["rank"]) for r in ok] == list(range(1, 10))
    assert {r["strategy"] for r in ok} == {strategy}
    assert rows[-1]["status"] == "error" and rows[-1]["path"] == "broken.nii.gz"
    assert rows[-1]["error"].strip() and "\n" not in rows[-1]["error"]  # one-line cause
    assert str(folder) not in rows[-1]["error"]  # paths stay relative
    if strategy == "examine":
        scores = [float(r["score"]) for r in ok]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 1.0


def test_rank_with_labels_and_n(folder, tiny_encoder, tmp_path) -> None:
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["scan_id", "path", "label", "region"])
        w.writeheader()
        w.writerow({"scan_id": "", "path": "xr/img0.png", "label": "good", "region": "chest"})
        w.writerow({"scan_id": "", "path": "xr/img1.png", "label": "good", "region": "hand"})
        w.writerow({"scan_id": "", "path": "xr/img2.png", "label": "", "region": "chest"})
    out = tmp_path / "ranking.csv"
    rc = main(["rank", str(folder), "--strategy", "entropy", "--labels", str(labels),
               "--n", "3", "--model-dir", str(tiny_encoder), "--out", str(out)])
    assert rc == 0
    rows = _read(out)
    ok = [r for r in rows if r["status"] == "ok"]
    labelled = [r for r in rows if r["status"] == "labelled"]
    assert len(ok) == 3 and {r["strategy"] for r in ok} == {"entropy"}
    assert sorted(r["path"] for r in labelled) == ["xr/img0.png", "xr/img1.png", "xr/img2.png"]
    assert not {r["path"] for r in ok} & {r["path"] for r in labelled}
    scores = [float(r["score"]) for r in ok]
    assert scores == sorted(scores, reverse=True)


def test_rank_one_class_falls_back_and_bad_labels_file(folder, tiny_encoder, tmp_path,
                                                      capsys) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nxr/img0.png,good\n")
    out = tmp_path / "r.csv"
    assert main(["rank", str(folder), "-s", "margin", "--labels", str(labels),
                 "--model-dir", str(tiny_encoder), "--out", str(out)]) == 0
    assert "ranked by diversity" in capsys.readouterr().err
    assert {r["strategy"] for r in _read(out) if r["status"] == "ok"} == {"diversity"}
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    assert main(["rank", str(folder), "--labels", str(bad), "--model-dir",
                 str(tiny_encoder), "--out", str(out)]) == 1
    assert "bad.csv" in capsys.readouterr().err


def test_default_strategy_is_margin_once_two_classes_are_labelled(folder, tiny_encoder,
                                                                 tmp_path) -> None:
    out = tmp_path / "r.csv"
    assert main(["rank", str(folder), "--model-dir", str(tiny_encoder), "--out",
                 str(out)]) == 0
    assert {r["strategy"] for r in _read(out) if r["status"] == "ok"} == {"diversity"}
    labels = tmp_path / "labels.csv"
    labels.write_text("path,region\nxr/img0.png,chest\nxr/img1.png,hand\n")
    assert main(["rank", str(folder), "--labels", str(labels), "--model-dir",
                 str(tiny_encoder), "--out", str(out)]) == 0
    assert {r["strategy"] for r in _read(out) if r["status"] == "ok"} == {"margin"}


def test_semicolon_labels_file(folder, tiny_encoder, tmp_path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"\xef\xbb\xbfpath;region\r\nxr/img0.png;chest\r\nxr/img1.png;hand\r\n")
    out = tmp_path / "r.csv"
    assert main(["rank", str(folder), "--labels", str(labels), "--model-dir",
                 str(tiny_encoder), "--out", str(out)]) == 0
    rows = _read(out)
    assert sorted(r["path"] for r in rows if r["status"] == "labelled") == [
        "xr/img0.png", "xr/img1.png"]
    assert {r["strategy"] for r in rows if r["status"] == "ok"} == {"margin"}


def test_references_count_as_good_scans(folder, tiny_encoder, tmp_path, capsys) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nxr/img0.png,reference\nxr/img1.png,good\n")
    out = tmp_path / "r.csv"
    assert main(["rank", str(folder), "--labels", str(labels), "--model-dir",
                 str(tiny_encoder), "--out", str(out)]) == 0
    assert "1 class(es) labelled" in capsys.readouterr().err  # good only: not two classes
