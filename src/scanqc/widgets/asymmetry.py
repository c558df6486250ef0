"""The Asymmetry dock: a left-right asymmetry heatmap of the current scan.

The current scan is the Dataset dock's (read from disk in the worker) or, without a
dataset, the selected image layer. :func:`scanqc.scoring.asymmetry.asymmetry_maps` runs in a
worker (progress, Cancel); the result is an image layer over the scan (same scale and
translate; colormap and opacity in napari's layer controls), the scan-level score (also put
in the Dataset table's ``asymmetry`` column) and the top regions, which move the viewer to
their peak slice when clicked. See ``docs/asymmetry.md`` for the method and its measured
limits.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from scanqc.io.scan import Scan, ScanEntry
from scanqc.scoring.asymmetry_pairs import partner_of
from scanqc.widgets._present import OWNER_KEY, go_to_slice, owned_layers, scan_layer
from scanqc.widgets._state import get_state
from scanqc.widgets._threading import WorkerHandle, start_worker

if TYPE_CHECKING:
    import napari

#: Owner tag of the heatmap layer (one at a time: a new map replaces the previous one).
OWNER = "asymmetry"
#: Methods offered, with their tooltips.
METHOD_HELP = {
    "siamese": "default map: mirrored log-intensity residual at lesion scales, normalised by "
               "the scan's own left-right variability, with the lesion-side rule",
    "intensity-z": "the same statistic (currently identical to the default map)",
    "intensity": "baseline: smoothed plain |I - mirror(I)|",
}


def compute_asymmetry(source: ScanEntry | Scan, method: str, progress: Any = None,
                      cancel: Any = None, partner: ScanEntry | None = None
                      ) -> tuple[Scan, Any]:
    """Read ``source`` if needed and compute its asymmetry map (runs in the worker).

    Args:
        source: The scan, or its dataset entry.
        method: Volume method (see :data:`METHOD_HELP`).
        progress: ``progress(done, total, message)``.
        cancel: Cancel token.
        partner: The other side's image of a mammogram pair (see
            :func:`scanqc.scoring.asymmetry_pairs.partner_of`): the map compares the two images
            (:func:`scanqc.scoring.asymmetry.asymmetry_pair`) instead of the scan with its
            own mirror image.

    Returns:
        ``(scan, AsymmetryResult)``.
    """
    from scanqc.io.load import load_scan
    from scanqc.scoring.asymmetry import asymmetry_maps
    from scanqc.scoring.asymmetry_pairs import asymmetry_with_partner

    scan = source if isinstance(source, Scan) else load_scan(source)
    if partner is not None and isinstance(source, ScanEntry):
        result = asymmetry_with_partner(scan, source, load_scan(partner), partner,
                                        progress=progress, cancel=cancel)
        return scan, result
    result = asymmetry_maps(scan, None, [method], progress=progress, cancel=cancel)[method]
    return scan, result


def layer_to_scan(layer: Any) -> Scan:
    """A :class:`Scan` of an image layer (spacing from its scale, position from translate)."""
    data = np.asarray(layer.data)
    rgb = bool(getattr(layer, "rgb", False))
    n = data.ndim - (1 if rgb else 0)
    scale = [float(s) for s in layer.scale][-n:]
    translate = [float(t) for t in layer.translate][-n:]
    affine = np.eye(4)
    for i in range(min(n, 3)):
        affine[i, i] = scale[i]
        affine[i, 3] = translate[i]
    return Scan(data, tuple(scale), affine, layer.name, rgb=rgb)


class AsymmetryWidget(QWidget):
    """Dock widget: compute and show the asymmetry heatmap of the current scan.

    Attributes:
        result: The last :class:`~scanqc.scoring.asymmetry.AsymmetryResult` (or None).
        scan_id: The Dataset scan it belongs to (None for a layer outside a dataset).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None
                 ) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.result: Any = None
        self.scan_id: str | None = None
        self._source_layer: Any = None
        self._worker: WorkerHandle | None = None
        self._build_ui()
        self.state.current_changed.connect(self._on_current_changed)

    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.method_combo = QComboBox()
        for i, (name, tip) in enumerate(METHOD_HELP.items()):
            self.method_combo.addItem(name)
            self.method_combo.setItemData(i, tip, Qt.ToolTipRole)
        form.addRow("Method", self.method_combo)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.run_btn = QPushButton("Asymmetry of current scan")
        self.run_btn.setToolTip("mid-sagittal plane from the image, then where the scan "
                                "differs from its mirror image more than it naturally does")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        lay.addWidget(self.progress)
        self.status = QLabel("Open a head volume (Dataset dock or File > Open), then press "
                             "the button.")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.regions = QListWidget()
        self.regions.setToolTip("highest-asymmetry regions; click to go to the peak slice")
        self.regions.itemClicked.connect(self._on_region_clicked)
        lay.addWidget(self.regions)
        lay.addStretch(1)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)

    # -- actions --------------------------------------------------------------------------
    def _source(self) -> tuple[ScanEntry | Scan | None, str | None, Any]:
        """``(what to compute on, dataset scan_id or None, the scan's image layer)``."""
        entry = self.state.entry(self.state.current) if self.state.current else None
        if entry is not None:
            return entry, entry.scan_id, scan_layer(self.viewer, entry.scan_id)
        from napari.layers import Image

        layer = self.viewer.layers.selection.active
        if not isinstance(layer, Image) or layer.metadata.get(OWNER_KEY) == OWNER:
            layer = next((ly for ly in reversed(self.viewer.layers) if isinstance(ly, Image)
                          and ly.metadata.get(OWNER_KEY) != OWNER), None)
        if layer is None:
            return None, None, None
        return layer_to_scan(layer), None, layer

    def run(self) -> None:
        """Compute the map of the current scan in a worker."""
        if self._worker is not None:
            return
        source, scan_id, layer = self._source()
        if source is None:
            self.status.setText("no scan: open one in the Dataset dock or add an image layer")
            return
        self.scan_id, self._source_layer = scan_id, layer
        method = self.method_combo.currentText()
        name = source.name or getattr(source, "path", "") or "scan"
        partner = partner_of(source, self.state.entries) if isinstance(
            source, ScanEntry) else None
        what = f"compared with {partner.name or partner.path}" if partner else method
        self._set_busy(True, f"Asymmetry of {name} ({what}) …")
        self._worker = start_worker(compute_asymmetry, source, method, partner=partner,
                                    on_progress=self._on_progress, on_done=self._on_done,
                                    on_error=self._on_error, on_cancelled=self._on_cancelled)

    def cancel(self) -> None:
        """Stop the running computation at its next check."""
        if self._worker is not None:
            self._worker.cancel()

    # -- worker callbacks (GUI thread) ----------------------------------------------------
    def _set_busy(self, busy: bool, text: str = "") -> None:
        self.run_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        self.progress.setVisible(busy)
        if busy:
            self.progress.setRange(0, 0)
        if text:
            self.status.setText(text)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        if message:
            self.progress.setFormat(f"%v/%m {message}"[:60])

    def _on_done(self, out: tuple[Scan, Any]) -> None:
        self._worker = None
        self._set_busy(False)
        scan, result = out
        self.result = result
        self._show_layer(scan, result)
        plane = result.plane
        where = (f"; plane offset {plane.offset_mm:+.1f} mm, yaw {plane.yaw_deg:+.1f} deg"
                 if plane is not None and getattr(plane, "offset_mm", None) is not None else "")
        if result.info.get("pair"):
            where = f"; compared with {result.info['pair']} (the other side, same view)"
        self.status.setText(f"{scan.name or scan.path}: asymmetry score {result.score:.2f}"
                            f"{where}")
        self.regions.clear()
        for region in result.top_regions:
            item = QListWidgetItem(region.describe())
            item.setData(Qt.UserRole, list(region.peak))
            self.regions.addItem(item)
        if self.scan_id is not None:
            self.state.update_rows([{"scan_id": self.scan_id,
                                     "asymmetry_score": float(result.score)}])

    def _on_error(self, exc: BaseException) -> None:
        self._worker = None
        self._set_busy(False)
        self.status.setText(f"asymmetry failed: {exc}".splitlines()[0][:300])

    def _on_cancelled(self) -> None:
        self._worker = None
        self._set_busy(False, "cancelled")

    def _show_layer(self, scan: Scan, result: Any) -> Any:
        """Add the heatmap over the scan, replacing the previous heatmap layer."""
        for layer in owned_layers(self.viewer, OWNER):
            self.viewer.layers.remove(layer)
        heat = np.asarray(result.heatmap, dtype=np.float32)
        src = self._source_layer
        n = heat.ndim
        if src is not None and src in self.viewer.layers:
            scale = tuple(float(s) for s in src.scale)[-n:]
            translate = tuple(float(t) for t in src.translate)[-n:]
        else:
            from scanqc.io._napari_reader import scan_to_layer_data

            _data, kw, _ = scan_to_layer_data(scan)
            scale, translate = tuple(kw["scale"])[-n:], tuple(kw["translate"])[-n:]
        top = float(np.nanmax(heat)) if heat.size else 0.0
        return self.viewer.add_image(
            heat, name=f"asymmetry: {scan.name or 'scan'}", scale=scale, translate=translate,
            colormap="inferno", blending="additive", opacity=0.6,
            contrast_limits=(0.0, top if top > 0 else 1.0),
            metadata={OWNER_KEY: OWNER, "scanqc": {"scan_id": self.scan_id,
                                                   "asymmetry_score": float(result.score)}})

    def _on_region_clicked(self, item: QListWidgetItem) -> None:
        peak = item.data(Qt.UserRole)
        layers = owned_layers(self.viewer, OWNER)
        if not peak or len(peak) < 3 or not layers:
            return
        go_to_slice(self.viewer, layers[0], int(peak[0]))

    def _on_current_changed(self, scan_id: Any) -> None:
        if scan_id != self.scan_id:  # the map belongs to another scan: remove it
            for layer in owned_layers(self.viewer, OWNER):
                with contextlib.suppress(ValueError):
                    self.viewer.layers.remove(layer)
            self.regions.clear()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Stop running work and disconnect from the shared state."""
        self.cancel()
        with contextlib.suppress(Exception):
            self.state.current_changed.disconnect(self._on_current_changed)
        super().closeEvent(event)
