"""CPU time of ``load_scan`` per DICOM file, for a folder of DICOM series.

    .venv/bin/python benchmarks/dicom_read.py [--data DIR] [--scans 20] [--repeat 3]
    .venv/bin/python benchmarks/dicom_read.py --discovery    # discover() of the whole folder
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/dicom_read.py

Default data: the synthetic archive of ``throughput.py --dicom-series 40`` (40 MR series of
100 uncompressed 256 x 256 slices, written once under /tmp/scanqc_bench). One process,
one thread: the reader alone (header parse, pixel decoding, rescale, geometry), without
discovery or worker processes. Run it alternately with two checkouts (``PYTHONPATH``) to
compare reader versions on this shared machine, whose speed drifts by 10-20 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    """Print the median CPU milliseconds per file over ``--repeat`` passes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--scans", type=int, default=20, help="series read per pass")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--discovery", action="store_true",
                    help="time discover() of the whole folder (headers, grouping, name "
                         "redaction) instead of load_scan")
    args = ap.parse_args(argv)

    import scanqc
    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan

    if args.data is None:
        from throughput import generate_dicom_series

        args.data = generate_dicom_series(40)
    if args.discovery:
        per_file, n_files = [], 0
        for _ in range(args.repeat):
            t0 = time.process_time()
            found = discover([args.data])
            n_files = sum(len(e.paths) for e in found)
            per_file.append((time.process_time() - t0) / n_files * 1e3)
        print(f"{n_files} files from {args.data}; scanqc at {Path(scanqc.__file__).parent}")
        print(f"discover CPU per file: median {statistics.median(per_file):.3f} ms "
              f"(passes: {', '.join(f'{v:.3f}' for v in per_file)})")
        return 0
    entries = [e for e in discover([args.data]) if e.status == "ok" and e.format == "dicom"]
    entries = entries[: args.scans]
    n_files = sum(len(e.paths) for e in entries)
    load_scan(entries[0])  # imports and codecs outside the timing
    per_file = []
    for _ in range(args.repeat):
        t0 = time.process_time()
        for e in entries:
            load_scan(e)
        per_file.append((time.process_time() - t0) / n_files * 1e3)
    print(f"{len(entries)} DICOM scans, {n_files} files from {args.data}; scanqc at "
          f"{Path(scanqc.__file__).parent}")
    print(f"load_scan CPU per file: median {statistics.median(per_file):.3f} ms "
          f"(passes: {', '.join(f'{v:.3f}' for v in per_file)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
