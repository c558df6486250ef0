"""Header-versus-content checks."""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.io.scan import Scan
from scanqc.scoring import header
from scanqc.scoring.checks import run_checks


def ct_volume(hu=True, modality="CT", name="", **meta):
    y, x = np.mgrid[:64, :64]
    body = ((y - 32) ** 2 + (x - 32) ** 2) < 25**2
    if hu:
        img = np.where(body, 40.0, -1000.0)
        img[body & (np.abs(x - 32) < 3)] = 900.0  # bone
    else:  # MR-like magnitude values
        img = np.where(body, 600.0, 0.0)
    vol = np.stack([img] * 10).astype(np.int16)
    return Scan(vol, (3.0, 0.7, 0.7), np.eye(4), "volume", modality=modality, name=name,
                metadata=dict(meta))


def codes(ws):
    return {w.code for w in ws}


def test_ct_in_hu_is_fine():
    assert header.check_modality_mismatch(ct_volume()) == []


def test_ct_header_with_mr_pixels_is_high():
    ws = header.check_modality_mismatch(ct_volume(hu=False))
    assert codes(ws) == {"modality_mismatch"} and ws[0].severity == "high"


def test_ct_by_name_without_header_uint8():
    scan = ct_volume(hu=False, modality="", name="CT_AVM.nii.gz")
    scan.data = (scan.data / 600 * 255).astype(np.uint8)
    ws = header.check_modality_mismatch(scan)
    assert codes(ws) == {"modality_mismatch"} and ws[0].severity == "warn"
    assert header.check_modality_mismatch(ct_volume(hu=False, modality="", name="t1.nii")) == []
    assert header.claimed_modality(ct_volume(modality="", name="ACT_study.nii"))[0] == ""


def test_mr_header_with_hu_pixels():
    assert codes(header.check_modality_mismatch(ct_volume(modality="MR"))) == {
        "modality_mismatch"}


def test_cropped_ct_without_air_is_still_hu():
    vol = np.full((10, 32, 32), 40, np.int16)
    vol[:, :, :8] = -100  # fat
    scan = Scan(vol, (3.0, 1.0, 1.0), np.eye(4), "volume", modality="CT")
    assert header.check_modality_mismatch(scan) == []


@pytest.mark.parametrize(("spacing", "bad"), [
    ((3.0, 0.7, 0.7), False), ((0.1, 0.1), False), ((3.0, 0.001, 0.7), True),
    ((3.0, 25.0, 25.0), True), ((60.0, 1.0, 1.0), True), ((3.0, 0.0, 0.7), True),
    ((float("nan"), 1.0, 1.0), True),
])
def test_implausible_spacing(spacing, bad):
    data = np.zeros((4, 8, 8)) if len(spacing) == 3 else np.zeros((8, 8))
    kind = "volume" if len(spacing) == 3 else "image"
    ws = header.check_spacing(Scan(data, spacing, np.eye(4), kind))
    assert (codes(ws) == {"implausible_spacing"}) is bad


def test_header_regions_from_keywords():
    def regions(**meta):
        return header.header_regions(Scan(np.zeros((4, 4)), (1, 1), np.eye(4), "image",
                                          metadata=meta))

    assert regions(BodyPartExamined="CHEST") == {"chest"}
    assert regions(BodyPartExamined="KNEE") == {"lower limb"}
    assert regions(BodyPartExamined="HAND") == {"upper limb"}
    assert regions(BodyPartExamined="ABDOMEN_PELVIS") == {"abdomen", "pelvis"}
    assert regions(BodyPartExamined="CSPINE") == {"spine", "neck"}
    assert regions(BodyPartExamined="BREAST") == {"breast"}
    assert regions(StudyDescription="CT BRAIN W/O") == {"head"}
    assert regions(ProtocolName="WholeBody PET") == {"whole body"}
    # a total-body CT of pylibjpeg-data: its protocol (Italian) also names the cranium
    assert regions(BodyPartExamined="TOTAL B") == {"whole body"}
    assert regions(ProtocolName="COLLO CRANIO TOTBODY SENZA E CON") == {"whole body"}
    assert regions(BodyPartExamined="TOTALE") == frozenset()
    assert regions(BodyPartExamined="") == frozenset()


def test_region_header_mismatch():
    knee = Scan(np.zeros((4, 4)), (1, 1), np.eye(4), "image",
                metadata={"BodyPartExamined": "KNEE"})
    ws = header.region_header_mismatch(knee, "chest", 0.95)
    assert codes(ws) == {"region_header_mismatch"} and ws[0].severity == "high"
    assert header.region_header_mismatch(knee, "chest", 0.8)[0].severity == "warn"
    assert header.region_header_mismatch(knee, "chest", 0.5) == []  # not confident
    assert header.region_header_mismatch(knee, "lower limb", 0.99) == []
    assert header.region_header_mismatch(knee, "knee", 0.99) == []  # alias
    chest = Scan(np.zeros((4, 4)), (1, 1), np.eye(4), "image",
                 metadata={"BodyPartExamined": "CHEST"})
    assert header.region_header_mismatch(chest, "abdomen", 0.99) == []  # overlapping
    blank = Scan(np.zeros((4, 4)), (1, 1), np.eye(4), "image")
    assert header.region_header_mismatch(blank, "chest", 0.99) == []  # nothing to compare


def test_burned_in_annotation_is_a_warning_only_when_the_header_says_yes():
    from scanqc.scoring.header import check_burned_in

    def us(value):
        md = {} if value is None else {"BurnedInAnnotation": value}
        return Scan(np.full((64, 64), 100, np.uint8), (0.2, 0.2), np.eye(4), "image",
                    modality="US", metadata=md)

    ws = check_burned_in(us("YES "))
    assert [(w.code, w.severity) for w in ws] == [("burned_in_text", "warn")]
    assert "de-identify" in ws[0].message
    assert check_burned_in(us("NO")) == [] and check_burned_in(us(None)) == []
    codes = {w.code for w in run_checks(us("YES"))}
    assert "burned_in_text" in codes  # also when the pixels are constant


def brain(shape, spacing, **header_fields):
    vol = np.zeros(shape, np.int16)
    vol[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = 500
    return Scan(vol, spacing, np.eye(4), "volume", modality="MR",
                metadata={"format": "nifti", "header": dict(header_fields)})


@pytest.mark.parametrize("code,name", [(4, "MNI152"), (3, "Talairach"), (5, "a template")])
def test_template_space_from_the_transform_code(code, name):
    ws = header.check_template_space(brain((40, 48, 40), (1.3, 1.3, 1.3), sform_code=code))
    assert codes(ws) == {"template_space"} and ws[0].severity == "warn"
    assert f"{name}, sform_code {code}" in ws[0].message
    qform = header.check_template_space(brain((40, 48, 40), (1.3,) * 3, sform_code=2,
                                              qform_code=code))
    assert f"qform_code {code}" in qform[0].message


@pytest.mark.parametrize("shape,size", [((91, 109, 91), 2.0), ((79, 95, 79), 2.0),
                                        ((193, 229, 193), 1.0)])
def test_template_space_from_the_grid(shape, size):
    # the reader reorders axes: any order of the template's voxel counts is the template
    ws = header.check_template_space(brain(shape[::-1], (size,) * 3, sform_code=2))
    assert codes(ws) == {"template_space"}
    assert "x".join(map(str, shape)) in ws[0].message


@pytest.mark.parametrize("shape,spacing", [
    ((91, 109, 91), (2.0, 2.0, 2.4)),     # the grid, but anisotropic voxels
    ((91, 109, 91), (1.0, 1.0, 1.0)),     # the grid's counts at another voxel size
    ((90, 109, 91), (2.0, 2.0, 2.0)),     # one voxel off
    ((176, 256, 256), (1.0, 1.0, 1.0)),   # a native 1 mm T1
])
def test_native_grids_are_not_template_space(shape, spacing):
    assert header.check_template_space(brain(shape, spacing, sform_code=1)) == []


def test_template_space_is_for_volumes_only_and_reaches_run_checks():
    img = Scan(np.ones((91, 109), np.float32), (2.0, 2.0), np.eye(4), "image")
    assert header.template_space(img) == ""
    ws = run_checks(brain((91, 109, 91), (2.0,) * 3, sform_code=4))
    assert "template_space" in codes(ws)
    assert "template_space" not in codes(run_checks(brain((60, 64, 64), (1.0,) * 3)))
