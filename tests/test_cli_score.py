from __future__ import annotations

import json

import pytest

from batch import make_dataset
from scanqc.batch.output import read_report
from scanqc.cli.main import main


def _refs(tmp_path, root):
    f = tmp_path / "refs.txt"
    f.write_text("# known good\nds/sub/vol0.nii.gz\n\nds/sub/vol1.nii.gz  # second\n")
    return f


def test_score_end_to_end_csv_and_html(tmp_path, tiny_model, capsys):
    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=2, odd=1)
    out, html = tmp_path / "out" / "report.csv", tmp_path / "out" / "report.html"
    rc = main(["score", str(root), "--references", str(_refs(tmp_path, root)), "--out",
               str(out), "--html", str(html), "--workers", "0", "--max-slices", "4",
               "--no-progress"])
    assert rc == 0
    rows = read_report(out)
    assert len(rows) == 8
    by_path = {r["path"]: r for r in rows}
    assert by_path["broken.nii.gz"]["status"] == "error"
    assert by_path["odd0.nii.gz"]["flagged"] is True
    assert by_path["odd0.nii.gz"]["bad_score"] > by_path["sub/vol2.nii.gz"]["bad_score"]
    err = capsys.readouterr().err
    assert "8 scanned" in err and "1 errors" in err and "flagged" in err
    assert "scanqc: error: broken.nii.gz: " in err  # the cause, on the console too
    # the flagged scans, most suspicious first, with their warnings
    listed = [line.split()[3] for line in err.splitlines()
              if line.startswith("scanqc: flagged ")]
    flagged = sorted((r for r in rows if r["flagged"]), key=lambda r: (-r["bad_score"], r["path"]))
    assert listed == [r["path"] for r in flagged][:5] and "odd0.nii.gz" in listed
    # each with why: its warn/high codes (never an info note), else its distance
    for line in (x for x in err.splitlines() if x.startswith("scanqc: flagged ")):
        row = by_path[line.split()[3]]
        reasons = line.rsplit("(", 1)[1].rstrip(")")
        notable = {c.split(" (")[0] for c in str(row["warnings_detail"]).split(" | ")
                   if " (warn)" in c or " (high)" in c}
        assert set(reasons.split(";")) == notable if notable else reasons == (
            "unlike the references")
    assert html.is_file() and "odd0.nii.gz" in html.read_text()
    assert (tmp_path / "out" / "report.csv.cache.sqlite").is_file()
    # a second run with --resume reads nothing new and keeps one row per scan
    rc = main(["score", str(root), "--references", str(_refs(tmp_path, root)), "--out",
               str(out), "--workers", "0", "--max-slices", "4", "--no-progress", "--resume"])
    assert rc == 0
    assert "(7 from the resume cache)" in capsys.readouterr().err
    assert len(read_report(out)) == 8
    # other references with --resume: the report would mix two kinds of score: refused,
    # and the rows already there are kept as they were
    before = out.read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("ds/sub/vol1.nii.gz\nds/sub/vol2.nii.gz\n")
    rc = main(["score", str(root), "--references", str(other), "--out", str(out),
               "--workers", "0", "--max-slices", "4", "--no-progress", "--resume"])
    err = capsys.readouterr().err
    assert rc == 1 and "scored with another model or reference set" in err
    assert "--resume would mix them" in err
    assert out.read_bytes() == before


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_score_formats_without_references(tmp_path, tiny_model, fmt):
    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=1)
    out = tmp_path / f"r.{fmt}"
    rc = main(["score", str(root), "--out", str(out), "--format", fmt, "--workers", "0",
               "--max-slices", "4", "--no-progress", "--no-cache"])
    assert rc == 0
    rows = read_report(out, fmt)
    assert len(rows) == 5
    assert all(r["reference_set_id"] == "knn" for r in rows if r["status"] == "ok")
    if fmt == "json":
        first = json.loads(out.read_text().splitlines()[0])
        assert first["status"] == "error"  # errors stream before the kNN pass


def test_ctrl_c_keeps_rows_and_returns_130(tmp_path, tiny_model, monkeypatch, capsys):
    from scanqc.batch import output

    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=1, corrupt=False)
    real_write = output.ReportWriter.write
    count = {"n": 0}

    def write(self, row):
        if count["n"] == 2:
            raise KeyboardInterrupt
        count["n"] += 1
        return real_write(self, row)

    monkeypatch.setattr(output.ReportWriter, "write", write)
    out = tmp_path / "r.csv"
    refs = [str(root / "sub" / "vol0.nii.gz"), str(root / "sub" / "vol1.nii.gz")]
    (tmp_path / "refs.txt").write_text("\n".join(refs))
    args = ["score", str(root), "--references", str(tmp_path / "refs.txt"), "--out",
            str(out), "--workers", "0", "--max-slices", "4", "--no-progress"]
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(read_report(out)) == 2
    monkeypatch.setattr(output.ReportWriter, "write", real_write)
    assert main([*args, "--resume"]) == 0
    assert len({r["scan_id"] for r in read_report(out)}) == len(read_report(out)) == 5


def test_bad_arguments_are_one_line_errors(tmp_path, tiny_model, capsys):
    assert main(["score", str(tmp_path / "missing"), "--out", str(tmp_path / "r.csv")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=0)
    empty = tmp_path / "refs.txt"
    empty.write_text("# nothing\n")
    rc = main(["score", str(root), "--references", str(empty), "--out", str(tmp_path / "r.csv")])
    assert rc == 1 and "reference list is empty" in capsys.readouterr().err
    # an output that is a folder, a cache that is not one: one line each, nothing scored
    assert main(["score", str(root), "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"scanqc: error: {tmp_path}: is a folder; --out needs a file name")
    bad = tmp_path / "bad.cache"
    bad.write_text("not a database")
    assert main(["score", str(root), "--out", str(tmp_path / "r.csv"), "--cache", str(bad),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"scanqc: error: {bad}: cannot open the resume cache (file is not a "
                   "database); give another --cache FILE or --no-cache"]


def test_empty_folder_writes_an_empty_report_and_says_so(tmp_path, tiny_model, capsys):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("not a scan")
    rc = main(["score", str(tmp_path / "none"), "--out", str(tmp_path / "r.csv"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "0 scanned" in err and "no scans found under" in err
    assert (tmp_path / "r.csv").read_text().startswith("scan_id")


_CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from batch import tiny_encoder
import scanqc.models.encoder as enc
model = tiny_encoder()
enc.load_encoder = lambda name="encoder", device="auto": model
kill_after = int(os.environ.get("KILL_AFTER", "0"))
if kill_after:
    from scanqc.batch import output
    real_init = output.ReportWriter.__init__
    def init(self, *a, **k):
        k["batch_rows"] = 1  # every row on disk at once: the report runs ahead of the cache
        real_init(self, *a, **k)
    output.ReportWriter.__init__ = init
    real = output.ReportWriter.write
    count = [0]
    def write(self, row):
        real(self, row)
        count[0] += 1
        if count[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    output.ReportWriter.write = write
from scanqc.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_then_resume_reads_no_scan_twice(tmp_path):
    """A real SIGKILL mid-run, then --resume: one row per file, no scan read twice."""
    import os
    import signal
    import subprocess
    import sys
    from collections import Counter
    from pathlib import Path

    root = make_dataset(tmp_path / "ds", n_vol=18, n_img=8)
    (root / "notes.png").write_text("not an image")
    (root / "junk.dcm").write_bytes(os.urandom(600))
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    refs = tmp_path / "refs.txt"
    refs.write_text(f"{root / 'sub' / 'vol0.nii.gz'}\n{root / 'sub' / 'vol1.nii.gz'}\n")
    child = tmp_path / "child.py"
    child.write_text(_CHILD.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "r.csv"
    cmd = [sys.executable, str(child), "score", str(root), "--references", str(refs),
           "--out", str(out), "--workers", "0", "--max-slices", "3", "--no-progress"]
    env = dict(os.environ, SCANQC_TRACE_READS=str(tmp_path / "t1.log"), KILL_AFTER="20")
    r1 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r1.returncode == -signal.SIGKILL, r1.stderr
    after_kill = {r["scan_id"] for r in read_report(out)}
    assert len(after_kill) == 20
    env.update(SCANQC_TRACE_READS=str(tmp_path / "t2.log"), KILL_AFTER="0")
    r2 = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                        timeout=300)
    assert r2.returncode == 0, r2.stderr
    rows = read_report(out)
    assert sorted(r["path"] for r in rows) == files  # exactly one row per file
    assert len({r["scan_id"] for r in rows}) == len(files)

    def reads(name):
        return Counter(x.split("\t")[0] for x in (tmp_path / name).read_text().splitlines())

    ref_ids = {r["scan_id"] for r in rows if r["path"] in ("sub/vol0.nii.gz",
                                                           "sub/vol1.nii.gz")}
    first, second = reads("t1.log"), reads("t2.log")
    assert max(first.values()) == 1 and max(second.values()) <= 2  # refs: read + scored
    # no scan whose row was written before the kill is read again (references excepted:
    # every run reads them to build the reference set; their rows come from the cache)
    assert not (set(second) - ref_ids) & after_kill
    assert set(first) | set(second) >= {r["scan_id"] for r in rows if r["status"] == "ok"}


def test_references_marked_in_the_label_store_are_used(tmp_path, tiny_model, capsys):
    """References marked in napari (the dataset's label store) drive `scanqc score`."""
    from scanqc.io.discover import discover
    from scanqc.io.labels import LabelStore, default_store_path

    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=0, odd=1)
    ids = {e.paths[0].split("/ds/")[-1]: e.scan_id for e in discover([root])}
    with LabelStore.for_dataset(root) as store:
        store.set_many([ids["sub/vol0.nii.gz"], ids["sub/vol1.nii.gz"]], reference=True)
        store.set(ids["odd0.nii.gz"], label="bad", reason="artifact")
    args = ["--workers", "0", "--max-slices", "4", "--no-progress", "--no-cache"]

    out = tmp_path / "store.csv"
    assert main(["score", str(root), "--out", str(out), *args]) == 0
    assert "using the 2 reference scans marked in" in capsys.readouterr().err
    rows = [r for r in read_report(out) if r["status"] == "ok"]
    assert {r["reference_set_id"] for r in rows} != {"knn"}
    assert {r["reference_set_id"] for r in rows} == {rows[0]["reference_set_id"]}

    # the same references through an exported labels CSV, and the store file itself
    csv_file = tmp_path / "labels.csv"
    assert main(["labels", "export", str(root), "--out", str(csv_file)]) == 0
    for ref_file in (csv_file, default_store_path(root)):
        out2 = tmp_path / f"{ref_file.suffix[1:]}.csv"
        assert main(["score", str(root), "--out", str(out2), "--references", str(ref_file),
                     *args]) == 0
        same = {r["scan_id"]: r["bad_score"] for r in read_report(out2)}
        assert same == pytest.approx({r["scan_id"]: r["bad_score"] for r in read_report(out)
                                      if r["scan_id"] in same})
    capsys.readouterr()

    # --no-labels: the unsupervised fallback
    out3 = tmp_path / "nolabels.csv"
    assert main(["score", str(root), "--out", str(out3), "--no-labels", *args]) == 0
    assert "using the" not in capsys.readouterr().err
    assert {r["reference_set_id"] for r in read_report(out3) if r["status"] == "ok"} == {"knn"}


def test_labels_csv_without_references_is_a_one_line_error(tmp_path, tiny_model, capsys):
    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=0)
    f = tmp_path / "labels.csv"
    f.write_text("scan_id,label,reference\nabc,bad,0\n")
    rc = main(["score", str(root), "--out", str(tmp_path / "r.csv"), "--references", str(f),
               "--no-progress"])
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("labels.csv: no row of the labels CSV is marked as a reference" in e
               for e in err)


def test_asymmetry_flag_fills_the_column(tmp_path, tiny_model):
    import math

    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=1)
    common = [str(root), "--workers", "0", "--max-slices", "4", "--no-progress", "--no-cache"]
    out = tmp_path / "with.csv"
    assert main(["score", *common, "--out", str(out), "--asymmetry"]) == 0
    ok = [r for r in read_report(out, "csv") if r["status"] == "ok"]
    assert ok and all(isinstance(r["asymmetry_score"], float)
                      and math.isfinite(r["asymmetry_score"]) for r in ok)
    out2 = tmp_path / "without.csv"
    assert main(["score", *common, "--out", str(out2)]) == 0
    assert all(r["asymmetry_score"] is None or math.isnan(r["asymmetry_score"])
               for r in read_report(out2, "csv"))


def test_broken_dicom_is_one_line_without_traceback(tmp_path, shared_data):
    """pydicom logs a failed JPEG 2000 decode with a traceback; the CLI shows one line.

    Run as a separate process: pytest's own log capture would hide the traceback here.
    """
    import shutil
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_data / "pydicom_3.0.2_testfiles/JPEG2000-embedded-sequence-delimiter.dcm",
                src / "bad_j2k.dcm")
    out = tmp_path / "r.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "scanqc.cli.main", "score", str(src), "--out", str(out),
         "--workers", "0", "--no-progress", "--no-cache"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    (row,) = read_report(out, "csv")
    assert row["status"] == "error" and "bad_j2k.dcm" in row["error"]


def test_progress_bar_names_each_phase(capsys):
    from scanqc.cli.score import _Bar

    bar = _Bar(True)
    labels = []
    calls = [(0, 0, "a.dcm"), (5, 10, "reading headers"), (10, 10, "grouping DICOM series"),
             (0, 4, "reading references"), (0, 0, "fine-tuning on the references"),
             (3, 60, "fine-tuning 3/60"), (0, 7, "scoring"), (2, 7, "fine-tuning_scan.nii.gz"),
             (7, 7, "kNN outlier scores")]
    for done, total, message in calls:
        bar(done, total, message)
        labels.append((bar.bar.desc, bar.bar.unit))
    bar.close()
    assert labels == [("finding scans", "file")] * 3 + [("references", "scan")] + [
        ("fine-tuning", "step")] * 2 + [("scoring", "scan")] * 3
    err = capsys.readouterr().err
    assert "finding scans" in err and "scoring" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["score", ".", "-o", "r.csv", "--threshold", "nan"], "must be a finite number"),
    (["score", ".", "-o", "r.csv", "--workers", "-1"], "must be 0 or more"),
    (["score", ".", "-o", "r.csv", "--max-slices", "-3"], "must be 0 or more"),
    (["score", ".", "-o", "r.csv", "--timeout", "0"], "must be more than 0"),
    (["rank", ".", "-o", "r.csv", "--n", "0"], "must be 1 or more"),
    (["region", "predict", ".", "--threads", "two"], "not a number: 'two'"),
])
def test_unusable_numbers_are_refused(argv, message, capsys):
    """NaN thresholds flagged nothing, negative slice counts meant 'all': now refused."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_few_references_are_called_out(tmp_path, tiny_model, caplog):
    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=1, corrupt=False)
    out = tmp_path / "r.csv"
    rc = main(["score", str(root), "--references", str(_refs(tmp_path, root)), "--out",
               str(out), "--workers", "0", "--max-slices", "4", "--no-progress", "--no-cache"])
    assert rc == 0 and "only 2 reference scans" in caplog.text and "mark 10-30" in caplog.text
    caplog.clear()
    refs = tmp_path / "five.txt"
    refs.write_text("\n".join(f"ds/sub/vol{i}.nii.gz" for i in range(4)) + "\nds/img0.png\n")
    rc = main(["score", str(root), "--references", str(refs), "--out", str(out),
               "--workers", "0", "--max-slices", "4", "--no-progress", "--no-cache"])
    assert rc == 0 and "reference scans:" not in caplog.text


def test_scans_unlike_the_references_are_counted(tmp_path, tiny_model, capsys):
    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=2, corrupt=False)
    refs = tmp_path / "vols.txt"
    refs.write_text("\n".join(f"ds/sub/vol{i}.nii.gz" for i in range(3)) + "\n")
    out = tmp_path / "r.csv"
    rc = main(["score", str(root), "--references", str(refs), "--out", str(out),
               "--workers", "0", "--max-slices", "4", "--no-progress", "--no-cache"])
    assert rc == 0
    err = capsys.readouterr().err
    assert ("scanqc: 2 scans unlike the references in how they were acquired "
            "(2 dimension: warnings *_unlike_*)") in err
    assert ("scanqc: most found: short_coverage (warn, 4), dimension_unlike_references "
            "(warn, 2)") in err  # 20 mm test volumes are short
    rows = {r["path"]: r for r in read_report(out)}
    assert "dimension_unlike_references" in rows["img0.png"]["warnings"]
    assert "a 2D image, the references are volumes" in rows["img1.png"]["warnings_detail"]
    assert "_unlike_" not in rows["sub/vol3.nii.gz"]["warnings"]


def test_copies_in_a_dataset_are_reported_on_the_later_copy(tmp_path, tiny_model, capsys):
    import shutil

    from PIL import Image

    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=1, corrupt=False)
    shutil.copy(root / "sub" / "vol0.nii.gz", root / "sub" / "vol9_copy.nii.gz")
    Image.open(root / "img0.png").save(root / "img9_again.jpg", quality=95)  # re-encoded
    out = tmp_path / "r.csv"
    html = tmp_path / "r.html"
    rc = main(["score", str(root), "--out", str(out), "--workers", "0", "--max-slices", "4",
               "--no-progress", "--no-cache", "--html", str(html)])
    assert rc == 0
    assert "scanqc: 1 exact and 1 near duplicates of an earlier scan" in capsys.readouterr().err
    assert "<b>2</b> duplicates of another scan" in html.read_text()
    rows = {r["path"]: r for r in read_report(out)}
    copy = rows["sub/vol9_copy.nii.gz"]
    assert "exact_duplicate" in copy["warnings"]
    assert "identical pixels to sub/vol0.nii.gz" in copy["warnings_detail"]
    assert "near_duplicate" in rows["img9_again.jpg"]["warnings"]
    assert "img0.png" in rows["img9_again.jpg"]["warnings_detail"]
    for path in ("sub/vol0.nii.gz", "sub/vol1.nii.gz", "img0.png"):
        assert "duplicate" not in rows[path]["warnings"], path


def test_a_copy_added_before_resume_is_found_against_the_cached_original(tmp_path, tiny_model):
    """The resume cache keeps each row's fingerprint, so a resumed run compares new scans
    with the ones it does not read again."""
    import shutil

    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=1, corrupt=False)
    out = tmp_path / "r.csv"
    args = ["score", str(root), "--out", str(out), "--workers", "0", "--max-slices", "4",
            "--no-progress"]
    assert main(args) == 0
    shutil.copy(root / "sub" / "vol1.nii.gz", root / "zz_copy.nii.gz")
    assert main([*args, "--resume"]) == 0
    rows = {r["path"]: r for r in read_report(out)}
    assert len(rows) == 5
    assert "identical pixels to sub/vol1.nii.gz" in rows["zz_copy.nii.gz"]["warnings_detail"]
