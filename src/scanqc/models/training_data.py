"""Select the permissively licensed files of the development data for training shipped weights.

Shipped weights may only learn from data whose licence allows commercial redistribution of
derived works: MIT, BSD, Apache-2.0, CC BY 4.0 (and the McGill MNI152 permission notice).
Excluded: CC BY-NC, research-only (mini-MIAS, TBX11K, RSNA/AIMI terms), GPL (pyKNEEr), sets or
sources without a licence (DICOMSamples, the Roboflow spine export, OAI knee crops,
covid-chestxray, an unnamed JPEG), and PMC/Open-i figure terms. The rule table below is
the single place that decides; it was written from each set's ``SOURCE.md`` and
``region_xr_v1/SOURCE.md`` and is re-checked against ``manifest.csv`` on every call.

Besides the licence, files that are deliberately broken or not anatomy (corrupt pixel
data, wrong header values, label maps, statistic maps, test patterns, non-human, 16x16
thumbnails) are left out of encoder training with a data-quality reason.

The selection is reusable: :func:`select_training_files` returns :class:`TrainingFile` rows,
:func:`region_xr_labels` the region labels of ``region_xr_v1`` (for the region classifier).

Reading: :func:`read_scan` uses :func:`scanqc.io.load.load_scan` when the readers are
importable and falls back to nibabel / pydicom / Pillow otherwise.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scanqc.io.scan import Scan, ScanReadError, luminance

log = logging.getLogger(__name__)

#: Licences whose terms allow shipping weights trained on the data.
PERMISSIVE = ("MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "CC BY 4.0",
              "MNI152 permission notice")


@dataclass(frozen=True)
class LicenceRule:
    """Licence of files in ``set`` whose path (relative to the set) matches ``pattern``."""

    set: str
    pattern: str
    licence: str
    permissive: bool
    note: str


#: First matching rule wins. Patterns are fnmatch patterns on the path inside the set.
RULES: tuple[LicenceRule, ...] = (
    LicenceRule("pydicom_3.0.2_testfiles", "*", "MIT", True,
                "pydicom wheel test files (NEMA WG04, dclunie, GDCM BSD-style)"),
    LicenceRule("pylibjpeg-data", "*", "MIT", True,
                "pylibjpeg-data repo MIT (NEMA WG04, GDCM BSD-style)"),
    LicenceRule("totalsegmentator_examples", "*", "Apache-2.0", True,
                "TotalSegmentator repo test files"),
    LicenceRule("torchio_dicom_series", "*", "Apache-2.0", True, "TorchIO repo test series"),
    LicenceRule("niivue-demo-images", "register/MNI152_T1_2mm*", "MNI152 permission notice",
                True, "McGill permissive notice (register/COPYING_EXT.txt)"),
    LicenceRule("niivue-demo-images", "register/*", "BSD-2-Clause", True,
                "niivue-demo-images repo licence; no other terms stated upstream"),
    LicenceRule("niivue-demo-images", "chris_*", "CC BY-NC 4.0", False, "non-commercial"),
    LicenceRule("niivue-demo-images", "fmri_pitch*", "CC BY-NC 4.0", False, "non-commercial"),
    LicenceRule("niivue-demo-images", "pcasl*", "CC BY-NC 4.0", False, "non-commercial"),
    LicenceRule("niivue-demo-images", "spmMotor*", "CC BY-NC 4.0", False, "non-commercial"),
    LicenceRule("niivue-demo-images", "Iguana*", "CC BY-NC 4.0", False, "non-commercial"),
    LicenceRule("niivue-demo-images", "*", "unclear third-party terms", False,
                "CT_AVM (PRISMDatabase), CT_pitch (courtesy), MR_Gd (figshare): "
                "licence not stated in SOURCE.md"),
    LicenceRule("torchxrayvision_tests", "000*_000.png", "Apache-2.0", True,
                "NIH ChestX-ray14 public release (no usage restrictions); repo Apache-2.0"),
    LicenceRule("torchxrayvision_tests", "tbx11k/*", "TBX11K research use", False,
                "research use only"),
    LicenceRule("torchxrayvision_tests", "1.2.276*", "RSNA challenge terms", False,
                "RSNA terms, not clearly permissive"),
    LicenceRule("torchxrayvision_tests", "Fake_MONOHR1.dcm", "RSNA challenge terms", False,
                "RSNA terms, not clearly permissive"),
    LicenceRule("torchxrayvision_tests", "*", "per-image / not stated", False,
                "covid-chestxray per-image licences; 16747_3_1 origin not stated"),
    LicenceRule("pykneer_knee_mri", "*", "GPL-3.0", False, "copyleft repo, in-house data"),
    LicenceRule("dicomsamples_jl", "*", "no licence file", False, "terms not stated"),
    LicenceRule("mini_mias_subset", "*", "MIAS research use only", False, "research only"),
    LicenceRule("pneumoniamnist_28", "*", "CC BY 4.0", True, "MedMNIST (Kermany et al.)"),
)

#: region_xr_v1 sources (``owner/name`` of ``labels.csv:source_path``) -> licence rule.
REGION_XR_SOURCES: dict[str, tuple[str, bool, str]] = {
    "dennis-1240-cdm/diagnosis_of_bones_fractures": (
        "CC BY 4.0", True, "Roboflow Bone Fracture Detection dataset (README.dataset.txt)"),
    "lecuong1502/BTL_Machine_Learning": (
        "CC BY 4.0", True, "Kermany et al. pediatric chest X-ray (Mendeley Data)"),
    "radoss-org/radoss-creative-commons": (
        "CC BY 4.0", True, "Fraiwan et al. DDH x-ray dataset, Mendeley Data (attribution)"),
    "Rohan-145/KneeOA_Analysis": ("OAI data-use terms", False, "OAI terms, no licence file"),
    "neuro-inc/ml-recipe-bone-age": (
        "RSNA/AIMI research terms", False, "RSNA bone age, research terms"),
    "Znarfran/CADMA": ("no licence file", False, "Roboflow spine export, licence not stated"),
    "devichand579/Instance_seg_teeth": (
        "UFBA-UESC dataset terms", False, "dataset terms not clearly permissive"),
    "dlab-berkeley/R-Deep-Learning": (
        "PMC/Open-i figure terms", False, "journal figure terms per article"),
}

#: manifest flags that make a file unsuitable for learning what normal anatomy looks like.
BAD_FLAGS = frozenset({
    "corrupt_pixel_data", "corrupt_pixel_data_silent", "pixel_representation_mismatch",
    "bits_stored_mismatch", "wrong_bits_stored", "looks_like_noise", "non_medical_content",
    "non_anatomical", "test_pattern", "label_map", "derived_statmap", "nonhuman",
    "tiny_16x16", "no_pixel_data", "dicomdir", "invalid_header_value",
    "wrong_modality_pathology", "truncated_pixel_data", "header_modified",
})

#: Sets whose DICOM files in sub-folders are slices of one series.
SERIES_SETS = frozenset({"totalsegmentator_examples", "torchio_dicom_series", "pykneer_knee_mri"})

#: Sets left out by default although permissive (28x28 thumbnails add little anatomy).
OPTIONAL_SETS = frozenset({"pneumoniamnist_28"})


@dataclass(frozen=True)
class TrainingFile:
    """One candidate file and the decision about it.

    Attributes:
        path: Absolute path.
        set: Data set folder name.
        region: Hand-assigned region label.
        licence: Licence of the file.
        reason: Why it is in, or why it is out.
        included: True when usable for shipped weights.
        kind: ``"image"``, ``"volume"`` (NIfTI or multi-frame) or ``"series"`` (DICOM file
            that belongs to a folder series; the folder is the scan).
    """

    path: str
    set: str
    region: str
    licence: str
    reason: str
    included: bool
    kind: str = "image"


def _rule_for(set_name: str, rel: str) -> LicenceRule | None:
    for rule in RULES:
        if rule.set == set_name and fnmatch.fnmatch(rel, rule.pattern):
            return rule
    return None


def _read_manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _region_xr_sources(root: Path) -> dict[str, str]:
    """``file name -> owner/name`` from ``region_xr_v1/labels.csv``."""
    out = {}
    labels = root / "region_xr_v1" / "labels.csv"
    if labels.is_file():
        with open(labels, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                out[row["file"]] = row["source_path"].split(":", 1)[0]
    return out


def classify_files(root: str | Path) -> list[TrainingFile]:
    """Return a decision (in or out, with licence and reason) for every manifest row."""
    root = Path(root)
    xr_src = _region_xr_sources(root)
    out = []
    for row in _read_manifest(root):
        set_name = row["set"]
        rel = row["path"].split("/", 1)[1] if "/" in row["path"] else row["path"]
        path = str(root / row["path"])
        region = row.get("region", "")
        flags = {f for f in row.get("flags", "").split(";") if f}
        kind = "volume" if path.endswith((".nii", ".nii.gz")) else "image"
        if set_name in SERIES_SETS and "/" in rel and kind == "image":
            kind = "series"
        if set_name == "region_xr_v1":
            src = xr_src.get(Path(rel).name, "")
            licence, ok, note = REGION_XR_SOURCES.get(src, ("unknown source", False, src))
        else:
            rule = _rule_for(set_name, rel)
            if rule is None:
                licence, ok, note = "unknown", False, "no licence rule for this set"
            else:
                licence, ok, note = rule.licence, rule.permissive, rule.note
        decode = row.get("decode", "")
        if not ok:
            reason, inc = f"excluded: licence {licence} ({note})", False
        elif decode != "ok":
            reason, inc = f"excluded: decode {decode.split(':')[0]}", False
        elif flags & BAD_FLAGS:
            reason, inc = f"excluded: data quality ({';'.join(sorted(flags & BAD_FLAGS))})", False
        elif region in ("none", "nonhuman", "unknown"):
            reason, inc = f"excluded: region {region}", False
        elif set_name in OPTIONAL_SETS:
            reason, inc = f"optional: {licence} ({note})", False
        else:
            reason, inc = f"included: {licence} ({note})", True
        out.append(TrainingFile(path, set_name, region, licence, reason, inc, kind))
    return out


def select_training_files(
    root: str | Path, include_optional: Iterable[str] = ()
) -> list[TrainingFile]:
    """Return the permissively licensed, decodable anatomy files under ``root``.

    Args:
        root: The data folder holding ``manifest.csv``.
        include_optional: Optional permissive sets to add (e.g. ``"pneumoniamnist_28"``).
    """
    opt = set(include_optional)
    rows = []
    for f in classify_files(root):
        if f.included or (f.set in opt and f.reason.startswith("optional")):
            rows.append(f)
    return rows


def region_xr_labels(root: str | Path, permissive_only: bool = False) -> list[TrainingFile]:
    """Region-labelled radiographs of ``region_xr_v1`` (``region`` from ``labels.csv``).

    Args:
        root: The data folder.
        permissive_only: Keep only files whose source licence allows shipped weights
            (the evaluation of a classifier may use all of them; shipped weights may not).
    """
    root = Path(root)
    labels = root / "region_xr_v1" / "labels.csv"
    out = []
    with open(labels, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            src = row["source_path"].split(":", 1)[0]
            licence, ok, note = REGION_XR_SOURCES.get(src, ("unknown source", False, src))
            if permissive_only and not ok:
                continue
            out.append(TrainingFile(
                str(labels.parent / row["file"]), "region_xr_v1", row["region"], licence,
                ("included: " if ok else "excluded: ") + note, ok, "image"))
    return out


def training_scans(files: list[TrainingFile]) -> list[tuple[str, TrainingFile]]:
    """Group rows into scans: ``(path_to_read, first_row)``; a series folder is one scan."""
    seen: dict[str, TrainingFile] = {}
    for f in files:
        key = str(Path(f.path).parent) if f.kind == "series" else f.path
        seen.setdefault(key, f)
    return sorted(seen.items())


# --------------------------------------------------------------------------- reading


def read_scan(path: str | Path, prefer_io: bool = False) -> Scan:
    """Read an image, NIfTI, DICOM file or DICOM series folder into a :class:`Scan`.

    Training uses the small built-in reader below by default, so shipped weights do not
    change when the product readers change. With ``prefer_io`` the product reader
    :func:`scanqc.io.load.load_scan` is tried first (falling back on any failure).

    Raises:
        ScanReadError: the file cannot be read.
    """
    path = Path(path)
    if prefer_io and not path.is_dir():
        try:
            from scanqc.io.load import load_scan

            return load_scan(str(path))
        except Exception as exc:  # noqa: BLE001 - fall back to the minimal reader
            log.debug("load_scan failed on %s (%s); using the fallback reader", path, exc)
    try:
        return _fallback_read(path)
    except ScanReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - one-line error for any reader failure
        raise ScanReadError(str(path), f"{type(exc).__name__}: {exc}") from exc


def _fallback_read(path: Path) -> Scan:
    name = path.name.lower()
    if path.is_dir():
        return _read_dicom_series(sorted(p for p in path.iterdir() if p.is_file()))
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asanyarray(img.dataobj)
        while data.ndim > 3:
            data = data[..., 0]
        zooms = img.header.get_zooms()[:3]
        # RAS (x, y, z) -> (S, P, L) data axes
        vol = np.ascontiguousarray(np.transpose(data, (2, 1, 0))[:, ::-1, ::-1])
        return Scan(vol, (float(zooms[2]), float(zooms[1]), float(zooms[0])), np.eye(4),
                    "volume", paths=(str(path),), name=path.name)
    if name.endswith((".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff", ".bmp")):
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im).astype(np.float32)
            else:
                arr = np.asarray(im.convert("L"))
        return Scan(arr, (1.0, 1.0), np.eye(4), "image", paths=(str(path),), name=path.name)
    return _read_dicom_series([path])


def _dicom_pixels(ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    arr = ds.pixel_array
    pi = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        arr = luminance(arr)
    else:
        arr = apply_modality_lut(arr, ds).astype(np.float32)
        if pi == "MONOCHROME1":
            arr = arr.max() + arr.min() - arr
    return arr


def _read_dicom_series(paths: list[Path]) -> Scan:
    import pydicom

    items = []
    for p in paths:
        if p.name.lower().endswith(".gz"):
            import gzip
            import io

            with gzip.open(p, "rb") as fh:
                ds = pydicom.dcmread(io.BytesIO(fh.read()))
        else:
            ds = pydicom.dcmread(str(p))
        if "PixelData" not in ds:
            continue
        pos = ds.get("ImagePositionPatient")
        ori = ds.get("ImageOrientationPatient")
        key = 0.0
        if pos is not None and ori is not None:
            normal = np.cross(np.asarray(ori[:3], float), np.asarray(ori[3:], float))
            key = float(np.dot(normal, np.asarray(pos, float)))
        items.append((key, ds))
    if not items:
        raise ScanReadError(str(paths[0]), "no pixel data")
    items.sort(key=lambda t: t[0])
    ds0 = items[0][1]
    ps = [float(v) for v in ds0.get("PixelSpacing", [1.0, 1.0])]
    modality = str(ds0.get("Modality", ""))
    if len(items) == 1:
        arr = _dicom_pixels(ds0)
        kind = "volume" if arr.ndim == 3 else "image"
        thk = float(ds0.get("SliceThickness", 1.0) or 1.0)
        spacing = (thk, ps[0], ps[1]) if arr.ndim == 3 else (ps[0], ps[1])
        return Scan(arr, spacing, np.eye(4), kind, modality=modality,
                    paths=(str(paths[0]),), name=paths[0].name)
    vol = np.stack([_dicom_pixels(ds) for _, ds in items])
    keys = np.array([k for k, _ in items])
    dz = float(np.median(np.abs(np.diff(keys)))) if len(keys) > 1 else 1.0
    return Scan(vol, (dz or 1.0, ps[0], ps[1]), np.eye(4), "series", modality=modality,
                paths=tuple(str(p) for p in paths), name=paths[0].parent.name)


def licence_summary(files: list[TrainingFile]) -> list[tuple[str, str, int]]:
    """``(set, licence, number of files)`` for the model card."""
    counts: dict[tuple[str, str], int] = {}
    for f in files:
        counts[(f.set, f.licence)] = counts.get((f.set, f.licence), 0) + 1
    return sorted((s, lic, n) for (s, lic), n in counts.items())
