"""``scanqc asymmetry PATH... --out-dir DIR``: left-right asymmetry heatmaps and scores.

Example::

    scanqc asymmetry data/heads/ --out-dir asym/

For every scan found under PATH: a heatmap (``<scan_id>_asymmetry.nii.gz`` for volumes,
written in the original file's voxel order and affine when the input is NIfTI so it
overlays the original in any viewer; ``<scan_id>_asymmetry.png`` for 2D images) and one row
of ``asymmetry.csv``: ``scan_id, path, status, error, asymmetry_score, top_region,
heatmap, plane_offset_mm, plane_yaw_deg, plane_roll_deg, pair`` (paths relative to
``--root``, else to the common folder of PATH...). Unreadable files give a
row with status ``error`` and a one-line cause; the batch goes on. Inputs are never modified.

2D images with a DICOM ``ImageLaterality`` (mammograms) are compared with the other side's
image of the same ``ViewPosition`` in the same folder
(:func:`scanqc.scoring.asymmetry_pairs.pair_by_laterality`), not with their own mirror
image; one without a partner gets a ``skipped`` row saying so. ``--pair LEFT RIGHT`` pairs
two files explicitly (e.g. images without headers)::

    scanqc asymmetry --pair mdb001.pgm mdb002.pgm --out-dir asym/
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.io.privacy import export_text
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
    "pair",
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
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder")
    p.add_argument("--include-identifiers", action="store_true",
                   help="write folder and file names that hold the patient's name or an ID "
                        "as they are (default: [redacted])")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="dataset root: scan ids and the CSV's paths are relative to it "
                        "(paths default: the common folder of PATH...)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="model folder (default: the bundled asymmetry model)")
    p.add_argument("--method", choices=("siamese", "intensity-z", "intensity"), default="siamese",
                   help="siamese (default; the Siamese distance is weighted 0 because it did "
                   "not improve localisation on the benchmark, so it equals intensity-z), "
                   "intensity-z (normalised lesion-scale residual) or intensity (the plain "
                   "mirrored-difference baseline)")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("LEFT", "RIGHT"),
                   help="compare these two 2D images with each other (the right one mirrored), "
                   "e.g. the L and R MLO mammograms of one woman; repeatable. DICOM images "
                   "with ImageLaterality and ViewPosition are paired automatically within "
                   "each folder")
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


def _explicit_pairs(pairs: list[list[str]], root: str | None) -> list[tuple[Any, Any]]:
    """Discover the two files of every ``--pair LEFT RIGHT``."""
    from scanqc.io.discover import discover

    out = []
    for left, right in pairs:
        found = []
        for path in (left, right):
            entries = discover([path], root=root)
            if len(entries) != 1:
                raise ScanReadError(path, f"--pair needs one 2D image, found {len(entries)} scans")
            found.append(entries[0])
        out.append((found[0], found[1]))
    return out


class _Output:
    """The CSV and the heatmap files of one run."""

    def __init__(self, out_dir: Path, heatmaps: bool, root: str | None = None,
                 include_identifiers: bool = False) -> None:
        self.out_dir, self.heatmaps, self.root = out_dir, heatmaps, root
        self.include_identifiers = include_identifiers
        self.csv_path = out_dir / "asymmetry.csv"
        self._fh = open(self.csv_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.writer = csv.DictWriter(self._fh, fieldnames=FIELDS)
        self.writer.writeheader()
        self.n_ok = self.n_err = 0

    def _path(self, path: str, names: dict[str, str]) -> str:
        """``path`` relative to the dataset root, as text (no absolute paths in the CSV)."""
        from scanqc.batch.pipeline import relative_path

        return self._text(relative_path(path, self.root), names) if path else ""

    def _text(self, text: str, names: dict[str, str]) -> str:
        """One line of valid text; identifying folder and file names redacted."""
        if self.root:
            text = text.replace(os.path.abspath(self.root) + os.sep, "")
        names = {} if self.include_identifiers else names
        return export_text(" ".join(text.split()), names)

    def row(self, entry: Any, partner: Any = None, **values: Any) -> None:
        row: dict[str, Any] = dict.fromkeys(FIELDS, "")
        row.update(scan_id=entry.scan_id, **values)
        names = dict(entry.private_names)
        if partner is not None:
            names.update(partner.private_names)
            row["pair"] = self._path(partner.path, names)
        row.update(path=self._path(entry.path, names),
                   error=self._text(str(row["error"] or ""), names))
        self.n_ok += row.get("status") == "ok"
        self.n_err += row.get("status") == "error"
        self.writer.writerow(row)
        self._fh.flush()

    def result(self, entry: Any, scan: Scan, res: Any, partner: Any = None,
               **values: Any) -> None:
        row: dict[str, Any] = {
            "status": "ok",
            "asymmetry_score": f"{res.score:.6g}",
            "top_region": res.top_regions[0].describe() if res.top_regions else "",
            **values,
        }
        if res.plane is not None:
            row.update(
                plane_offset_mm=f"{res.plane.offset_mm:.3f}",
                plane_yaw_deg=f"{res.plane.yaw_deg:.2f}",
                plane_roll_deg=f"{res.plane.roll_deg:.2f}",
            )
        if self.heatmaps:
            sid = entry.scan_id or scan.scan_id or f"scan{self.n_ok}"
            if scan.spatial_ndim == 3:
                hp = self.out_dir / f"{sid}_asymmetry.nii.gz"
                _nifti_heatmap(scan, res.heatmap, hp)
            else:
                hp = self.out_dir / f"{sid}_asymmetry.png"
                _png_heatmap(res.heatmap, hp)
            row["heatmap"] = hp.name
        self.row(entry, partner, **row)

    def close(self) -> None:
        self._fh.close()


_ERRORS = (ValueError, RuntimeError, MemoryError, OSError)


def _one_line(entry: Any, exc: BaseException) -> str:
    return f"{entry.path}: {' '.join(str(exc).split())}"


def run(args: argparse.Namespace) -> int:
    """Score every scan; exit 0 unless the command itself cannot run."""
    from scanqc.batch.engine import default_root
    from scanqc.io.discover import discover
    from scanqc.io.load import read_entry
    from scanqc.models.asymmetry_net import load_bundled, load_model
    from scanqc.scoring.asymmetry import asymmetry_maps, asymmetry_pair
    from scanqc.scoring.asymmetry_pairs import pair_by_laterality

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        explicit = _explicit_pairs(args.pair, args.root)
    except ScanReadError as exc:
        print(f"scanqc asymmetry: {exc}", file=sys.stderr)
        return 1
    if not args.paths and not explicit:
        print("scanqc asymmetry: give PATH... and/or --pair LEFT RIGHT", file=sys.stderr)
        return 1
    paired_paths = {e.path for pair in explicit for e in pair}
    entries = [e for e in discover(list(args.paths), root=args.root)
               if e.path not in paired_paths] if args.paths else []
    pairing = pair_by_laterality(entries)
    model = None
    # image pairs always use the encoder (docs/asymmetry.md); volumes only for "siamese"
    if args.method == "siamese" or explicit or pairing.pairs:
        model = load_model(args.model)[0] if args.model else load_bundled()
    root = args.root or default_root([*args.paths, *(p for pair in args.pair or () for p in pair)])
    out = _Output(out_dir, not args.no_heatmaps, root, args.include_identifiers)
    try:
        for entry in pairing.others:
            scan = read_entry(entry)
            if scan is None:
                out.row(entry, status="skipped", error=entry.error)
                continue
            if isinstance(scan, ScanReadError):
                out.row(entry, status="error", error=str(scan))
                continue
            try:
                res = asymmetry_maps(scan, model, [args.method])[args.method]
                out.result(entry, scan, res)
            except _ERRORS as exc:
                out.row(entry, status="error", error=_one_line(entry, exc))
        for entry, why in pairing.unpaired:
            out.row(entry, status="skipped", error=f"{entry.path}: {why}")
        for left, right in [*pairing.pairs, *explicit]:
            scans = (read_entry(left), read_entry(right))
            if not all(isinstance(s, Scan) for s in scans):
                for e, s in zip((left, right), scans, strict=True):
                    partner = right if e is left else left
                    cause = str(s) if isinstance(s, ScanReadError) else (
                        f"{e.path}: partner {partner.path} unreadable" if isinstance(s, Scan)
                        else f"{e.path}: not an image")
                    out.row(e, partner, status="error", error=cause)
                continue
            try:
                res_l, res_r = asymmetry_pair(scans[0], scans[1], model)
            except _ERRORS as exc:
                for e, partner in ((left, right), (right, left)):
                    out.row(e, partner, status="error", error=_one_line(e, exc))
                continue
            out.result(left, scans[0], res_l, partner=right)
            out.result(right, scans[1], res_r, partner=left)
    finally:
        out.close()
    print(f"scanqc asymmetry: {out.n_ok} scored, {out.n_err} errors -> {out.csv_path}",
          file=sys.stderr)
    return 0
