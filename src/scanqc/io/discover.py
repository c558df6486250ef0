"""Find the scans in files and folders, reading headers only (no pixel data).

:func:`discover` walks folders recursively (hidden entries skipped, symlink loops cut,
unreadable folders and files reported), recognises

* NIfTI by name (``.nii``, ``.nii.gz``): shape and voxel size from the header alone (the
  first 544 bytes, decompressed when gzipped; parsed with nibabel's header class);
* 2D images by name (PNG, JPEG, PGM/PPM/PBM, TIFF, BMP): size and mode from PIL without
  decoding;
* DICOM by content (``DICM`` marker, gzip-wrapped, or a headless ACR-NEMA dataset), with
  any name or none; files are grouped into series by :mod:`scanqc.io.dicom`;

and silently ignores everything else found in a folder (README, CSV, JSON ...). A path
the user names explicitly that is not a scan gives an ``error`` entry. Nothing here
raises for a bad file; every problem becomes an entry with a one-line ``error``.

:func:`iter_discover` yields the same entries in chunks as they are found (for a table that
fills while a large folder is read); :func:`discover` returns them all, sorted.
:func:`list_files` and :func:`discover_files` are its two halves (the files, then the entries
of a share of them), for :mod:`scanqc.batch.discovery`, which reads shares in worker
processes.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from scanqc.io import dicom
from scanqc.io.images import IMAGE_SUFFIXES
from scanqc.io.scan import ScanEntry, ScanReadError, make_scan_id
from scanqc.progress import CancelToken, ProgressCallback, check, report

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Names never sniffed for DICOM content (saves a read per file in annotated datasets).
_NEVER_DICOM = (
    ".txt", ".md", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".html", ".py",
    ".npz", ".npy", ".pkl", ".pt", ".pth", ".h5", ".hdf5", ".zip", ".tar", ".pdf", ".log",
    ".safetensors", ".parquet", ".mha", ".mhd", ".nrrd", ".img", ".hdr", ".sqlite", ".db",
)
#: Target axis codes of the NIfTI reader (see docs/architecture.md).
NIFTI_AXES = ("S", "P", "L")


@dataclass(frozen=True)
class FileItem:
    """One file to classify.

    Attributes:
        path: The file.
        root: The folder its display name is relative to.
        explicit: The user named it (a named file that is not a scan gives an error entry).
    """

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


_NOT_REGULAR = "not a regular file (device, FIFO or socket)"


def _walk(
    folder: str, root: str, errors: list[ScanEntry], cancel: CancelToken | None
) -> list[FileItem]:
    """List the files under ``folder`` (sorted, hidden entries skipped, no loops)."""
    items: list[FileItem] = []
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
                    items.append(FileItem(e.path, root, False))
                elif e.is_symlink() and not os.path.exists(e.path):
                    errors.append(_error_entry(e.path, root, "broken symbolic link"))
                else:  # a FIFO, socket or device (or a link to one): never opened
                    errors.append(_error_entry(e.path, root, _NOT_REGULAR))
            except OSError as exc:
                errors.append(_error_entry(e.path, root, f"cannot read ({exc.strerror})"))
        stack.extend(reversed(subdirs))
    return items


_NIFTI1_MAGIC = (b"n+1\0", b"ni1\0")
_NIFTI2_MAGIC = (b"n+2\0\r\n\x1a\n", b"ni2\0\r\n\x1a\n")


def _read_nifti_head(path: str) -> bytes:
    """Return the first 544 bytes of a NIfTI file, gunzipped when it is gzip-compressed.

    544 = the NIfTI-2 header (540) plus the 4-byte extension flag; nothing else of the file
    is read or decompressed.
    """
    import gzip

    with open(path, "rb") as raw:
        if raw.read(2) == b"\x1f\x8b":
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                return gz.read(544)
        raw.seek(0)
        return raw.read(544)


def _parse_nifti_head(head: bytes) -> tuple[Any, bytes, float] | str:
    """Return ``(nibabel header, extension flag, vox_offset)``, or why it is not NIfTI.

    The header is built with ``check=False`` (no full ``check_fix``, which costs more than
    the rest of discovery); the few fixes nibabel would apply to the fields used here
    (qfac, zero or negative voxel sizes) are applied when needed.
    """
    import struct

    import nibabel as nib
    import numpy as np

    if len(head) < 348:
        return f"not a NIfTI file (header of {len(head)} bytes, 348 needed)"
    klass = endian = None
    for e in ("<", ">"):
        size = struct.unpack_from(e + "i", head, 0)[0]
        if size == 348 and head[344:348] in _NIFTI1_MAGIC:
            klass, endian = nib.Nifti1Header, e
        elif size == 540 and len(head) >= 540 and head[4:12] in _NIFTI2_MAGIC:
            klass, endian = nib.Nifti2Header, e
    if klass is None:
        return "not a NIfTI file (no NIfTI-1/-2 header)"
    hdr = klass(head[:klass.sizeof_hdr], endianness=endian, check=False)
    pixdim = hdr["pixdim"]
    if pixdim[0] not in (-1, 1) or np.any(pixdim[1:4] <= 0):
        hdr.check_fix()  # nibabel's own fixes (qfac 1, |pixdim|, 0 -> 1), as nib.load does
    size = int(klass.sizeof_hdr)
    return hdr, head[size:size + 4], float(hdr["vox_offset"])


@functools.lru_cache(maxsize=512)
def _axis_order(rzs: bytes) -> tuple[str, tuple[int, int, int]]:
    """File axis codes and, per reader axis (S, P, L), the file axis it comes from.

    Cached on the bytes of the affine's 3x3 part: the scans of one dataset mostly share it.
    """
    import nibabel as nib
    import numpy as np

    m = np.frombuffer(rzs, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = m
    ornt = nib.orientations.io_orientation(affine)
    axes = "".join(str(c) for c in nib.orientations.ornt2axcodes(ornt))
    tr = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(NIFTI_AXES))
    order = [0, 0, 0]
    for src, (dst, _flip) in enumerate(tr):
        order[int(dst)] = src
    return axes, (order[0], order[1], order[2])


def _nifti_entry(path: str, root: str) -> ScanEntry:
    """Entry for a NIfTI file from its header alone; shape/spacing in reader axis order.

    Only the first 544 bytes are read (decompressed); header extensions or an unusual data
    offset are checked by :func:`scanqc.io.nifti.check_nifti_header` first, as before a
    full read.
    """
    import numpy as np

    from scanqc.io.limits import MAX_HEADER_BYTES
    from scanqc.io.nifti import check_nifti_header

    rel = _rel(path, root)
    try:
        parsed = _parse_nifti_head(_read_nifti_head(path))
        if isinstance(parsed, str):
            return _error_entry(path, root, parsed, "nifti")
        hdr, ext_flag, vox = parsed
        if ext_flag[:1] not in (b"", b"\0") or not 0 <= vox <= MAX_HEADER_BYTES:
            check_nifti_header(path)  # refuses extension/offset bombs (one-line ValueError)
        hdr.get_data_dtype()  # unknown datatype codes raise, as nib.load would
        shape = tuple(int(s) for s in hdr.get_data_shape())
        zooms = tuple(float(z) for z in hdr.get_zooms())
        affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any header failure is a read error
        msg = " ".join(str(exc).split())[:160]
        return _error_entry(path, root, f"cannot read NIfTI header ({msg})", "nifti")
    header: dict[str, Any] = {"file_shape": shape, "ndim": len(shape)}  # tuple: no GC tracking
    if len(shape) > 3:
        header["n_volumes"] = int(np.prod(shape[3:]))
    if len(shape) < 2 or any(s <= 0 for s in shape):
        return ScanEntry(
            make_scan_id(rel), (path,), "volume", "nifti", "error",
            f"invalid dimensions (shape {shape})", name=rel, header=header,
        )
    # a 2D image stored as NIfTI (two axes, or a third of size 1): the reader squeezes it
    flat = len(shape) == 2 or shape[2] == 1
    if len(shape) == 2:
        shape, zooms = (*shape, 1), (*zooms[:2], 1.0)
    try:
        if not np.all(np.isfinite(affine)):
            raise ValueError("non-finite affine")
        axes, order = _axis_order(np.ascontiguousarray(affine[:3, :3]).tobytes())
        header["file_axes"] = axes
        shape3 = tuple(shape[i] for i in order)
        zooms3 = tuple(zooms[i] for i in order)
    except Exception:  # noqa: BLE001 - degenerate affine: keep file order
        shape3, zooms3 = shape[:3], zooms[:3]
    if flat:  # as the reader: the first axis of size 1 (in reader order) is dropped
        drop = next(i for i in range(3) if shape3[i] == 1)
        keep = [i for i in range(3) if i != drop]
        return ScanEntry(
            make_scan_id(rel), (path,), "image", "nifti", name=rel,
            shape=tuple(shape3[i] for i in keep), spacing=tuple(zooms3[i] for i in keep),
            header=header,
        )
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
) -> list[FileItem]:
    items: list[FileItem] = []
    for p in paths:
        path = os.path.abspath(os.fspath(p))
        if os.path.isdir(path):
            items += _walk(path, os.path.abspath(root) if root else path, errors, cancel)
        elif os.path.isfile(path):
            base = os.path.abspath(root) if root else os.path.dirname(path)
            items.append(FileItem(path, base, True))
        else:
            base = os.path.abspath(root) if root else os.path.dirname(path)
            if os.path.islink(path) and not os.path.exists(path):
                why = "broken symbolic link"
            elif os.path.lexists(path):
                why = _NOT_REGULAR
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
        folders, sorted by :func:`sort_key`. Never raises for a bad file.
    """
    entries = [e for chunk in iter_discover(paths, root=root, progress=progress,
                                            cancel=cancel) for e in chunk]
    entries.sort(key=sort_key)
    share_private_names(entries)
    return entries


def share_private_names(entries: list[ScanEntry]) -> None:
    """Give every entry the identifying names found in any DICOM header (in place).

    A folder named after the patient is found through the headers of the DICOM files in
    it; an unreadable file, a NIfTI or a PNG in that folder has no header of its own, and
    its path must not show the name either. All entries share one dict (no copies).
    """
    union: dict[str, str] = {}
    for e in entries:
        union.update(e.private_names)
    if union:
        for e in entries:
            e.private_names = union


def sort_key(entry: ScanEntry) -> tuple[str, str]:
    """The order of :func:`discover`'s result: display name, then first path."""
    return (entry.name, entry.path)


def iter_discover(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    root: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    chunk_size: int = 200,
) -> Iterator[list[ScanEntry]]:
    """Yield the entries of :func:`discover` in chunks, as they are found (unsorted).

    Single-file scans (NIfTI, 2D images, unreadable files) come in chunks of at most
    ``chunk_size`` while the files are read; DICOM series, which need all their files'
    headers, and folder errors come at the end. Arguments as :func:`discover`.
    """
    unique, errors = list_files(paths, root=root, cancel=cancel)
    chunk: list[ScanEntry] = []
    headers: dict[str, list[dicom.DicomHeader]] = {}
    total = len(unique)
    for i, it in enumerate(unique):
        check(cancel)
        report(progress, i, total, os.path.basename(it.path))
        entry = _classify(it, headers)
        if entry is not None:
            chunk.append(entry)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
    report(progress, total, total, "grouping DICOM series")
    chunk += _group_dicom(headers, cancel)
    chunk += errors
    for i in range(0, len(chunk), max(1, chunk_size)):
        yield chunk[i:i + chunk_size]


def list_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    root: str | os.PathLike | None = None,
    cancel: CancelToken | None = None,
) -> tuple[list[FileItem], list[ScanEntry]]:
    """The files :func:`discover` reads, and the errors of missing paths and folders.

    Folders are walked (see the module docstring); a file reachable twice (named and inside
    a walked folder, or through a link) is listed once. Arguments as :func:`discover`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    errors: list[ScanEntry] = []
    items = _explicit_items(paths, os.fspath(root) if root else None, errors, cancel)
    seen: set[str] = set()
    unique: list[FileItem] = []
    for it in items:
        real = os.path.realpath(it.path)
        if real not in seen:
            seen.add(real)
            unique.append(it)
    # a FIFO, device link or broken link reached twice (inside two given folders, or
    # through a folder link) is reported once: keyed by the entry itself (its real folder
    # and its name), so two links to one missing target stay two errors
    reported: set[str] = set()
    kept: list[ScanEntry] = []
    for e in errors:
        key = os.path.join(os.path.realpath(os.path.dirname(e.path)), os.path.basename(e.path))
        if key not in reported:
            reported.add(key)
            kept.append(e)
    return unique, kept


def discover_files(
    items: Iterable[FileItem], cancel: CancelToken | None = None
) -> tuple[list[ScanEntry], dict[str, list[str]]]:
    """The entries of a share of :func:`list_files`' files, as :func:`discover` makes them.

    Returns:
        ``(entries, series)``: the entries (unsorted), and the DICOM files of each
        SeriesInstanceUID among ``items`` (``"folder:<dir>"`` for files without one). A
        series whose files are all in one share gets the same entries as from
        :func:`discover`; ``scanqc.batch.discovery`` reads the shares in worker processes
        and groups a series found in several shares again.
    """
    entries: list[ScanEntry] = []
    headers: dict[str, list[dicom.DicomHeader]] = {}
    for it in items:
        check(cancel)
        entry = _classify(it, headers)
        if entry is not None:
            entries.append(entry)
    series: dict[str, list[str]] = {}
    for hs in headers.values():
        for h in hs:
            # files without a SeriesInstanceUID are grouped by folder (dicom._nouid_key)
            key = h.series_uid or "folder:" + os.path.dirname(h.path)
            series.setdefault(key, []).append(h.path)
    entries += _group_dicom(headers, cancel)
    return entries, series


def _group_dicom(
    headers: dict[str, list[dicom.DicomHeader]], cancel: CancelToken | None
) -> list[ScanEntry]:
    """Series entries from the DICOM headers collected per root folder; never raises."""
    out: list[ScanEntry] = []
    for base, hs in headers.items():
        check(cancel)
        try:
            out += dicom.headers_to_entries(hs, root=base)
        except Exception as exc:  # noqa: BLE001 - safety net: never raise for bad files
            cause = " ".join(f"cannot group DICOM headers ({type(exc).__name__}: {exc})".split())
            out += [_error_entry(h.path, base, cause[:200], "dicom") for h in hs]
    return out


def _classify(it: FileItem, headers: dict[str, list[dicom.DicomHeader]]) -> ScanEntry | None:
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
