"""``scanqc asymmetry PATH... --out-dir DIR``: left-right asymmetry heatmaps and scores.

Example::

    scanqc asymmetry data/heads/ --out-dir asym/

For every scan found under PATH: a heatmap (``<scan_id>_asymmetry.nii.gz`` for volumes,
written in the original file's voxel order and affine when the input is NIfTI so it
overlays the original in any viewer; ``<scan_id>_asymmetry.png`` for 2D images) and one row
of ``asymmetry.csv``: ``scan_id, path, status, error, asymmetry_score, top_region,
heatmap, plane_offset_mm, plane_yaw_deg, plane_roll_deg``. Unreadable files give a row with
status ``error`` and a one-line cause; the batch goes on. Inputs are never modified.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.io.scan import Scan, ScanReadError

log = logging.getLogger(__name__)

FIELDS = (
    "scan_id",
    "path",
    "status",
    "error",
    "asymmetry_score",
    "top_region",
    "heatmap",
    "plane_offset_mm",
    "plane_yaw_deg",
    "plane_roll_deg",
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``asymmetry`` sub-command."""
    p = subparsers.add_parser(
        "asymmetry",
        help="left-right asymmetry heatmaps (where a scan differs from its mirror image)",
        description=(
            "Estimate each scan's mid-sagittal plane, compare the scan with its mirror image "
            "(lesion-scale log-intensity residual normalised by the scan's own left-right "
            "variability; see docs/asymmetry.md) and write a heatmap per scan plus "
            "asymmetry.csv with a scan-level score and the top region."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder")
    p.add_argument("--root", default=None, metavar="DIR", help="dataset root for scan ids")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="model folder (default: the bundled asymmetry model)")
    p.add_argument("--method", choices=("siamese", "intensity-z", "intensity"), default="siamese",
                   help="siamese (default; the Siamese distance is weighted 0 because it did "
                   "not improve localisation on the benchmark, so it equals intensity-z), "
                   "intensity-z (normalised lesion-scale residual) or intensity (the plain "
                   "mirrored-difference baseline)")
    p.add_argument("--no-heatmaps", action="store_true", help="write the CSV only")
    p.set_defaults(func=run)
    return p


def _nifti_heatmap(scan: Scan, heat: np.ndarray, out: Path) -> None:
    """Write ``heat`` (scan data order) as NIfTI, in the source file's voxel order if possible."""
    import nibabel as nib

    data, affine = heat.astype(np.float32), np.asarray(scan.affine, dtype=float)
    src = scan.path
    if src and src.lower().endswith((".nii", ".nii.gz")):
        try:
            orig = nib.load(src)
            o_aff = np.asarray(orig.affine, dtype=float)
            tr = nib.orientations.ornt_transform(
                nib.orientations.io_orientation(affine), nib.orientations.io_orientation(o_aff)
            )
            back = nib.orientations.apply_orientation(data, tr)
            if tuple(back.shape) == tuple(orig.shape[:3]):
                data, affine = back, o_aff
        except Exception as exc:  # noqa: BLE001 - fall back to the scan's own geometry
            log.debug("%s: keeping scan geometry for the heatmap (%s)", src, exc)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(out))


def _png_heatmap(heat: np.ndarray, out: Path) -> None:
    from matplotlib import colormaps
    from PIL import Image

    peak = float(heat.max()) if heat.size else 0.0
    norm = heat / peak if peak > 0 else heat
    rgba = colormaps["inferno"](np.clip(norm, 0, 1))
    Image.fromarray((rgba[..., :3] * 255).astype(np.uint8)).save(out)


def run(args: argparse.Namespace) -> int:
    """Score every scan; exit 0 unless the command itself cannot run."""
    from scanqc.io.load import open_scans
    from scanqc.models.asymmetry_net import load_bundled, load_model
    from scanqc.scoring.asymmetry import asymmetry_maps

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = None
    if args.method == "siamese":
        model = load_model(args.model)[0] if args.model else load_bundled()
    csv_path = out_dir / "asymmetry.csv"
    n_ok = n_err = 0
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for entry, scan in open_scans(args.paths, root=args.root):
            row: dict[str, Any] = dict.fromkeys(FIELDS, "")
            row.update(scan_id=entry.scan_id, path=entry.path)
            if scan is None:
                row.update(status="skipped", error=entry.error)
                writer.writerow(row)
                continue
            if isinstance(scan, ScanReadError):
                row.update(status="error", error=str(scan))
                writer.writerow(row)
                n_err += 1
                continue
            try:
                res = asymmetry_maps(scan, model, [args.method])[args.method]
                row.update(
                    status="ok",
                    asymmetry_score=f"{res.score:.6g}",
                    top_region=res.top_regions[0].describe() if res.top_regions else "",
                )
                if res.plane is not None:
                    row.update(
                        plane_offset_mm=f"{res.plane.offset_mm:.3f}",
                        plane_yaw_deg=f"{res.plane.yaw_deg:.2f}",
                        plane_roll_deg=f"{res.plane.roll_deg:.2f}",
                    )
                if not args.no_heatmaps:
                    sid = entry.scan_id or scan.scan_id or f"scan{n_ok}"
                    if scan.spatial_ndim == 3:
                        hp = out_dir / f"{sid}_asymmetry.nii.gz"
                        _nifti_heatmap(scan, res.heatmap, hp)
                    else:
                        hp = out_dir / f"{sid}_asymmetry.png"
                        _png_heatmap(res.heatmap, hp)
                    row["heatmap"] = hp.name
                n_ok += 1
            except (ValueError, RuntimeError, MemoryError, OSError) as exc:
                row.update(status="error", error=f"{entry.path}: {' '.join(str(exc).split())}")
                n_err += 1
            writer.writerow(row)
            fh.flush()
    print(f"scanqc asymmetry: {n_ok} scored, {n_err} errors -> {csv_path}", file=sys.stderr)
    return 0
