"""Field-of-view checks on synthetic phantoms with a known truth."""

from __future__ import annotations

import numpy as np

from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring import fov
from scanqc.scoring.checks import run_checks


def ellipse(shape=(128, 128), centre=(64, 64), radii=(40, 30), value=800.0, noise=10.0,
            seed=0, dtype=np.int16):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    inside = ((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2 <= 1
    img = inside * (value + 150 * np.sin(x / 5.0) * np.cos(y / 7.0))
    img = np.clip(img + rng.normal(0, noise, shape), 0, None)
    return img.astype(dtype)


def axial_affine(dz=3.0, dy=1.0, dx=1.0):
    """(S, P, L) data axes like the NIfTI reader: z -> +S, y -> -A, x -> -R."""
    aff = np.zeros((4, 4))
    aff[2, 0], aff[1, 1], aff[0, 2], aff[3, 3] = dz, -dy, -dx, 1.0
    return aff


def volume(img, n=40, dz=3.0, modality="MR", **meta):
    return Scan(np.stack([img] * n), (dz, 1.0, 1.0), axial_affine(dz), "volume",
                modality=modality, metadata=dict(meta))


def codes(ws: list[ScanWarning]) -> set[str]:
    return {w.code for w in ws}


def test_phantom_inside_has_no_cut():
    assert fov.check_fov_cut(volume(ellipse())) == []


def test_phantom_cut_at_right_border():
    ws = fov.check_fov_cut(volume(ellipse(centre=(64, 118))))
    assert [w.region for w in ws] == ["right"]
    assert ws[0].severity == "warn" and ws[0].value >= 0.5
    assert ws[0].slices == (0, 39)


def test_phantom_cut_at_top_only_on_some_slices():
    inside, cut = ellipse(), ellipse(centre=(5, 64))
    data = np.stack([inside] * 20 + [cut] * 10 + [inside] * 10)
    scan = Scan(data, (3.0, 1.0, 1.0), axial_affine(), "volume", modality="MR")
    ws = fov.check_fov_cut(scan)
    assert [w.region for w in ws] == ["top"]
    assert ws[0].slices[0] >= 18 and ws[0].slices[1] <= 31


def test_radiograph_cut_is_info():
    scan = Scan(ellipse(centre=(64, 120)).astype(np.uint16), (0.2, 0.2), np.eye(4), "image",
                modality="DX")
    ws = fov.check_fov_cut(scan)
    assert ws and all(w.severity == "info" and w.region == "right" for w in ws)


def test_blank_scan_has_no_anatomy():
    scan = Scan(np.zeros((64, 64), np.uint16), (0.5, 0.5), np.eye(4), "image", modality="DX")
    ws = fov.check_no_anatomy(scan)
    assert [w.severity for w in ws] == ["high"]
    assert fov.check_no_anatomy(volume(ellipse())) == []


def test_tiny_object_is_mostly_air():
    img = ellipse(radii=(6, 5))
    ws = fov.check_no_anatomy(volume(img))
    assert ws and ws[0].code == "no_anatomy" and ws[0].severity == "warn"


def test_short_coverage_needs_anatomy_at_both_ends():
    big = ellipse()
    short = volume(big, n=10)  # 30 mm, anatomy on every slice
    assert codes(fov.check_short_coverage(short)) == {"short_coverage"}
    assert fov.check_short_coverage(volume(big, n=40)) == []  # 120 mm
    # a short scan of a small object that ends inside the volume is complete
    empty = np.zeros_like(big)
    closed = Scan(np.stack([empty, *[big] * 8, empty]), (3.0, 1.0, 1.0), axial_affine(),
                  "volume", modality="MR")
    assert fov.check_short_coverage(closed) == []
    ends = {w.region for w in fov.check_truncated_coverage(short)}
    assert ends == {"superior", "inferior"}
    assert fov.check_truncated_coverage(closed) == []


def test_short_coverage_against_references():
    scan = volume(ellipse(), n=40)  # 120 mm
    ws = fov.check_short_coverage(scan, reference_extents_mm=[300, 320, 310])
    assert codes(ws) == {"short_coverage"} and ws[0].value == 120
    assert fov.check_short_coverage(scan, reference_extents_mm=[120, 130]) == []


def test_plane_from_affine_and_description():
    sag = np.zeros((4, 4))
    sag[0, 0], sag[1, 1], sag[2, 2], sag[3, 3] = 1.5, -1.0, -1.0, 1.0  # slices along x
    vol = np.stack([ellipse()] * 12)
    scan = Scan(vol, (1.5, 1.0, 1.0), sag, "series", modality="MR",
                metadata={"SeriesDescription": "COR T2 FSE"})
    assert fov.acquisition_plane(scan) == "sagittal"
    ws = fov.check_plane_mismatch(scan)
    assert codes(ws) == {"plane_mismatch"} and "coronal" in ws[0].message
    ok = Scan(vol, (1.5, 1.0, 1.0), sag, "series", modality="MR",
              metadata={"SeriesDescription": "SAG PD FS"})
    assert fov.check_plane_mismatch(ok) == []
    ws = fov.check_plane_mismatch(ok, sibling_planes=["coronal"] * 5 + ["sagittal"])
    assert codes(ws) == {"plane_mismatch"}
    assert fov.check_plane_mismatch(ok, sibling_planes=["sagittal"] * 5) == []


def test_description_plane_words():
    assert fov.description_plane("t2_tse_tra_p2") == "axial"
    assert fov.description_plane("Ax T1 post") == "axial"
    assert fov.description_plane("SAG_PD") == "sagittal"
    assert fov.description_plane("Coronal STIR") == "coronal"
    assert fov.description_plane("record of cortex") == ""
    assert fov.description_plane("3D T1 MPRAGE") == ""


def test_nifti_plane_from_original_orientation():
    scan = volume(ellipse(), n=12)
    scan.metadata = {"format": "nifti", "original_orientation": "PIL"}
    assert fov.acquisition_plane(scan) == "sagittal"


def test_missing_slice_from_positions():
    pos = [0, 2, 4, 6, 10, 12, 14]
    ws = fov.detect_slice_gaps(pos)
    assert codes(ws) == {"missing_slices"} and ws[0].value == 1
    scan = volume(ellipse(), n=7, slice_positions=pos)
    assert codes(fov.check_slice_gaps(scan)) == {"missing_slices"}
    assert fov.detect_slice_gaps([0, 2, 4, 6, 8]) == []
    assert codes(fov.detect_slice_gaps([0, 2, 4.6, 6, 8.5, 10])) == {"uneven_spacing"}


def test_reader_warnings_pass_through():
    scan = volume(ellipse())
    scan.warnings = [ScanWarning("missing_slices", "gap after slice 3")]
    assert [w.code for w in run_checks(scan)].count("missing_slices") == 1


def test_localizer_from_header_description_and_thickness():
    img = ellipse().astype(np.int16) - 1000
    a = Scan(img, (1.0, 1.0), np.eye(4), "image", modality="CT",
             metadata={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    b = Scan(img, (1.0, 1.0), np.eye(4), "image", modality="MR",
             metadata={"SeriesDescription": "3-plane loc"})
    c = Scan(np.stack([img] * 3), (30.0, 1.0, 1.0), axial_affine(30.0), "series",
             modality="MR", metadata={"SliceThickness": 30})
    d = Scan(img, (1.0, 1.0), np.eye(4), "image", modality="CT",
             metadata={"SeriesDescription": "Topogram 0.6 T20f"})
    for scan in (a, b, c, d):
        assert codes(fov.check_localizer(scan)) == {"localizer"}
    plain = Scan(img, (1.0, 1.0), np.eye(4), "image", modality="CT",
                 metadata={"SeriesDescription": "Abdomen 3.0 B30f", "SliceThickness": 3})
    assert fov.check_localizer(plain) == []



def _air_film_with_marker(seed: int = 0) -> Scan:
    """An 8-bit film of air noise only, a dark border strip and a saturated side marker."""
    rng = np.random.default_rng(seed)
    img = np.full((320, 180), 2.0) + rng.normal(0, 3, (320, 180))
    img[:, 170:] = 0
    img[270:300, 10:40] = 250.0  # the "R" marker
    return Scan(np.clip(img, 0, 255).astype(np.uint8), (0.2, 0.2), np.eye(4), "image",
                modality="CR")


def test_air_and_a_side_marker_stay_no_anatomy():
    """The second split below a small bright cluster (see the next test) does not turn the
    air noise of an empty film into anatomy."""
    ws = fov.check_no_anatomy(_air_film_with_marker())
    assert ws and ws[0].code == "no_anatomy"


def test_a_side_marker_does_not_hide_the_anatomy_of_a_full_film(shared_data):
    """A saturated side marker took Otsu's split from wrist films whose anatomy fills the
    film: three films of region_xr_v1 read as 'no anatomy' (one high)."""
    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan
    from scanqc.scoring.body_mask import prepare

    for name in ("wrist_rf568_image1_2136_png.png", "wrist_rf569_image1_2151_png.png",
                 "wrist_rf549_image1_1159_png.png"):
        scan = load_scan(discover([str(shared_data / "region_xr_v1" / name)])[0])
        assert fov.check_no_anatomy(scan) == [], name
        assert prepare(scan).body_fraction > 0.5, name
