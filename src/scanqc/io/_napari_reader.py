"""napari reader contribution: NIfTI, DICOM series and radiographs as image layers.

Imports neither napari nor torch: the reader returns plain LayerData tuples
``(data, kwargs, "image")``. ``get_reader`` is a fast check that never raises; the reader
skips unreadable scans with a warning and raises ``ValueError`` (napari shows it as a
notification) only when nothing at all could be read.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.io.images import is_image_path
from scanqc.io.intensity import robust_window
from scanqc.io.nifti import is_nifti_path
from scanqc.io.scan import Scan, ScanReadError

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: How many folder entries :func:`get_reader` looks at before giving up on a folder.
_MAX_PROBE = 2000


def _has_dicom_magic(path: str) -> bool:
    """True if the file has the ``DICM`` marker at byte 128 (cheap, never raises)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _is_scan_file(path: str) -> bool:
    """True for a file of one of scanqc's formats (by suffix, or DICOM by content)."""
    low = path.lower()
    if is_nifti_path(low) or is_image_path(low) or low.endswith(_DICOM_SUFFIXES):
        return True
    if os.path.basename(low) == "dicomdir":
        return True
    return _has_dicom_magic(path)


def _folder_has_scan(folder: str) -> bool:
    """Breadth-first look for one scan file, at most :data:`_MAX_PROBE` entries."""
    seen = 0
    queue = [folder]
    while queue:
        current = queue.pop(0)
        try:
            with os.scandir(current) as it:
                for entry in it:
                    seen += 1
                    if seen > _MAX_PROBE:
                        return False
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        queue.append(entry.path)
                    elif entry.is_file() and _is_scan_file(entry.path):
                        return True
        except OSError:
            continue
    return False


def _accepts(path: str) -> bool:
    if os.path.isdir(path):
        return _folder_has_scan(path)
    return os.path.isfile(path) and _is_scan_file(path)


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_scans` if ``path`` is (or holds) a scan scanqc reads, else None.

    Args:
        path: A file, a folder, or a list of those (napari's reader hook signature).
    """
    try:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if paths and all(_accepts(str(p)) for p in paths):
            return read_scans
    except Exception:  # noqa: BLE001 - a reader hook must never raise
        log.debug("get_reader(%r) failed", path, exc_info=True)
    return None


def _translate(scan: Scan) -> tuple[float, ...]:
    """World position (mm) of the first pixel, projected on each data axis."""
    aff = np.asarray(scan.affine, dtype=float)
    n = scan.spatial_ndim
    origin = aff[:3, 3]
    out = []
    for ax in range(n):
        col = aff[:3, ax]
        norm = float(np.linalg.norm(col))
        out.append(float(origin @ col / norm) if norm > 0 else 0.0)
    return tuple(out)


def scan_metadata(scan: Scan) -> dict[str, Any]:
    """The ``layer.metadata["scanqc"]`` dict: geometry, warnings and sanitized header."""
    from scanqc.io.privacy import scrub

    return {
        "scan_id": scan.scan_id,
        "path": scan.path,
        "paths": list(scan.paths),
        "name": scan.name,
        "kind": scan.kind,
        "modality": scan.modality,
        "shape": list(scan.data.shape),
        "dtype": str(scan.data.dtype),
        "spacing": [float(s) for s in scan.spacing],
        "affine": np.asarray(scan.affine, dtype=float).tolist(),
        "orientation": scan.orientation,
        "warnings": [w.to_dict() for w in scan.warnings],
        "header": scrub(dict(scan.metadata)),
    }


def scan_to_layer_data(scan: Scan) -> LayerData:
    """Turn a :class:`Scan` into a napari image LayerData tuple."""
    name = scan.name or Path(scan.path).name
    if name == "." or name.startswith(". - "):  # a series named after its (root) folder
        name = Path(scan.path).parent.name + name[1:]
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": tuple(float(s) for s in scan.spacing),
        "translate": _translate(scan),
        "metadata": {"scanqc": scan_metadata(scan)},
        "rgb": bool(scan.rgb),
    }
    if not scan.rgb:
        kwargs["contrast_limits"] = robust_window(scan.data, scan.modality)
        kwargs["colormap"] = "gray"
    return scan.data, kwargs, "image"


def read_scans(path: str | Sequence[str]) -> list[LayerData]:
    """Read every scan under ``path`` into image layers (one layer per scan).

    Unreadable scans are skipped with a warning naming the file and the cause.

    Raises:
        ValueError: When no scan at all could be read (the one-line causes joined).
    """
    from scanqc.io.load import open_scans

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[LayerData] = []
    errors: list[str] = []
    for _entry, result in open_scans(paths):
        if isinstance(result, Scan):
            layers.append(scan_to_layer_data(result))
        elif isinstance(result, ScanReadError):
            errors.append(str(result))
    if not layers:
        detail = "; ".join(errors[:5]) if errors else "no image scans found"
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(f"scanqc could not read {', '.join(map(str, paths))}: {detail}{more}")
    for msg in errors:
        log.warning("skipped unreadable scan: %s", msg)
        warnings.warn(f"scanqc: skipped unreadable scan: {msg}", stacklevel=2)
    return layers
