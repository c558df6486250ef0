"""The "Dataset" dock: open a folder, browse its scans in a table, label them.

* Discovery runs in a worker (progress bar, Cancel); pixels are read only for the scan
  that is opened and for the thumbnails of rows on screen (both in workers).
* The table sorts and filters (all words of the filter box must match a row).
* Click a row or move with the up/down keys to open a scan; it replaces the previous scan's
  layers (other layers are never touched). A banner on the canvas shows its label.
* Labels (table focused): ``R`` reference, ``G`` good, ``B`` bad with the reason of the
  combo, ``1``-``7`` bad with that reason, ``0`` clear; region and note fields. They apply
  to the selected rows (or the current one) and are written at once to the dataset's
  :class:`~scanqc.io.labels.LabelStore` (beside the dataset, see docs/labels.md), so
  reopening the folder shows them again.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QItemSelectionModel, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from scanqc.io.labels import REASONS, LabelStore, default_store_path
from scanqc.io.scan import ScanEntry
from scanqc.widgets._present import (
    label_banner,
    make_thumbnail,
    owned_layers,
    set_banner,
    show_scan,
)
from scanqc.widgets._state import COLUMNS, entry_row, get_state
from scanqc.widgets._threading import (
    WorkerHandle,
    call_in_process,
    start_worker,
    threads_disabled,
)
from scanqc.widgets.dataset_table import ID_ROLE, DatasetFilterProxy, DatasetTableModel

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: Regions offered in the region box (free text is accepted too).
REGIONS: tuple[str, ...] = (
    "head", "head_neck", "cervical_spine", "chest", "heart", "breast", "upper_abdomen",
    "abdomen", "abdomen_pelvis", "pelvis", "hip", "lumbar_spine", "spine", "shoulder",
    "upper_limb", "wrist", "hand", "lower_limb", "knee", "whole_body", "none",
)
#: Thumbnails loaded per worker run.
THUMBNAIL_BATCH = 16
#: Side of a thumbnail in pixels.
THUMBNAIL_SIZE = 36


def discover_dataset(
    paths: list[Path],
    root: Path,
    store_path: Path,
    *,
    progress: Any = None,
    cancel: Any = None,
) -> tuple[Path, list[ScanEntry], LabelStore, dict[str, dict[str, Any]]]:
    """Discover ``paths``, open the label store and build the table rows (worker side).

    With threads on, discovery runs in a child process (see
    :func:`~scanqc.widgets._threading.call_in_process`) so that parsing thousands of
    headers never holds the GIL the GUI thread needs.
    """
    from scanqc.io.discover import discover

    str_paths = [str(p) for p in paths]
    if threads_disabled():
        entries = discover(str_paths, root=str(root), progress=progress, cancel=cancel)
    else:
        entries = call_in_process(discover, str_paths, root=str(root), progress=progress,
                                  cancel=cancel)
    store = LabelStore.open(store_path, root=root)
    labels = store.as_dict()
    rows = {e.scan_id: entry_row(e, labels.get(e.scan_id)) for e in entries}
    return root, entries, store, rows


def load_thumbnails(entries: list[ScanEntry], *, cancel: Any = None,
                    size: int = THUMBNAIL_SIZE) -> dict[str, Any]:
    """Read each entry and return ``{scan_id: uint8 thumbnail or None}`` (worker side)."""
    from scanqc.io.load import load_scan

    out: dict[str, Any] = {}
    for entry in entries:
        if cancel is not None and cancel.cancelled:
            break
        try:
            out[entry.scan_id] = make_thumbnail(load_scan(entry), size)
        except Exception:  # noqa: BLE001 - a thumbnail is optional; the row shows the error
            out[entry.scan_id] = None
    return out


def _load_one(entry: ScanEntry) -> Any:
    from scanqc.io.load import load_scan

    return load_scan(entry)


class DatasetWidget(QWidget):
    """Dock widget: a dataset's scans in a table, opened one at a time, labelled by key."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None
                 ) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.store_override: Path | None = None
        self._discovery: WorkerHandle | None = None
        self._loading: WorkerHandle | None = None
        self._thumbs: WorkerHandle | None = None
        self._thumb_queue: list[str] = []
        self._pending_open: str | None = None
        self._generation = 0  # bumped per discovery / dataset; stale callbacks are dropped
        self._build_ui()
        self._connect()
        if self.state.entries:  # another Dataset dock of this viewer opened one already
            self._on_dataset_changed()

    # -- UI ------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("dataset folder")
        self.browse_btn = QPushButton("Browse…")
        self.open_btn = QPushButton("Open")
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.browse_btn)
        row.addWidget(self.open_btn)
        lay.addLayout(row)

        row = QHBoxLayout()
        self.layers_btn = QPushButton("Use open layers")
        self.store_btn = QPushButton("Labels file…")
        self.thumbs_check = QCheckBox("thumbnails")
        self.thumbs_check.setChecked(True)
        row.addWidget(self.layers_btn)
        row.addWidget(self.store_btn)
        row.addWidget(self.thumbs_check)
        row.addStretch(1)
        lay.addLayout(row)

        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.cancel_btn = QPushButton("Cancel")
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        self._set_busy(False)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter: words in any column (e.g. bad knee)")
        self.filter_edit.setClearButtonEnabled(True)
        lay.addWidget(self.filter_edit)

        self.model = DatasetTableModel(self.state, self)
        self.proxy = DatasetFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setWordWrap(False)
        self.table.setIconSize(self.table.iconSize().scaled(
            THUMBNAIL_SIZE, THUMBNAIL_SIZE, Qt.KeepAspectRatio))
        vh = self.table.verticalHeader()
        vh.setVisible(False)
        vh.setSectionResizeMode(QHeaderView.Fixed)
        vh.setDefaultSectionSize(THUMBNAIL_SIZE + 4)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.Interactive)
        hh.setStretchLastSection(True)
        for col, width in (("thumbnail", THUMBNAIL_SIZE + 8), ("name", 180), ("modality", 60),
                           ("shape", 90), ("spacing", 90), ("region", 80),
                           ("bad_score", 70), ("warnings", 120), ("label", 110)):
            self.table.setColumnWidth(COLUMNS.index(col), width)
        self.table.setMinimumHeight(200)
        lay.addWidget(self.table, 1)

        grid = QGridLayout()
        self.ref_btn = QPushButton("Reference (R)")
        self.good_btn = QPushButton("Good (G)")
        self.bad_btn = QPushButton("Bad (B)")
        self.clear_btn = QPushButton("Clear (0)")
        for i, b in enumerate((self.ref_btn, self.good_btn, self.bad_btn, self.clear_btn)):
            grid.addWidget(b, 0, i)
        self.reason_combo = QComboBox()
        for i, reason in enumerate(REASONS, start=1):
            self.reason_combo.addItem(f"{i} {reason.replace('_', ' ')}", reason)
        self.region_combo = QComboBox()
        self.region_combo.setEditable(True)
        self.region_combo.addItems(["", *REGIONS])
        self.region_combo.lineEdit().setPlaceholderText("region (or your own class)")
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("note")
        grid.addWidget(QLabel("reason"), 1, 0)
        grid.addWidget(self.reason_combo, 1, 1, 1, 3)
        grid.addWidget(QLabel("region"), 2, 0)
        grid.addWidget(self.region_combo, 2, 1, 1, 3)
        grid.addWidget(QLabel("note"), 3, 0)
        grid.addWidget(self.note_edit, 3, 1, 1, 3)
        lay.addLayout(grid)

        self.status = QLabel("Open a dataset folder.")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)

        self._open_timer = QTimer(self)
        self._open_timer.setSingleShot(True)
        self._open_timer.setInterval(0 if threads_disabled() else 60)
        self._open_timer.timeout.connect(self._open_pending)

    def _connect(self) -> None:
        self.browse_btn.clicked.connect(self._browse)
        self.open_btn.clicked.connect(lambda: self.open_folder(self.folder_edit.text()))
        self.folder_edit.returnPressed.connect(lambda: self.open_folder(self.folder_edit.text()))
        self.layers_btn.clicked.connect(self.use_open_layers)
        self.store_btn.clicked.connect(self._choose_store)
        self.cancel_btn.clicked.connect(self.cancel)
        self.thumbs_check.toggled.connect(self._toggle_thumbnails)
        self.filter_edit.textChanged.connect(self.proxy.set_filter_text)
        self.table.selectionModel().currentRowChanged.connect(self._on_current_row)
        self.model.thumbnails_wanted.connect(self._queue_thumbnails)
        self.ref_btn.clicked.connect(lambda: self.apply_label("reference"))
        self.good_btn.clicked.connect(lambda: self.apply_label("good"))
        self.bad_btn.clicked.connect(lambda: self.apply_label("bad"))
        self.clear_btn.clicked.connect(self.clear_labels)
        self.reason_combo.activated.connect(self._on_reason_picked)
        self.region_combo.activated.connect(lambda _i: self._on_region_edited())
        self.region_combo.lineEdit().editingFinished.connect(self._on_region_edited)
        self.note_edit.editingFinished.connect(self._on_note_edited)
        self._keys = {Qt.Key_R: partial(self.apply_label, "reference"),
                      Qt.Key_G: partial(self.apply_label, "good"),
                      Qt.Key_B: partial(self.apply_label, "bad"),
                      Qt.Key_0: self.clear_labels}
        for i, reason in enumerate(REASONS, start=1):
            self._keys[getattr(Qt, f"Key_{i}")] = partial(self.apply_reason, reason)
        self.table.installEventFilter(self)
        self.state.dataset_changed.connect(self._on_dataset_changed)
        self.state.rows_changed.connect(self._on_rows_changed)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802
        """Label keys on the table (R, G, B, 0-7); up/down stay the table's own."""
        if obj is self.table and event.type() == QEvent.KeyPress:
            mods = event.modifiers() & ~Qt.KeypadModifier
            fn = self._keys.get(event.key())
            if fn is not None and mods == Qt.NoModifier:
                fn()
                return True
        return super().eventFilter(obj, event)

    def _set_busy(self, busy: bool, text: str = "") -> None:
        self.progress.setVisible(busy)
        self.cancel_btn.setVisible(busy)
        if busy:
            self.progress.setRange(0, 0)
            self.progress.setFormat(text)

    # -- opening a dataset ---------------------------------------------------------------

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder", self.folder_edit.text())
        if folder:
            self.open_folder(folder)

    def _choose_store(self) -> None:
        start = str(default_store_path(self.state.root or self.folder_edit.text() or "."))
        path, _ = QFileDialog.getSaveFileName(
            self, "Labels file", start, "scanqc labels (*.sqlite);;All files (*)",
            options=QFileDialog.DontConfirmOverwrite)
        if path:
            self.store_override = Path(path)
            if self.state.root is not None:
                self.open_folder(self.state.root)

    def store_path_for(self, root: str | os.PathLike[str]) -> Path:
        """Return the label store used for dataset ``root``."""
        return default_store_path(root, self.store_override)

    def open_folder(self, folder: str | os.PathLike[str]) -> None:
        """Discover ``folder`` in a worker and show its scans (with their labels)."""
        folder = str(folder).strip()
        if not folder:
            self.status.setText("Choose a dataset folder.")
            return
        root = Path(folder).expanduser()
        if not root.is_dir():
            self.status.setText(f"{root}: not a folder")
            return
        root = root.resolve()
        self.folder_edit.setText(str(root))
        self._start_discovery([root], root)

    def use_open_layers(self) -> None:
        """Use the files behind the viewer's open image layers as the dataset."""
        paths: list[Path] = []
        for layer in self.viewer.layers:
            meta = layer.metadata.get("scanqc", {}) if hasattr(layer, "metadata") else {}
            src = meta.get("paths") or ([layer.source.path] if layer.source.path else [])
            for p in src:
                if p and Path(p).exists() and Path(p) not in paths:
                    paths.append(Path(p).resolve())
        if not paths:
            self.status.setText("No open layer comes from a file.")
            return
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
        self.folder_edit.setText(str(root))
        self._start_discovery(paths, root)

    def _start_discovery(self, paths: list[Path], root: Path) -> None:
        self.cancel()
        self._generation += 1
        gen = self._generation
        self._set_busy(True, "finding scans…")
        self.status.setText(f"Finding scans in {root} …")
        self._discovery = start_worker(
            discover_dataset, paths, root, self.store_path_for(root),
            on_progress=partial(self._on_discovery_progress, gen),
            on_done=partial(self._on_discovered, gen),
            on_error=partial(self._on_discovery_error, gen),
            on_cancelled=partial(self._on_discovery_cancelled, gen),
        )

    def _on_discovery_progress(self, gen: int, done: int, total: int, message: str) -> None:
        if gen != self._generation:
            return
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        self.progress.setFormat(f"{message or 'finding scans'} %v/%m" if total else message)

    def _on_discovered(self, gen: int, result: tuple) -> None:
        root, entries, store, rows = result
        if gen != self._generation:
            store.close()
            return
        self._discovery = None
        self._set_busy(False)
        self.state.set_dataset(root, entries, store, rows)
        n_lab = sum(1 for r in rows.values() if r.get("label") or r.get("reference"))
        n_bad = sum(1 for e in entries if e.status != "ok")
        self.status.setText(
            f"{len(entries)} scans ({n_bad} unreadable or skipped), {n_lab} labelled; "
            f"labels: {store.path}")

    def _on_discovery_error(self, gen: int, exc: BaseException) -> None:
        if gen != self._generation:
            return
        self._discovery = None
        self._set_busy(False)
        self.status.setText(f"Discovery failed: {exc}")

    def _on_discovery_cancelled(self, gen: int) -> None:
        if gen != self._generation:
            return
        self._discovery = None
        self._set_busy(False)
        self.status.setText("Cancelled.")

    def cancel(self) -> None:
        """Cancel discovery (the table keeps the previous dataset)."""
        if self._discovery is not None:
            self._discovery.cancel()

    def _on_dataset_changed(self) -> None:
        self._generation += 1
        if self._thumbs is not None:
            self._thumbs.cancel()
            self._thumbs = None
        self._thumb_queue = []
        self.model.reload()
        if self.state.root is not None and not self.folder_edit.text():
            self.folder_edit.setText(str(self.state.root))
        set_banner(self.viewer, "")

    def _on_rows_changed(self, scan_ids: list[str] | None) -> None:
        self.model.refresh(scan_ids)
        cur = self.state.current
        if cur is not None and (scan_ids is None or cur in scan_ids):
            self._update_banner()
            self._show_fields(cur)

    # -- current scan --------------------------------------------------------------------

    def current_id(self) -> str | None:
        """scan_id of the table's current row."""
        idx = self.table.currentIndex()
        return idx.data(ID_ROLE) if idx.isValid() else None

    def selected_ids(self) -> list[str]:
        """scan_ids of the selected rows, or the current row when none is selected."""
        rows = self.table.selectionModel().selectedRows()
        ids = [r.data(ID_ROLE) for r in rows]
        if not ids and self.current_id():
            ids = [self.current_id()]
        return ids

    def select_scan(self, scan_id: str) -> None:
        """Make ``scan_id`` the current row (which opens it)."""
        row = self.model.row_of(scan_id)
        if row is None:
            return
        idx = self.proxy.mapFromSource(self.model.index(row, 1))
        if idx.isValid():
            self.table.selectionModel().setCurrentIndex(
                idx, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
            self.table.scrollTo(idx)

    def _on_current_row(self, current: Any, _previous: Any) -> None:
        sid = current.data(ID_ROLE) if current.isValid() else None
        if sid is None:
            return
        self._pending_open = sid
        self._open_timer.start()

    def _open_pending(self) -> None:
        sid, self._pending_open = self._pending_open, None
        if sid is not None:
            self.open_scan(sid)

    def open_scan(self, scan_id: str) -> None:
        """Load ``scan_id`` in a worker and show it, replacing the previous scan."""
        entry = self.state.entry(scan_id)
        if entry is None:
            return
        self.state.set_current(scan_id)
        self._show_fields(scan_id)
        self._update_banner()
        if self._loading is not None:
            self._loading.cancel()
        if entry.status != "ok":
            for layer in owned_layers(self.viewer):
                self.viewer.layers.remove(layer)
            self.status.setText(f"{entry.name}: {entry.status}: {entry.error}")
            return
        self.status.setText(f"Loading {entry.name} …")
        self._loading = start_worker(
            _load_one, entry,
            on_done=partial(self._on_loaded, scan_id),
            on_error=partial(self._on_load_error, scan_id),
        )

    def _on_loaded(self, scan_id: str, scan: Any) -> None:
        if scan_id != self.state.current:
            return  # the user moved on
        self._loading = None
        show_scan(self.viewer, scan)
        row = self.state.rows.get(scan_id, {})
        if not row.get("shape"):
            self.state.update_rows([{"scan_id": scan_id,
                                     "shape": " x ".join(map(str, scan.spatial_shape)),
                                     "spacing": " x ".join(f"{s:.3g}" for s in scan.spacing)}])
        self.status.setText(f"{scan.name or scan_id}: {scan.kind}, {scan.modality or '?'}, "
                            f"{' x '.join(map(str, scan.data.shape))}")
        self._update_banner()

    def _on_load_error(self, scan_id: str, exc: BaseException) -> None:
        if scan_id != self.state.current:
            return
        self._loading = None
        for layer in owned_layers(self.viewer):
            self.viewer.layers.remove(layer)
        self.status.setText(str(exc))

    def _update_banner(self) -> None:
        sid = self.state.current
        if sid is None:
            set_banner(self.viewer, "")
            return
        row = self.state.rows.get(sid, {})
        text, color = label_banner(row.get("name") or sid, row)
        set_banner(self.viewer, text, color)

    def _show_fields(self, scan_id: str) -> None:
        row = self.state.rows.get(scan_id, {})
        reason = row.get("reason")
        if reason in REASONS:
            self.reason_combo.setCurrentIndex(REASONS.index(reason))
        self.region_combo.setCurrentText(row.get("region") or "")
        self.note_edit.setText(row.get("note") or "")

    # -- labelling -----------------------------------------------------------------------

    def _write(self, ids: list[str], **changes: Any) -> None:
        if not ids:
            self.status.setText("Select a scan first.")
            return
        try:
            self.state.set_labels(ids, **changes)
        except (ValueError, OSError) as exc:
            self.status.setText(f"Label not saved: {exc}")
            return
        what = ", ".join(f"{k}={v}" for k, v in changes.items())
        self.status.setText(f"Saved {what} for {len(ids)} scan{'s' * (len(ids) > 1)}.")

    def apply_label(self, label: str) -> None:
        """Label the selected scans ``reference``, ``good`` or ``bad`` (reason from the box)."""
        if label == "bad":
            self._write(self.selected_ids(), label="bad", reason=self.reason_combo.currentData())
        else:
            self._write(self.selected_ids(), label=label, reason=None)

    def apply_reason(self, reason: str) -> None:
        """Label the selected scans bad with ``reason``."""
        self.reason_combo.setCurrentIndex(REASONS.index(reason))
        self._write(self.selected_ids(), label="bad", reason=reason)

    def clear_labels(self) -> None:
        """Remove label, reason and reference mark of the selected scans."""
        self._write(self.selected_ids(), label=None, reason=None, reference=False)

    def _on_reason_picked(self, _index: int) -> None:
        ids = [s for s in self.selected_ids() if self.state.rows[s].get("label") == "bad"]
        if ids:
            self._write(ids, reason=self.reason_combo.currentData())

    def _on_region_edited(self) -> None:
        text = self.region_combo.currentText().strip() or None
        ids = [s for s in self.selected_ids() if self.state.rows[s].get("region") != text]
        if ids and self.state.store is not None:
            self._write(ids, region=text)

    def _on_note_edited(self) -> None:
        text = self.note_edit.text().strip() or None
        ids = [s for s in self.selected_ids() if self.state.rows[s].get("note") != text]
        if ids and self.state.store is not None:
            self._write(ids, note=text)

    # -- thumbnails ----------------------------------------------------------------------

    def _toggle_thumbnails(self, on: bool) -> None:
        self.model.show_thumbnails = on
        if not on and self._thumbs is not None:
            self._thumbs.cancel()
        self.model.refresh()

    def _queue_thumbnails(self, ids: list[str]) -> None:
        self._thumb_queue += [s for s in ids if s not in self._thumb_queue]
        self._next_thumbnails()

    def _next_thumbnails(self) -> None:
        if self._thumbs is not None or not self._thumb_queue or not self.model.show_thumbnails:
            return
        batch, self._thumb_queue = (self._thumb_queue[:THUMBNAIL_BATCH],
                                    self._thumb_queue[THUMBNAIL_BATCH:])
        entries = [e for e in (self.state.entry(s) for s in batch) if e is not None]
        gen = self._generation

        def done(images: dict[str, Any]) -> None:
            if gen != self._generation:
                return
            self._thumbs = None
            self.model.set_thumbnails(images)
            self._next_thumbnails()

        def stopped(*_args: Any) -> None:
            if gen != self._generation:
                return
            self._thumbs = None
            self.model.forget_thumbnails(batch)

        self._thumbs = start_worker(load_thumbnails, entries, on_done=done, on_error=stopped,
                                    on_cancelled=stopped)

    # -- closing -------------------------------------------------------------------------

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        """Stop workers and disconnect from the shared state (labels are already saved)."""
        for handle in (self._discovery, self._loading, self._thumbs):
            if handle is not None:
                handle.cancel()
        self._open_timer.stop()
        try:
            self.state.dataset_changed.disconnect(self._on_dataset_changed)
            self.state.rows_changed.disconnect(self._on_rows_changed)
        except (TypeError, ValueError, RuntimeError):
            pass
        super().closeEvent(event)
