"""The "Dataset" dock: open a folder, browse its scans in a table, label them.

* Discovery runs in a child process driven by a worker (progress bar, Cancel) and sends
  its rows in parts as it finds them; the table inserts each part in place, so a folder
  of thousands of scans fills while the GUI stays responsive. Pixels are read only for the
  scan that is opened and for the thumbnails of rows on screen (both in workers).
* The table sorts and filters (all words of the filter box must match a row).
* Click a row or move with the up/down keys to open a scan; it replaces the previous scan's
  layers (other layers are never touched). A banner on the canvas shows its label and,
  once scored, its bad_score.
* Labels (table focused): ``R`` reference, ``G`` good, ``B`` bad with the reason of the
  combo, ``1``-``7`` bad with that reason, ``0`` clear; region and note fields. They apply
  to the selected rows (or the current one) and are written at once to the dataset's
  :class:`~scanqc.io.labels.LabelStore` (beside the dataset, see docs/labels.md), so
  reopening the folder shows them again.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import time
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
    score_summary,
    set_banner,
    show_scan,
)
from scanqc.widgets._state import (
    COLUMNS,
    discover_packed,
    entry_row,
    get_state,
    unpack_entries,
)
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
#: Scans per part sent from discovery to the table (one GUI event each).
DISCOVERY_CHUNK = 200
#: Least seconds between two progress bar updates while discovering (each one repaints).
PROGRESS_REPAINT_S = 0.25


def discover_dataset(
    paths: list[Path],
    root: Path,
    store_path: Path,
    *,
    progress: Any = None,
    cancel: Any = None,
    chunk: Any = None,
) -> tuple[Path, list[ScanEntry], LabelStore, dict[str, dict[str, Any]]]:
    """Discover ``paths`` and open the label store (worker side).

    With threads on, discovery runs in a child process (see
    :func:`~scanqc.widgets._threading.call_in_process`) so that parsing thousands of
    headers never holds the GIL the GUI thread needs.

    With ``chunk``, each part is passed on as soon as it is found, as
    ``chunk((store, labels, part))``: ``labels`` is ``{scan_id: LabelRecord}`` and ``part``
    a list of entries, or with threads on the same list packed and pickled (``bytes``, see
    :func:`rows_of_part`), so that this thread never holds the GIL for long. The receiver
    then owns ``store``; the returned lists are empty.

    Returns:
        ``(root, entries, store, rows)``: every entry (sorted) and its table row, when no
        ``chunk`` callback is given.
    """
    from scanqc.io.discover import iter_discover, share_private_names, sort_key

    str_paths = [str(p) for p in paths]
    store = LabelStore.open(store_path, root=root)
    labels = store.as_dict()
    entries: list[ScanEntry] = []
    sent = [False]

    def deliver(part: list[ScanEntry] | bytes) -> None:
        if chunk is not None:
            chunk((store, labels, part))
            sent[0] = True
        else:
            entries.extend(rows_of_part(part, {})[0])

    try:
        if threads_disabled():
            for part in iter_discover(str_paths, root=str(root), progress=progress,
                                      cancel=cancel, chunk_size=DISCOVERY_CHUNK):
                deliver(part)
        else:
            call_in_process(discover_packed, str_paths, root=str(root), progress=progress,
                            cancel=cancel, chunk_size=DISCOVERY_CHUNK, on_item=deliver,
                            raw_items=True)
    except BaseException:
        if not sent[0]:
            store.close()
        raise
    entries.sort(key=sort_key)
    share_private_names(entries)
    rows = {e.scan_id: entry_row(e, labels.get(e.scan_id)) for e in entries}
    return root, entries, store, rows


def rows_of_part(part: list[ScanEntry] | bytes, labels: dict[str, Any]
                 ) -> tuple[list[ScanEntry], dict[str, dict[str, Any]]]:
    """Entries of one discovery part and their table rows.

    ``part`` is a list of entries, or ``bytes``: a pickled list of
    :func:`~scanqc.widgets._state.pack_entries` tuples from our own child process.
    """
    entries = unpack_entries(pickle.loads(part)) if isinstance(part, bytes) else part
    return entries, {e.scan_id: entry_row(e, labels.get(e.scan_id)) for e in entries}


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
        self._listing = False  # a discovery is filling the table (parts arriving)
        self._progress_shown = 0.0
        self._loading: WorkerHandle | None = None
        self._thumbs: WorkerHandle | None = None
        self._thumb_queue: list[str] = []
        self._pending_open: str | None = None
        self._generation = 0  # bumped per dataset; stale thumbnail callbacks are dropped
        self._disc_gen = 0  # bumped per discovery; stale discovery callbacks are dropped
        self._build_ui()
        self._connect()
        # One full garbage collection now, while the dock opens (it takes ~0.1-0.3 s with
        # napari's heap of ~200k objects): CPython runs the next one only after the objects
        # surviving since this one reach 25 % of the heap, so the entries a listing adds
        # (~5 per scan) do not set one off while the table fills (docs/labels.md).
        gc.collect()
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
        for col, width in (("thumbnail", THUMBNAIL_SIZE + 8), ("name", 180), ("modality", 72),
                           ("shape", 90), ("spacing", 100), ("region", 80),
                           ("region_mismatch", 100), ("bad_score", 78), ("flagged", 62),
                           ("warnings", 120), ("label", 110)):
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
        self.state.entries_added.connect(self._on_entries_added)
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
        self._disc_gen += 1
        gen = self._disc_gen
        self._listing = False
        self._set_busy(True, "finding scans…")
        self.status.setText(f"Finding scans in {root} …")
        self._discovery = start_worker(
            discover_dataset, paths, root, self.store_path_for(root),
            on_progress=partial(self._on_discovery_progress, gen),
            on_chunk=partial(self._on_discovery_chunk, gen, root),
            on_done=partial(self._on_discovered, gen),
            on_error=partial(self._on_discovery_error, gen),
            on_cancelled=partial(self._on_discovery_cancelled, gen),
        )

    def _drop_store(self, store: LabelStore) -> None:
        if store is not self.state.store:
            store.close()

    def _on_discovery_chunk(self, gen: int, root: Path, payload: tuple) -> None:
        store, labels, part = payload
        if gen != self._disc_gen:
            self._drop_store(store)
            return
        entries, rows = rows_of_part(part, labels)
        if not self._listing:  # the first part replaces the previous dataset
            self.state.begin_dataset(root, store)
            self._listing = True
        self.state.add_entries(entries, rows)

    def _on_discovery_progress(self, gen: int, done: int, total: int, message: str) -> None:
        if gen != self._disc_gen:
            return
        # cheap on purpose: at most every 250 ms, and without QProgressBar.setValue's
        # synchronous repaint (updates off around it: the bar is painted with the next
        # frame, by the event loop, together with the table)
        now = time.monotonic()
        if total > 0 and done < total and now - self._progress_shown < PROGRESS_REPAINT_S:
            return
        self._progress_shown = now
        bar = self.progress
        bar.setUpdatesEnabled(False)
        try:
            if total > 0:
                if bar.maximum() != total:
                    bar.setRange(0, total)
                    bar.setFormat("reading headers %v/%m")
                bar.setValue(min(done, total))
            elif message and bar.format() != message:
                bar.setFormat(message)
        finally:
            bar.setUpdatesEnabled(True)  # schedules one ordinary (asynchronous) update

    def _on_discovered(self, gen: int, result: tuple) -> None:
        root, entries, store, rows = result
        if gen != self._disc_gen:
            self._drop_store(store)
            return
        self._discovery = None
        self._set_busy(False)
        if self._listing:  # the parts are in the table already
            self._end_listing()
        else:  # nothing found, or no parts (a caller without chunks)
            self.state.set_dataset(root, entries, store, rows)
        self.status.setText(f"{self._summary()}; labels: {store.path}")

    def _end_listing(self) -> None:
        self._listing = False
        self.state.finish_dataset()

    def _summary(self) -> str:
        rows, entries = self.state.rows, self.state.entries
        n_lab = sum(1 for r in rows.values() if r.get("label") or r.get("reference"))
        n_bad = sum(1 for e in entries if e.status != "ok")
        return f"{len(entries)} scans ({n_bad} unreadable or skipped), {n_lab} labelled"

    def _on_discovery_error(self, gen: int, exc: BaseException) -> None:
        if gen != self._disc_gen:
            return
        self._discovery = None
        self._set_busy(False)
        partial_list = self._listing
        if partial_list:
            self._end_listing()
        self.status.setText(f"Discovery failed: {exc}" +
                            (f" ({self._summary()} listed before)" if partial_list else ""))

    def _on_discovery_cancelled(self, gen: int) -> None:
        if gen != self._disc_gen:
            return
        self._discovery = None
        self._set_busy(False)
        if self._listing:  # keep what was found, say it is incomplete
            self._end_listing()
            self.status.setText(f"Cancelled: {self._summary()} listed (incomplete).")
        else:
            self.status.setText("Cancelled.")

    def cancel(self) -> None:
        """Cancel discovery (the scans listed so far stay, marked incomplete)."""
        if self._discovery is not None:
            self._discovery.cancel()

    def _on_dataset_changed(self) -> None:
        if self.state.root is not None and not self.folder_edit.text():
            self.folder_edit.setText(str(self.state.root))
        if self.state.entries and self.model.in_sync():
            # a dataset read in parts is complete: its rows are in place already (no reset,
            # thumbnails and the current scan stay)
            self.model.refresh()
            self._update_optional_columns(None)
            return
        self._generation += 1
        if self._thumbs is not None:
            self._thumbs.cancel()
            self._thumbs = None
        self._thumb_queue = []
        self.model.reload()
        self._update_optional_columns(None)
        set_banner(self.viewer, "")

    def _on_entries_added(self, scan_ids: list[str]) -> None:
        self.model.add_rows(scan_ids)

    def _update_optional_columns(self, scan_ids: list[str] | None) -> None:
        """Show the region check column once some result carries ``region_mismatch``."""
        col = COLUMNS.index("region_mismatch")
        if not self.table.isColumnHidden(col) and scan_ids is not None:
            return
        rows = self.state.rows
        ids = rows.keys() if scan_ids is None else scan_ids
        carried = any(rows[s].get("region_mismatch") is not None for s in ids if s in rows)
        if carried or scan_ids is None:
            self.table.setColumnHidden(col, not carried)

    def _on_rows_changed(self, scan_ids: list[str] | None) -> None:
        self.model.refresh(scan_ids)
        self._update_optional_columns(scan_ids)
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
        self.state.scan_shown.emit(scan_id)
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
        score = score_summary(row)
        set_banner(self.viewer, f"{text}  |  {score}" if score else text, color)

    def _show_fields(self, scan_id: str) -> None:
        row = self.state.rows.get(scan_id, {})
        reason = row.get("reason")
        if reason in REASONS:
            self.reason_combo.setCurrentIndex(REASONS.index(reason))
        self.region_combo.setCurrentText(row.get("label_region") or "")
        predicted = row.get("predicted_region")
        self.region_combo.lineEdit().setPlaceholderText(
            f"predicted: {predicted} (type to label)" if predicted
            else "region (or your own class)")
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
        ids = [s for s in self.selected_ids() if self.state.rows[s].get("label_region") != text]
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
            self.state.entries_added.disconnect(self._on_entries_added)
            self.state.rows_changed.disconnect(self._on_rows_changed)
        except (TypeError, ValueError, RuntimeError):
            pass
        super().closeEvent(event)
