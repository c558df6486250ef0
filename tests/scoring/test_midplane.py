"""Mid-sagittal plane search on an oblique, off-centre synthetic head; mirror round trip."""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.scoring.midplane import Midplane, estimate_midplane, mirror_index, mirror_volume


def phantom(shape=(36, 80, 80), yaw_deg=10.0, shift_vox=8.0, roll_deg=0.0, seed=0):
    """A bilaterally symmetric ellipsoid head with paired inner structures, rotated by
    ``yaw_deg`` in the axial plane (and ``roll_deg`` in the coronal plane) and moved
    ``shift_vox`` voxels along the left-right axis (axis 2)."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    c = (np.asarray(shape) - 1) / 2.0
    zc, yc, xc = z - c[0], y - c[1], x - c[2] - shift_vox
    t, r = np.deg2rad(yaw_deg), np.deg2rad(roll_deg)
    u0 = np.cos(t) * xc - np.sin(t) * yc
    v = np.sin(t) * xc + np.cos(t) * yc
    u = np.cos(r) * u0 - np.sin(r) * zc
    w = np.sin(r) * u0 + np.cos(r) * zc
    vol = np.zeros(shape, np.float32)
    head = (w / 15) ** 2 + (v / 34) ** 2 + (u / 27) ** 2
    vol[head <= 1] = 0.6
    vol[(head <= 1) & (head > 0.8)] = 1.0
    for s in (-1, 1):
        vol[((w / 7) ** 2 + ((v + 6) / 12) ** 2 + ((u - s * 9) / 4) ** 2) <= 1] = 0.2
        vol[((w - 5) ** 2 + (v - 17) ** 2 + (u - s * 15) ** 2) <= 12] = 0.9
    vol[(w**2 + (v - 2) ** 2 + u**2) <= 12] = 0.8
    rng = np.random.default_rng(seed)
    return vol + rng.normal(0, 0.02, shape).astype(np.float32), (u, v, w)


@pytest.mark.parametrize(("yaw", "shift", "roll"), [(10.0, 8.0, 0.0), (-10.0, -8.0, 6.0)])
def test_midplane_oblique_off_centre_head(yaw: float, shift: float, roll: float) -> None:
    vol, _ = phantom(yaw_deg=yaw, shift_vox=shift, roll_deg=roll)
    plane = estimate_midplane(vol, (1.0, 1.0, 1.0))
    # the head is rotated by +yaw (+roll), so the plane normal turns by -yaw (-roll)
    assert abs(plane.yaw_deg + yaw) < 2.0, plane
    assert abs(plane.roll_deg + roll) < 2.0, plane
    c = (np.asarray(vol.shape) - 1) / 2.0
    # where the plane crosses the central row: the head centre, 8 voxels off the array centre
    assert abs(plane.point_lr_index(c[0], c[1]) - (c[2] + shift)) < 1.5, plane
    assert plane.correlation > 0.9


def test_midplane_not_at_array_centre_with_anisotropic_spacing() -> None:
    vol, _ = phantom(yaw_deg=0.0, shift_vox=8.0)
    # same anatomy sampled at 2 mm slices: keep every other slice
    plane = estimate_midplane(vol[::2], (2.0, 1.0, 1.0))
    c = (np.asarray(vol[::2].shape) - 1) / 2.0
    assert abs(plane.point_lr_index(c[0], c[1]) - (c[2] + 8.0)) < 1.5
    assert abs(plane.yaw_deg) < 2.0


def test_mirror_round_trip_and_index_involution() -> None:
    vol, _ = phantom()
    plane = Midplane(
        normal=(0.05, -0.17, float(np.sqrt(1 - 0.05**2 - 0.17**2))),
        offset_mm=9.0,
        spacing=(2.0, 1.0, 1.0),
        shape=vol.shape,
    )
    once = mirror_volume(vol, plane, order=3)
    twice = mirror_volume(once, plane, order=3)
    assert not np.allclose(once, vol, atol=0.1)  # mirroring does change the image
    inner = (slice(8, -8), slice(15, -15), slice(20, -20))
    assert np.mean(np.abs(twice[inner] - vol[inner])) < 0.03
    p = np.array([10.0, 30.0, 50.0])
    q = mirror_index(plane, p)
    assert not np.allclose(p, q)
    assert np.allclose(mirror_index(plane, q), p, atol=1e-9)


def test_mirror_of_2d_image_uses_symmetry_line() -> None:
    vol, _ = phantom(shape=(1, 80, 80), yaw_deg=8.0, shift_vox=-6.0)
    img = vol[0]
    plane = estimate_midplane(img, (1.0, 1.0))
    assert abs(plane.yaw_deg + 8.0) < 2.5
    mir = mirror_volume(img, plane)
    assert mir.shape == img.shape
    assert np.corrcoef(mir.ravel(), img.ravel())[0, 1] > 0.9


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_midplane_of_a_few_thin_slices() -> None:
    """2-3 slices at fine spacing: the coarse search copy keeps at least one slice (it
    was zoomed to none: divide-by-zero and empty-mean warnings), and the plane is found."""
    vol, _ = phantom(shape=(36, 80, 80), yaw_deg=8.0, shift_vox=6.0)
    thin = vol[16:19]  # three slices of 1 mm
    plane = estimate_midplane(thin, (1.0, 1.0, 1.0))
    # a coarse answer from so little data, but the right one: through the head centre
    # (6 voxels off the array centre), turned the right way, the halves alike
    c = (np.asarray(thin.shape) - 1) / 2.0
    assert abs(plane.point_lr_index(c[0], c[1]) - (c[2] + 6.0)) < 2.0, plane
    assert -14.0 < plane.yaw_deg < 0.0 and plane.correlation > 0.9, plane
