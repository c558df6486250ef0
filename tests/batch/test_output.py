from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

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


_WRITER = textwrap.dedent(
    """
    import os
    import sys
    from scanqc.batch.output import ReportWriter
    out, start = sys.argv[1], int(sys.argv[2])
    if sys.argv[4] == "chunked":  # many small write() calls: kills land inside lines
        def _write_bytes(self, data):
            for k in range(0, len(data), 7):
                os.write(self._fd, data[k:k + 7])
        ReportWriter._write_bytes = _write_bytes
    w = ReportWriter(out, resume=True, batch_rows=int(sys.argv[3]), flush_seconds=0.0)
    i = start
    print("ready", flush=True)
    while True:
        w.write({"scan_id": f"id{i:07d}", "path": "p/" + "x" * (i % 200), "status": "ok",
                 "bad_score": (i % 997) / 997, "flagged": i % 2 == 0,
                 "warnings_detail": "long " * (i % 50)})
        i += 1
    """
)


def test_csv_survives_sigkill_at_random_moments(tmp_path):
    out = tmp_path / "r.csv"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rnd = random.Random(1)
    start = 0
    total_complete = 0
    partial_tails = 0
    for it in range(24):
        mode = "chunked" if it % 2 else "whole"
        proc = subprocess.Popen([sys.executable, str(script), str(out), str(start),
                                 str(rnd.choice([1, 4, 16])), mode], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rnd.uniform(0.0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        partial_tails += not out.read_bytes().endswith(b"\n")
        rows = read_report(out)
        # every complete row is valid and ids are unique and consecutive
        ids = [int(r["scan_id"][2:]) for r in rows]
        assert ids == list(range(len(ids))), f"iteration {it}"
        for r in rows:
            i = int(r["scan_id"][2:])
            assert r["path"] == "p/" + "x" * (i % 200)
            assert r["bad_score"] == pytest.approx((i % 997) / 997, abs=1e-6)
            assert r["flagged"] is (i % 2 == 0)
        assert len(rows) >= total_complete
        total_complete = len(rows)
        start = len(rows)  # the next writer resumes after the last complete row
    with open(out, newline="") as f:
        raw = list(csv.reader(f))
    assert all(len(r) == len(COLUMNS) for r in raw[: total_complete + 1])
    assert total_complete > 0
    assert partial_tails > 0  # the test did kill writers in the middle of a line
