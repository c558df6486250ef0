"""Datasets with file names that are not UTF-8, FIFOs, device links and symlinks.

Old archives hold Latin-1 file names; dataset folders are often trees of symlinks. Every
report (CSV, JSON, HTML, rankings, label exports) must still be written, with one row per
file, valid UTF-8 text and paths relative to the dataset.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from batch import make_dataset, write_png
from scanqc.batch.output import read_report
from scanqc.cli.main import main
from scanqc.io.labels import LabelStore, default_store_path
from scanqc.io.scan import file_name_of, printable

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX file names")

#: A Latin-1 file name ("röntgen.png"): bytes that are not valid UTF-8.
LATIN1 = os.fsdecode(b"r\xf6ntgen.png")


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=1, corrupt=False)
    write_png(root / LATIN1, 7)
    os.mkfifo(root / "pipe.dcm")
    (root / "null.nii").symlink_to("/dev/null")
    (root / "gone.png").symlink_to(root / "missing.png")
    outside = tmp_path / "store" / "patient_Jane_Doe"
    outside.mkdir(parents=True)
    write_png(outside / "xr.png", 8)
    (root / "linked.png").symlink_to(outside / "xr.png")
    return root


def test_printable_and_back() -> None:
    assert printable(LATIN1) == "r\\xf6ntgen.png"
    assert file_name_of(printable(LATIN1)) == LATIN1
    assert printable("héllo") == "héllo" and file_name_of("héllo") == "héllo"
    assert printable("a\ud800b") == "a\\ud800b"  # a lone surrogate that is not a byte
    for text in (printable(LATIN1), printable("a\ud800b")):
        text.encode("utf-8")


def test_score_writes_every_row_with_printable_paths(odd_folder, tmp_path, tiny_model,
                                                     capsys) -> None:
    out, html = tmp_path / "r.csv", tmp_path / "r.html"
    refs = tmp_path / "refs.txt"
    refs.write_text(f"{printable(LATIN1)}\nsub/vol0.nii.gz\n")  # copied from a report
    rc = main(["score", str(odd_folder), "-r", str(refs), "--out", str(out), "--html",
               str(html), "--workers", "0", "--max-slices", "4", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rows = {r["path"]: r for r in read_report(out)}
    assert set(rows) == {"sub/vol0.nii.gz", "sub/vol1.nii.gz", "img0.png", "r\\xf6ntgen.png",
                         "pipe.dcm", "null.nii", "gone.png", "linked.png"}
    assert rows["r\\xf6ntgen.png"]["status"] == "ok"
    assert rows["linked.png"]["status"] == "ok"
    assert rows["pipe.dcm"]["error"].endswith("not a regular file (device, FIFO or socket)")
    assert rows["null.nii"]["error"].endswith("not a regular file (device, FIFO or socket)")
    assert rows["gone.png"]["error"].endswith("broken symbolic link")
    out.read_bytes().decode("utf-8")
    page = html.read_text(encoding="utf-8")
    assert "r%F6ntgen.png" in page  # the link opens the file by its own bytes
    # JSON lines too
    jl = tmp_path / "r.jsonl"
    assert main(["score", str(odd_folder), "--out", str(jl), "--format", "json",
                 "--workers", "0", "--max-slices", "4", "--no-progress"]) == 0
    paths = {json.loads(line)["path"] for line in jl.read_text(encoding="utf-8").splitlines()}
    assert "r\\xf6ntgen.png" in paths


def test_labels_and_rank_with_odd_names(odd_folder, tmp_path, capsys) -> None:
    import torch

    from scanqc.models.encoder import SliceEncoder
    from scanqc.models.weights import save_model

    torch.manual_seed(0)
    enc = tmp_path / "enc"
    save_model(SliceEncoder(widths=(4, 8, 8), deep_stages=1), enc, {
        "name": "tiny", "architecture": {"class": "SliceEncoder",
                                         "kwargs": {"widths": [4, 8, 8], "deep_stages": 1}}})
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{printable(LATIN1)},bad\nlinked.png,good\n",
                      encoding="utf-8")
    assert main(["labels", "import", str(odd_folder), str(labels)]) == 0
    assert "2 rows matched, 0 unmatched" in capsys.readouterr().out
    store = default_store_path(odd_folder)
    with LabelStore.open(store) as st:
        assert {r.path: r.label for r in st.all()} == {"r\\xf6ntgen.png": "bad",
                                                       "linked.png": "good"}
        # a label set from the viewer with the file's own (undecodable) name is kept
        st.set("x", path=str(odd_folder / LATIN1), label="good", note="n\udcf6te")
        assert st.get("x").path == "r\\xf6ntgen.png"
    exported = tmp_path / "out.csv"
    assert main(["labels", "export", str(odd_folder), "-o", str(exported)]) == 0
    text = exported.read_bytes().decode("utf-8")
    assert "patient_Jane_Doe" not in text and "linked.png" in text
    # rank reads the dataset's label store by default
    ranking = tmp_path / "rank.csv"
    assert main(["rank", str(odd_folder), "--model-dir", str(enc), "--out",
                 str(ranking)]) == 0
    assert "labels from" in capsys.readouterr().err
    with open(ranking, newline="", encoding="utf-8") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert rows["r\\xf6ntgen.png"]["status"] == "labelled"
    assert rows["linked.png"]["status"] == "labelled"  # its own name, not the target's
    assert rows["null.nii"]["status"] == "error"
    assert {r["strategy"] for r in rows.values()} == {"margin"}  # good and bad: two classes
    assert main(["rank", str(odd_folder), "--no-labels", "--model-dir", str(enc), "--out",
                 str(ranking)]) == 0
    with open(ranking, newline="", encoding="utf-8") as fh:
        assert "labelled" not in {r["status"] for r in csv.DictReader(fh)}


def test_info_lines_are_valid_utf8_and_a_closed_pipe_is_quiet(odd_folder) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "scanqc.cli.main", "info", str(odd_folder)],
        capture_output=True, check=True)
    names = {json.loads(line)["name"] for line in proc.stdout.decode("utf-8").splitlines()}
    assert "r\\xf6ntgen.png" in names
    # `scanqc info DIR | head -1`: no error message when the reader stops early
    proc = subprocess.run(
        f"{sys.executable} -m scanqc.cli.main info {odd_folder} {odd_folder} {odd_folder}"
        " | head -c 10", shell=True, capture_output=True, check=True)
    assert b"Broken pipe" not in proc.stderr and b"error" not in proc.stderr


def test_asymmetry_csv_names_files_relative_to_the_dataset(odd_folder, tmp_path) -> None:
    out = tmp_path / "asym"
    assert main(["asymmetry", str(odd_folder), "--out-dir", str(out), "--method",
                 "intensity", "--no-heatmaps"]) == 0
    text = (out / "asymmetry.csv").read_bytes().decode("utf-8")
    assert str(tmp_path) not in text  # no absolute paths, not even in the error causes
    with open(out / "asymmetry.csv", newline="", encoding="utf-8") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert rows["r\\xf6ntgen.png"]["status"] == "ok"
    assert rows["sub/vol0.nii.gz"]["status"] == "ok"
    assert rows["pipe.dcm"]["error"] == "pipe.dcm: not a regular file (device, FIFO or socket)"
