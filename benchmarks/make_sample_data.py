"""Rebuild ``resources/sample_data/`` from the permissively licensed files in ../shared/data.

Usage::

    .venv/bin/python benchmarks/make_sample_data.py \
        [--data ../shared/data] [--out resources/sample_data]

Every output is derived (downsampled, cropped, re-encoded) from a real public scan; the
README.md written next to them lists source, licence and derivation. Deterministic: the
same inputs give byte-identical outputs (fixed seeds, fixed UIDs, no timestamps).
"""

from __future__ import annotations

import argparse
import gzip
import io
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]

CT = "totalsegmentator_examples/example_ct.nii.gz"
CT_DICOM = "totalsegmentator_examples/example_ct_dicom"
MNI = "niivue-demo-images/register/MNI152_T1_2mm.nii.gz"
CXR = "torchxrayvision_tests/00000001_000.png"
WRIST = "region_xr_v1/wrist_rf547_image1_1100_png.png"


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a .nii.gz with a fixed gzip mtime (reproducible bytes)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)


def _block_mean(a: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    """Average non-overlapping blocks of size ``f`` (crops the remainder)."""
    sl = tuple(slice(0, (s // k) * k) for s, k in zip(a.shape, f, strict=True))
    a = a[sl].astype(np.float64)
    shape = []
    for s, k in zip(a.shape, f, strict=True):
        shape += [s // k, k]
    return a.reshape(shape).mean(axis=tuple(range(1, 2 * len(f), 2)))


def _downsampled_affine(affine: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    """Affine of a block-mean downsampled grid (block centres)."""
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * np.asarray(f, dtype=float)
    out[:3, 3] = affine[:3, :3] @ ((np.asarray(f, dtype=float) - 1) / 2) + affine[:3, 3]
    return out


def make_ct(data_dir: Path, out: Path) -> list[str]:
    """Abdomen-pelvis CT (body crop) and a truncated-field-of-view crop of it."""
    img = nib.load(data_dir / CT)
    vol = np.asarray(img.dataobj).astype(np.int16)
    aff = img.affine
    body = vol > -500
    ii, jj, kk = (np.flatnonzero(body.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    lo = [max(int(a[0]) - 2, 0) for a in (ii, jj, kk)]
    hi = [min(int(a[-1]) + 3, s) for a, s in zip((ii, jj, kk), vol.shape, strict=True)]
    crop = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    # 3 mm -> 4.5 mm in-plane is too coarse for the checks; keep 3 mm, every slice.
    crop_aff = aff.copy()
    crop_aff[:3, 3] = aff[:3, :3] @ np.asarray(lo, dtype=float) + aff[:3, 3]
    _save_nifti(crop, crop_aff, out / "ct_abdomen_pelvis.nii.gz")

    # Bad case: a field of view cut through the body on both sides and at the front,
    # and only 36 slices (upper abdomen), like a small reconstruction FOV.
    ni, nj, nk = crop.shape
    a0, a1 = ni // 5, ni - ni // 5
    b0 = nj // 6
    k0, k1 = nk - 48, nk - 12
    trunc = crop[a0:a1, b0:, k0:k1]
    t_aff = crop_aff.copy()
    t_aff[:3, 3] = crop_aff[:3, :3] @ np.array([a0, b0, k0], dtype=float) + crop_aff[:3, 3]
    _save_nifti(np.ascontiguousarray(trunc), t_aff, out / "ct_truncated_fov.nii.gz")
    return ["ct_abdomen_pelvis.nii.gz", "ct_truncated_fov.nii.gz"]


def make_mni(data_dir: Path, out: Path) -> list[str]:
    """Head MR template (MNI152, 2 mm) downsampled to 4 mm."""
    img = nib.load(data_dir / MNI)
    vol = np.asarray(img.dataobj, dtype=np.float64)
    f = (2, 2, 2)
    small = np.round(_block_mean(vol, f)).astype(np.int16)
    _save_nifti(small, _downsampled_affine(img.affine, f), out / "mr_head_template.nii.gz")
    return ["mr_head_template.nii.gz"]


def make_ct_dicom(data_dir: Path, out: Path, n_slices: int = 8, factor: int = 4) -> list[str]:
    """Eight slices of the CT DICOM series, 512 -> 128 px, no patient or date tags."""
    files = sorted((data_dir / CT_DICOM).iterdir())
    dsets = [pydicom.dcmread(f) for f in files]
    dsets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    start = (len(dsets) - n_slices) // 2
    dsets = dsets[start:start + n_slices]
    folder = out / "ct_chest_abdomen_dicom"
    folder.mkdir(exist_ok=True)
    study_uid = generate_uid(entropy_srcs=["scanqc-sample", "study"])
    series_uid = generate_uid(entropy_srcs=["scanqc-sample", "series"])
    frame_uid = generate_uid(entropy_srcs=["scanqc-sample", "frame"])
    names = []
    for i, src in enumerate(dsets):
        px = src.pixel_array.astype(np.float64)
        small = np.round(_block_mean(px, (factor, factor))).astype(np.uint16)
        row_dir = np.asarray(src.ImageOrientationPatient[:3], dtype=float)
        col_dir = np.asarray(src.ImageOrientationPatient[3:], dtype=float)
        dr, dc = (float(v) for v in src.PixelSpacing)  # row spacing, column spacing
        shift = (factor - 1) / 2
        ipp = np.asarray(src.ImagePositionPatient, dtype=float) + shift * (
            row_dir * dc + col_dir * dr
        )
        sop_uid = generate_uid(entropy_srcs=["scanqc-sample", "sop", str(i)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.Manufacturer = str(src.get("Manufacturer", ""))
        ds.SeriesDescription = "CT Body 3.0 (scanqc sample, 4x downsampled)"
        ds.BodyPartExamined = str(src.get("BodyPartExamined", ""))
        ds.SliceThickness = src.SliceThickness
        ds.KVP = src.get("KVP", None)
        ds.ConvolutionKernel = src.get("ConvolutionKernel", None)
        ds.PatientPosition = src.get("PatientPosition", "HFS")
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.ImageOrientationPatient = list(src.ImageOrientationPatient)
        ds.SliceLocation = f"{ipp[2]:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = small.shape
        ds.PixelSpacing = [f"{dr * factor:.6g}", f"{dc * factor:.6g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = src.RescaleIntercept
        ds.RescaleSlope = src.RescaleSlope
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = small.tobytes()
        for kw in ("KVP", "ConvolutionKernel"):
            if getattr(ds, kw, None) is None:
                delattr(ds, kw)
        name = f"slice{i + 1:02d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(f"ct_chest_abdomen_dicom/{name}")
    return names


def _save_png(arr: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    path.write_bytes(buf.getvalue())


def _resize_longest(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / max(w, h)
    if scale >= 1:
        return img
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def make_radiographs(data_dir: Path, out: Path) -> list[str]:
    """Chest and wrist radiographs at 256 px, and a noise-only image derived from the chest."""
    cxr = _resize_longest(Image.open(data_dir / CXR).convert("L"), 256)
    cxr_arr = np.asarray(cxr)
    _save_png(cxr_arr, out / "chest_xr.png")
    wrist = _resize_longest(Image.open(data_dir / WRIST).convert("L"), 256)
    _save_png(np.asarray(wrist), out / "wrist_xr.png")
    # Bad case: the chest image replaced by noise with the same mean and spread.
    rng = np.random.default_rng(0)
    noise = rng.normal(cxr_arr.mean(), cxr_arr.std(), size=cxr_arr.shape)
    _save_png(np.clip(np.round(noise), 0, 255).astype(np.uint8), out / "noise_xr.png")
    return ["chest_xr.png", "wrist_xr.png", "noise_xr.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "resources" / "sample_data")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    dicom_dir = out / "ct_chest_abdomen_dicom"
    if dicom_dir.exists():
        shutil.rmtree(dicom_dir)
    names = []
    names += make_ct(args.data, out)
    names += make_mni(args.data, out)
    names += make_ct_dicom(args.data, out)
    names += make_radiographs(args.data, out)
    total = 0
    for n in names:
        size = (out / n).stat().st_size
        total += size
        print(f"{size:>9,d}  {n}")
    print(f"{total:>9,d}  total bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
