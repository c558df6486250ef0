"""Find the scans in files and folders, reading headers only (no pixel data).

:func:`discover` walks folders recursively (hidden entries skipped, symlink loops cut,
unreadable folders and files reported), recognises

* NIfTI by name (``.nii``, ``.nii.gz``): shape and voxel size from the lazy nibabel header;
* 2D images by name (PNG, JPEG, PGM/PPM/PBM, TIFF, BMP): size and mode from PIL without
  decoding;
* DICOM by content (``DICM`` marker, gzip-wrapped, or a headless ACR-NEMA dataset), with
  any name or none; files are grouped into series by :mod:`scanqc.io.dicom`;

and silently ignores everything else found in a folder (README, CSV, JSON ...). A path
the user names explicitly that is not a scan gives an ``error`` entry. Nothing here
raises for a bad file; every problem becomes an entry with a one-line ``error``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from scanqc.io import dicom
from scanqc.io.scan import ScanEntry, ScanReadError, make_scan_id
from scanqc.progress import CancelToken, ProgressCallback, check, report

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".bmp")
#: Names never sniffed for DICOM content (saves a read per file in annotated datasets).
_NEVER_DICOM = (
    ".txt", ".md", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".html", ".py",
    ".npz", ".npy", ".pkl", ".pt", ".pth", ".h5", ".hdf5", ".zip", ".tar", ".pdf", ".log",
    ".safetensors", ".parquet", ".mha", ".mhd", ".nrrd", ".img", ".hdr", ".sqlite", ".db",
)
#: Target axis codes of the NIfTI reader (see docs/architecture.md).
NIFTI_AXES = ("S", "P", "L")


@dataclass(frozen=True)
class _Item:
    path: str
    root: str
    explicit: bool


def _lower_name(path: str) -> str:
    return os.path.basename(path).lower()


def _rel(path: str, root: str) -> str:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


def _error_entry(path: str, root: str, cause: str, fmt: str = "unknown") -> ScanEntry:
    rel = _rel(path, root)
    return ScanEntry(
        scan_id=make_scan_id(rel),
        paths=(path,),
        kind="image",
        format=fmt,
        status="error",
        error=" ".join(str(cause).split()),
        name=rel,
    )


def _walk(
    folder: str, root: str, errors: list[ScanEntry], cancel: CancelToken | None
) -> list[_Item]:
    """List the files under ``folder`` (sorted, hidden entries skipped, no loops)."""
    items: list[_Item] = []
    visited: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        check(cancel)
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError as exc:
            errors.append(_error_entry(d, root, f"cannot open folder ({exc.strerror})"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in visited:
            continue  # symlink loop or a folder reached twice
        visited.add(key)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            errors.append(_error_entry(d, root, f"cannot list folder ({exc.strerror})"))
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir(follow_symlinks=True):
                    subdirs.append(e.path)
                elif e.is_file(follow_symlinks=True):
                    items.append(_Item(e.path, root, False))
                elif e.is_symlink():
                    errors.append(_error_entry(e.path, root, "broken symbolic link"))
            except OSError as exc:
                errors.append(_error_entry(e.path, root, f"cannot read ({exc.strerror})"))
        stack.extend(reversed(subdirs))
    return items


def _nifti_entry(path: str, root: str) -> ScanEntry:
    """Entry for a NIfTI file from its (lazy) header; shape/spacing in reader axis order."""
    import nibabel as nib
    import numpy as np

    from scanqc.io.nifti import check_nifti_header

    rel = _rel(path, root)
    try:
        check_nifti_header(path)  # refuses extension/offset bombs before nibabel reads them
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        affine = np.asarray(img.affine, dtype=float)
    except Exception as exc:  # noqa: BLE001 - any nibabel failure is a read error
        msg = " ".join(str(exc).split())[:160]
        return _error_entry(path, root, f"cannot read NIfTI header ({msg})", "nifti")
    header: dict[str, Any] = {"file_shape": list(shape), "ndim": len(shape)}
    if len(shape) > 3:
        header["n_volumes"] = int(np.prod(shape[3:]))
    if len(shape) < 3 or any(s <= 0 for s in shape):
        return ScanEntry(
            make_scan_id(rel), (path,), "volume", "nifti", "error",
            f"not a 3D volume (shape {shape})", name=rel, header=header,
        )
    try:
        header["file_axes"] = "".join(str(c) for c in nib.aff2axcodes(affine))
        ornt = nib.orientations.io_orientation(affine)
        target = nib.orientations.axcodes2ornt(NIFTI_AXES)
        tr = nib.orientations.ornt_transform(ornt, target)
        order = [0, 0, 0]
        for src, (dst, _flip) in enumerate(tr):
            order[int(dst)] = src
        shape3 = tuple(shape[i] for i in order)
        zooms3 = tuple(zooms[i] for i in order)
    except Exception:  # noqa: BLE001 - degenerate affine: keep file order
        shape3, zooms3 = shape[:3], zooms[:3]
    return ScanEntry(
        make_scan_id(rel), (path,), "volume", "nifti", name=rel,
        shape=shape3, spacing=zooms3, header=header,
    )


def _image_entry(path: str, root: str) -> ScanEntry:
    """Entry for a 2D image file from PIL's header (no pixel decoding)."""
    import warnings

    from PIL import Image

    rel = _rel(path, root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                mode = im.mode
                n_frames = int(getattr(im, "n_frames", 1) or 1)
    except Exception as exc:  # noqa: BLE001 - unidentified/corrupt image
        msg = " ".join(str(exc).split())[:160]
        if "cannot identify image file" in msg:
            msg = "cannot identify image file"
        return _error_entry(path, root, f"not a readable image ({msg})", "image")
    rgb = mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBX")
    header = {"mode": mode, "n_frames": n_frames}
    return ScanEntry(
        make_scan_id(rel), (path,), "image", "image", name=rel,
        shape=(h, w, 3) if rgb else (h, w), header=header,
    )


def _kind_of(path: str) -> str:
    name = _lower_name(path)
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(_NEVER_DICOM):
        return "other"
    return "maybe_dicom"


def _explicit_items(
    paths: Iterable[str | os.PathLike], root: str | None, errors: list[ScanEntry],
    cancel: CancelToken | None,
) -> list[_Item]:
    items: list[_Item] = []
    for p in paths:
        path = os.path.abspath(os.fspath(p))
        if os.path.isdir(path):
            items += _walk(path, os.path.abspath(root) if root else path, errors, cancel)
        elif os.path.isfile(path):
            base = os.path.abspath(root) if root else os.path.dirname(path)
            items.append(_Item(path, base, True))
        else:
            base = os.path.abspath(root) if root else os.path.dirname(path)
            if os.path.lexists(path) and not os.path.islink(path):
                why = "not a regular file (device, FIFO or socket)"
            elif os.path.islink(path):
                why = "broken symbolic link"
            else:
                why = "no such file or folder"
            errors.append(_error_entry(path, base, why))
    return items


def discover(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    root: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[ScanEntry]:
    """Find every scan under ``paths`` without reading pixel data.

    Args:
        paths: Files and/or folders (folders are walked recursively).
        root: Folder that display names and path-based ids are relative to (default:
            each given folder, or the parent folder of a given file).
        progress: ``progress(done, total, message)`` called once per file.
        cancel: Checked once per file; raises :class:`scanqc.progress.Cancelled`.

    Returns:
        One :class:`ScanEntry` per scan (a DICOM series is one entry), plus ``skipped``
        entries for non-image DICOM objects and ``error`` entries for unreadable files and
        folders, sorted by name. Never raises for a bad file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    errors: list[ScanEntry] = []
    items = _explicit_items(paths, os.fspath(root) if root else None, errors, cancel)
    # a file reachable twice (explicit and inside a walked folder) is read once
    seen: set[str] = set()
    unique: list[_Item] = []
    for it in items:
        real = os.path.realpath(it.path)
        if real not in seen:
            seen.add(real)
            unique.append(it)
    entries: list[ScanEntry] = []
    headers: dict[str, list[dicom.DicomHeader]] = {}
    total = len(unique)
    for i, it in enumerate(unique):
        check(cancel)
        report(progress, i, total, os.path.basename(it.path))
        entry = _classify(it, headers)
        if entry is not None:
            entries.append(entry)
    report(progress, total, total, "grouping DICOM series")
    for base, hs in headers.items():
        check(cancel)
        try:
            entries += dicom.headers_to_entries(hs, root=base)
        except Exception as exc:  # noqa: BLE001 - safety net: never raise for bad files
            cause = " ".join(f"cannot group DICOM headers ({type(exc).__name__}: {exc})".split())
            entries += [_error_entry(h.path, base, cause[:200], "dicom") for h in hs]
    entries += errors
    entries.sort(key=lambda e: (e.name, e.path))
    return entries


def _classify(it: _Item, headers: dict[str, list[dicom.DicomHeader]]) -> ScanEntry | None:
    """Entry for one file, or None (DICOM header collected, or an ignored file)."""
    path, root = it.path, it.root
    try:
        st = os.stat(path)
    except OSError as exc:
        return _error_entry(path, root, f"cannot read file ({exc.strerror})")
    if not stat.S_ISREG(st.st_mode):
        return _error_entry(path, root, "not a regular file") if it.explicit else None
    kind = _kind_of(path)
    if st.st_size == 0:
        if kind != "other" or it.explicit:
            fmt = {"nifti": "nifti", "image": "image"}.get(kind, "unknown")
            return _error_entry(path, root, "empty file (0 bytes)", fmt)
        return None
    if not os.access(path, os.R_OK):
        return _error_entry(path, root, "cannot read file (permission denied)")
    if kind == "nifti":
        return _nifti_entry(path, root)
    if kind == "image":
        return _image_entry(path, root)
    dicom_name = _lower_name(path).endswith(dicom.DICOM_SUFFIXES)
    if kind == "maybe_dicom":
        try:
            h = dicom.read_header(path)
        except ScanReadError as exc:
            if dicom.sniff(path) is not None or dicom_name:
                return _error_entry(path, root, exc.cause, "dicom")
            if it.explicit:
                return _error_entry(path, root, "not an image: unrecognised format")
            return None
        if h.plausible or dicom_name or it.explicit:
            headers.setdefault(root, []).append(h)
        return None
    if it.explicit:
        return _error_entry(path, root, "not an image: unrecognised format")
    return None
