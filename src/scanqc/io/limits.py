"""Resource guards: refuse a scan whose declared size is too large *before* allocating it.

The ceiling is ``SCANQC_MAX_SCAN_BYTES`` (bytes; default 4 GiB) or a value passed by the
caller. Decompressed streams (``.nii.gz``, gzipped DICOM) are read with the same ceiling.
"""

from __future__ import annotations

import os

import numpy as np

DEFAULT_MAX_SCAN_BYTES = 4 * 1024**3

#: Most bytes a reader may read (or decompress) *before* the pixel data: NIfTI header
#: extensions, the offset of the NIfTI data block. Real files use kilobytes to a few MB;
#: a larger value is a malformed file or a decompression bomb, refused before reading.
MAX_HEADER_BYTES = 64 * 1024**2


def max_scan_bytes(override: int | None = None) -> int:
    """Return the per-scan memory ceiling in bytes."""
    if override is not None:
        return int(override)
    env = os.environ.get("SCANQC_MAX_SCAN_BYTES")
    if env:
        try:
            return int(float(env))
        except ValueError:
            pass
    return DEFAULT_MAX_SCAN_BYTES


def declared_bytes(shape: tuple[int, ...], dtype: np.dtype | str | type) -> int:
    """Bytes an array of ``shape`` and ``dtype`` needs (Python ints: no overflow)."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * np.dtype(dtype).itemsize


def check_declared_size(
    shape: tuple[int, ...], dtype: np.dtype | str | type, limit: int | None = None
) -> None:
    """Raise ``ValueError`` (one line) if the declared array is invalid or over the ceiling."""
    if any(int(s) <= 0 for s in shape):
        raise ValueError(f"invalid dimensions {tuple(int(s) for s in shape)}")
    need = declared_bytes(shape, dtype)
    cap = max_scan_bytes(limit)
    if need > cap:
        raise ValueError(
            f"declared size {need / 1024**3:.1f} GiB exceeds the per-scan limit "
            f"{cap / 1024**3:.1f} GiB (set SCANQC_MAX_SCAN_BYTES to raise it)"
        )
