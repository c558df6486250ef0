from __future__ import annotations

import csv
import json

import pytest

from scanqc.batch.columns import COLUMNS
from scanqc.batch.output import ReportWriter, read_report, repair


def _row(i: int) -> dict:
    return {
        "scan_id": f"id{i:05d}", "path": f"dir/scan {i}, \"quoted\".nii.gz", "name": f"n{i}",
        "status": "ok", "bad_score": i / 1000, "flagged": i % 3 == 0,
        "warnings": "a;b", "warnings_detail": "line one\nline two | x", "snr": float("nan"),
    }


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_roundtrip(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    with ReportWriter(out, fmt, batch_rows=3) as w:
        for i in range(10):
            w.write(_row(i))
    rows = read_report(out, fmt)
    assert [r["scan_id"] for r in rows] == [f"id{i:05d}" for i in range(10)]
    assert rows[3]["flagged"] is True and rows[4]["flagged"] is False
    assert rows[7]["bad_score"] == pytest.approx(0.007)
    assert rows[0]["snr"] is None and rows[0]["region"] is None
    assert rows[1]["warnings_detail"] == "line one line two | x"  # one line per row
    assert set(rows[0]) == set(COLUMNS)
    if fmt == "parquet":
        assert not (tmp_path / "r.parquet.partial.csv").exists()


def test_header_and_columns_in_order(tmp_path):
    out = tmp_path / "r.csv"
    with ReportWriter(out) as w:
        w.write(_row(1))
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == COLUMNS


def test_repair_drops_partial_line_and_resume_appends(tmp_path):
    out = tmp_path / "r.csv"
    with ReportWriter(out) as w:
        w.write_many(_row(i) for i in range(3))
    with open(out, "ab") as f:
        f.write(b"id99999,half a ro")
    assert [r["scan_id"] for r in read_report(out)] == ["id00000", "id00001", "id00002"]
    w = ReportWriter(out, resume=True)
    assert w.existing_ids == {"id00000", "id00001", "id00002"}
    assert w.write(_row(1)) is False  # already in the report
    assert w.write(_row(5)) is True
    w.close()
    text = out.read_text()
    assert "half a ro" not in text
    assert [r["scan_id"] for r in read_report(out)] == ["id00000", "id00001", "id00002",
                                                        "id00005"]
    assert repair(out) == 0


def test_resume_refuses_other_columns(tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other columns"):
        ReportWriter(out, resume=True)


def test_json_lines_resume(tmp_path):
    out = tmp_path / "r.jsonl"
    with ReportWriter(out, "json") as w:
        w.write(_row(0))
    with open(out, "a") as f:
        f.write('{"scan_id": "x", "pa')
    with ReportWriter(out, "json", resume=True) as w:
        w.write(_row(1))
    lines = out.read_text().splitlines()
    assert [json.loads(x)["scan_id"] for x in lines] == ["id00000", "id00001"]


def test_parquet_resume_keeps_finished_rows(tmp_path):
    """Resuming a finished parquet report copies its rows into the spool first."""
    import pyarrow.parquet as pq

    out = tmp_path / "r.parquet"
    with ReportWriter(out, "parquet") as w:
        w.write_many(_row(i) for i in range(4))
    w = ReportWriter(out, "parquet", resume=True)
    assert w.existing_ids == {f"id{i:05d}" for i in range(4)}
    assert w.write(_row(2)) is False
    w.write(_row(7))
    w.flush()
    # killed here: the spool is the newest state and holds every row; the old parquet is whole
    assert [r["scan_id"] for r in read_report(out, "parquet")][-1] == "id00007"
    assert pq.read_table(out).num_rows == 4
    w.close()
    ids = [r["scan_id"] for r in read_report(out, "parquet")]
    assert ids == ["id00000", "id00001", "id00002", "id00003", "id00007"]
    assert not (tmp_path / "r.parquet.partial.csv").exists()
    assert not (tmp_path / "r.parquet.tmp").exists()


# SIGKILL at random moments (CSV, JSON lines, parquet, resume cache): tests/test_sigkill_batch.py
