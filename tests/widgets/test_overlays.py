"""The Score dock's warnings layer: drawn, emptied between scans, filled again in place."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from scanqc.io.scan import ScanWarning  # noqa: E402
from scanqc.widgets._overlays import (  # noqa: E402
    EMPTY_NAME,
    clear_warning_overlay,
    overlay_layers,
    show_warning_overlay,
    warning_shapes,
)

pytestmark = pytest.mark.gui

CUT = ScanWarning("fov_cut", "anatomy cut by the right border", severity="warn", region="right")
NOISE = ScanWarning("noise_only", "noise", severity="high")


def _drawn(layer) -> dict:
    return {"n": len(layer.data), "types": list(layer.shape_type),
            "vertices": [np.asarray(v).round(6).tolist() for v in layer.data],
            "edge": np.asarray(layer.edge_color).round(6).tolist(),
            "face": np.asarray(layer.face_color).round(6).tolist(),
            "width": [float(w) for w in layer.edge_width],
            "codes": list(layer.features["code"]), "text": list(layer.text.values),
            "scale": tuple(layer.scale), "translate": tuple(layer.translate),
            "ndim": layer.ndim, "visible": layer.visible}


def test_overlay_is_refilled_in_place_and_equals_a_fresh_one(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((40, 60)), name="scan")
    first = show_warning_overlay(viewer, "a.png", [CUT], (40, 60), scale=(0.5, 0.5))
    assert first is not None and first.name == "a.png QC warnings"

    clear_warning_overlay(viewer)  # the next scan: nothing drawn while it loads
    assert overlay_layers(viewer) == [first] and len(first.data) == 0
    assert not first.visible and first.name == EMPTY_NAME

    shown = viewer.add_image(np.zeros((80, 50)), name="next scan")  # above the overlay
    viewer.layers.selection.active = image
    second = show_warning_overlay(viewer, "b.png", [CUT, NOISE], (80, 50),
                                  scale=(0.2, 0.3), translate=(1.0, 2.0))
    assert second is first and viewer.layers[-1] is second
    assert viewer.layers.selection.active is image  # the dock's key bindings keep working
    assert viewer.layers.index(shown) < viewer.layers.index(second)
    rects, _colors, codes = warning_shapes([CUT, NOISE], (80, 50))
    assert len(rects) == len(codes) == 2
    fresh_viewer = make_napari_viewer()
    fresh = show_warning_overlay(fresh_viewer, "b.png", [CUT, NOISE], (80, 50),
                                 scale=(0.2, 0.3), translate=(1.0, 2.0))
    assert _drawn(second) == _drawn(fresh)
    assert second.name == fresh.name == "b.png QC warnings"

    # nothing to draw: emptied and hidden, not removed
    assert show_warning_overlay(viewer, "c.png", [], (80, 50)) is None
    assert overlay_layers(viewer) == [first] and not first.visible

    # a volume's warnings (3D shapes): a layer of its own, the 2D one stays empty and hidden
    third = show_warning_overlay(viewer, "d.nii.gz", [CUT], (5, 40, 60), scale=(3, 1, 1))
    assert third is not first and overlay_layers(viewer) == [first, third]
    assert third.ndim == 3 and third.visible and not first.visible and len(first.data) == 0
    assert _drawn(third)["codes"] == ["fov_cut"] * len(third.data)
    # then a 2D image again: the 2D layer is filled, the 3D one emptied and hidden
    assert show_warning_overlay(viewer, "e.png", [NOISE], (80, 50)) is first
    assert first.visible and not third.visible and len(third.data) == 0
    assert set(overlay_layers(viewer)) == {first, third} and viewer.layers[-1] is first
