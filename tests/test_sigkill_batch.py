"""The batch output (CSV, JSON lines, parquet) and the resume cache survive SIGKILL.

Each test starts a writer process, kills it with SIGKILL at a random moment, then checks
what a reader sees: the file opens, holds every row the writer had confirmed (flushed, or
committed for the cache) before the kill, no row twice, no torn row read as data. The next
writer resumes the same file, as ``scanqc score --resume`` does.

``SCANQC_SIGKILL_ITERATIONS`` sets the number of kills per test (CI default 10; the
acceptance run uses 100, see docs/reliability.md and benchmarks/sigkill_repeat.py).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from scanqc.batch.columns import COLUMNS

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

ITERATIONS = int(os.environ.get("SCANQC_SIGKILL_ITERATIONS", "10"))


def make_row(i: int) -> dict:
    """Row ``i`` as every writer produces it (each row read back is checked against it)."""
    return {"scan_id": f"id{i:07d}", "path": f"p/{'x' * (i % 150)}, \"q\".nii",
            "status": "ok" if i % 5 else "error", "error": "" if i % 5 else f"e{i}",
            "bad_score": (i % 997) / 997, "flagged": i % 2 == 0,
            "warnings_detail": "long " * (i % 40)}


_REPORT_CHILD = inspect.getsource(make_row) + textwrap.dedent(
    """
    import os
    import sys
    from scanqc.batch.output import ReportWriter
    out, fmt, start, batch, mode, stop = sys.argv[1:7]
    start, batch, stop = int(start), int(batch), int(stop)
    if mode == "chunked":  # many small write() calls: kills land inside lines
        def _write_bytes(self, data):
            for k in range(0, len(data), 7):
                os.write(self._fd, data[k:k + 7])
        ReportWriter._write_bytes = _write_bytes
    if fmt == "parquet":
        import pyarrow.parquet  # loaded already in a real run; kills then hit the conversion
    w = ReportWriter(out, fmt, resume=True, batch_rows=batch, flush_seconds=0.0)
    print("ready", w.rows_written, flush=True)
    i, flushed = start, 0
    while stop < 0 or i < stop:
        w.write(make_row(i))
        i += 1
        if w.rows_written != flushed:  # a batch went to disk: confirm it
            flushed = w.rows_written
            print("confirmed", start + flushed, flush=True)
    print("closing", flush=True)
    w.close()
    print("confirmed", i, flush=True)
    print("closed", flush=True)
    """
)

_CACHE_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from scanqc.batch.cache import ResultCache
    db, start, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = ResultCache(db, commit_every=every)
    print("ready", flush=True)
    i = start
    while True:
        c.put(f"id{i:07d}", f"c{i}", "m@1", "ref", "cfg",
              {"scan_id": f"id{i:07d}", "bad_score": i / 7, "path": "p" * (i % 300)},
              np.arange(i % 17, dtype=np.float32) + i)
        i += 1
        if i % 11 == 0:
            c.commit()
        if c._pending == 0:  # committed: confirm
            print("confirmed", i, flush=True)
    """
)


def _kill_at_random(cmd: list[str], delay: float,
                    wait_for: Callable[[], bool] | None = None,
                    wait_line: str | None = None) -> tuple[int, bool]:
    """Run ``cmd``, SIGKILL it ``delay`` s after it is ready; return (confirmed, closed).

    With ``wait_for``, the delay starts once it returns True (or the process ended); with
    ``wait_line``, once the process printed that line.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    first = proc.stdout.readline()
    assert first.startswith("ready"), f"writer did not start: {first!r}"
    early = ""
    while wait_line is not None:
        line = proc.stdout.readline()
        early += line
        if not line or line.strip() == wait_line:
            break
    deadline = time.monotonic() + 120
    while wait_for is not None and not wait_for() and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:  # (an end-to-end run may have finished already)
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    confirmed, closed = 0, False
    for line in (early + proc.stdout.read()).split("\n")[:-1]:  # whole lines only
        if line.startswith("confirmed "):
            confirmed = max(confirmed, int(line.split()[1]))
        closed |= line == "closed"
    proc.stdout.close()
    return confirmed, closed


def _check_row(r: dict) -> None:
    i = int(r["scan_id"][2:])
    want = make_row(i)
    assert r["path"] == want["path"]
    assert r["status"] == want["status"]
    assert (r["error"] or "") == want["error"]
    assert r["bad_score"] == pytest.approx(want["bad_score"], abs=1e-6)
    assert r["flagged"] is want["flagged"]
    assert (r["warnings_detail"] or "") == want["warnings_detail"].strip()


def _check_physical_lines(path: Path, line_format: str) -> None:
    """Every complete line of the file is a whole record (a reader never sees a torn row)."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines()
    if line_format == "csv":
        parsed = list(csv.reader(complete))
        assert parsed and tuple(parsed[0]) == COLUMNS
        assert all(len(r) == len(COLUMNS) for r in parsed)
    else:
        for line in complete:
            assert set(json.loads(line)) == set(COLUMNS)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_report_survives_sigkill(tmp_path: Path, fmt: str) -> None:
    from scanqc.batch.output import ReportWriter, read_report, spool_path

    out = tmp_path / f"report.{fmt}"
    script = tmp_path / "writer.py"
    script.write_text(_REPORT_CHILD)
    rnd = random.Random(f"sigkill-{fmt}")
    n_rows = 0
    torn_tails = finished = end_kills = 0
    for it in range(ITERATIONS):
        mode = "chunked" if it % 2 else "whole"
        # parquet: a run of limited length, so some kills land in the conversion at the end
        stop = n_rows + rnd.randint(0, 80) if fmt == "parquet" else -1
        delay = rnd.uniform(0.0, 0.12)
        # parquet: every third kill lands in (or after) the conversion at the end
        at_end = fmt == "parquet" and it % 3 == 2
        confirmed, closed = _kill_at_random(
            [sys.executable, str(script), str(out), fmt, str(n_rows),
             str(rnd.choice([1, 4, 16, 64])), mode, str(stop)],
            rnd.choice([rnd.uniform(0.0, 0.1), rnd.uniform(0.1, 1.0)]) if at_end else delay,
            wait_line="closing" if at_end else None)
        end_kills += at_end
        finished += closed
        spool = spool_path(out, fmt)
        if spool.exists():
            torn_tails += not spool.read_bytes().endswith(b"\n")
            _check_physical_lines(spool, "json" if fmt == "json" else "csv")
        rows = read_report(out, fmt)
        ids = [int(r["scan_id"][2:]) for r in rows]
        assert ids == list(range(len(ids))), f"iteration {it}: rows missing or repeated"
        assert len(ids) >= max(confirmed, n_rows), f"iteration {it}: confirmed rows lost"
        for r in rows:
            _check_row(r)
        if fmt == "parquet" and out.exists():
            import pyarrow.parquet as pq

            done = pq.read_table(out).column("scan_id").to_pylist()
            assert done == [f"id{i:07d}" for i in range(len(done))]  # a complete table
            assert len(done) <= len(ids)
            if closed:
                assert len(done) == len(ids) == confirmed and not spool.exists()
        n_rows = len(ids)
    # a last writer resumes and finishes: every row exactly once in the final file
    with ReportWriter(out, fmt, resume=True) as w:
        assert len(w.existing_ids) == n_rows
        w.write(make_row(n_rows))
    rows = read_report(out, fmt)
    assert [int(r["scan_id"][2:]) for r in rows] == list(range(n_rows + 1))
    assert n_rows > 0
    if fmt == "parquet":
        assert not spool_path(out, fmt).exists()
        print(f"parquet: {end_kills} kills in or after the conversion, {finished} runs done")
        assert finished < ITERATIONS  # some kills landed before the end
        assert ITERATIONS < 3 or end_kills > 0  # and some in or after the conversion
    elif ITERATIONS >= 6:
        assert torn_tails > 0  # some kills did land inside a line


def test_resume_cache_survives_sigkill(tmp_path: Path) -> None:
    from scanqc.batch.cache import ResultCache

    db = tmp_path / "report.csv.cache.sqlite"
    script = tmp_path / "cache_writer.py"
    script.write_text(_CACHE_CHILD)
    rnd = random.Random("sigkill-cache")
    n = 0
    for it in range(ITERATIONS):
        confirmed, _ = _kill_at_random(
            [sys.executable, str(script), str(db), str(n), str(rnd.choice([1, 4, 16]))],
            rnd.uniform(0.0, 0.12))
        con = sqlite3.connect(str(db))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = sorted(int(r[0][2:]) for r in con.execute("SELECT scan_id FROM rows"))
        con.close()
        assert ids == list(range(len(ids))), f"iteration {it}: entries missing or repeated"
        assert len(ids) >= max(confirmed, n), f"iteration {it}: committed entries lost"
        cache = ResultCache(db)
        for i in ids:
            row, vec = cache.get(f"id{i:07d}", f"c{i}", "m@1", "ref", "cfg")
            assert row == {"scan_id": f"id{i:07d}", "bad_score": i / 7, "path": "p" * (i % 300)}
            assert np.array_equal(vec, np.arange(i % 17, dtype=np.float32) + i)
        assert len(cache) == len(ids)
        cache.close()
        n = len(ids)
    assert n > 0


_SCORE_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from batch import tiny_encoder
    import scanqc.models.encoder as enc
    model = tiny_encoder()
    enc.load_encoder = lambda name="encoder", device="auto": model
    # flush every row and commit every 3 (a long run does so every 16), so that kills
    # land between flushes and commits of this small dataset
    from scanqc.batch.cache import ResultCache
    from scanqc.batch.output import ReportWriter
    ReportWriter.__init__.__kwdefaults__.update(batch_rows=1, flush_seconds=0.0)
    ResultCache.__init__.__defaults__ = (3,)
    import time
    _write = ReportWriter.write
    def write(self, row):  # a scan takes >= 40 ms, as real ones do: kills spread over rows
        time.sleep(0.04)
        return _write(self, row)
    ReportWriter.write = write
    from scanqc.cli.main import main
    print("ready", flush=True)
    sys.exit(main(sys.argv[2:]))
    """
)


def test_score_cli_killed_then_resumed(tmp_path: Path) -> None:
    """``scanqc score`` killed while writing, then ``--resume``: every scan exactly once.

    One kill in CI (``SCANQC_SIGKILL_ITERATIONS`` / 10 kills otherwise); each kill lands
    at a random moment after the run wrote its first rows.
    """
    fmt = "csv"
    from batch import make_dataset
    from scanqc.batch.output import read_report

    root = make_dataset(tmp_path / "ds", n_vol=6, n_img=3, odd=1)
    refs = tmp_path / "refs.txt"
    refs.write_text("ds/sub/vol0.nii.gz\nds/sub/vol1.nii.gz\n")
    out = tmp_path / f"report.{fmt}"
    script = tmp_path / "score.py"
    script.write_text(_SCORE_CHILD)
    argv = [sys.executable, str(script), str(Path(__file__).parent), "score", str(root),
            "--references", str(refs), "--out", str(out), "--workers", "0", "--max-slices",
            "4", "--no-progress", "--resume"]
    rnd = random.Random("score-cli")
    seen = []
    for _ in range(max(1, ITERATIONS // 10)):
        # kill at a random moment once this run has put two new rows on disk
        def lines() -> int:
            return out.read_bytes().count(b"\n") if out.exists() else 0

        base = max(1, lines())
        _kill_at_random(argv, rnd.uniform(0.0, 0.5), wait_for=lambda b=base: lines() >= b + 2)
        rows = read_report(out, fmt)  # opens after any kill; ids never repeat
        assert len({r["scan_id"] for r in rows}) == len(rows)
        seen.append(len(rows))
        if len(rows) == 11:  # that run had finished: start the next one afresh
            for f in tmp_path.glob("report.csv*"):
                f.unlink()
        for r in rows:
            assert r["status"] in ("ok", "error") and r["path"]
    print("rows after each kill:", seen)
    assert len(seen) < 5 or sum(0 < n < 11 for n in seen) >= 2  # kills did land mid-run
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_report(out, fmt)
    assert len(rows) == 11 and len({r["scan_id"] for r in rows}) == 11
    assert sorted(r["path"] for r in rows if r["status"] == "error") == ["broken.nii.gz"]
    assert all(r["bad_score"] is not None for r in rows if r["status"] == "ok")
