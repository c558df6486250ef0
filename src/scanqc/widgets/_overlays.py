"""QC warnings drawn on the canvas: a shapes layer of rectangles on the affected slices/regions.

A :class:`~scanqc.io.scan.ScanWarning` may name slices (``slices=(first, last)``) and a
region: an image side (``"top"``, ``"bottom"``, ``"left"``, ``"right"``, or two joined by
``+``), a bounding box (four integers ``y0, x0, y1, x1``), or something else (an axis end,
a plane, ``"high"`` ...). Sides become a band along that border, a bounding box its
rectangle, anything else a frame around the whole slice. Warnings without slices on a
volume are drawn on every slice. The layer is named ``"<scan> QC warnings"`` and replaced
when the next scan's warnings are shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from scanqc.io.scan import ScanWarning
from scanqc.widgets._present import OWNER_KEY

#: ``layer.metadata[OWNER_KEY]`` of the warnings layer.
OVERLAY_OWNER = "score_warnings"
#: Edge colour per severity.
SEVERITY_COLORS: dict[str, str] = {"high": "#ef5350", "warn": "#ffa726", "info": "#4fc3f7"}
#: Fraction of the image a side band covers.
BAND_FRACTION = 0.1
#: Inset (fraction of the image) between nested whole-slice frames, so labels do not overlap.
FRAME_INSET = 0.04
#: At most this many rectangles in one layer (long volumes are sub-sampled).
MAX_RECTANGLES = 2000

_SIDES = ("top", "bottom", "left", "right")
_INT = re.compile(r"-?\d+")


def region_boxes(region: str | None, height: int, width: int) -> list[tuple[float, float, float,
                                                                             float]]:
    """Return ``(y0, x0, y1, x1)`` pixel boxes (edges, not centres) for a warning region."""
    h, w = float(height), float(width)
    bh, bw = max(1.0, BAND_FRACTION * h), max(1.0, BAND_FRACTION * w)
    text = (region or "").strip().lower()
    parts = [p.strip() for p in re.split(r"[+,/ ]+", text) if p.strip()]
    if parts and all(p in _SIDES for p in parts):
        boxes = []
        for p in dict.fromkeys(parts):
            boxes.append({
                "top": (0.0, 0.0, bh, w),
                "bottom": (h - bh, 0.0, h, w),
                "left": (0.0, 0.0, h, bw),
                "right": (0.0, w - bw, h, w),
            }[p])
        return boxes
    nums = [int(v) for v in _INT.findall(text)]
    if len(nums) == 4:
        y0, x0, y1, x1 = nums
        y0, y1 = sorted((min(max(y0, 0), h), min(max(y1, 0), h)))
        x0, x1 = sorted((min(max(x0, 0), w), min(max(x1, 0), w)))
        if y1 > y0 and x1 > x0:
            return [(y0, x0, y1, x1)]
    return [(0.0, 0.0, h, w)]


def _slices_of(warning: ScanWarning, n_slices: int) -> list[int]:
    if warning.slices is None:
        return list(range(n_slices))
    first, last = (int(v) for v in warning.slices)
    first, last = max(0, min(first, last)), min(n_slices - 1, max(first, last))
    return list(range(first, last + 1))


def warning_shapes(
    warnings: Sequence[ScanWarning], shape: Sequence[int]
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Return ``(rectangles, edge colours, codes)`` for ``warnings`` on an image of ``shape``.

    Args:
        warnings: The scan's warnings.
        shape: Spatial shape, ``(Z, Y, X)`` or ``(Y, X)``.

    Returns:
        Rectangles as ``(4, ndim)`` vertex arrays in data (pixel-index) coordinates.
    """
    spatial = tuple(int(s) for s in shape)
    volume = len(spatial) == 3
    h, w = spatial[-2:]
    n = spatial[0] if volume else 1
    rects: list[np.ndarray] = []
    colors: list[str] = []
    codes: list[str] = []
    frames = 0
    for warn in warnings:
        boxes = region_boxes(warn.region, h, w)
        if boxes == [(0.0, 0.0, float(h), float(w))]:  # whole-slice frames: nest them
            m = FRAME_INSET * frames
            boxes = [(m * h, m * w, (1 - m) * h, (1 - m) * w)]
            frames += 1
        zs = _slices_of(warn, n) if volume else [None]
        budget = max(1, (MAX_RECTANGLES - len(rects)) // max(1, len(boxes)))
        if len(zs) > budget:  # keep the first and last slice, sub-sample the rest
            zs = [zs[int(round(i))] for i in np.linspace(0, len(zs) - 1, budget)]
        for z in zs:
            for y0, x0, y1, x1 in boxes:
                # shapes vertices are pixel centres; a box of edges y0..y1 spans y0-0.5..
                corners = [(y0 - 0.5, x0 - 0.5), (y0 - 0.5, x1 - 0.5), (y1 - 0.5, x1 - 0.5),
                           (y1 - 0.5, x0 - 0.5)]
                arr = np.array([(z, *c) for c in corners] if volume else corners, dtype=float)
                rects.append(arr)
                colors.append(SEVERITY_COLORS.get(warn.severity, "#ffffff"))
                codes.append(warn.code)
        if len(rects) >= MAX_RECTANGLES:
            break
    return rects, colors, codes


def overlay_layers(viewer: Any) -> list[Any]:
    """Return the warnings layers the Score dock created in ``viewer``."""
    return [ly for ly in viewer.layers if ly.metadata.get(OWNER_KEY) == OVERLAY_OWNER]


#: Name of the warnings layer while it shows nothing (between scans).
EMPTY_NAME = "QC warnings"


def clear_warning_overlay(viewer: Any) -> None:
    """Empty and hide the warnings layer of the previous scan.

    The layer is kept for the next scan's warnings (:func:`show_warning_overlay` fills it
    again): removing a napari layer costs a full garbage collection, 150-250 ms of frozen
    viewer on every step through flagged scans.
    """
    for layer in overlay_layers(viewer):
        _empty(layer)


def _empty(layer: Any) -> None:
    if len(layer.data):
        layer.data = []
        layer.features = {"code": np.array([], dtype=object)}
    layer.visible = False
    if layer.name != EMPTY_NAME:
        layer.name = EMPTY_NAME


def show_warning_overlay(
    viewer: Any,
    name: str,
    warnings: Sequence[ScanWarning],
    shape: Sequence[int],
    *,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
) -> Any | None:
    """Draw ``warnings`` of a scan as a shapes layer named ``"<name> QC warnings"``.

    A warnings layer of as many dimensions (2D image or volume) is filled with these
    warnings in place and moved above every other layer; the first scan of each kind
    adds one (the other kind's stays, emptied and hidden: removing a layer would cost a
    full garbage collection). The selected layer stays selected (so the Dataset dock's key
    bindings keep working). Returns the layer, or None when there is nothing to draw (the
    layers are then emptied and hidden).
    """
    rects, colors, codes = warning_shapes(warnings, shape)
    if not rects:
        clear_warning_overlay(viewer)
        return None
    ndim = len(tuple(shape))
    edge_width = max(1.0, 0.006 * max(int(s) for s in tuple(shape)[-2:]))
    scale = tuple(float(s) for s in tuple(scale)[-ndim:]) if scale is not None else (1.0,) * ndim
    translate = tuple(float(t) for t in tuple(translate)[-ndim:]) if translate is not None \
        else (0.0,) * ndim
    active = viewer.layers.selection.active
    old = overlay_layers(viewer)
    same = [ly for ly in old if ly.ndim == ndim]
    for other in old:
        if other is not (same[0] if same else None) and (other.visible or len(other.data)):
            _empty(other)
    if same:
        layer = same[0]
        layer.data = [(r, "rectangle") for r in rects]
        layer.edge_color = colors
        layer.face_color = "transparent"
        layer.edge_width = edge_width
        layer.features = {"code": codes}
        layer.scale, layer.translate = scale, translate
        layer.name = f"{name} QC warnings"
        layer.visible = True
        index = viewer.layers.index(layer)
        if index != len(viewer.layers) - 1:  # above the image shown since
            viewer.layers.move(index, len(viewer.layers))
    else:
        layer = _add_overlay(viewer, name, rects, colors, codes, ndim, edge_width, scale,
                             translate)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


def _add_overlay(viewer: Any, name: str, rects: list, colors: list, codes: list, ndim: int,
                 edge_width: float, scale: tuple, translate: tuple) -> Any:
    kwargs: dict[str, Any] = {
        "shape_type": "rectangle",
        "edge_color": colors,
        "face_color": "transparent",
        "edge_width": edge_width,
        "name": f"{name} QC warnings",
        "metadata": {OWNER_KEY: OVERLAY_OWNER},
        "features": {"code": codes},
        "text": {"string": "{code}", "color": "white", "size": 9, "anchor": "upper_left"},
        "opacity": 0.9,
        "ndim": ndim,
        "scale": scale,
        "translate": translate,
    }
    layer = viewer.add_shapes(rects, **kwargs)
    layer.editable = False
    return layer
