"""One entry point to read any scan: dispatch a :class:`ScanEntry` to its format's reader.

``load_scan`` never lets a reader's exception escape as anything but a one-line
:class:`~scanqc.io.scan.ScanReadError`; ``open_scans`` walks paths and yields every entry
with its scan or its error, so a batch never stops for one bad file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from scanqc.io.scan import Scan, ScanEntry, ScanReadError
from scanqc.progress import CancelToken, ProgressCallback, check, report

PathLike = str | Path


def _read(entry: ScanEntry, max_bytes: int | None) -> Scan:
    """Call the reader for ``entry.format``."""
    fmt = (entry.format or "").lower()
    if fmt == "nifti":
        from scanqc.io.nifti import load_nifti

        return load_nifti(entry.path, scan_id=entry.scan_id, max_bytes=max_bytes)
    if fmt == "image":
        from scanqc.io.images import load_image

        return load_image(entry.path, scan_id=entry.scan_id, max_bytes=max_bytes)
    if fmt == "dicom":
        from scanqc.io.dicom import load_dicom

        return load_dicom(entry, max_bytes=max_bytes)
    raise ScanReadError(entry.path, f"unsupported format {entry.format!r}")


def load_entry(entry: ScanEntry, *, max_bytes: int | None = None) -> Scan:
    """Read one discovered entry into a :class:`Scan`.

    Args:
        entry: From :func:`scanqc.io.discover.discover`, with ``status == "ok"``.
        max_bytes: Per-scan memory ceiling (default: ``SCANQC_MAX_SCAN_BYTES``).

    Raises:
        ScanReadError: The entry was not ok, or its reader failed (one line).
    """
    if entry.status != "ok":
        raise ScanReadError(entry.path, entry.error or f"scan is {entry.status}")
    try:
        scan = _read(entry, max_bytes)
    except ScanReadError:
        raise
    except MemoryError as exc:
        raise ScanReadError(entry.path, "out of memory while reading") from exc
    except Exception as exc:  # noqa: BLE001 - nothing escapes but a one-line error
        raise ScanReadError(entry.path, f"{type(exc).__name__}: {exc}") from exc
    if entry.scan_id:
        scan.scan_id = entry.scan_id
    if entry.name:
        scan.name = entry.name
    if not scan.modality and entry.modality:
        scan.modality = entry.modality
    if entry.paths and len(entry.paths) > len(scan.paths):
        scan.paths = tuple(entry.paths)
    known = {(w.code, w.message) for w in scan.warnings}
    scan.warnings = [
        *(w for w in entry.warnings if (w.code, w.message) not in known),
        *scan.warnings,
    ]
    return scan


def entries_for_path(path: PathLike) -> list[ScanEntry]:
    """Discover the entries of one file or folder (a thin wrapper around ``discover``)."""
    from scanqc.io.discover import discover

    return discover([path])


def load_scan(entry_or_path: ScanEntry | PathLike, *, max_bytes: int | None = None) -> Scan:
    """Read a scan from a :class:`ScanEntry` or from a path that holds exactly one scan.

    Args:
        entry_or_path: A discovered entry, or a file (or a folder holding one DICOM series).
        max_bytes: Per-scan memory ceiling (default: ``SCANQC_MAX_SCAN_BYTES``).

    Returns:
        The scan, with the entry's ``scan_id``, ``name`` and discovery warnings copied in.

    Raises:
        ScanReadError: One line: ``"<path>: <cause>"``. A path holding no scan or several
            scans is an error too (it says how many).
    """
    if isinstance(entry_or_path, ScanEntry):
        return load_entry(entry_or_path, max_bytes=max_bytes)
    path = str(entry_or_path)
    if not Path(path).exists():
        raise ScanReadError(path, "file not found")
    try:
        entries = entries_for_path(path)
    except ScanReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ScanReadError(path, f"{type(exc).__name__}: {exc}") from exc
    ok = [e for e in entries if e.status == "ok"]
    if len(ok) == 1:
        return load_entry(ok[0], max_bytes=max_bytes)
    if not ok and len(entries) == 1:
        e = entries[0]
        raise ScanReadError(path, e.error or f"not a readable scan ({e.status})")
    if not ok:
        raise ScanReadError(path, f"no readable scan found ({len(entries)} entries)")
    raise ScanReadError(path, f"holds {len(ok)} scans, expected exactly one")


def read_entry(entry: ScanEntry, *, max_bytes: int | None = None
               ) -> Scan | ScanReadError | None:
    """The entry's scan, its one-line read error, or None when discovery skipped it.

    :func:`load_entry` for batch loops that report errors instead of raising.
    """
    if entry.status == "skipped":
        return None
    if entry.status == "error":
        return ScanReadError(entry.path, entry.error or "unreadable")
    try:
        return load_entry(entry, max_bytes=max_bytes)
    except ScanReadError as err:
        return err


def open_scans(
    paths: Iterable[PathLike] | PathLike,
    *,
    root: PathLike | None = None,
    max_bytes: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[tuple[ScanEntry, Scan | ScanReadError | None]]:
    """Discover scans under ``paths`` and read them one by one.

    Args:
        paths: Files and/or folders (searched recursively).
        root: Dataset root used for stable scan ids (see ``discover``).
        max_bytes: Per-scan memory ceiling.
        progress: ``progress(done, total, message)`` after each scan.
        cancel: Checked before each scan; raises :class:`scanqc.progress.Cancelled`.

    Yields:
        ``(entry, scan)`` for readable scans, ``(entry, ScanReadError)`` for unreadable
        ones and ``(entry, None)`` for skipped entries (not images, e.g. SR or ECG).
    """
    from scanqc.io.discover import discover

    if isinstance(paths, (str, Path)):
        paths = [paths]
    entries = discover(list(paths), root=root, cancel=cancel)
    total = len(entries)
    for i, entry in enumerate(entries):
        check(cancel)
        result = read_entry(entry, max_bytes=max_bytes)
        report(progress, i + 1, total, entry.name or entry.path)
        yield entry, result
