"""Per-viewer shared state of the scanqc docks (one :class:`ViewerState` per viewer).

The Dataset dock fills it (root, entries, label store), in one go
(:meth:`ViewerState.set_dataset`) or while a large folder is read
(:meth:`~ViewerState.begin_dataset`, :meth:`~ViewerState.add_entries`,
:meth:`~ViewerState.finish_dataset`); other docks (Score, Batch, Region) add result columns
with :meth:`ViewerState.update_rows`, which emits ``rows_changed`` so the dataset table
refreshes. States are kept in a ``WeakKeyDictionary`` keyed by viewer,
so closing a viewer frees its state and two viewers never share one.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from psygnal import Signal

from scanqc.io.discover import iter_discover, share_private_names, sort_key
from scanqc.io.labels import LabelRecord, LabelStore, entry_relpath
from scanqc.io.scan import ScanEntry

#: Table columns, in display order.
COLUMNS: tuple[str, ...] = (
    "thumbnail",
    "name",
    "modality",
    "shape",
    "spacing",
    "region",
    "region_mismatch",
    "bad_score",
    "flagged",
    "asymmetry_score",
    "warnings",
    "label",
    "reference",
)

#: ScanEntry fields in constructor order (see :func:`pack_entries`).
ENTRY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ScanEntry))

_STATES: weakref.WeakKeyDictionary[Any, ViewerState] = weakref.WeakKeyDictionary()


def _fmt_tuple(values: Iterable[Any] | None, fmt: str = "{}") -> str:
    if not values:
        return ""
    return " x ".join(fmt.format(v) for v in values)


def pack_entries(entries: Iterable[ScanEntry]) -> list[tuple]:
    """Each entry as the tuple of its field values (compact to send between processes).

    Rebuilt with :func:`unpack_entries`, an entry costs the receiving process fewer objects
    that CPython's cycle collector tracks than an unpickled one (no instance ``__dict__``),
    so a large listing brings the next full collection of the GUI process less close.
    """
    return [tuple(getattr(e, name) for name in ENTRY_FIELDS) for e in entries]


def unpack_entries(packed: Iterable[tuple]) -> list[ScanEntry]:
    """Entries from :func:`pack_entries` tuples."""
    return [ScanEntry(*values) for values in packed]


def discover_packed(
    paths: Iterable[str | os.PathLike], *, root: str | None = None, progress: Any = None,
    cancel: Any = None, chunk_size: int = 200,
) -> Iterator[list[tuple]]:
    """:func:`~scanqc.io.discover.iter_discover`, each part packed by :func:`pack_entries`.

    The target of the Dataset dock's discovery child process (no Qt imported here).
    """
    for part in iter_discover(paths, root=root, progress=progress, cancel=cancel,
                              chunk_size=chunk_size):
        yield pack_entries(part)


def entry_row(entry: ScanEntry, record: LabelRecord | None = None) -> dict[str, Any]:
    """Return the table row of a discovered scan, with its labels if any."""
    warnings = [w.code for w in entry.warnings]
    if entry.status != "ok":
        warnings.insert(0, f"{entry.status}: {entry.error}" if entry.error else entry.status)
    row: dict[str, Any] = {
        "scan_id": entry.scan_id,
        "name": entry.name or Path(entry.path).name,
        "modality": entry.modality,
        "shape": _fmt_tuple(entry.shape),
        "spacing": _fmt_tuple(entry.spacing, "{:.3g}"),
        "region": None,
        "label_region": None,
        "predicted_region": None,
        "region_mismatch": None,
        "bad_score": None,
        "flagged": None,
        "warnings": ", ".join(warnings),
        "label": None,
        "reason": None,
        "note": None,
        "reference": False,
        "status": entry.status,
    }
    if record is not None:
        row.update(label_fields(record))
        _settle_region(row)
    return row


def label_fields(record: LabelRecord) -> dict[str, Any]:
    """Return the row fields a label record sets (``label_region``: the labelled region)."""
    return {
        "label": record.label,
        "reason": record.reason,
        "note": record.note,
        "reference": record.reference,
        "label_region": record.region or None,
    }


def _settle_region(row: dict[str, Any]) -> None:
    """``region`` shown = the region a person labelled, else the predicted one."""
    row["region"] = row.get("label_region") or row.get("predicted_region")


class ViewerState:
    """What the scanqc docks of one viewer share.

    Attributes:
        root: Dataset root folder (``None`` before a dataset is opened).
        entries: Discovered scans, in table order.
        store: The dataset's :class:`LabelStore` (``None`` before a dataset is opened).
        current: scan_id of the scan shown in the viewer.
        rows: ``{scan_id: row dict}`` with the :data:`COLUMNS` fields (``thumbnail`` is
            held by the table model, not here).
        loading: True while a dataset arrives in parts (:meth:`begin_dataset`).
    """

    dataset_changed = Signal()
    entries_added = Signal(object)  # list of scan_ids appended while a dataset is read
    rows_changed = Signal(object)  # list of scan_ids, or None for "all"
    current_changed = Signal(object)  # scan_id or None
    scan_shown = Signal(object)  # scan_id whose image the Dataset dock has just shown

    def __init__(self) -> None:
        self.root: Path | None = None
        self.entries: list[ScanEntry] = []
        self.store: LabelStore | None = None
        self.current: str | None = None
        self.rows: dict[str, dict[str, Any]] = {}
        self.loading = False
        self._by_id: dict[str, ScanEntry] = {}

    # -- dataset -------------------------------------------------------------------------

    def set_dataset(self, root: Path | None, entries: list[ScanEntry],
                    store: LabelStore | None, rows: dict[str, dict[str, Any]] | None = None
                    ) -> None:
        """Replace the dataset (closing the previous store) and emit ``dataset_changed``."""
        if rows is None:
            labels = store.as_dict() if store is not None else {}
            rows = {e.scan_id: entry_row(e, labels.get(e.scan_id)) for e in entries}
        self._replace(root, entries, store, rows, loading=False)

    def begin_dataset(self, root: Path | None, store: LabelStore | None) -> None:
        """Start a dataset that arrives in parts: empty, ``loading``; ``dataset_changed``.

        Follow with :meth:`add_entries` per part and :meth:`finish_dataset` at the end.
        """
        self._replace(root, [], store, {}, loading=True)

    def _replace(self, root: Path | None, entries: list[ScanEntry], store: LabelStore | None,
                 rows: dict[str, dict[str, Any]], *, loading: bool) -> None:
        if self.store is not None and self.store is not store:
            self.store.close()
        self.root = root
        self.entries = list(entries)
        self._by_id = {e.scan_id: e for e in self.entries}
        self.store = store
        self.current = None
        self.rows = rows
        self.loading = loading
        self.dataset_changed.emit()

    def add_entries(self, entries: list[ScanEntry], rows: dict[str, dict[str, Any]]) -> None:
        """Append a part of the dataset being read; emits ``entries_added`` with its ids."""
        ids = []
        for e in entries:
            if e.scan_id not in self._by_id:
                ids.append(e.scan_id)
            self._by_id[e.scan_id] = e
            self.entries.append(e)
        self.rows.update(rows)
        if ids:
            self.entries_added.emit(ids)

    def finish_dataset(self) -> None:
        """End a dataset read in parts; emits ``dataset_changed``.

        The entries are sorted as :func:`~scanqc.io.discover.discover` sorts them, and
        share the identifying names found in any part (as ``discover`` does).
        """
        self.entries.sort(key=sort_key)
        share_private_names(self.entries)
        self.loading = False
        self.dataset_changed.emit()

    def entry(self, scan_id: str) -> ScanEntry | None:
        """Return the entry of ``scan_id``."""
        return self._by_id.get(scan_id)

    def set_current(self, scan_id: str | None) -> None:
        """Make ``scan_id`` the current scan and emit ``current_changed``."""
        if scan_id != self.current:
            self.current = scan_id
            self.current_changed.emit(scan_id)

    # -- results from other docks --------------------------------------------------------

    def update_rows(self, rows: Iterable[Mapping[str, Any]] | Any) -> None:
        """Merge result columns into the table (a list of dicts or a pandas DataFrame).

        Each row needs a ``scan_id``; unknown scan_ids are ignored; other keys (e.g.
        ``bad_score``, ``flagged``, ``region``, ``region_mismatch``, ``warnings``) overwrite
        the row's fields. A ``region`` is a predicted one: it is kept as
        ``predicted_region`` and shown unless a person labelled the scan's region. Emits
        ``rows_changed`` with the changed scan_ids.
        """
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
            rows = rows.to_dict(orient="records")
        changed = []
        for row in rows:
            sid = str(row.get("scan_id", ""))
            if sid in self.rows:
                target = self.rows[sid]
                target.update({k: v for k, v in row.items() if k not in ("scan_id", "region")})
                if "region" in row:
                    target["predicted_region"] = row["region"] or None
                    _settle_region(target)
                changed.append(sid)
        if changed:
            self.rows_changed.emit(changed)

    # -- labels --------------------------------------------------------------------------

    def set_labels(self, scan_ids: Iterable[str], **changes: Any) -> list[LabelRecord]:
        """Write a label change for ``scan_ids`` to the store (one transaction) and the rows.

        Keyword arguments are those of :meth:`LabelStore.set_many` (``label``, ``reason``,
        ``region``, ``note``, ``reference``).

        Raises:
            ValueError: No dataset is open, or an invalid value.
        """
        if self.store is None:
            raise ValueError("open a dataset first")
        ids = [s for s in scan_ids if s in self.rows]
        if not ids:
            return []
        paths = {sid: entry_relpath(self._by_id[sid], self.root)
                 for sid in ids if sid in self._by_id}
        records = self.store.set_many(ids, paths=paths, **changes)
        for rec in records:
            self.rows[rec.scan_id].update(label_fields(rec))
            _settle_region(self.rows[rec.scan_id])
        self.rows_changed.emit([r.scan_id for r in records])
        return records

    def close(self) -> None:
        """Close the label store (the labels are already on disk)."""
        if self.store is not None:
            self.store.close()
            self.store = None


def get_state(viewer: Any) -> ViewerState:
    """Return the state of ``viewer``, creating it on first use."""
    state = _STATES.get(viewer)
    if state is None:
        state = ViewerState()
        _STATES[viewer] = state
    return state


def drop_state(viewer: Any) -> None:
    """Forget the state of ``viewer`` (closing its label store)."""
    state = _STATES.pop(viewer, None)
    if state is not None:
        state.close()
