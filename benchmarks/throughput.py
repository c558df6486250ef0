"""Throughput of ``scanqc score``: scans/s, peak memory, and cost relative to reading only.

For each dataset it measures, in the same run and the same worker setup:

* **read**: discover + ``load_scan`` of every scan in ``--workers`` processes
  (:func:`scanqc.batch.pipeline.read_only` through :class:`scanqc.batch.runners.LocalRunner`);
* **score**: the full engine (discover, read, checks, quality metrics, slices, batched
  embedding in the main process, kNN fallback scoring);

and reports scans/s, the ratio score/read, and the peak RSS of the whole process tree
(main + workers), sampled every 0.1 s.

The engine runs with its defaults for the torch threads of the main process (what
``scanqc score`` does: the cores the workers leave, at least one) and the forward batch.
The worker processes' fork server (which imports the reader, preprocessing and torch once)
is started before anything is timed, so that neither the first read nor the first score
pays for it.

Synthetic datasets (small NIfTI volumes 24x64x64 + 64x64 PNG radiographs, 70/30) are
generated once under ``/tmp/scanqc_bench/v2/<n>``. ``--clinical N`` adds scans of clinical
size (48 x 256 x 256 gzip NIfTI and 2048 x 2048 DICOM radiographs), ``--dicom-series N``
adds N MR series of 100 uncompressed 256 x 256 DICOM slices (the form of most archives), and
``--real`` the files of ../shared/data. A markdown table, the command and the machine facts
(CPUs, load average before and after) are printed at the end.

``--repeat N`` alternates N read/score pairs per dataset and reports the pair with the
median ratio and the range: on this shared 2-CPU machine the speed of one run drifts by
10-20 % within minutes, which a single pair cannot tell from a real change.

Usage::

    python benchmarks/throughput.py --sizes 100 1000 10000 --workers 2 --real
    python benchmarks/throughput.py --sizes --real --clinical 100 --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

BENCH_ROOT = Path(os.environ.get("SCANQC_BENCH_DIR", "/tmp/scanqc_bench")) / "v2"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def generate(n: int, root: Path = BENCH_ROOT) -> Path:
    """Write ``n`` synthetic scans (70 % NIfTI 24x64x64 int16, 30 % PNG 64x64) once."""
    import nibabel as nib
    from PIL import Image

    out = root / str(n)
    marker = out / ".complete"
    if marker.exists():
        return out
    rng = np.random.default_rng(n)
    z, y, x = np.mgrid[0:24, 0:64, 0:64]
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(n):
        sub = out / f"d{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        if i % 10 < 7:
            cy, cx = 32 + rng.integers(-6, 7), 32 + rng.integers(-6, 7)
            vol = 900 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 300.0)
            vol = vol + 25 * rng.standard_normal(vol.shape)
            img = nib.Nifti1Image(np.clip(vol, 0, None).astype(np.int16).transpose(2, 1, 0),
                                  np.diag([1.0, 1.0, 2.5, 1.0]))
            nib.save(img, sub / f"s{i:05d}.nii.gz")
        else:
            cy, cx = 32 + rng.integers(-4, 5), 32 + rng.integers(-4, 5)
            im = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 400.0)
            im = im + 12 * rng.random(im.shape)
            Image.fromarray(im.astype(np.uint8)).save(sub / f"s{i:05d}.png")
    marker.write_text("ok")
    return out


def _write_dicom(path: Path, im: np.ndarray, sop_class: str, **fields: object) -> None:
    """Write a 16-bit (12 stored) uncompressed DICOM image with ``fields`` set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    for key, value in fields.items():
        setattr(ds, key, value)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = im.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = im.tobytes()
    ds.save_as(path, enforce_file_format=True)


def generate_clinical(n: int, root: Path = BENCH_ROOT) -> Path:
    """Write ``n`` synthetic scans of clinical size once.

    70 % MR-like NIfTI volumes of 48 x 256 x 256 int16 (gzip, 1 x 1 x 3 mm; an ellipsoid
    head with an inner structure and noise), 30 % radiograph-like uncompressed 16-bit DICOM
    images of 2048 x 2048 (12 bits stored, 0.15 mm pixels, Modality DX). Uncompressed DICOM
    is the cheapest radiograph to read, so it is the hardest case for the score / read
    ratio among realistic sizes.
    """
    import nibabel as nib
    from pydicom.uid import generate_uid

    out = root / f"clinical-{n}"
    marker = out / ".complete"
    if marker.exists():
        return out
    rng = np.random.default_rng(10_000 + n)
    z, y, x = np.ogrid[0:48, 0:256, 0:256]
    yy, xx = np.ogrid[0:2048, 0:2048]
    for i in range(n):
        sub = out / f"d{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        if i % 10 < 7:
            cy, cx = 128 + rng.integers(-10, 11), 128 + rng.integers(-10, 11)
            r2 = ((y - cy) / 100.0) ** 2 + ((x - cx) / 85.0) ** 2 + ((z - 24) / 30.0) ** 2
            vol = np.where(r2 < 1, 600 + 300 * np.cos(6 * r2), 0.0)
            vol = vol + 15 * rng.standard_normal((48, 256, 256))
            img = nib.Nifti1Image(np.clip(vol, 0, None).astype(np.int16).transpose(2, 1, 0),
                                  np.diag([1.0, 1.0, 3.0, 1.0]))
            nib.save(img, sub / f"s{i:05d}.nii.gz")
        else:
            cy, cx = 1024 + rng.integers(-60, 61), 1024 + rng.integers(-60, 61)
            r2 = ((yy - cy) / 800.0) ** 2 + ((xx - cx) / 600.0) ** 2
            im = np.where(r2 < 1, 2500 + 900 * np.cos(5 * r2), 300.0)
            im = np.clip(im + 40 * rng.standard_normal((2048, 2048)), 0, 4095).astype(np.uint16)
            _write_dicom(sub / f"s{i:05d}.dcm", im, "1.2.840.10008.5.1.4.1.1.1.1",  # DX
                         Modality="DX", BodyPartExamined="CHEST",
                         StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(),
                         PixelSpacing=["0.15", "0.15"])
    marker.write_text("ok")
    return out


def generate_dicom_series(n: int, slices: int = 100, root: Path = BENCH_ROOT) -> Path:
    """Write ``n`` synthetic MR series of ``slices`` uncompressed DICOM files each, once.

    The commonest form of an imaging archive: one file per slice, 256 x 256, 16 bits
    allocated and 12 stored, 1 x 1 x 3 mm, axial, the same ellipsoid head phantom as
    :func:`generate_clinical` (positions and orientation in the headers, so that the files
    group into one series per folder).
    """
    from pydicom.uid import generate_uid

    out = root / f"dicom-series-{n}x{slices}"
    marker = out / ".complete"
    if marker.exists():
        return out
    rng = np.random.default_rng(20_000 + n)
    y, x = np.ogrid[0:256, 0:256]
    for i in range(n):
        sub = out / f"series{i:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        study, series = generate_uid(), generate_uid()
        cy, cx = 128 + rng.integers(-10, 11), 128 + rng.integers(-10, 11)
        for k in range(slices):
            dz = (k - slices / 2) / (slices / 2 * 0.8)
            r2 = ((y - cy) / 100.0) ** 2 + ((x - cx) / 85.0) ** 2 + dz**2
            im = np.where(r2 < 1, 600 + 300 * np.cos(6 * r2), 0.0)
            im = np.clip(im + 15 * rng.standard_normal((256, 256)), 0, 4095).astype(np.uint16)
            _write_dicom(sub / f"{k:04d}.dcm", im, "1.2.840.10008.5.1.4.1.1.4",  # MR
                         Modality="MR", SeriesDescription="T1 AX", StudyInstanceUID=study,
                         SeriesInstanceUID=series, InstanceNumber=k + 1,
                         ImagePositionPatient=[0.0, 0.0, 3.0 * k],
                         ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                         PixelSpacing=["1", "1"], SliceThickness="3")
    marker.write_text("ok")
    return out


class PeakRSS:
    """Sample RSS and CPU time of this process and all its descendants in a thread.

    ``peak``: the largest summed RSS seen. ``cpu_seconds``: user + system CPU seconds the
    process tree spent between enter and exit (main process exactly; children sampled
    every ``interval``, so a worker's last fraction of a second may be missed). On a
    machine shared with other jobs the CPU seconds are a load-independent companion of
    the wall-clock times.
    """

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.cpu_seconds = 0.0
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._main0 = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        procs = []
        with contextlib.suppress(Exception):
            procs = self.proc.children(recursive=True)
        for p in procs:
            with contextlib.suppress(Exception), p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
                self._last[p.pid] = t.user + t.system
        with contextlib.suppress(Exception):
            total += self.proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._start = dict(self._last)
        self._main0 = time.process_time()
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._sample()
        children = sum(v - self._start.get(pid, 0.0) for pid, v in self._last.items())
        self.cpu_seconds = time.process_time() - self._main0 + children


def time_read(paths: list[Path], workers: int) -> tuple[float, int, int, float]:
    """Seconds, scans read, peak RSS and CPU seconds for discovery + load_scan."""
    from scanqc.batch.discovery import discover_parallel
    from scanqc.batch.engine import _common_root_paths
    from scanqc.batch.pipeline import read_only
    from scanqc.batch.runners import LocalRunner, largest_first

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        root = _common_root_paths(paths)
        # the engine's discovery (large folders: headers read in the worker processes)
        entries = [e for e in discover_parallel(paths, root, workers) if e.status == "ok"]
        runner = LocalRunner(workers, {}, 600, 4 * workers + 2, fn=read_only)
        # the engine's order (largest first): both timings get the same scheduling
        queue, n = largest_first(entries)[::-1], 0
        try:
            while queue or runner.busy():
                while queue and runner.accepting():
                    runner.submit(queue.pop())
                n += len(runner.poll(0.05))
        finally:
            runner.close()
        dt = time.perf_counter() - t0
    return dt, n, mem.peak, mem.cpu_seconds


def time_score(paths: list[Path], workers: int, max_slices: int, size: int,
               encoder: object | None, device: str = "cpu",
               ) -> tuple[float, int, int, dict, float]:
    """Seconds, rows, peak RSS, row counts by status and CPU seconds of the full engine."""
    from scanqc.batch.engine import ScoreConfig, score

    cfg = ScoreConfig(workers=workers, device=device, max_slices=max_slices, size=size,
                      encoder=encoder)
    stats = {"ok": 0, "error": 0, "skipped": 0}
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for row in score(paths, config=cfg):
            stats[row["status"]] = stats.get(row["status"], 0) + 1
        dt = time.perf_counter() - t0
    return dt, sum(stats.values()), mem.peak, stats, mem.cpu_seconds


def _encoder(name: str) -> tuple[object | None, str]:
    """The bundled encoder when it loads, else a random one of the same architecture."""
    try:
        from scanqc.models.encoder import load_encoder

        load_encoder(name, "cpu")
        return None, f"bundled '{name}'"
    except Exception as exc:  # noqa: BLE001
        import torch

        from scanqc.models.encoder import SliceEncoder

        torch.manual_seed(0)
        return SliceEncoder().eval(), f"random SliceEncoder (bundled weights missing: {exc})"


def warm_forkserver() -> None:
    """Start the worker processes' fork server once, outside every timing."""
    from scanqc.batch.runners import mp_context

    p = mp_context().Process(target=os.getpid)
    p.start()
    p.join()


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _range(r: dict) -> str:
    rs = r.get("ratios") or []
    return f" ({rs[0]:.2f}-{rs[-1]:.2f}, n={len(rs)})" if len(rs) > 1 else ""


def markdown(results: list[dict]) -> str:
    """The results as a markdown table."""
    lines = ["| dataset | rows (ok/error/skipped) | read only (s) | score (s) | scans/s | "
             "score / read (range) | CPU s read / score (ratio) | peak RSS read | "
             "peak RSS score | load (1 min) |", "|---" * 10 + "|"]
    for r in results:
        st = r["status"]
        lines.append(
            f"| {r['dataset']} | {r['scans']} ({st.get('ok', 0)}/{st.get('error', 0)}/"
            f"{st.get('skipped', 0)}) | {r['read_s']:.1f} | {r['score_s']:.1f} | "
            f"{r['scans_per_s']:.1f} | {r['ratio_score_to_read']:.2f}{_range(r)} | "
            f"{r['cpu_read_s']:.1f} / {r['cpu_score_s']:.1f} ({r['cpu_ratio']:.2f}) | "
            f"{r['peak_rss_mb_read']} MB | {r['peak_rss_mb']} MB | "
            f"{' -> '.join(x.split('/')[0] for x in r['load'].split(' -> '))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line per dataset, then a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--real", action="store_true", help="also ../shared/data")
    ap.add_argument("--clinical", type=int, nargs="*", default=[],
                    help="also N synthetic scans of clinical size (see generate_clinical)")
    ap.add_argument("--dicom-series", type=int, nargs="*", default=[],
                    help="also N synthetic MR series of 100 DICOM slices (see "
                         "generate_dicom_series)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model", default="encoder")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="where the engine embeds (the read baseline is the same either way)")
    ap.add_argument("--json", type=Path, default=None, help="append results to this file")
    ap.add_argument("--repeat", type=int, default=1,
                    help="read/score pairs per dataset, alternating; the table gives the pair "
                         "with the median wall-clock ratio and the range of the ratios (on a "
                         "shared machine one run can be 10-20 %% off)")
    args = ap.parse_args(argv)
    load_before = _load()
    encoder, enc_desc = _encoder(args.model)
    warm_forkserver()
    print(f"# encoder: {enc_desc}; device={args.device}, workers={args.workers}, "
          f"cpu={os.cpu_count()}, "
          f"max_slices={args.max_slices}, size={args.size}", file=sys.stderr)
    sets: list[tuple[str, list[Path]]] = [(f"synthetic-{n}", [generate(n)]) for n in args.sizes]
    sets += [(f"clinical-{n}", [generate_clinical(n)]) for n in args.clinical]
    sets += [(f"dicom-series-{n}x100", [generate_dicom_series(n)]) for n in args.dicom_series]
    if args.real and (SHARED / "manifest.csv").exists():
        sets.append(("shared-data", [SHARED]))
    results = []
    for name, paths in sets:
        # read first: the score run then finds the same files in the page cache
        load0 = _load()
        pairs = []
        for _ in range(max(1, args.repeat)):
            rd = time_read(paths, args.workers)
            sc = time_score(paths, args.workers, args.max_slices, args.size, encoder,
                            args.device)
            pairs.append((sc[0] / rd[0], rd, sc))
        ratios = sorted(p[0] for p in pairs)
        _, (t_read, n_read, mem_read, cpu_read), (t_score, n_rows, mem_score, stats,
                                                  cpu_score) = sorted(pairs, key=lambda p: p[0])[
            (len(pairs) - 1) // 2]
        res = {
            "dataset": name, "scans": n_rows, "read_s": round(t_read, 2),
            "score_s": round(t_score, 2), "scans_per_s": round(n_rows / t_score, 2),
            "read_scans_per_s": round(n_read / t_read, 2),
            "ratio_score_to_read": round(t_score / t_read, 2),
            "cpu_read_s": round(cpu_read, 2), "cpu_score_s": round(cpu_score, 2),
            "cpu_ratio": round(cpu_score / max(cpu_read, 1e-9), 2),
            "peak_rss_mb_read": round(mem_read / 2**20), "peak_rss_mb": round(mem_score / 2**20),
            "status": stats, "workers": args.workers, "encoder": enc_desc.split(" (")[0],
            "device": args.device,
            "load": f"{load0} -> {_load()}",
            "ratios": [round(r, 2) for r in ratios],
        }
        results.append(res)
        print(json.dumps(res), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(res) + "\n")
    import platform

    import torch

    print()
    print(markdown(results))
    print(f"\ncommand: python benchmarks/throughput.py {' '.join(argv or sys.argv[1:])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
          f"device {args.device}, encoder {enc_desc.split(' (')[0]}; load average "
          f"(1/5/15 min) before {load_before}, after {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
