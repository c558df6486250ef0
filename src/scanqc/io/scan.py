"""The one in-memory type every part of scanqc works on.

Conventions (documented in docs/io.md):

* ``Scan.data`` axes: a volume is ``(Z, Y, X)`` with axis 0 the slice axis; a 2D image is
  ``(Y, X)``; an RGB image is ``(Y, X, 3)`` with ``rgb=True``.
* ``Scan.spacing`` is in millimetres, one value per *spatial* axis, in data-axis order.
* ``Scan.affine`` maps a homogeneous data index ``(z, y, x, 1)`` (or ``(y, x, 0, 1)`` for
  2D) to patient RAS+ millimetres.
* NIfTI volumes are reoriented so that axes are (S, P, L): axial slices, anterior at the
  top, patient's right on the left of the screen (radiological convention), which is what
  an axial DICOM series gives natively. DICOM series keep their acquisition plane, slices
  sorted along the slice normal.
* ``Scan.metadata`` holds only a whitelist of non-identifying fields (see
  ``scanqc.io.privacy``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["volume", "series", "image"]
Status = Literal["ok", "skipped", "error"]
Severity = Literal["info", "warn", "high"]

SEVERITIES: tuple[str, ...] = ("info", "warn", "high")


@dataclass(frozen=True)
class ScanWarning:
    """A named finding about a scan: from a reader or from a QC check.

    Attributes:
        code: Short machine-readable code, e.g. ``"missing_slices"``.
        message: One human-readable line.
        severity: ``"info"``, ``"warn"`` or ``"high"``.
        slices: Inclusive ``(first, last)`` slice range the finding concerns, if any.
        region: Where in the image, e.g. ``"top"``, ``"left"``, or a bounding box string.
        value: The measured value behind the finding, if any.
    """

    code: str
    message: str
    severity: Severity = "warn"
    slices: tuple[int, int] | None = None
    region: str | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "code": self.code,
            "message": self.message,
            "severity": self.severity,
            "slices": list(self.slices) if self.slices is not None else None,
            "region": self.region,
            "value": self.value,
        }


class ScanReadError(Exception):
    """A scan could not be read. ``str(err)`` is one line: ``"<path>: <cause>"``."""

    def __init__(self, path: str, cause: str) -> None:
        self.path = str(path)
        self.cause = " ".join(str(cause).split())  # always one line
        super().__init__(f"{self.path}: {self.cause}")


def printable(text: str) -> str:
    r"""``text`` as valid Unicode: undecodable file-name bytes become ``\xNN``.

    Python hands a file name that is not valid UTF-8 (e.g. Latin-1 bytes from an old
    archive) back as a string with surrogate escapes, which no UTF-8 writer (CSV, JSON,
    HTML, SQLite) accepts. Reports show such a byte as the 4 characters ``\xff``.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
    return text


def file_name_of(text: str) -> str:
    r"""Inverse of :func:`printable` for file names: ``\x80``-``\xff`` back to bytes.

    Gives the name Python uses for the file again (surrogate escapes), so that a report's
    ``path`` column opens the file. Names without such sequences come back unchanged.
    """
    if "\\x" not in text:
        return text
    return re.sub(r"\\x([89a-f][0-9a-f])", lambda m: chr(0xDC00 + int(m.group(1), 16)), text)


def make_scan_id(key: str) -> str:
    """Return a stable, non-identifying id: a 16-hex-digit SHA-1 of ``key``.

    ``key`` is a SeriesInstanceUID (plus a sub-group key) for DICOM series, or a path
    relative to the dataset root for files. The hash means no UID or path leaks into
    exports through the id.
    """
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luminance (float32) of ``(..., 3)`` colour data."""
    d = np.asarray(rgb).astype(np.float32)
    return 0.299 * d[..., 0] + 0.587 * d[..., 1] + 0.114 * d[..., 2]


@dataclass
class ScanEntry:
    """A scan found by discovery, before its pixels are read (cheap to hold 100,000).

    Attributes:
        scan_id: Stable id (see :func:`make_scan_id`).
        paths: Files that make up the scan (one for a NIfTI or an image; many for a
            DICOM series, in slice order when known).
        kind: ``"volume"`` (NIfTI, multi-frame), ``"series"`` (DICOM slices) or ``"image"``.
        format: ``"nifti"``, ``"dicom"`` or ``"image"`` (PNG, JPEG, PGM, TIFF ...).
        status: ``"ok"`` (readable as far as discovery knows), ``"skipped"`` (not an
            image, e.g. an SR or ECG object) or ``"error"``.
        error: One-line reason when status is not ok.
        name: Display name (file name, or series folder plus description).
        modality: DICOM Modality where known.
        description: SeriesDescription where known.
        shape: Data shape if known from the header.
        spacing: Spacing in mm if known from the header.
        header: Non-identifying header fields used for grouping and checks.
        warnings: Findings made during discovery (e.g. missing slices).
        private_names: Folder and file names in :attr:`paths` that hold a patient
            identifier from the DICOM header, with their ``[redacted]`` stand-ins
            (:func:`scanqc.io.privacy.identifying_names`). Only used to redact what is
            written; never written itself.
    """

    scan_id: str
    paths: tuple[str, ...]
    kind: Kind
    format: str
    status: Status = "ok"
    error: str = ""
    name: str = ""
    modality: str = ""
    description: str = ""
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    header: dict[str, Any] = field(default_factory=dict)
    warnings: list[ScanWarning] = field(default_factory=list)
    private_names: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def path(self) -> str:
        """The first path (the file, or the first slice of a series)."""
        return self.paths[0] if self.paths else ""


@dataclass
class Scan:
    """A scan read into memory: pixels, geometry and sanitized metadata.

    Attributes:
        data: Pixel array (see module docstring for axes). Rescale slope and intercept are
            applied; integer data keeps its bit depth (16-bit stays 16-bit).
        spacing: Millimetres per spatial axis, in data-axis order.
        affine: 4x4 index-to-RAS+ matrix.
        kind: ``"volume"``, ``"series"`` or ``"image"``.
        modality: DICOM Modality (``"CT"``, ``"MR"``, ``"CR"`` ...) or ``""`` if unknown.
        paths: Source files.
        scan_id: Stable id.
        metadata: Non-identifying header fields (whitelist; see ``scanqc.io.privacy``).
        warnings: Reader findings (missing slices, uneven spacing, 4D reduced ...).
        rgb: True when ``data`` is ``(Y, X, 3)`` colour.
        name: Display name.
    """

    data: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    kind: Kind
    modality: str = ""
    paths: tuple[str, ...] = ()
    scan_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[ScanWarning] = field(default_factory=list)
    rgb: bool = False
    name: str = ""

    @property
    def path(self) -> str:
        """The first source path."""
        return self.paths[0] if self.paths else ""

    @property
    def is_volume(self) -> bool:
        """True for 3D data (more than one slice is possible)."""
        return self.spatial_ndim == 3

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.data.ndim - (1 if self.rgb else 0)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the colour axis."""
        return tuple(self.data.shape[: self.spatial_ndim])

    @property
    def orientation(self) -> str:
        """Axis codes of the data axes in RAS terms, e.g. ``"SPL"``; ``""`` if unknown."""
        try:
            import nibabel as nib

            aff = np.asarray(self.affine, dtype=float)
            n = self.spatial_ndim
            if n == 2:
                sub = aff[:3, :2]
                codes = nib.orientations.aff2axcodes(
                    np.c_[np.r_[np.c_[sub, np.cross(sub[:, 0], sub[:, 1])], [[0, 0, 0]]],
                          [0, 0, 0, 1]]
                )
                return "".join(str(c) for c in codes[:2])
            return "".join(str(c) for c in nib.orientations.aff2axcodes(aff))
        except Exception:  # noqa: BLE001 - orientation is informative only
            return ""

    def gray(self) -> np.ndarray:
        """Return the data as a single-channel array (luminance for RGB), float32."""
        if self.rgb:
            return luminance(self.data)
        return self.data.astype(np.float32, copy=False)

    def slices(self) -> np.ndarray:
        """Return the gray data as a stack of 2D slices ``(N, Y, X)`` (N=1 for images)."""
        g = self.gray()
        return g[None] if g.ndim == 2 else g
