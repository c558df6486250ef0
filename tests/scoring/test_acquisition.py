"""Acquisition profiles compared with the references (scoring/acquisition.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring.acquisition import (
    AcquisitionProfile,
    acquisition_profile,
    modality_group,
    unlike_references,
)


def volume(n=40, spacing=(1.0, 1.0, 1.0), modality="MR", axes="RAS", warnings=()):
    """A volume whose original NIfTI axis codes say its plane (third code: slice axis)."""
    return Scan(np.zeros((n, 32, 32), np.int16), spacing, np.eye(4), "volume",
                modality=modality, warnings=list(warnings),
                metadata={"format": "nifti", "original_orientation": axes})


def image(spacing=(0.15, 0.15), modality="CR", warnings=()):
    return Scan(np.zeros((64, 64), np.uint16), spacing, np.eye(4), "image",
                modality=modality, warnings=list(warnings))


def prof(scan):
    return acquisition_profile(scan)


def codes(ws):
    return [w.code for w in ws]


REFS = [prof(volume(n=160 + 4 * i, spacing=(1.0, 0.9 + 0.05 * i, 0.9 + 0.05 * i)))
        for i in range(4)]


def test_profile_reads_geometry_modality_and_4d():
    p = prof(volume(n=50, spacing=(3.0, 2.0, 2.0), modality="CT", axes="LPI"))
    assert (p.modality, p.dims, p.plane, p.n_volumes) == ("CT", "3d", "axial", 1)
    assert p.inplane_mm == 2.0 and p.slice_mm == 3.0 and p.extent_mm == 150.0
    # a sagittal NIfTI is stored head-foot on axis 0: its 3 mm slices lie on another axis
    sag = prof(volume(n=50, spacing=(1.0, 1.0, 3.0), axes="ASL"))
    assert sag.inplane_mm == 1.0 and sag.slice_mm == 3.0 and sag.extent_mm == 50.0
    four = prof(volume(warnings=[ScanWarning("4d_first_volume", "4D", "info", value=10.0)]))
    assert four.n_volumes == 10
    assert prof(volume(axes="ASL")).plane == "sagittal"
    # a PNG's placeholder spacing is not a size
    png = prof(image(spacing=(1.0, 1.0), modality="",
                     warnings=[ScanWarning("no_spacing", "none", "info")]))
    assert math.isnan(png.inplane_mm) and png.modality == "" and png.dims == "2d"
    # round trip through the plain dict the workers send
    assert AcquisitionProfile.from_dict(p.to_dict()) == p
    assert AcquisitionProfile.from_dict(None) is None


@pytest.mark.parametrize("m,group", [("CR", "XR"), ("dx", "XR"), ("RG", "XR"), ("MR", "MR"),
                                     ("OT", ""), ("", ""), ("MG", "MG")])
def test_modality_groups(m, group):
    assert modality_group(m) == group


def test_references_themselves_and_alike_scans_get_nothing():
    for r in REFS:
        assert unlike_references(r, REFS) == []
    alike = prof(volume(n=150, spacing=(1.2, 1.1, 1.1)))
    assert unlike_references(alike, REFS) == []


def test_coarse_epi_is_unlike_structural_references():
    epi = prof(volume(n=30, spacing=(3.6, 3.25, 3.25)))  # 108 mm against ~166 mm
    ws = unlike_references(epi, REFS)
    assert codes(ws) == ["resolution_unlike_references", "short_coverage"]
    assert "3.25 mm pixels, the references 0.9-1.02 mm" in ws[0].message
    assert "3.6 mm slices, the references 1-1.05 mm" in ws[0].message
    # within the factor: 1.5 mm pixels against 0.9-1.05 mm references are alike
    assert unlike_references(prof(volume(n=160, spacing=(1.0, 1.5, 1.5))), REFS) == []


def test_other_plane_modality_dimension_and_4d():
    sag = prof(volume(n=160, axes="ASL"))
    assert codes(unlike_references(sag, REFS)) == ["plane_unlike_references"]
    ct = prof(volume(n=160, modality="CT"))
    ws = unlike_references(ct, REFS)
    assert codes(ws) == ["modality_unlike_references"] and "the references are MR" in ws[0].message
    two_d = prof(image(spacing=(1.0, 1.0), modality="MR"))
    assert codes(unlike_references(two_d, REFS)) == ["dimension_unlike_references"]
    # a radiograph's 0.15 mm pixels are not compared with the volumes' voxels
    fine_2d = prof(image(spacing=(0.15, 0.15), modality="MR"))
    assert codes(unlike_references(fine_2d, REFS)) == ["dimension_unlike_references"]
    four = prof(volume(n=160, warnings=[ScanWarning("4d_first_volume", "", "info", value=8.0)]))
    ws = unlike_references(four, REFS)
    assert codes(ws) == ["dimension_unlike_references"] and "4D series of 8" in ws[0].message


def test_mixed_references_widen_what_is_alike():
    refs = [*REFS, prof(volume(n=160, axes="ASL", modality="CT"))]
    assert unlike_references(prof(volume(n=160, axes="ASL", modality="CT")), refs) == []
    # coronal is none of axial/sagittal
    assert codes(unlike_references(prof(volume(n=160, axes="RSA")), refs)) == [
        "plane_unlike_references"]


def test_unknowns_are_not_compared():
    # references without a modality: no modality finding; one known size: no size finding
    refs = [prof(volume(n=160, modality="")), prof(volume(n=160, modality=""))]
    assert unlike_references(prof(volume(n=160, modality="CT")), refs) == []
    one_known = [REFS[0], prof(image(spacing=(1.0, 1.0), modality="MR",
                                     warnings=[ScanWarning("no_spacing", "", "info")]))]
    assert "resolution_unlike_references" not in codes(
        unlike_references(prof(volume(n=160, spacing=(5.0, 4.0, 4.0))), one_known))
    assert unlike_references(None, REFS) == [] and unlike_references(REFS[0], []) == []


def test_radiographs_compare_pixel_size_only():
    refs = [prof(image(spacing=(0.14 + 0.01 * i,) * 2)) for i in range(5)]
    assert unlike_references(prof(image(spacing=(0.16, 0.16), modality="DX")), refs) == []
    thumb = unlike_references(prof(image(spacing=(0.7, 0.7))), refs)
    assert codes(thumb) == ["resolution_unlike_references"]
    assert "slices" not in thumb[0].message


def test_typical_profiles_keep_the_majority_and_drop_size_outliers():
    from scanqc.scoring.acquisition import MIN_DATASET, typical_profiles

    mr = [prof(volume(n=150, spacing=(1.0, 0.9 + 0.01 * i, 0.9 + 0.01 * i)))
          for i in range(30)]
    odd = [prof(volume(n=150, modality="CT")), prof(volume(n=30, spacing=(3.6, 3.25, 3.25)))]
    typical = typical_profiles([*mr, *odd, None])
    assert {p.modality for p in typical} == {"MR"}
    assert max(p.inplane_mm for p in typical) < 1.3  # the EPI is not typical
    assert typical_profiles(mr[: MIN_DATASET - 1]) == []  # too small a dataset
    # no modality holds 90 %: nothing is filtered by modality
    mixed = [*mr[:20], *[prof(volume(n=150, modality="CT")) for _ in range(5)]]
    assert {p.modality for p in typical_profiles(mixed)} == {"MR", "CT"}


def test_unlike_dataset_names_the_odd_scans_of_a_homogeneous_dataset():
    from scanqc.scoring.acquisition import typical_profiles, unlike_dataset

    mr = [prof(volume(n=150, spacing=(1.0, 0.9 + 0.01 * i, 0.9 + 0.01 * i)))
          for i in range(30)]
    epi = prof(volume(n=30, spacing=(3.6, 3.25, 3.25)))
    ct = prof(volume(n=150, modality="CT"))
    four = prof(volume(n=150, warnings=[ScanWarning("4d_first_volume", "", "info", value=6.0)]))
    typical = typical_profiles([*mr, epi, ct, four])
    assert codes(unlike_dataset(epi, typical)) == ["resolution_unlike_dataset"]
    assert unlike_dataset(epi, typical)[0].severity == "info"  # a majority, not the user
    assert unlike_references(epi, mr)[0].severity == "warn"
    msg = unlike_dataset(epi, typical)[0].message
    assert msg.startswith("3.25 mm pixels, most scans 0.9")
    assert "3.6 mm slices, most scans 1-" in msg
    assert codes(unlike_dataset(ct, typical)) == ["modality_unlike_dataset"]
    assert codes(unlike_dataset(four, typical)) == ["dimension_unlike_dataset"]
    assert all(unlike_dataset(p, typical) == [] for p in mr)
    # a short but otherwise typical scan: coverage is not compared against a dataset
    assert unlike_dataset(prof(volume(n=40)), typical) == []
