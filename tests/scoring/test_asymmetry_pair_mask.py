"""The mask of paired 2D asymmetry maps (film labels, outlines and cut edges excluded)."""

from __future__ import annotations

import numpy as np

from scanqc.scoring.asymmetry import PAIR_INNER_MM, pair_mask


def _breast(shape=(200, 160), label=True) -> np.ndarray:
    """A half-ellipse cut by the left image border (chest wall), plus a film label."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = (((yy - 100) / 80.0) ** 2 + (xx / 110.0) ** 2 < 1).astype(np.float32) * 0.7
    if label:
        img[5:20, 120:150] = 1.0  # a bright marker, separate from the anatomy
    return img


def test_pair_mask_drops_labels_and_erodes_outline_and_border() -> None:
    a = _breast()
    b = _breast(label=False)
    sp = (0.5, 0.5)
    m = pair_mask(a, b, sp)[0]
    assert m.shape == a.shape and m.dtype == bool
    assert not m[5:20, 120:150].any(), "the film label is not anatomy"
    margin = int(PAIR_INNER_MM / sp[0])
    assert not m[:, :margin].any(), "the cut edge at the image border is eroded"
    # eroded from the outline: a pixel 4 mm inside the ellipse edge on its axis is out
    assert not m[100, 110 - int(4 / sp[1])]
    assert m[100, margin + 10] and m[100, 110 - margin - 10]
    # without the erosion the mask would reach the outline: the mask is well inside it
    assert m.sum() < 0.8 * (a > 0.5).sum()


def test_pair_mask_is_the_intersection_of_both_sides() -> None:
    a = _breast(label=False)
    b = a.copy()
    b[:, 80:] = 0  # the partner covers only the left half
    m = pair_mask(a, b, (0.5, 0.5))[0]
    assert m.any() and not m[:, 80 - int(PAIR_INNER_MM / 0.5) + 1:].any()
