"""Per-scan work that runs in worker processes (local pool or Dask workers).

:func:`prepare_entry` reads one discovered scan, runs the QC checks and the quality
metrics, and cuts the model input slices; it returns a small picklable dict. No model is
run here (embedding is batched across scans in the main process), so a worker needs no
GPU. It never raises for a bad scan: the result then has status ``error`` and the
one-line cause.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.batch.columns import QUALITY_COLUMNS, empty_row
from scanqc.io.privacy import export_text
from scanqc.io.scan import SEVERITIES, Scan, ScanEntry, ScanReadError, ScanWarning


def worker_init() -> None:
    """Initialise a worker process: ignore Ctrl-C (the main process handles it), 1 thread."""
    # ValueError: not the main thread (e.g. a Dask worker thread)
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["torch"].set_num_threads(1)


def relative_path(path: str, root: str | None) -> str:
    """``path`` relative to ``root`` (POSIX separators), or its name when no root is given."""
    if not path:
        return ""
    if root:
        try:
            return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()
        except ValueError:  # another drive on Windows
            pass
    return Path(path).name


def _fmt_tuple(values: Any, digits: int = 4) -> str:
    if values is None:
        return ""
    out = []
    for v in values:
        if isinstance(v, (float, np.floating)):
            out.append(f"{float(v):.{digits}g}")
        else:
            out.append(str(int(v)) if isinstance(v, (int, np.integer)) else str(v))
    return "x".join(out)


def warnings_columns(warnings: list[ScanWarning]) -> tuple[str, str, str]:
    """Return ``(codes, details, max_severity)`` report texts for ``warnings``."""
    try:
        from scanqc.scoring.checks import warnings_to_columns

        codes, details = warnings_to_columns(warnings)
    except ImportError:
        codes = ";".join(dict.fromkeys(w.code for w in warnings))
        details = " | ".join(f"{w.code}: {w.message}" for w in warnings)
    sev = ""
    for w in warnings:
        rank = SEVERITIES.index(w.severity) if w.severity in SEVERITIES else -1
        if rank >= 0 and (not sev or rank > SEVERITIES.index(sev)):
            sev = w.severity
    return codes, details, sev


def entry_row(entry: ScanEntry, root: str | None) -> dict[str, Any]:
    """The descriptive part of a row, from discovery only (no pixels read)."""
    row = empty_row()
    names = entry.private_names  # folder/file names holding an identifier -> [redacted]
    row.update(
        scan_id=entry.scan_id,
        # a report's text: identifying names redacted, valid UTF-8 (io.privacy.export_text)
        path=export_text(relative_path(entry.path, root), names),
        name=export_text(entry.name or Path(entry.path).name, names),
        kind=entry.kind,
        format=entry.format,
        modality=entry.modality,
        shape=_fmt_tuple(entry.shape),
        spacing=_fmt_tuple(entry.spacing),
        status=entry.status,
        error=export_text(" ".join(str(entry.error).split()), names)
        if entry.status != "ok" else "",
    )
    if entry.warnings:
        row["warnings"], row["warnings_detail"], row["max_severity"] = warnings_columns(
            list(entry.warnings)
        )
    row["_paths"] = tuple(entry.paths)
    return row


def error_row(entry: ScanEntry, root: str | None, cause: str, status: str = "error") -> dict:
    """A row with ``status`` (error or skipped) and a one-line cause naming the file."""
    row = entry_row(entry, root)
    cause = " ".join(str(cause).split())
    for prefix in (f"{entry.path}: ", f"{os.path.abspath(entry.path)}: "):
        if entry.path and cause.startswith(prefix):
            cause = cause[len(prefix):]
    for p in (entry.path, os.path.abspath(entry.path)) if entry.path else ():
        cause = cause.replace(p, relative_path(p, root))  # no absolute paths in reports
    if root:
        cause = cause.replace(os.path.abspath(root) + os.sep, "")
    cause = export_text(cause, entry.private_names)
    row.update(status=status, error=f"{row['path'] or row['name']}: {cause}")
    return row


def checks_and_quality(scan: Scan, keep: dict[str, Any] | None = None,
                       ) -> tuple[list[ScanWarning], dict[str, float]]:
    """Run the QC checks and the quality metrics in one pass.

    :func:`scanqc.scoring.checks.check_scan` prepares the downsampled data (body mask,
    window) once and feeds both the checks and the metrics.

    Returns:
        ``(warnings, metrics)``: reader warnings then check warnings; metrics without
        missing values.
    """
    from scanqc.scoring.checks import check_scan

    warnings, metrics = check_scan(scan, keep=keep)
    return list(warnings), {k: v for k, v in (metrics or {}).items() if v is not None}


def asymmetry_score(scan: Scan, warnings: list[ScanWarning],
                    entry: ScanEntry | None = None) -> float:
    """The scan-level left-right asymmetry score (NaN when it cannot be computed).

    :func:`scanqc.scoring.asymmetry.asymmetry_map` with its default method (no encoder
    run). A failure adds an info warning ``check_failed`` to ``warnings`` instead of
    failing the scan. A mammogram (a 2D image with a DICOM laterality and Modality MG, a
    breast body part or a mammographic view) has no symmetry line of its own: it gets NaN
    and an info note (``scanqc asymmetry`` pairs it with the other side's image).
    """
    from scanqc.scoring.asymmetry import asymmetry_map
    from scanqc.scoring.asymmetry_pairs import is_mammogram, laterality

    if entry is not None and not scan.is_volume and laterality(entry) and is_mammogram(entry):
        warnings.append(ScanWarning(
            "asymmetry_needs_pair", "asymmetry: a single-side image is compared with the "
            "other side's image (scanqc asymmetry or the Asymmetry dock), not scored here",
            severity="info"))
        return float("nan")
    try:
        return float(asymmetry_map(scan).score)
    except (ValueError, RuntimeError, MemoryError, IndexError) as exc:
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        warnings.append(ScanWarning("check_failed", f"asymmetry failed ({cause})",
                                    severity="info"))
        return float("nan")


#: Environment variable naming a file that gets one line per scan read (benchmarks and
#: tests count reads across processes and runs with it, e.g. benchmarks/kill_resume.py).
TRACE_ENV = "SCANQC_TRACE_READS"


def _trace_read(entry: ScanEntry) -> None:
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = f"{entry.scan_id}\t{os.getpid()}\n".encode()
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one short O_APPEND write: lines never interleave
        finally:
            os.close(fd)


def prepare_entry(entry: ScanEntry, options: dict[str, Any]) -> dict[str, Any]:
    """Read, check and preprocess one scan (runs in a worker process).

    Args:
        entry: A discovered scan with status ``ok``.
        options: ``root``, ``size``, ``max_slices``, ``max_bytes``, ``checks`` (bool),
            ``content_key`` (bool: hash the files for the resume cache), ``duplicates``
            (bool, default True: the row's ``fingerprint`` for duplicate detection).

    Returns:
        ``{"row": partial row, "slices": float32 (N, S, S) or None, "slice_index": (N,),
        "warnings": [ScanWarning], "content": str or None, "seconds": float}``. The row's
        ``acquisition`` is the scan's :class:`scanqc.scoring.acquisition.AcquisitionProfile`
        as a dict. On failure the row has status ``error`` and ``slices`` is None.
    """
    t0 = time.perf_counter()
    _trace_read(entry)
    root = options.get("root")
    result: dict[str, Any] = {"slices": None, "slice_index": None, "warnings": [],
                              "content": None}
    if options.get("content_key"):
        from scanqc.batch.cache import content_key

        result["content"] = content_key(entry.paths)
    try:
        from scanqc.io.load import load_scan

        scan = load_scan(entry, max_bytes=options.get("max_bytes"))
        row = entry_row(entry, root)
        row["shape"] = _fmt_tuple(scan.spatial_shape)
        row["spacing"] = _fmt_tuple(scan.spacing)
        row["modality"] = scan.modality or entry.modality
        kept: dict[str, Any] = {}
        if options.get("checks", True):
            warnings, metrics = checks_and_quality(scan, kept)
            row.update({k: v for k, v in metrics.items() if k in QUALITY_COLUMNS})
            result["metrics"] = dict(metrics)  # all measures: reference quality distance
        else:
            warnings = list(scan.warnings)
        if options.get("asymmetry"):
            row["asymmetry_score"] = asymmetry_score(scan, warnings, entry)
        if options.get("duplicates", True):
            from scanqc.scoring.duplicates import fingerprint, to_text

            data = kept.get("data")  # a 2D image's windowed copy is the hash's input too
            windowed = data.win[0] if data is not None and not scan.is_volume else None
            with contextlib.suppress(Exception):  # duplicates are a bonus, never fatal
                row["fingerprint"] = to_text(fingerprint(scan, windowed))
        row["warnings"], row["warnings_detail"], row["max_severity"] = warnings_columns(warnings)
        from scanqc.models.preprocess import scan_to_slices

        slices, idx = scan_to_slices(
            scan, size=int(options.get("size", 128)), max_slices=options.get("max_slices")
        )
        if len(slices) == 0:
            raise ScanReadError(entry.path, "no slices to score")
        from scanqc.scoring.acquisition import acquisition_profile
        from scanqc.scoring.region import region_header

        # compared with the references or the dataset; a row key that is not a report
        # column, kept in the resume cache like the fingerprint; a bonus, never fatal
        with contextlib.suppress(Exception):
            row["acquisition"] = acquisition_profile(scan).to_dict()
        result.update(
            slices=np.ascontiguousarray(slices, dtype=np.float32),
            slice_index=np.asarray(idx, dtype=np.int64),
            warnings=warnings,
            region_header=region_header(scan),
            n_slices=int(scan.spatial_shape[0]) if scan.is_volume else 1,
            is_volume=bool(scan.is_volume),
        )
        del scan
    except ScanReadError as exc:
        row = error_row(entry, root, str(exc))
    except MemoryError:
        row = error_row(entry, root, "out of memory while reading or preprocessing")
    except Exception as exc:  # noqa: BLE001 - one bad scan never stops a batch
        row = error_row(entry, root, f"{type(exc).__name__}: {exc}")
    result["row"] = row
    result["seconds"] = time.perf_counter() - t0
    return result


def read_only(entry: ScanEntry, options: dict[str, Any]) -> dict[str, Any]:
    """Only read the scan (the baseline of the throughput benchmark)."""
    from scanqc.io.load import load_scan

    t0 = time.perf_counter()
    try:
        scan = load_scan(entry, max_bytes=options.get("max_bytes"))
        shape = scan.data.shape
        status = "ok"
    except Exception as exc:  # noqa: BLE001
        shape, status = (), f"error: {exc}"
    return {"shape": shape, "status": status, "seconds": time.perf_counter() - t0}
