"""The Qt model of the dataset table: rows from :class:`ViewerState`, thumbnails on demand.

Thumbnails are requested only when the view paints a row (``DecorationRole``), so only
visible rows ever get one; the model then emits ``thumbnails_wanted`` (debounced) and the
widget loads them in a worker.

While a large folder is read, :meth:`DatasetTableModel.add_rows` inserts each part at its
place in the final (discovery) order, one ``beginInsertRows`` per contiguous run: no model
reset, no re-sort of the rows already shown.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, QTimer, Signal
from qtpy.QtGui import QBrush, QColor, QImage, QPixmap

from scanqc.io.discover import sort_key
from scanqc.widgets._state import COLUMNS, ViewerState

#: Header titles per column.
HEADERS = {
    "thumbnail": "",
    "name": "name",
    "modality": "modality",
    "shape": "shape",
    "spacing": "spacing (mm)",
    "region": "region",
    "region_mismatch": "region check",
    "bad_score": "bad score",
    "flagged": "flagged",
    "asymmetry_score": "asymmetry",
    "warnings": "warnings",
    "label": "label",
    "reference": "ref",
}
_ROW_COLORS = {"reference": QColor(79, 195, 247, 60), "good": QColor(102, 187, 106, 50),
               "bad": QColor(239, 83, 80, 70)}
#: Role returning a sortable key.
SORT_ROLE = Qt.UserRole + 1
#: Role returning the scan_id.
ID_ROLE = Qt.UserRole + 2


def _display(col: str, row: dict[str, Any]) -> str:
    value = row.get(col)
    if col == "label":
        if not value:
            return ""
        return f"{value}: {row['reason']}" if row.get("reason") else str(value)
    if col == "reference":
        return "\u2713" if value else ""
    if col == "flagged":
        return "flagged" if value else ""
    if col == "region_mismatch":
        if value is None or value != value:
            return ""
        if not value:
            return "ok"
        header = row.get("header_region")
        return f"mismatch (header: {header})" if header else "mismatch"
    if col in ("bad_score", "asymmetry_score"):
        return "" if value is None or value != value else f"{float(value):.3f}"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _sort_key(col: str, row: dict[str, Any]) -> Any:
    value = row.get(col)
    if col in ("bad_score", "asymmetry_score"):
        return -1.0 if value is None or value != value else float(value)
    if col in ("reference", "flagged"):
        return int(bool(value))
    if col == "region_mismatch":
        return -1 if value is None or value != value else int(bool(value))
    return _display(col, row).lower()


class DatasetTableModel(QAbstractTableModel):
    """Rows of the dataset (one per scan) backed by ``state.rows``."""

    thumbnails_wanted = Signal(list)

    def __init__(self, state: ViewerState, parent: Any = None) -> None:
        super().__init__(parent)
        self.state = state
        self.ids: list[str] = []
        self._keys: list[tuple[str, str]] = []  # sort_key of each row, in row order
        self._row_of: dict[str, int] = {}
        self.thumbnails: dict[str, QPixmap | None] = {}
        self.show_thumbnails = True
        self._wanted: list[str] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self._flush_wanted)
        self.reload()

    # -- structure -----------------------------------------------------------------------

    def _state_ids(self) -> list[str]:
        rows, seen, out = self.state.rows, set(), []
        for e in self.state.entries:
            if e.scan_id in rows and e.scan_id not in seen:
                seen.add(e.scan_id)
                out.append(e.scan_id)
        return out

    def reload(self) -> None:
        """Rebuild from the state (a new dataset)."""
        self.beginResetModel()
        self.ids = self._state_ids()
        self._keys = [self._key(sid) for sid in self.ids]
        self._row_of = {sid: i for i, sid in enumerate(self.ids)}
        self.thumbnails = {}
        self._wanted = []
        self.endResetModel()

    def in_sync(self) -> bool:
        """True when the rows are exactly the state's entries, in the state's order."""
        return self.ids == self._state_ids()

    def _key(self, sid: str) -> tuple[str, str]:
        entry = self.state.entry(sid)
        return sort_key(entry) if entry is not None else ("", sid)

    def add_rows(self, scan_ids: list[str]) -> None:
        """Insert the rows of ``scan_ids`` (new entries of the state) at their sorted places.

        Rows go where :func:`~scanqc.io.discover.discover`'s order puts them, so when the
        last part has arrived the table is already in the final order. Each contiguous run
        is one ``beginInsertRows``/``endInsertRows`` (views keep their selection and
        scroll position; a sorting proxy places only the new rows).
        """
        new = sorted((self._key(s), s) for s in dict.fromkeys(scan_ids)
                     if s not in self._row_of and s in self.state.rows)
        i = 0
        while i < len(new):
            pos = bisect.bisect_right(self._keys, new[i][0])
            limit = self._keys[pos] if pos < len(self._keys) else None
            j = i + 1
            while j < len(new) and (limit is None or new[j][0] < limit):
                j += 1
            run = new[i:j]
            self.beginInsertRows(QModelIndex(), pos, pos + len(run) - 1)
            self.ids[pos:pos] = [sid for _, sid in run]
            self._keys[pos:pos] = [key for key, _ in run]
            if pos == len(self.ids) - len(run):
                self._row_of.update((sid, pos + k) for k, (_, sid) in enumerate(run))
            else:
                self._row_of = {sid: r for r, sid in enumerate(self.ids)}
            self.endInsertRows()
            i = j

    def refresh(self, scan_ids: list[str] | None = None) -> None:
        """Tell the views that the rows of ``scan_ids`` (all when ``None``) changed."""
        if not self.ids:
            return
        if scan_ids is None:
            rows = [0, len(self.ids) - 1]
        else:
            rows = [self._row_of[s] for s in scan_ids if s in self._row_of]
            if not rows:
                return
        last = len(COLUMNS) - 1
        self.dataChanged.emit(self.index(min(rows), 0), self.index(max(rows), last))

    def row_of(self, scan_id: str) -> int | None:
        """Return the source row of ``scan_id``."""
        return self._row_of.get(scan_id)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802, D102
        return 0 if parent.isValid() else len(self.ids)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802, D102
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802, D102
                   role: int = Qt.DisplayRole) -> Any:
        if role == Qt.DisplayRole and orientation == Qt.Horizontal:
            return HEADERS[COLUMNS[section]]
        return None

    def row_text(self, row: int) -> str:
        """Lower-case text of a row used by the filter box."""
        r = self.state.rows[self.ids[row]]
        parts = [_display(c, r) for c in COLUMNS[1:]]
        parts += [r.get("note") or "", "unlabelled" if not r.get("label") else ""]
        return " ".join(parts).lower()

    # -- data ----------------------------------------------------------------------------

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole) -> Any:  # noqa: D102
        if not index.isValid():
            return None
        sid = self.ids[index.row()]
        row = self.state.rows[sid]
        col = COLUMNS[index.column()]
        if role == Qt.DisplayRole:
            return "" if col == "thumbnail" else _display(col, row)
        if role == SORT_ROLE:
            return _sort_key(col, row)
        if role == ID_ROLE:
            return sid
        if role == Qt.DecorationRole and col == "thumbnail" and self.show_thumbnails:
            if sid in self.thumbnails:
                return self.thumbnails[sid]
            if row.get("status", "ok") == "ok":
                self._want(sid)
            return None
        if role == Qt.BackgroundRole:
            color = _ROW_COLORS.get(row.get("label"))
            return QBrush(color) if color is not None else None
        if role == Qt.ToolTipRole:
            if col == "warnings" and row.get("warnings"):
                return str(row["warnings"])
            if col in ("region", "region_mismatch"):
                tip = _region_tip(row)
                if tip:
                    return tip
            if row.get("note"):
                return f"note: {row['note']}"
        return None

    # -- thumbnails ----------------------------------------------------------------------

    def _want(self, sid: str) -> None:
        if sid not in self._wanted:
            self.thumbnails[sid] = None  # asked once; None until loaded
            self._wanted.append(sid)
            self._timer.start()

    def _flush_wanted(self) -> None:
        wanted, self._wanted = self._wanted, []
        if wanted:
            self.thumbnails_wanted.emit(wanted)

    def set_thumbnails(self, images: dict[str, np.ndarray | None]) -> None:
        """Store loaded thumbnails (uint8 2D arrays) and repaint their rows."""
        for sid, arr in images.items():
            self.thumbnails[sid] = _pixmap(arr) if arr is not None else None
        self.refresh(list(images))

    def forget_thumbnails(self, scan_ids: list[str]) -> None:
        """Allow ``scan_ids`` to be requested again (their load was cancelled)."""
        for sid in scan_ids:
            if self.thumbnails.get(sid) is None:
                self.thumbnails.pop(sid, None)


def _region_tip(row: dict[str, Any]) -> str:
    parts = []
    if row.get("label_region"):
        parts.append(f"labelled: {row['label_region']}")
    if row.get("predicted_region"):
        conf = row.get("region_confidence")
        conf_txt = f" ({float(conf):.0%})" if isinstance(conf, (int, float)) and conf == conf \
            else ""
        parts.append(f"predicted: {row['predicted_region']}{conf_txt}")
    if row.get("header_region"):
        parts.append(f"header: {row['header_region']}")
    return "; ".join(parts)


def _pixmap(arr: np.ndarray) -> QPixmap:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    h, w = arr.shape
    img = QImage(arr.data, w, h, w, QImage.Format_Grayscale8).copy()
    return QPixmap.fromImage(img)


class DatasetFilterProxy(QSortFilterProxyModel):
    """Sorts by :data:`SORT_ROLE`; keeps rows whose text holds every word of the filter."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self._words: list[str] = []

    def set_filter_text(self, text: str) -> None:
        """Filter on ``text`` (words, all must match, case-insensitive)."""
        self._words = text.lower().split()
        self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:  # noqa: N802, D102
        if not self._words:
            return True
        text = self.sourceModel().row_text(row)
        return all(w in text for w in self._words)
