"""Show scans and labels in a napari viewer (the only place that touches layers and overlays).

* :func:`scan_to_layer_kwargs` / :func:`show_scan`: a :class:`~scanqc.io.scan.Scan` as an
  image layer, replacing the layers scanqc created for the previous scan (layers the user
  made are never touched).
* :func:`set_banner`: a text banner on the canvas (napari 0.9 ``viewer.canvas.overlays.text``,
  older ``viewer.text_overlay``); :func:`label_banner` and :func:`score_summary` its text.
* :func:`make_thumbnail`: a small uint8 picture of a scan's middle slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanqc.io.intensity import normalize
from scanqc.io.scan import Scan
from scanqc.scoring.reference import few_references_note

#: ``layer.metadata`` key marking layers the Dataset dock owns (replaced on the next scan).
OWNER_KEY = "scanqc_owner"
#: Banner colours per label.
LABEL_COLORS = {
    "reference": "#4fc3f7",
    "good": "#66bb6a",
    "bad": "#ef5350",
    None: "#ffffff",
}


def scan_to_layer_kwargs(scan: Scan, owner: str = "dataset") -> tuple[np.ndarray, dict[str, Any]]:
    """Return ``(data, add_image kwargs)`` for ``scan``: name, scale, translate, contrast.

    The metadata carries ``{"scanqc": {...}}`` (sanitized, see the napari reader) and
    ``{OWNER_KEY: owner}`` so :func:`show_scan` can replace the layer later.
    """
    from scanqc.io._napari_reader import scan_to_layer_data

    data, kwargs, _ = scan_to_layer_data(scan)
    kwargs = dict(kwargs)
    kwargs["metadata"] = {**kwargs.get("metadata", {}), OWNER_KEY: owner}
    return data, kwargs


def owned_layers(viewer: Any, owner: str = "dataset") -> list[Any]:
    """Return the layers ``owner`` created in ``viewer``."""
    return [ly for ly in viewer.layers if ly.metadata.get(OWNER_KEY) == owner]


def scan_layer(viewer: Any, scan_id: str | None, owner: str = "dataset") -> Any:
    """Return the image layer ``owner`` shows for ``scan_id`` (None when not shown)."""
    for layer in owned_layers(viewer, owner):
        if (layer.metadata.get("scanqc") or {}).get("scan_id") == scan_id:
            return layer
    return None


def go_to_slice(viewer: Any, layer: Any, index: int) -> None:
    """Move the viewer to slice ``index`` (data axis 0) of ``layer`` (world coordinates)."""
    if layer is not None and layer.ndim >= 3:
        world = float(layer.translate[0]) + int(index) * float(layer.scale[0])
    elif viewer.dims.ndim >= 3:
        world = float(index)
    else:
        return
    viewer.dims.set_point(0, world)


def show_scan(viewer: Any, scan: Scan, owner: str = "dataset") -> Any:
    """Show ``scan`` in ``viewer`` in place of the previous scan's layer of ``owner``.

    When the previous scan's image layer has the same colour mode (gray or RGB), that layer
    is updated in place (data, scale, translate, contrast, name, metadata; napari follows a
    change between 2D and 3D): removing a napari layer costs a full garbage collection
    (~150-250 ms), which made stepping through a dataset with the arrow keys sluggish.
    Otherwise the old layers are removed and a new one is added. A scan of another shape
    resets the view and, for a volume, goes to its middle slice.

    Returns:
        The image layer that shows ``scan``.
    """
    data, kwargs = scan_to_layer_kwargs(scan, owner)
    old = owned_layers(viewer, owner)
    rgb = bool(kwargs.get("rgb", False))
    same_geometry = bool(old) and old[0].data.shape == data.shape and old[0].rgb == rgb and \
        tuple(old[0].scale) == tuple(kwargs["scale"])
    if len(old) == 1 and _reusable(old[0], rgb):
        layer = old[0]
        _update_layer(layer, data, kwargs)
    else:
        for stale in old:
            viewer.layers.remove(stale)
        layer = viewer.add_image(data, **kwargs)
    if not same_geometry:
        viewer.reset_view()
        if layer.ndim >= 3 and not rgb:
            go_to_slice(viewer, layer, data.shape[0] // 2)
    return layer


def _reusable(layer: Any, rgb: bool) -> bool:
    """True when ``layer`` can show a scan by an in-place update (see :func:`show_scan`)."""
    return (getattr(layer, "_type_string", "") == "image" and not layer.multiscale
            and bool(layer.rgb) == rgb)


def _update_layer(layer: Any, data: np.ndarray, kwargs: dict[str, Any]) -> None:
    """Make ``layer`` what ``viewer.add_image(data, **kwargs)`` would have made."""
    layer.metadata = kwargs["metadata"]  # first: listeners of the data event see the new scan
    layer.data = data
    layer.scale = kwargs["scale"]
    layer.translate = kwargs["translate"]
    if "contrast_limits" in kwargs:
        limits = tuple(float(v) for v in kwargs["contrast_limits"])
        layer.contrast_limits_range = limits
        layer.contrast_limits = limits
    if "colormap" in kwargs:
        layer.colormap = kwargs["colormap"]
    layer.name = kwargs["name"]


def _text_overlay(viewer: Any) -> Any:
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    text = getattr(overlays, "text", None)
    if text is not None:
        return text
    return viewer.text_overlay  # napari < 0.9


def set_banner(viewer: Any, text: str, color: str | None = None, *, font_size: int = 14) -> None:
    """Show ``text`` in the top-left corner of the canvas (hidden when ``text`` is empty)."""
    overlay = _text_overlay(viewer)
    overlay.text = text
    if color is not None:
        overlay.color = color
    overlay.font_size = font_size
    overlay.position = "top_left"
    overlay.visible = bool(text)


def label_banner(name: str, row: dict[str, Any] | None) -> tuple[str, str]:
    """Return ``(text, colour)`` of the canvas banner for a scan's table row."""
    row = row or {}
    label = row.get("label")
    if label:
        word = str(label).upper()
        if row.get("reason"):
            word += f" ({row['reason']})"
    else:
        word = "unlabelled"
    parts = [word, name]  # the label first: long names must not push it off the canvas
    if row.get("reference") and label != "reference":
        parts.append("REFERENCE")
    if row.get("region"):
        parts.append(str(row["region"]))
    return "  |  ".join(parts), LABEL_COLORS.get(label, "#ffffff")


def score_summary(row: dict[str, Any] | None) -> str:
    """Return ``"bad_score 0.830"`` (+ ``" FLAGGED"``, ``" region mismatch"``) or ``""``."""
    value = (row or {}).get("bad_score")
    try:
        score = float(value)
    except (TypeError, ValueError):
        return ""
    if score != score:  # NaN: not scored
        return ""
    text = f"bad_score {score:.3f}"
    if row.get("flagged"):
        text += " FLAGGED"
    if row.get("region_mismatch"):
        text += " region mismatch"
    return text


def make_thumbnail(scan: Scan, size: int = 48) -> np.ndarray:
    """Return a ``(h, w)`` uint8 thumbnail (longest side ``size``) of the middle slice."""
    g = scan.gray()
    if g.ndim == 3:
        g = g[g.shape[0] // 2]
    step = max(1, int(np.ceil(max(g.shape) / size)))
    small = g[::step, ::step]
    return (normalize(small, scan.modality) * 255).astype(np.uint8)


def few_references_hint(n: int) -> str:
    """The docks' caution for 2-4 references (the threshold is their own spread), or ""."""
    if few_references_note(n) is None:
        return ""
    return ": few, so the threshold (their spread) is too tight; mark 10-30"
