"""2D image files (PNG, JPEG, PGM/PPM, TIFF, BMP) into a :class:`~scanqc.io.scan.Scan`.

Radiographs exported as ordinary image files carry no pixel size, so the spacing is
``(1.0, 1.0)`` and an info warning ``no_spacing`` says so. Bit depth is kept: a 16-bit
PNG, PGM or TIFF is returned as ``uint16``. Colour images whose channels are all equal
(grayscale saved as RGB) become single-channel; palette and alpha images are flattened.
"""

from __future__ import annotations

import warnings as _warnings
from pathlib import Path

import numpy as np

from scanqc.io.limits import check_declared_size
from scanqc.io.scan import Scan, ScanReadError, ScanWarning

#: File name endings read by :func:`load_image`.
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pnm", ".pbm", ".tif", ".tiff", ".bmp", ".webp",
    ".gif",
)
_TIFF_SUFFIXES = (".tif", ".tiff")


def is_image_path(path: str | Path) -> bool:
    """True when the file name has one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _max_pixels() -> int | None:
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def _check_pixels(path: str, width: int, height: int, channels: int, dtype, max_bytes) -> None:
    """Refuse decompression bombs and over-large images before decoding them."""
    limit = _max_pixels()
    if limit is not None and width * height > limit:
        raise ScanReadError(
            path,
            f"image of {width} x {height} pixels exceeds the decompression-bomb limit of "
            f"{limit} pixels",
        )
    shape = (height, width) if channels == 1 else (height, width, channels)
    try:
        check_declared_size(shape, dtype, max_bytes)
    except ValueError as exc:
        raise ScanReadError(path, str(exc)) from exc


def _flatten_alpha(arr: np.ndarray) -> np.ndarray:
    """Composite an image with a trailing alpha channel over black; drop the channel."""
    color, alpha = arr[..., :-1], arr[..., -1:]
    amax = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
    if np.all(alpha == amax):
        return color
    out = color.astype(np.float32) * (alpha.astype(np.float32) / np.float32(amax))
    return np.round(out).astype(arr.dtype) if arr.dtype.kind in "ui" else out.astype(arr.dtype)


def _pillow_array(path: str, max_bytes: int | None) -> tuple[np.ndarray, dict]:
    """Decode with Pillow; return the array and a few format facts."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ScanReadError(path, f"decompression-bomb guard: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ScanReadError(path, "not a readable image file (unknown or corrupt format)") from exc
    with img:
        width, height = img.size
        mode = img.mode
        bands = len(img.getbands())
        itemsize = 2 if mode.startswith("I;16") else (4 if mode in ("I", "F") else 1)
        _check_pixels(path, width, height, bands, np.dtype(f"u{itemsize}"), max_bytes)
        info = {"format": img.format or "", "mode": mode, "frames": getattr(img, "n_frames", 1)}
        try:
            img.load()
            if img.format == "JPEG":
                img = ImageOps.exif_transpose(img)
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif mode == "1":
                img = img.convert("L")
            elif mode == "PA":
                img = img.convert("LA")
            arr = np.asarray(img)
        except OSError as exc:
            text = " ".join(str(exc).split())
            if "truncated" in text.lower():
                raise ScanReadError(path, f"truncated image file ({text})") from exc
            raise ScanReadError(path, f"cannot decode image ({text})") from exc
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not arr.dtype.isnative):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535 \
            and info["format"] in ("PNG", "PPM", "TIFF"):
        arr = arr.astype(np.uint16)  # a 16-bit file Pillow opened as 32-bit "I"
    return arr, info


def _tiff_array(path: str, max_bytes: int | None) -> tuple[np.ndarray, dict]:
    """Decode the first page of a TIFF with tifffile (keeps 16-bit and float data)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = tuple(int(s) for s in page.shape)
            height, width = shape[0], shape[1]
            shape[2] if len(shape) > 2 else 1
            limit = _max_pixels()
            if limit is not None and width * height > limit:
                raise ScanReadError(
                    path,
                    f"image of {width} x {height} pixels exceeds the decompression-bomb "
                    f"limit of {limit} pixels",
                )
            try:
                check_declared_size(shape, page.dtype, max_bytes)
            except ValueError as exc:
                raise ScanReadError(path, str(exc)) from exc
            arr = page.asarray()
            info = {"format": "TIFF", "mode": str(page.photometric), "frames": len(tif.pages)}
    except ScanReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - fall back to Pillow for odd TIFFs
        try:
            return _pillow_array(path, max_bytes)
        except ScanReadError:
            raise ScanReadError(
                path, f"cannot decode TIFF ({type(exc).__name__}: {exc})"
            ) from exc
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    return np.asarray(arr), info


def load_image(path: str | Path, *, scan_id: str = "", max_bytes: int | None = None) -> Scan:
    """Read a 2D image file into a :class:`Scan` (``kind="image"``).

    Args:
        path: PNG, JPEG, PGM/PPM, TIFF or BMP file.
        scan_id: Id to store in the scan.
        max_bytes: Per-scan memory ceiling (default: ``SCANQC_MAX_SCAN_BYTES``).

    Returns:
        ``(Y, X)`` gray data, or ``(Y, X, 3)`` colour with ``rgb=True``. Spacing is
        ``(1.0, 1.0)`` with an info warning ``no_spacing``; the affine is the identity.

    Raises:
        ScanReadError: One-line cause (unknown format, truncated file, too large ...).
    """
    path = str(path)
    warnings: list[ScanWarning] = []
    if not Path(path).is_file():
        raise ScanReadError(path, "file not found")
    try:
        if path.lower().endswith(_TIFF_SUFFIXES):
            arr, info = _tiff_array(path, max_bytes)
        else:
            arr, info = _pillow_array(path, max_bytes)
    except ScanReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise ScanReadError(path, f"{type(exc).__name__}: {exc}") from exc

    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = _flatten_alpha(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    rgb = False
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            rgb = True
    if arr.ndim != (3 if rgb else 2):
        raise ScanReadError(path, f"unsupported image layout {tuple(arr.shape)}")
    arr = np.ascontiguousarray(arr)
    if int(info.get("frames") or 1) > 1:
        warnings.append(
            ScanWarning(
                "multi_frame_first",
                f"{info['frames']} frames/pages: showing frame 0",
                severity="info",
                value=float(info["frames"]),
            )
        )
    warnings.append(
        ScanWarning(
            "no_spacing",
            "image file has no pixel size: spacing set to 1.0 (units are pixels)",
            severity="info",
        )
    )
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            warnings.append(
                ScanWarning(
                    "non_finite_values", f"{bad} NaN/Inf pixel values", value=float(bad)
                )
            )
    return Scan(
        data=arr,
        spacing=(1.0, 1.0),
        affine=np.eye(4),
        kind="image",
        modality="",
        paths=(path,),
        scan_id=scan_id,
        metadata={
            "format": str(info.get("format", "")).lower(),
            "mode": str(info.get("mode", "")),
            "bit_depth": int(arr.dtype.itemsize * 8),
        },
        warnings=warnings,
        rgb=rgb,
        name=Path(path).name,
    )
