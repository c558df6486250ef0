"""Crash-safe streaming report writers: CSV, JSON lines, parquet.

Rows are written as they finish, in batches: each batch is formatted into whole lines
(no field ever holds a line break, see :func:`scanqc.batch.columns.format_value`), written
with one ``os.write`` loop and ``fsync``-ed. A process killed at any moment (even SIGKILL)
therefore leaves a file whose complete lines are valid rows; at most the last line is
partial. :func:`repair` drops such a trailing partial line, which ``--resume`` does before
appending, and :func:`read_report` ignores it.

Parquet cannot be appended to safely, so parquet reports are spooled to
``<out>.partial.csv`` and converted when the run ends (:meth:`ReportWriter.close`), through
a temporary file that is fsync-ed and renamed over the report: a parquet report is always
either the previous complete one or the new complete one. While a spool exists it holds
every row (a resumed run first copies the rows of a finished parquet report into it), so
:func:`read_report` reads the spool when there is one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scanqc.batch.columns import COLUMNS, from_record, to_record

FORMATS: tuple[str, ...] = ("csv", "json", "parquet")


def format_from_path(path: str | Path, default: str = "csv") -> str:
    """Guess the report format from a file suffix (``.parquet``, ``.jsonl``/``.json``)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".json", ".jsonl", ".ndjson"):
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    return default


def spool_path(path: str | Path, fmt: str) -> Path:
    """The file rows are appended to: the report itself, or the CSV spool for parquet."""
    path = Path(path)
    return path.with_name(path.name + ".partial.csv") if fmt == "parquet" else path


def repair(path: str | Path) -> int:
    """Truncate a trailing partial line of ``path`` in place; return bytes dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        pos = size
        chunk = 65536
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


def _complete_lines(path: Path) -> list[str]:
    """Complete (newline-terminated) lines of ``path``, decoded."""
    data = path.read_bytes()
    end = data.rfind(b"\n")
    if end < 0:
        return []
    return data[: end + 1].decode("utf-8", "replace").splitlines()


def read_report(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Read a report (or a spool) back into typed rows, ignoring a trailing partial line."""
    path = Path(path)
    fmt = fmt or format_from_path(path)
    if fmt == "parquet":
        spool = spool_path(path, fmt)
        if spool.exists() or not path.exists():
            path, fmt = spool, "csv"  # an unfinished (or killed) run: the spool is newest
        else:
            return read_parquet(path)
    lines = _complete_lines(path)
    if fmt == "json":
        rows = []
        for line in lines:
            if line.strip():
                rows.append(from_record(json.loads(line)))
        return rows
    if not lines:
        return []
    reader = csv.DictReader(io.StringIO("\n".join(lines) + "\n"))
    return [from_record(r) for r in reader]


class ReportWriter:
    """Append rows to a report, crash-safe (see the module docstring).

    Args:
        path: The report file.
        fmt: ``"csv"``, ``"json"`` (JSON lines) or ``"parquet"``.
        resume: Keep an existing report: drop its trailing partial line, remember its
            scan ids (rows with those ids are not written again) and append.
        batch_rows: Flush after this many buffered rows.
        flush_seconds: ... or when the oldest buffered row is this old.
        fsync: ``fsync`` after each flushed batch.

    Raises:
        ValueError: ``resume`` and the existing file has other columns.
    """

    def __init__(
        self,
        path: str | Path,
        fmt: str = "csv",
        *,
        resume: bool = False,
        batch_rows: int = 16,
        flush_seconds: float = 1.0,
        fsync: bool = True,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.path = Path(path)
        self.fmt = fmt
        self.file = spool_path(self.path, fmt)
        self.batch_rows = max(1, int(batch_rows))
        self.flush_seconds = float(flush_seconds)
        self.fsync = fsync
        self.existing_ids: set[str] = set()
        #: ``(model_version, reference_set_id)`` of the scored rows already in the report
        self.existing_runs: set[tuple[str, str]] = set()
        self.rows_written = 0
        self._buf: list[dict[str, Any]] = []
        self._oldest = 0.0
        self.file.parent.mkdir(parents=True, exist_ok=True)
        header_needed = True
        if resume and fmt == "parquet" and not self.file.exists() and self.path.exists():
            _seed_spool(self.path, self.file)
        if resume and self.file.exists() and self.file.stat().st_size > 0:
            repair(self.file)
            header_needed = self._load_existing()
        self._fd = os.open(
            self.file,
            os.O_WRONLY | os.O_CREAT | (os.O_APPEND if not header_needed else os.O_TRUNC),
            0o644,
        )
        if header_needed and self.line_format == "csv":
            self._write_bytes((",".join(COLUMNS) + "\n").encode())

    @property
    def line_format(self) -> str:
        """Format of the appended file: ``"csv"`` (also for the parquet spool) or ``"json"``."""
        return "json" if self.fmt == "json" else "csv"

    def _load_existing(self) -> bool:
        """Read the ids of an existing file; return True if it must be started afresh."""
        lines = _complete_lines(self.file)
        if self.line_format == "csv":
            if not lines:
                return True
            header = next(csv.reader([lines[0]]))
            if tuple(header) != COLUMNS:
                raise ValueError(
                    f"{self.file}: existing report has other columns; cannot resume into it"
                )
            rows = list(csv.DictReader(io.StringIO("\n".join(lines) + "\n")))
        else:
            rows = [json.loads(line) for line in lines if line.strip()]
        for r in rows:
            if r.get("scan_id"):
                self.existing_ids.add(str(r["scan_id"]))
            if r.get("reference_set_id"):
                self.existing_runs.add(_run_of(r))
        return False

    def _write_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self._fd)

    def write(self, row: dict[str, Any]) -> bool:
        """Buffer one row (flushed in batches); return False if its id is already there.

        Raises:
            ValueError: Resuming a report whose rows were scored with another model or
                reference set (the report would mix two kinds of score).
        """
        if self.existing_runs and row.get("reference_set_id") and (
                _run_of(row) not in self.existing_runs):
            model, refs = next(iter(self.existing_runs))
            raise ValueError(
                f"{self.path}: its rows were scored with another model or reference set "
                f"(model {model or '?'}, references {refs}; now {_run_of(row)[0] or '?'}, "
                f"{_run_of(row)[1]}); --resume would mix them: write to another --out, or "
                "score again without --resume")
        sid = str(row.get("scan_id") or "")
        if sid and sid in self.existing_ids:
            return False
        if sid:
            self.existing_ids.add(sid)
        if not self._buf:
            self._oldest = time.monotonic()
        self._buf.append(row)
        if (
            len(self._buf) >= self.batch_rows
            or time.monotonic() - self._oldest >= self.flush_seconds
        ):
            self.flush()
        return True

    def write_many(self, rows: Iterable[dict[str, Any]]) -> int:
        """Write several rows; return how many were new."""
        return sum(self.write(r) for r in rows)

    def flush(self) -> None:
        """Write the buffered rows as whole lines and fsync."""
        if not self._buf:
            return
        out = io.StringIO()
        if self.line_format == "csv":
            w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
            for row in self._buf:
                w.writerow(to_record(row))
        else:
            for row in self._buf:
                out.write(json.dumps(_json_record(row), ensure_ascii=False) + "\n")
        self._write_bytes(out.getvalue().encode("utf-8"))
        self.rows_written += len(self._buf)
        self._buf.clear()

    def close(self, finalize: bool = True) -> Path:
        """Flush and close; for parquet with ``finalize``, convert the spool and remove it.

        Returns:
            The report path (the spool while a parquet report is not finalized).
        """
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None  # type: ignore[assignment]
        if self.fmt == "parquet" and finalize:
            write_parquet(read_report(self.file, "csv"), self.path)
            self.file.unlink(missing_ok=True)
            return self.path
        return self.file

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(finalize=exc[0] is None)


def _run_of(row: dict[str, Any]) -> tuple[str, str]:
    """``(model_version, reference_set_id)`` of a row, as text."""
    return str(row.get("model_version") or ""), str(row.get("reference_set_id") or "")


def _json_record(row: dict[str, Any]) -> dict[str, Any]:
    """Typed JSON form of a row: exactly the columns, numbers as numbers."""
    return from_record(to_record(row))


def read_parquet(path: str | Path) -> list[dict[str, Any]]:
    """Read the typed rows of a finished parquet report."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path))
    return [{c: r.get(c) for c in COLUMNS} for r in table.to_pylist()]


def _seed_spool(report: Path, spool: Path) -> None:
    """Copy the rows of a finished parquet report into a new spool (atomically)."""
    rows = read_parquet(report)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(to_record(row))
    tmp = spool.with_name(spool.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(out.getvalue().encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, spool)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable by syncing the folder (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write typed rows to a parquet file (atomically: fsync-ed temp file + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scanqc.batch.columns import BOOL_COLUMNS, FLOAT_COLUMNS

    def _type(c: str) -> Any:
        if c in FLOAT_COLUMNS:
            return pa.float64()
        if c in BOOL_COLUMNS:
            return pa.bool_()
        return pa.string()

    schema = pa.schema([(c, _type(c)) for c in COLUMNS])
    typed = [from_record(to_record(r)) for r in rows]
    table = pa.Table.from_pylist(typed, schema=schema)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path
