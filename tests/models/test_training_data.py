from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from scanqc.models.training_data import (
    PERMISSIVE,
    classify_files,
    read_scan,
    region_xr_labels,
    select_training_files,
)

FIELDS = ["path", "set", "bytes", "format", "modality", "shape", "dtype", "spacing",
          "orient_or_bodypart", "decode", "region", "flags", "notes"]


def _manifest(root, rows):
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})


def test_rules_on_synthetic_manifest(tmp_path):
    _manifest(tmp_path, [
        {"path": "pylibjpeg-data/a.dcm", "set": "pylibjpeg-data", "decode": "ok",
         "region": "chest"},
        {"path": "pylibjpeg-data/b.dcm", "set": "pylibjpeg-data", "decode": "FAIL x",
         "region": "chest"},
        {"path": "pylibjpeg-data/c.dcm", "set": "pylibjpeg-data", "decode": "ok",
         "region": "chest", "flags": "corrupt_pixel_data_silent"},
        {"path": "mini_mias_subset/m.pgm", "set": "mini_mias_subset", "decode": "ok",
         "region": "breast"},
        {"path": "pykneer_knee_mri/DESS_echo1/1.dcm", "set": "pykneer_knee_mri",
         "decode": "ok", "region": "knee"},
        {"path": "dicomsamples_jl/x.dcm", "set": "dicomsamples_jl", "decode": "ok",
         "region": "head"},
        {"path": "niivue-demo-images/chris_t1.nii.gz", "set": "niivue-demo-images",
         "decode": "ok", "region": "head"},
        {"path": "niivue-demo-images/register/T2w.nii.gz", "set": "niivue-demo-images",
         "decode": "ok", "region": "head"},
        {"path": "somewhere_new/y.png", "set": "somewhere_new", "decode": "ok",
         "region": "hand"},
    ])
    rows = {r.path[len(str(tmp_path)) + 1:]: r for r in classify_files(tmp_path)}
    inc = {p for p, r in rows.items() if r.included}
    assert inc == {"pylibjpeg-data/a.dcm", "niivue-demo-images/register/T2w.nii.gz"}
    assert "licence" in rows["mini_mias_subset/m.pgm"].reason
    assert "decode" in rows["pylibjpeg-data/b.dcm"].reason
    assert "data quality" in rows["pylibjpeg-data/c.dcm"].reason
    assert rows["niivue-demo-images/register/T2w.nii.gz"].kind == "volume"
    assert rows["pykneer_knee_mri/DESS_echo1/1.dcm"].kind == "series"


@pytest.mark.data
def test_real_selection_is_permissive_only(shared_data):
    files = select_training_files(shared_data)
    assert len(files) > 200
    sets = {f.set for f in files}
    assert not sets & {"mini_mias_subset", "pykneer_knee_mri", "dicomsamples_jl",
                       "pneumoniamnist_28"}
    assert all(f.licence in PERMISSIVE for f in files)
    names = {f.path.rsplit("/", 1)[-1] for f in files}
    for nc in ("chris_t1.nii.gz", "Iguana.nii.gz", "spmMotor.nii.gz", "pcasl.nii.gz",
               "CT_AVM.nii.gz", "h0001.png", "Fake_MONOHR1.dcm", "966.dcm"):
        assert nc not in names, nc
    with open(shared_data / "manifest.csv", newline="") as fh:
        decode = {r["path"]: r["decode"] for r in csv.DictReader(fh)}
    for f in files:
        rel = f.path[len(str(shared_data)) + 1:]
        assert decode[rel] == "ok", rel
    xr = [f for f in files if f.set == "region_xr_v1"]
    assert {f.region for f in xr} <= {"upper_limb", "shoulder", "wrist", "chest", "pelvis"}


@pytest.mark.data
def test_region_labels(shared_data):
    all_rows = region_xr_labels(shared_data)
    assert len(all_rows) == 521
    perm = region_xr_labels(shared_data, permissive_only=True)
    assert {r.region for r in perm} == {"upper_limb", "shoulder", "wrist", "chest", "pelvis"}
    assert {r.region for r in all_rows} - {r.region for r in perm} >= {"knee", "hand", "spine"}


def test_fallback_readers(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray((np.arange(64 * 32).reshape(64, 32) * 30).astype(np.uint16)).save(png)
    s = read_scan(png)
    assert s.data.shape == (64, 32) and s.data.max() > 255  # 16-bit kept
    vol = np.zeros((10, 12, 14), np.int16)
    vol[2, 3, 4] = 7
    nii = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 2.0, 3.0, 1.0])), nii)
    s = read_scan(nii)
    assert s.data.shape == (14, 12, 10) and s.spacing == (3.0, 2.0, 1.0)
    assert s.data.max() == 7
    from scanqc.io.scan import ScanReadError

    with pytest.raises(ScanReadError):
        read_scan(tmp_path / "missing.dcm")
