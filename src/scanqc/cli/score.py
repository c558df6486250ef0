"""``scanqc score``: score folders of scans into a report (CSV, JSON lines or parquet).

``scanqc score PATH... --out report.csv [--references FILE] [--format csv|parquet|json]
[--html REPORT.html] [--workers N] [--scheduler ADDRESS|local] [--device auto|cpu|cuda]
[--resume] [--threshold X] [--statistic mean|min] [--max-slices N] [--root DIR]``

Rows are written as scans finish (crash-safe; see :mod:`scanqc.batch.output`); every
finished row also goes to a resume cache beside the report (``<out>.cache.sqlite``), so
``--resume`` after a crash or Ctrl-C scores only the scans not done yet. Ctrl-C stops
cleanly, keeping every row already written (exit code 130).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from scanqc.cli.arg_types import finite_float, non_negative_int, positive_float


def _default_workers() -> int:
    """One worker per CPU, at most 8.

    The command line has no GUI to keep responsive, and the main process's embedding does
    not need a core of its own: on 2 CPUs, 2 workers scored ../shared/data in 6.2 s against
    10.0 s with 1 worker (3 workers: 6.4 s; medians of 3). The viewer's docks keep one
    core free for napari.
    """
    return max(1, min(8, os.cpu_count() or 2))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``scanqc score``."""
    p = subparsers.add_parser(
        "score",
        help="score scans against references (or each other) and write a report",
        description=(
            "Score every scan under PATH... and write one report row per scan, as scans "
            "finish. With --references the scans are compared with known-good scans "
            "(Siamese reference-set distance); without, each scan is compared with the rest "
            "of the dataset (kNN outlier score, written at the end)."
        ),
    )
    p.add_argument("paths", nargs="+", type=Path, help="files or folders (searched recursively)")
    p.add_argument("--out", "-o", type=Path, required=True, help="report file to write")
    p.add_argument("--references", "-r", type=Path, default=None, metavar="FILE",
                   help="known-good scans: a text file with one path or scan_id per line "
                        "(# comments allowed), a labels CSV from 'scanqc labels export' (rows "
                        "with reference=1) or a label store (.sqlite). Default: the "
                        "references marked in the dataset's label store, if any")
    p.add_argument("--no-labels", action="store_true",
                   help="ignore the references marked in the dataset's label store")
    p.add_argument("--format", choices=("csv", "parquet", "json"), default=None,
                   help="report format (default: from the --out suffix, else csv); json = "
                        "JSON lines")
    p.add_argument("--html", type=Path, default=None, metavar="REPORT.html",
                   help="also write a self-contained HTML report")
    p.add_argument("--workers", "-j", type=non_negative_int, default=_default_workers(),
                   help="worker processes reading scans (0: no subprocess; default: one per "
                        "CPU, at most 8: %(default)s here)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS|local",
                   help="run the per-scan work on Dask: a scheduler address, or 'local' for a "
                        "LocalCluster of --workers processes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="device for the model (default: auto)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of an earlier run of the same --out and score only "
                        "the scans not done yet")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="distance threshold (default: the references' largest pairwise "
                        "distance; without references the IQR rule)")
    p.add_argument("--statistic", choices=("mean", "min"), default="mean",
                   help="distance to the references: mean (Belton) or min (FewSOME)")
    p.add_argument("--max-slices", type=non_negative_int, default=32,
                   help="slices per volume used by the model, evenly spaced (0: all)")
    p.add_argument("--root", type=Path, default=None,
                   help="dataset root; report paths are relative to it (default: common "
                        "folder of PATH...)")
    p.add_argument("--finetune", action="store_true",
                   help="fine-tune the encoder on the references before scoring (FewSOME)")
    p.add_argument("--asymmetry", action="store_true",
                   help="also fill asymmetry_score with the left-right asymmetry score "
                        "(about 5-7 s per head volume; heatmaps: scanqc asymmetry)")
    p.add_argument("--include-identifiers", action="store_true",
                   help="write folder and file names that hold the patient's name or an ID "
                        "from the DICOM header as they are (default: [redacted]), and show "
                        "thumbnails of images with burned-in text in the HTML report")
    p.add_argument("--timeout", type=positive_float, default=600.0,
                   help="seconds one scan may take before it is reported as an error")
    p.add_argument("--cache", type=Path, default=None,
                   help="resume cache file (default: <out>.cache.sqlite)")
    p.add_argument("--no-cache", action="store_true", help="do not write a resume cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def read_reference_file(path: str | Path) -> list[str]:
    """Return the items of a reference list: one path or scan_id per line, ``#`` comments.

    Relative paths that exist relative to the list's folder are made absolute. A label
    store (SQLite) or a labels CSV (a header with a ``reference`` column, as written by
    ``scanqc labels export``) gives the scans marked as references.

    Raises:
        ValueError: The file cannot be read (one line).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if data.startswith(b"SQLite format 3\x00"):
            return _store_references(path)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the reference list ({exc})") from exc
    first = re.split(r"[,;\t]", text.lstrip("\ufeff").split("\n", 1)[0].strip().lower())
    if "reference" in first and ("scan_id" in first or "path" in first):
        return _csv_references(path)
    items = []
    for line in text.splitlines():
        item = line.split("#", 1)[0].strip()
        if item:
            items.append(_list_path(item, path.parent))
    if not items:
        raise ValueError(f"{path}: the reference list is empty")
    return items


def _list_path(item: str, folder: Path) -> str:
    r"""An item of a reference list as given, or the file it names relative to ``folder``.

    A file name that is not valid UTF-8 appears in scanqc's reports as printable text
    (``\xff``); such an item names that file again (:func:`scanqc.io.scan.file_name_of`).
    A scan_id, or a path that exists nowhere, comes back unchanged.
    """
    from scanqc.io.scan import file_name_of

    for name in dict.fromkeys((item, file_name_of(item))):
        if Path(name).exists():
            return name
        if not os.path.isabs(name) and (folder / name).exists():
            return str((folder / name).resolve())
    return item


def _store_references(path: Path) -> list[str]:
    """scan_ids of the references in the label store at ``path`` (at least one)."""
    from scanqc.io.labels import LabelStore

    with LabelStore.open(path) as store:
        items = [r.scan_id for r in store.references()]
    if not items:
        raise ValueError(f"{path}: the label store has no reference scans")
    return items


def _csv_references(path: Path) -> list[str]:
    """scan_ids (else paths) of the rows marked ``reference`` in a labels CSV."""
    from scanqc.io.labels import read_table

    items = []
    for row in read_table(path)[1]:
        if str(row.get("reference") or "").strip().lower() in ("1", "true", "yes", "y"):
            item = (row.get("scan_id") or "").strip()
            if not item and (row.get("path") or "").strip():
                item = _list_path(row["path"].strip(), path.parent)
            if item:
                items.append(item)
    if not items:
        raise ValueError(f"{path}: no row of the labels CSV is marked as a reference")
    return items


def dataset_references(paths: list[Path]) -> tuple[list[str], Path] | None:
    """The references marked in the label store of a single dataset folder, if any.

    Only an existing store is read (none is created); ``None`` when there is no store,
    it holds no references, or more than one path was given.
    """
    from scanqc.io.labels import default_store_path

    if len(paths) != 1 or not paths[0].is_dir():
        return None
    store = default_store_path(paths[0])
    if not store.is_file():
        return None
    try:
        return _store_references(store), store
    except ValueError:
        return None


#: Progress messages that start a phase of a run -> (bar label, unit counted).
_PHASES = {
    "reading headers": ("finding scans", "file"),
    "grouping DICOM series": ("finding scans", "file"),
    "reading references": ("references", "scan"),
    "embedding references": ("fine-tuning", "step"),
    "fine-tuning on the references": ("fine-tuning", "step"),
    "scoring": ("scoring", "scan"),
}
#: Error rows whose cause is repeated on the console after the summary line.
_SHOWN_ERRORS = 3
#: Flagged scans listed on the console after the summary, highest bad_score first.
_SHOWN_FLAGGED = 5
#: The fine-tuning progress message (``fine-tuning 3/60``).
_EPOCH = re.compile(r"fine-tuning \d+/\d+")


class _Bar:
    """tqdm on stderr fed by the engine's progress callback.

    The label and unit follow the phase of the run: ``finding scans`` (files whose
    headers are read), ``references``, ``fine-tuning`` (optimiser steps), ``scoring``.
    """

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit="file", file=sys.stderr, dynamic_ncols=True,
                            smoothing=0.1, desc="finding scans")

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.bar is None:
            return
        phase = _PHASES.get(message) or (
            _PHASES["fine-tuning on the references"] if _EPOCH.fullmatch(message) else None)
        if phase is not None and (self.bar.desc, self.bar.unit) != phase:
            self.bar.set_description_str(phase[0], refresh=False)
            self.bar.unit = phase[1]
        if done < self.bar.n or (total and self.bar.total and total != self.bar.total):
            self.bar.reset(total=total or None)  # a new phase (discovery, then scoring)
        elif total and self.bar.total != total:
            self.bar.total = total
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        if message:
            self.bar.set_postfix_str(str(message)[:40], refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _flag_reasons(row: dict) -> str:
    """Why a flagged row is flagged, for the console: its warn and high warning codes.

    Info notes (``no_spacing`` of a PNG, the ``fov_cut`` of a radiograph) are not reasons;
    a row without warn or high warnings is flagged by its distance alone.
    """
    from scanqc.scoring.checks import row_warnings

    found = row_warnings(row)
    codes = ";".join(dict.fromkeys(w.code for w in found if w.severity in ("warn", "high")))
    if codes:
        return codes
    return ("unlike the other scans" if row.get("reference_set_id") == "knn"
            else "unlike the references")


def run(args: argparse.Namespace) -> int:
    """Score ``args.paths``; return 0, or 130 when interrupted."""
    from scanqc.batch.cache import ResultCache
    from scanqc.batch.engine import ScoreConfig, default_root, score
    from scanqc.batch.output import ReportWriter, format_from_path, read_report
    from scanqc.io.privacy import REDACTED

    t0 = time.perf_counter()
    for p in args.paths:
        if not p.exists():
            raise ValueError(f"{p}: no such file or folder")
    for option, target in (("--out", args.out), ("--html", args.html)):
        if target is not None and Path(target).is_dir():
            raise ValueError(f"{target}: is a folder; {option} needs a file name")
    fmt = args.format or format_from_path(args.out)
    refs = read_reference_file(args.references) if args.references else None
    if refs is None and not args.no_labels:
        found = dataset_references(list(args.paths))
        if found is not None:
            refs = found[0]
            print(f"scanqc: using the {len(refs)} reference scans marked in {found[1]} "
                  "(--no-labels to ignore them)", file=sys.stderr)
    root = str(args.root) if args.root else default_root(args.paths)
    config = ScoreConfig(
        workers=args.workers, scheduler=args.scheduler, device=args.device, root=root,
        max_slices=args.max_slices or None, statistic=args.statistic, threshold=args.threshold,
        finetune=args.finetune, timeout=args.timeout, resume=args.resume,
        asymmetry=args.asymmetry, include_identifiers=args.include_identifiers,
    )
    cache = None
    if not args.no_cache:
        cache = ResultCache(args.cache or args.out.with_name(args.out.name + ".cache.sqlite"))
    writer = ReportWriter(args.out, fmt, resume=args.resume)
    bar = _Bar(not args.no_progress)
    counts = {"ok": 0, "error": 0, "skipped": 0, "flagged": 0, "cached": 0, "redacted": 0,
              "exact_duplicate": 0, "near_duplicate": 0, "unlike": 0}
    from scanqc.batch.report_html import Findings

    found = Findings()
    flagged_paths: dict[str, tuple[str, ...]] = {}
    errors: list[str] = []  # the first few error causes, echoed at the end
    worst: list[tuple[float, str, str]] = []  # (-bad_score, path, warnings) of flagged rows
    interrupted = False
    try:
        for row in score(args.paths, references=refs, config=config, progress=bar, cache=cache):
            writer.write(row)
            counts[row.get("status") or "error"] = counts.get(row.get("status") or "error", 0) + 1
            if row.get("status") == "error" and len(errors) < _SHOWN_ERRORS:
                errors.append(str(row.get("error") or row.get("path") or "?"))
            counts["cached"] += bool(row.get("_cached"))
            found.add(row)
            counts["redacted"] += REDACTED in str(row.get("path") or "")
            codes = str(row.get("warnings") or "").split(";")
            counts["exact_duplicate"] += "exact_duplicate" in codes
            counts["near_duplicate"] += "near_duplicate" in codes
            counts["unlike"] += any("_unlike_" in c for c in codes)
            if row.get("flagged"):
                counts["flagged"] += 1
                flagged_paths[str(row["scan_id"])] = tuple(row.get("_paths") or ())
                score = row.get("bad_score")
                score = float(score) if isinstance(score, (int, float)) else float("nan")
                worst.append((-score if score == score else 1.0, str(row.get("path") or ""),
                              _flag_reasons(row)))
                if len(worst) > 4 * _SHOWN_FLAGGED:  # keep the list small on huge runs
                    worst = sorted(worst)[:_SHOWN_FLAGGED]
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        out_file = writer.close(finalize=not interrupted)
        if cache is not None:
            cache.close()
    seconds = time.perf_counter() - t0
    n = counts["ok"] + counts["error"] + counts["skipped"]
    resumed = f" ({counts['cached']} from the resume cache)" if counts["cached"] else ""
    print(
        f"scanqc: {n} scanned{resumed}, {counts['flagged']} flagged, {counts['error']} errors, "
        f"{counts['skipped']} skipped in {seconds:.1f} s -> {out_file}",
        file=sys.stderr,
    )
    top = found.top(5)
    if top:
        print("scanqc: most found: " + ", ".join(f"{c} ({sev}, {n})" for c, sev, n in top)
              + " (all: the Findings of the HTML report)", file=sys.stderr)
    for neg, path, codes in sorted(worst)[:_SHOWN_FLAGGED]:
        score = f"{-neg:.2f}" if neg <= 0 else "  - "
        print(f"scanqc: flagged {score}  {path}  ({codes})", file=sys.stderr)
    if counts["flagged"] > _SHOWN_FLAGGED:
        print(f"scanqc: ... {counts['flagged'] - _SHOWN_FLAGGED} more flagged: the rows with "
              f"flagged=true in {out_file}", file=sys.stderr)
    if refs is None and counts["ok"] == 1 and not interrupted:
        print("scanqc: one readable scan and no references: no outlier score (it compares "
              "scans with each other); it is flagged only by its checks' warnings. Give "
              "--references or more scans", file=sys.stderr)
    if counts["exact_duplicate"] or counts["near_duplicate"]:
        print(f"scanqc: {counts['exact_duplicate']} exact and {counts['near_duplicate']} near "
              "duplicates of an earlier scan (warnings exact_duplicate, near_duplicate: each "
              "names the scan it copies)", file=sys.stderr)
    unlike: dict[str, int] = {}  # "resolution" -> scans with resolution_unlike_*
    for code, _sev, n in found.table():
        if "_unlike_" in code:
            kind = code.split("_unlike_")[0]
            unlike[kind] = unlike.get(kind, 0) + n
    if unlike:
        what = ("the references" if refs is not None
                else "the dataset's typical scans (info: no references were given)")
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(unlike.items(), key=lambda kv: -kv[1]))
        print(f"scanqc: {counts['unlike']} scans unlike {what} in how they were acquired "
              f"({kinds}: warnings *_unlike_*)", file=sys.stderr)
    if counts["redacted"]:
        print(f"scanqc: {counts['redacted']} paths hold the patient's name or an ID from the "
              "DICOM header in a folder or file name: written as [redacted] "
              "(--include-identifiers keeps them)", file=sys.stderr)
    for text in errors:
        print(f"scanqc: error: {text}", file=sys.stderr)
    if counts["error"] > len(errors):
        print(f"scanqc: ... and {counts['error'] - len(errors)} more errors: the rows with "
              f"status=error in {out_file}", file=sys.stderr)
    if interrupted:
        print("scanqc: interrupted; rows already written are kept (rerun with --resume)",
              file=sys.stderr)
        return 130
    if n == 0:
        where = ", ".join(str(p) for p in args.paths)
        print(f"scanqc: no scans found under {where} (NIfTI, DICOM and 2D image files are "
              "looked for in every subfolder)", file=sys.stderr)
    if args.html:
        from scanqc.batch.report_html import write_html_report

        rows = read_report(args.out, fmt)
        for r in rows:
            if str(r.get("scan_id")) in flagged_paths:
                r["_paths"] = flagged_paths[str(r["scan_id"])]
        write_html_report(rows, args.html, root=root, statistic=args.statistic,
                          include_identifiers=args.include_identifiers)
        print(f"scanqc: HTML report -> {args.html}", file=sys.stderr)
    return 0
