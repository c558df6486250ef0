"""NIfTI-1/-2 volumes (``.nii``, ``.nii.gz``) into a :class:`~scanqc.io.scan.Scan`.

The volume is reoriented to the closest canonical (RAS+) orientation with nibabel and then
to scanqc's data axes ``(S, P, L)`` (axial slices, anterior at the top of the screen and the
patient's right on the left), the orientation an axial DICOM series has natively. The affine
is updated so that it still maps a data index ``(z, y, x, 1)`` to the same RAS+ millimetres.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from scanqc.io.limits import MAX_HEADER_BYTES, check_declared_size
from scanqc.io.scan import Scan, ScanReadError, ScanWarning

#: File name endings read by :func:`load_nifti`.
NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: Header fields copied into ``Scan.metadata["header"]`` (numbers only: nothing identifying;
#: ``descrip``, ``aux_file``, ``db_name`` and ``intent_name`` are free text and left out).
_HEADER_FIELDS = (
    "sizeof_hdr",
    "dim",
    "pixdim",
    "datatype",
    "bitpix",
    "qform_code",
    "sform_code",
    "xyzt_units",
    "intent_code",
    "slice_code",
    "slice_duration",
    "toffset",
    "cal_min",
    "cal_max",
)


def is_nifti_path(path: str | Path) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _cause(exc: BaseException) -> str:
    """Turn a nibabel/gzip/OS exception into a short one-line cause."""
    text = " ".join(str(exc).split())
    low = text.lower()
    if isinstance(exc, EOFError) or "end-of-stream" in low or "ended before" in low:
        return "truncated gzip stream"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)) or "not a gzipped file" in low:
        return f"corrupt gzip stream ({text})" if text else "corrupt gzip stream"
    if "cannot work out file type" in low or "not a nifti" in low or "sizeof_hdr" in low:
        return "not a NIfTI file"
    if isinstance(exc, ValueError) and ("vox_offset" in low or "header extension" in low):
        return text
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, MemoryError):
        return "out of memory while reading"
    m = re.search(r"expected (\d+) bytes, got (\d+)", low)
    if m:
        return f"truncated file (pixel data: {m.group(2)} of {m.group(1)} bytes)"
    if "expected" in low and ("bytes" in low or "elements" in low):
        return "truncated file (pixel data shorter than the header declares)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _open_raw(path: str):
    """Open ``path`` read-only; gunzip transparently when it starts with the gzip magic."""
    fh = open(path, "rb")  # noqa: SIM115 - returned to the caller
    magic = fh.read(2)
    fh.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh, mode="rb"), fh
    return fh, fh


def check_nifti_header(path: str | Path, *, header_limit: int = MAX_HEADER_BYTES) -> None:
    """Check the parts of a NIfTI header that decide how much nibabel reads, before it does.

    nibabel reads header extensions into memory with the sizes the file declares (a
    negative or huge ``esize`` reads the rest of the stream, which for a gzip bomb is
    gigabytes), and it decompresses everything up to ``vox_offset`` to reach the data. This
    reads at most ``header_limit`` bytes and refuses such files with a one-line
    ``ValueError``. Files that are not NIfTI-1/2 pass (nibabel reports those).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        header_limit: Most bytes allowed before the data block (extensions, offset).

    Raises:
        ValueError: Invalid ``vox_offset`` or header extensions (one line).
        OSError, EOFError, zlib.error: The file or its gzip stream cannot be read.
    """
    fh, raw = _open_raw(str(path))
    try:
        head = fh.read(544)
        if len(head) < 348:
            return  # nibabel reports the short header
        endian = None
        for e in ("<", ">"):
            if struct.unpack_from(e + "i", head, 0)[0] in (348, 540):
                endian = e
        if endian is None:
            return
        n2 = struct.unpack_from(endian + "i", head, 0)[0] == 540
        hdr_size = 540 if n2 else 348
        if len(head) < hdr_size:
            return
        vox = struct.unpack_from(endian + ("q" if n2 else "f"), head, 168 if n2 else 108)[0]
        if not np.isfinite(vox) or vox < 0:
            raise ValueError(f"invalid data offset (vox_offset {vox}) in the header")
        vox = int(vox)
        if vox > header_limit:
            raise ValueError(
                f"data offset {vox} bytes (vox_offset) exceeds the header limit of "
                f"{header_limit // 1024**2} MiB"
            )
        ext_flag = head[hdr_size:hdr_size + 4]
        if len(ext_flag) < 4 or ext_flag[0] == 0:
            return
        pos = hdr_size + 4
        fh.seek(pos)
        while vox - pos >= 16:  # nibabel reads extensions up to vox_offset
            ext_def = fh.read(8)
            if len(ext_def) < 8:
                return  # nibabel reports the short read
            esize = struct.unpack_from(endian + "i", ext_def, 0)[0]
            if esize < 16:
                raise ValueError(f"invalid header extension size {esize} (at least 16)")
            if pos + esize > header_limit:
                raise ValueError(
                    f"header extensions of {pos + esize} bytes exceed the header limit of "
                    f"{header_limit // 1024**2} MiB"
                )
            left = esize - 8
            while left > 0:  # skip the body in bounded chunks (a gzip stream cannot seek)
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    return
                left -= len(chunk)
            pos += esize
    finally:
        if fh is not raw:
            fh.close()
        raw.close()


def _header_summary(header) -> dict:
    """Return the non-identifying numeric header fields as JSON-friendly values."""
    out: dict = {}
    for key in _HEADER_FIELDS:
        try:
            val = np.asarray(header[key])
        except (KeyError, ValueError):
            continue
        if val.ndim == 0:
            item = val.item()
            out[key] = item.decode("ascii", "replace") if isinstance(item, bytes) else item
        else:
            out[key] = [v.item() for v in val.ravel()]
    with contextlib.suppress(Exception):  # informative only
        out["scl_slope"], out["scl_inter"] = (
            None if v is None else float(v) for v in header.get_slope_inter()
        )
    return {k: _finite(v) for k, v in out.items()}


def _finite(v):
    """Replace NaN/Inf (not valid JSON) by None, inside lists too."""
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _valid_spacing(values: np.ndarray) -> np.ndarray:
    """Boolean mask: finite and strictly positive pixel sizes."""
    return np.isfinite(values) & (values > 0)


def _raw_pixdim(path: str, header_class) -> np.ndarray:
    """``pixdim[1:4]`` as stored in the file (nibabel's loaded header has them "fixed")."""
    from nibabel.openers import ImageOpener

    with ImageOpener(path) as fh:
        raw = header_class.from_fileobj(fh, check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=float)


def _orientable(affine: np.ndarray) -> bool:
    """True when every data axis maps to a distinct world axis (nibabel can reorient)."""
    import nibabel as nib

    try:
        ornt = nib.orientations.io_orientation(affine)
    except Exception:  # noqa: BLE001 - a degenerate affine
        return False
    return bool(np.isfinite(ornt).all())


def _to_spl(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder canonical RAS data ``(i=R, j=A, k=S)`` to data axes ``(S, P, L)``.

    Returns the new array (a view) and the affine mapping ``(z, y, x, 1)`` to RAS+ mm.
    """
    ni, nj, _ = data.shape[:3]
    out = np.transpose(data, (2, 1, 0))[:, ::-1, ::-1]
    # new index (z, y, x) -> old index (i, j, k) = (ni-1-x, nj-1-y, z)
    m = np.array(
        [
            [0.0, 0.0, -1.0, ni - 1.0],
            [0.0, -1.0, 0.0, nj - 1.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return out, affine @ m


def _check_file_holds(path: str, header: object, spatial: tuple[int, ...], dtype: object) -> None:
    """Refuse an uncompressed ``.nii`` shorter than the volume its header declares.

    Without this, a header whose dimensions were corrupted (a flipped bit made one axis
    352,321,538 long) has the reader allocate and fill up to the per-scan limit (4 GiB)
    before the short read fails. Gzipped files are bounded by the limit alone (their
    length is only known once decompressed).
    """
    if not path.lower().endswith(".nii"):  # gzipped (or a header/image pair)
        return
    try:
        need = int(header.get_data_offset()) + int(np.prod(spatial)) * np.dtype(dtype).itemsize
        size = Path(path).stat().st_size
    except (OSError, TypeError, ValueError):
        return
    if size < need:
        raise ScanReadError(path, f"truncated file ({size} bytes; the header declares "
                            f"{need} bytes up to the end of the first volume)")


#: Luminance weights of a colour voxel (ITU-R BT.601, as PIL's "L" conversion).
_LUMA = {"R": 0.299, "G": 0.587, "B": 0.114}


def _plain_values(arr: np.ndarray, path: str, warnings: list[ScanWarning]) -> np.ndarray:
    """Colour (RGB24/RGBA32) voxels to gray uint8, complex voxels to their magnitude.

    The checks, the model and napari's gray layers need one real value per voxel; each
    conversion adds an ``info`` warning saying what was done.
    """
    names = arr.dtype.names
    if names:
        if not set(_LUMA) <= set(names):
            raise ScanReadError(path, f"unsupported voxel type {arr.dtype}")
        gray = sum(w * arr[c].astype(np.float32) for c, w in _LUMA.items())
        warnings.append(ScanWarning(
            "colour_to_gray", f"colour NIfTI ({'+'.join(names)}) shown as gray (luminance)",
            severity="info"))
        return np.clip(np.round(gray), 0, 255).astype(np.uint8)
    if arr.dtype.kind == "c":
        warnings.append(ScanWarning(
            "complex_magnitude", "complex voxels: the magnitude is used", severity="info"))
        return np.abs(arr).astype(np.float32 if arr.dtype.itemsize <= 8 else np.float64)
    return arr


#: qform and sform differing by more than this (mm, over the voxel corners) disagree.
FORM_TOLERANCE_MM = 0.5


def form_disagreement(header: object, spatial: tuple[int, ...]) -> ScanWarning | None:
    """``qform_sform_mismatch`` (warn): both transforms are set and place the voxels apart.

    nibabel (and scanqc) use the sform when its code is set; ITK and SimpleITK, hence
    nnU-Net and many converters, use the qform. When the two disagree the same file is
    shown in two places, or mirrored, depending on the tool. Compared over the corners of
    the voxel grid, so rounding in the quaternion does not count.
    """
    try:
        if int(header["qform_code"]) <= 0 or int(header["sform_code"]) <= 0:
            return None
        q, s = np.asarray(header.get_qform(), float), np.asarray(header.get_sform(), float)
    except Exception:  # noqa: BLE001 - an unreadable transform is checked elsewhere
        return None
    if not (np.isfinite(q).all() and np.isfinite(s).all()):
        return None
    n = [max(1, int(v)) - 1 for v in (list(spatial) + [1, 1, 1])[:3]]
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1])
                        for k in (0, n[2])]).T
    apart = float(np.linalg.norm((q - s) @ corners, axis=0).max())
    if apart <= FORM_TOLERANCE_MM:
        return None
    mirrored = np.sign(np.linalg.det(q[:3, :3])) != np.sign(np.linalg.det(s[:3, :3]))
    return ScanWarning(
        "qform_sform_mismatch",
        f"the header's qform and sform disagree (up to {apart:.1f} mm apart"
        + (", and mirrored" if mirrored else "") + "): read with the sform; tools that use "
        "the qform (ITK, SimpleITK) place the image differently", severity="warn",
        value=apart)


def load_nifti(path: str | Path, *, scan_id: str = "", max_bytes: int | None = None) -> Scan:
    """Read a NIfTI file into a :class:`Scan` with data axes ``(S, P, L)``.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        scan_id: Id to store in the scan.
        max_bytes: Per-scan memory ceiling (default: ``SCANQC_MAX_SCAN_BYTES``).

    Returns:
        A volume (``kind="volume"``) or, for a 2D file, an image (``kind="image"``).
        Scale slope and intercept are applied (integer data without scaling keeps its
        dtype; colour voxels become gray uint8, complex voxels their magnitude). Reader
        findings are in ``warnings``: ``colour_to_gray``, ``complex_magnitude``,
        ``4d_first_volume``,
        ``non_finite_values``, ``invalid_spacing``, ``invalid_affine``.

    Raises:
        ScanReadError: With a one-line cause ("truncated gzip stream", "not a NIfTI
            file", "declared size ... exceeds ...").
    """
    import nibabel as nib

    path = str(path)
    warnings: list[ScanWarning] = []
    nib_log = logging.getLogger("nibabel.global")
    level = nib_log.level
    nib_log.setLevel(logging.ERROR)  # nibabel logs (and silently fixes) bad pixdim
    try:
        check_nifti_header(path)
        img = nib.load(path)
        raw_pixdim = _raw_pixdim(path, type(img.header))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise ScanReadError(path, _cause(exc)) from exc
    finally:
        nib_log.setLevel(level)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanReadError(path, f"not a NIfTI file ({type(img).__name__})")
    header = img.header
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ScanReadError(path, f"invalid dimensions {shape}")
    # Keep up to three spatial axes; further axes: take index 0.
    spatial = shape[:3]
    extra = shape[3:]
    n_volumes = int(np.prod(extra)) if extra else 1
    dtype = header.get_data_dtype()
    slope, inter = header.get_slope_inter()
    scaled = (slope is not None and slope not in (0, 1)) or (inter not in (None, 0))
    out_dtype = np.float64 if scaled else dtype
    try:
        check_declared_size(spatial, out_dtype, max_bytes)
    except ValueError as exc:
        raise ScanReadError(path, str(exc)) from exc
    _check_file_holds(path, header, spatial, dtype)
    try:
        if extra:
            arr = np.asanyarray(img.dataobj[(Ellipsis, *([0] * len(extra)))])
        else:
            arr = np.asanyarray(img.dataobj)
        arr = np.asarray(arr)
    except Exception as exc:  # noqa: BLE001
        raise ScanReadError(path, _cause(exc)) from exc
    arr = _plain_values(arr, path, warnings)
    if n_volumes > 1:
        warnings.append(
            ScanWarning(
                "4d_first_volume",
                f"4D with {n_volumes} volumes (a time series, diffusion or ASL set): "
                "volume 0 is shown and scored",
                severity="info",
                value=float(n_volumes),
            )
        )
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            warnings.append(
                ScanWarning(
                    "non_finite_values",
                    f"{bad} NaN/Inf voxel values (kept; shown as background)",
                    severity="warn",
                    value=float(bad),
                )
            )
    while arr.ndim < 3:
        arr = arr[..., None]

    # Spacing from the raw pixdim (nibabel silently "fixes" 0 and negative values).
    pixdim = raw_pixdim[: len(spatial)]
    pixdim = np.r_[pixdim, np.ones(3 - pixdim.size)]
    affine = np.asarray(img.affine, dtype=float)
    ok = _valid_spacing(pixdim)
    if len(spatial) < 3:
        ok[len(spatial):] = True
    if not ok.all():
        warnings.append(
            ScanWarning(
                "invalid_spacing",
                f"invalid voxel size {tuple(round(float(p), 6) for p in pixdim[:len(spatial)])}"
                " in the header: using 1.0 mm where invalid",
                severity="warn",
            )
        )
    disagreement = form_disagreement(img.header, spatial)
    if disagreement is not None:
        warnings.append(disagreement)
    col_norm = np.linalg.norm(affine[:3, :3], axis=0)
    if not (np.isfinite(affine).all() and (col_norm > 0).all()
            and abs(np.linalg.det(affine[:3, :3])) > 1e-12
            and _orientable(affine)):
        affine = np.diag([*np.where(ok, pixdim, 1.0), 1.0])
        warnings.append(
            ScanWarning(
                "invalid_affine",
                "degenerate or non-finite affine in the header: using a diagonal one",
                severity="warn",
            )
        )
    elif not ok.all():
        # Rescale bad columns to unit length: the direction is kept, the size is 1 mm.
        affine = affine.copy()
        for ax in np.flatnonzero(~ok):
            affine[:3, ax] /= col_norm[ax]

    canon = nib.as_closest_canonical(nib.Nifti1Image(arr, affine))
    data, new_affine = _to_spl(np.asanyarray(canon.dataobj), np.asarray(canon.affine))
    data = np.ascontiguousarray(data)
    # Spacing from the header's voxel sizes, permuted like the axes (R, A, S) -> (S, P, L).
    fixed = np.where(ok, pixdim, 1.0)
    ornt = nib.orientations.io_orientation(affine)
    ras = np.ones(3)
    for src_axis, (dst_axis, _flip) in enumerate(ornt):
        ras[int(dst_axis)] = fixed[src_axis]
    spacing = (float(ras[2]), float(ras[1]), float(ras[0]))

    kind = "volume"
    if len(spatial) == 2 or spatial[2] == 1:
        kind = "image"
        flat_axis = next(ax for ax in range(3) if data.shape[ax] == 1)
        keep = [ax for ax in range(3) if ax != flat_axis]
        data = np.squeeze(data, axis=flat_axis)
        cols = [*keep, flat_axis]
        new_affine = np.c_[new_affine[:, cols], new_affine[:, 3]]
        spacing = tuple(spacing[ax] for ax in keep)

    orig_codes = ""
    with contextlib.suppress(Exception):  # informative only
        orig_codes = "".join(str(c) for c in nib.aff2axcodes(affine))
    metadata = {
        "format": "nifti",
        "original_shape": list(shape),
        "original_dtype": str(dtype),
        "original_orientation": orig_codes,
        "header": _header_summary(header),
    }
    return Scan(
        data=data,
        spacing=spacing,
        affine=new_affine,
        kind=kind,
        modality="",
        paths=(path,),
        scan_id=scan_id,
        metadata=metadata,
        warnings=warnings,
        rgb=False,
        name=Path(path).name,
    )
