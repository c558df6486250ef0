"""Layer 1: scans in. NIfTI volumes, DICOM series and 2D radiographs into one ``Scan`` type.

No torch, no Qt. Public API:

* :func:`discover` -- a path or folder (recursive) into :class:`ScanEntry` objects, one per
  scan (a DICOM series is one entry), without reading pixel data.
* :func:`load_scan` -- a :class:`ScanEntry` (or a path to one file) into a :class:`Scan`;
  raises :class:`ScanReadError` with a one-line cause.
* :func:`open_scans` -- discover and load, yielding ``(entry, scan_or_error)``.
"""

from __future__ import annotations

from scanqc.io.scan import (
    Scan,
    ScanEntry,
    ScanReadError,
    ScanWarning,
    make_scan_id,
)

__all__ = [
    "Scan",
    "ScanEntry",
    "ScanReadError",
    "ScanWarning",
    "discover",
    "load_scan",
    "make_scan_id",
    "open_scans",
]


def __getattr__(name: str):  # lazy: keep ``import scanqc.io`` cheap
    if name == "discover":
        from scanqc.io.discover import discover

        return discover
    if name in ("load_scan", "open_scans"):
        from scanqc.io import load

        return getattr(load, name)
    raise AttributeError(f"module 'scanqc.io' has no attribute {name!r}")
