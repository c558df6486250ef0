"""QC checks on real files from ../shared/data (skipped when the data is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scanqc.scoring.checks import max_severity, run_checks

FOV_CODES = {"fov_cut", "short_coverage", "truncated_coverage"}
SEVERE = ("warn", "high")


def _load(path: Path):
    from scanqc.io.load import load_scan

    return load_scan(path)


def _codes(ws, severities=SEVERE):
    return {w.code for w in ws if w.severity in severities}


def test_truncated_ct_gets_fov_warning_full_ct_does_not(shared_data):
    ts = shared_data / "totalsegmentator_examples"
    sm = run_checks(_load(ts / "example_ct_sm.nii.gz"))
    full = run_checks(_load(ts / "example_ct.nii.gz"))
    assert _codes(sm) & FOV_CODES, sm
    assert not _codes(full) & FOV_CODES, full


@pytest.mark.parametrize("rel", [
    "dicomsamples_jl/MG_Explicit_Little.dcm",          # text/ruler test pattern
    "pylibjpeg-data/JPEGLosslessP14SV1_1s_1f_u_16_16.dcm",  # photo of roses
    "niivue-demo-images/spmMotor.nii.gz",              # SPM statistic map
    "niivue-demo-images/Iguana.nii.gz",                # non-human
])
def test_non_anatomical_files_get_warnings(shared_data, rel):
    ws = run_checks(_load(shared_data / rel))
    assert _codes(ws), ws


def test_torchio_series_modality_mismatch(shared_data):
    ws = run_checks(_load(shared_data / "torchio_dicom_series" / "dicom"))
    assert "modality_mismatch" in _codes(ws, ("high",))


def test_ct_avm_uint8_not_hounsfield(shared_data):
    ws = run_checks(_load(shared_data / "niivue-demo-images" / "CT_AVM.nii.gz"))
    assert "modality_mismatch" in _codes(ws)


def test_ct_scouts_are_localizers(shared_data):
    for rel in ("dicomsamples_jl/CT_JPEG70.dcm", "pylibjpeg-data/MAROTECH_CT_JP2Lossy.dcm"):
        assert "localizer" in _codes(run_checks(_load(shared_data / rel))), rel


@pytest.mark.slow
def test_few_clean_scans_get_high_warnings(shared_data):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from checks_false_warnings import clean_scan_paths

    paths = clean_scan_paths(shared_data, xr_sample=40)
    n = high = 0
    offenders = []
    for p in paths:
        try:
            scan = _load(p)
        except Exception:  # noqa: BLE001 - reader problems are not this test's subject
            continue
        n += 1
        ws = run_checks(scan)
        if max_severity(ws) == "high":
            high += 1
            offenders.append((p.name, [w.code for w in ws if w.severity == "high"]))
    assert n >= 50
    assert high / n < 0.05, offenders


def test_label_maps_are_named(shared_data):
    """The two label maps of the data set (manifest flag label_map), and no image."""
    for rel in ("totalsegmentator_examples/example_seg.nii.gz",  # TotalSegmentator organ ids
                "dicomsamples_jl/MR_UnspecifiedLength.dcm"):      # DICOM SEG breast mask
        assert "label_map" in _codes(run_checks(_load(shared_data / rel)), ("high",)), rel
    for rel in ("totalsegmentator_examples/example_ct_sm.nii.gz",  # the CT of that map
                "niivue-demo-images/CT_AVM.nii.gz",                 # uint8 CT
                "dicomsamples_jl/MG_Explicit_Little.dcm"):          # flat test pattern
        assert "label_map" not in _codes(run_checks(_load(shared_data / rel))), rel


def test_tiny_test_images_are_flagged(shared_data):
    folder = shared_data / "pydicom_3.0.2_testfiles" / "dicomdirtests" / "77654033" / "CR1"
    files = [p for p in folder.iterdir() if p.is_file()]
    assert files and "tiny_image" in _codes(run_checks(_load(files[0])), ("high",))
