"""Kill and resume ``scanqc score``: every file gets exactly one row, no scan is read twice.

1. Writes a folder of ``--n`` files (default 10,000) under ``/tmp/scanqc_killres/<n>``:
   95 % small valid scans (NIfTI 16x64x64 and 64x64 PNG) and 5 % corrupt or non-image
   files with scan names (truncated gzip, text in a ``.png``, random bytes in a ``.dcm``,
   an empty ``.nii``, HTML in a ``.jpg``, a truncated PNG). Five more valid volumes in a
   separate folder are the references.
2. Runs ``scanqc score FOLDER --out report.csv --references refs.txt`` and SIGKILLs its
   whole process group (main process and workers) once ``--kill-at`` of the rows are in
   the report.
3. Re-runs the same command with ``--resume`` until it finishes.
4. Counts, with ``SCANQC_TRACE_READS`` (one line per scan read, written by the worker
   processes): scans read in each run, scans read in both, and scans read again although
   their row was already in the report after the kill (the real double scoring: must be 0).
   Scans read in both runs without a row after the kill are work lost with the killed run.
   The reference scans are outside the folder and read by both runs (not counted).
5. Checks that the final report has exactly one row per file.

Usage::

    python benchmarks/kill_resume.py --n 10000 --workers 2
    python benchmarks/kill_resume.py --n 400 --workers 2     # quick
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(os.environ.get("SCANQC_BENCH_DIR", "/tmp/scanqc_killres"))
BAD_KINDS = ("truncated_gz", "text_png", "random_dcm", "empty_nii", "html_jpg", "truncated_png")


def write_valid(path_stem: Path, i: int, rng: np.random.Generator) -> Path:
    """One small valid scan: 70 % NIfTI 16x64x64 int16, 30 % PNG 64x64."""
    import nibabel as nib
    from PIL import Image

    if i % 10 < 7:
        z, y, x = np.mgrid[0:16, 0:64, 0:64]
        cy, cx = 32 + rng.integers(-6, 7), 32 + rng.integers(-6, 7)
        vol = 900 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 300.0)
        vol = np.clip(vol + 25 * rng.standard_normal(vol.shape), 0, None).astype(np.int16)
        path = path_stem.with_suffix(".nii.gz")
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), np.diag([1.0, 1.0, 2.5, 1.0])), path)
    else:
        yy, xx = np.mgrid[0:64, 0:64]
        im = 200 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 400.0) + 12 * rng.random((64, 64))
        path = path_stem.with_suffix(".png")
        Image.fromarray(im.astype(np.uint8)).save(path)
    return path


def write_bad(path_stem: Path, i: int, rng: np.random.Generator, good_png: bytes) -> Path:
    """One corrupt or non-image file with a scan name."""
    kind = BAD_KINDS[i % len(BAD_KINDS)]
    if kind == "truncated_gz":
        path = path_stem.with_suffix(".nii.gz")
        blob = gzip.compress(rng.integers(0, 255, 4000, dtype=np.uint8).tobytes())
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "text_png":
        path = path_stem.with_suffix(".png")
        path.write_text("this is a text file, not a PNG\n" * 5)
    elif kind == "random_dcm":
        path = path_stem.with_suffix(".dcm")
        path.write_bytes(rng.integers(0, 255, 2048, dtype=np.uint8).tobytes())
    elif kind == "empty_nii":
        path = path_stem.with_suffix(".nii")
        path.write_bytes(b"")
    elif kind == "html_jpg":
        path = path_stem.with_suffix(".jpg")
        path.write_text("<html><body>not an image</body></html>\n")
    else:
        path = path_stem.with_suffix(".png")
        path.write_bytes(good_png[: len(good_png) // 3])
    return path


def generate(n: int, root: Path = ROOT) -> tuple[Path, Path, list[Path]]:
    """Write the folder once; return ``(folder, reference list file, files)``."""
    out = root / str(n)
    data, refs = out / "data", out / "refs"
    marker = out / ".complete"
    if marker.exists():
        files = sorted(p for p in data.rglob("*") if p.is_file())
        return data, out / "refs.txt", files
    rng = np.random.default_rng(n)
    refs.mkdir(parents=True, exist_ok=True)
    ref_paths = [write_valid(refs / f"ref{i}", 0, rng) for i in range(5)]
    (out / "refs.txt").write_text("".join(f"{p}\n" for p in ref_paths))
    good_png = None
    files: list[Path] = []
    for i in range(n):
        sub = data / f"d{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        stem = sub / f"s{i:05d}"
        if i % 20 == 19:  # 5 %
            if good_png is None:
                good_png = write_valid(out / "tmp", 7, rng).read_bytes()
            files.append(write_bad(stem, i // 20, rng, good_png))
        else:
            files.append(write_valid(stem, i, rng))
    for p in out.glob("tmp.*"):
        p.unlink()
    marker.write_text("ok")
    return data, out / "refs.txt", sorted(files)


def report_rows(path: Path) -> list[dict]:
    """Rows of a (possibly killed) CSV report: complete lines only."""
    from scanqc.batch.output import read_report

    return read_report(path, "csv") if path.exists() else []


def traced(path: Path) -> collections.Counter:
    """scan_id -> number of reads, from a trace file."""
    c: collections.Counter = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            if "\t" in line:
                c[line.split("\t", 1)[0]] += 1
    return c


def main(argv: list[str] | None = None) -> int:
    """Run the check; print JSON, a markdown table and the command; exit 1 on failure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-at", type=float, default=0.5, help="fraction of rows before kill")
    ap.add_argument("--work", type=Path, default=None, help="output folder (default: tmp)")
    args = ap.parse_args(argv)
    t_gen = time.perf_counter()
    data, refs, files = generate(args.n)
    print(f"# {len(files)} files in {data} ({time.perf_counter() - t_gen:.0f} s to prepare)",
          file=sys.stderr)
    work = args.work or (ROOT / f"{args.n}-run")
    work.mkdir(parents=True, exist_ok=True)
    out = work / "report.csv"
    for p in work.glob("report.csv*"):
        p.unlink()
    for p in work.glob("trace*.log"):
        p.unlink()
    scanqc = Path(sys.executable).with_name("scanqc")
    cmd = [str(scanqc), "score", str(data), "--out", str(out), "--references", str(refs),
           "--workers", str(args.workers), "--no-progress"]

    # run 1: killed midway
    env = dict(os.environ, SCANQC_TRACE_READS=str(work / "trace1.log"))
    t0 = time.perf_counter()
    err1 = open(work / "run1.err", "w")  # noqa: SIM115 - outlives the Popen call
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=err1)
    target = int(args.kill_at * len(files))
    killed_at = None
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            with open(out, "rb") as fh:
                n_lines = sum(1 for _ in fh) - 1
        except OSError:
            n_lines = 0
        if n_lines >= target:
            os.killpg(proc.pid, signal.SIGKILL)  # main process and its workers, at once
            killed_at = n_lines
            break
    proc.wait()
    err1.close()
    t1 = time.perf_counter() - t0
    time.sleep(1.0)  # let the killed workers disappear
    after_kill = report_rows(out)
    ids_after_kill = {r["scan_id"] for r in after_kill}

    # run 2: --resume
    env = dict(os.environ, SCANQC_TRACE_READS=str(work / "trace2.log"))
    t0 = time.perf_counter()
    with open(work / "run2.err", "w") as err2:
        rc2 = subprocess.run([*cmd, "--resume"], env=env, stdout=subprocess.DEVNULL,
                             stderr=err2).returncode
    t2 = time.perf_counter() - t0

    final = report_rows(out)
    ids = [r["scan_id"] for r in final]
    by_path = collections.Counter(r["path"] for r in final)
    rel = {p.relative_to(data).as_posix() for p in files}
    reads1, reads2 = traced(work / "trace1.log"), traced(work / "trace2.log")
    ref_ids = set(reads1) - {r["scan_id"] for r in final}  # the references (outside)
    r1 = {k for k in reads1 if k not in ref_ids}
    r2 = {k for k in reads2 if k not in ref_ids}
    status = collections.Counter(r["status"] for r in final)
    res = {
        "files": len(files), "corrupt_or_non_image": sum(1 for i in range(args.n)
                                                         if i % 20 == 19),
        "rows_after_kill": len(after_kill), "killed_at_lines": killed_at,
        "run1_s": round(t1, 1), "run1_rc": proc.returncode, "run2_s": round(t2, 1),
        "run2_rc": rc2, "final_rows": len(final), "unique_scan_ids": len(set(ids)),
        "files_with_exactly_one_row": sum(1 for p in rel if by_path.get(p) == 1),
        "files_without_row": len(rel - set(by_path)),
        "rows_not_matching_a_file": len(set(by_path) - rel),
        "status": dict(status),
        "scans_read_run1": len(r1), "scans_read_run2": len(r2),
        "scans_read_in_both_runs": len(r1 & r2),
        "reread_although_row_written_before_kill": len(r2 & ids_after_kill),
        "read_twice_within_one_run": sum(1 for k, v in reads1.items() if v > 1 and k in r1)
        + sum(1 for k, v in reads2.items() if v > 1 and k in r2),
    }
    ok = (res["final_rows"] == len(files) == res["unique_scan_ids"]
          == res["files_with_exactly_one_row"]
          and res["reread_although_row_written_before_kill"] == 0 and rc2 == 0)
    res["pass"] = ok
    print(json.dumps(res))
    print()
    print("| quantity | count |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v} |")
    print(f"\ncommand: python benchmarks/kill_resume.py {' '.join(argv or sys.argv[1:])}")
    print(f"scored with: {' '.join(cmd[1:])} [--resume]; load average "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
