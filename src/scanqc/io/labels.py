"""The per-dataset label store: reference marks and QC labels in one SQLite file.

Why SQLite (see docs/labels.md): each change is one committed transaction (atomic, fsync'd
with ``PRAGMA synchronous=FULL``), the write-ahead log lets other processes read while the
widget writes, a killed process never leaves a half-written file, and a change costs one
row instead of rewriting a whole CSV.

The store lives *beside* the dataset, never inside it (input folders are never written):
``<dataset_parent>/<dataset_name>.scanqc-labels.sqlite``, overridable by an explicit path
or the ``SCANQC_LABELS`` environment variable (see :func:`default_store_path`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scanqc.io.privacy import export_text
from scanqc.io.scan import ScanEntry, file_name_of, printable

#: Allowed values of ``label`` (besides ``None``).
LABELS: tuple[str, ...] = ("reference", "good", "bad")
#: Allowed values of ``reason`` (besides ``None``), in the order of the 1-7 shortcuts.
REASONS: tuple[str, ...] = (
    "no_anatomy",
    "wrong_region",
    "wrong_plane",
    "truncated_fov",
    "artifact",
    "corrupt",
    "other",
)
#: Version of the schema written in ``meta``.
SCHEMA_VERSION = 1
#: Environment variable that overrides the default store location.
ENV_VAR = "SCANQC_LABELS"
#: Columns of an export without identifiers, in order.
EXPORT_COLUMNS: tuple[str, ...] = (
    "scan_id",
    "path",
    "label",
    "reason",
    "region",
    "note",
    "reference",
    "updated_at",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS labels (
    scan_id    TEXT PRIMARY KEY,
    path       TEXT,
    label      TEXT CHECK (label IS NULL OR label IN ('reference', 'good', 'bad')),
    reason     TEXT CHECK (reason IS NULL OR reason IN ('no_anatomy', 'wrong_region',
                   'wrong_plane', 'truncated_fov', 'artifact', 'corrupt', 'other')),
    region     TEXT,
    note       TEXT,
    reference  INTEGER NOT NULL DEFAULT 0 CHECK (reference IN (0, 1)),
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    scan_id    TEXT NOT NULL,
    path       TEXT,
    label      TEXT,
    reason     TEXT,
    region     TEXT,
    note       TEXT,
    reference  INTEGER NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_scan ON history (scan_id);
"""

_UNSET: Any = object()


@dataclass(frozen=True)
class LabelRecord:
    """One scan's labels.

    Attributes:
        scan_id: The scan's stable id.
        path: Path relative to the dataset root (``""`` if unknown).
        label: ``"reference"``, ``"good"``, ``"bad"`` or ``None``.
        reason: Why a scan is bad (one of :data:`REASONS`) or ``None``.
        region: Body region (free text; user classes allowed) or ``None``.
        note: Free-text note or ``None``.
        reference: True when the scan belongs to the reference set.
        updated_at: ISO 8601 UTC time of the last change.
    """

    scan_id: str
    path: str = ""
    label: str | None = None
    reason: str | None = None
    region: str | None = None
    note: str | None = None
    reference: bool = False
    updated_at: str = ""

    def to_row(self) -> dict[str, Any]:
        """Return the export row (no identifiers)."""
        return {
            "scan_id": self.scan_id,
            "path": self.path,
            "label": self.label or "",
            "reason": self.reason or "",
            "region": self.region or "",
            "note": self.note or "",
            "reference": int(self.reference),
            "updated_at": self.updated_at,
        }


@dataclass
class ImportResult:
    """What :meth:`LabelStore.import_csv` did.

    Attributes:
        matched: Rows applied to a known scan.
        unmatched: The ``path`` or ``scan_id`` of rows that matched no scan.
    """

    matched: int
    unmatched: list[str]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = printable(str(value).strip())
    return text or None


def validate_label(label: str | None) -> str | None:
    """Return ``label`` normalised (lower case, ``""`` -> ``None``) or raise ``ValueError``."""
    label = _clean(label)
    if label is None:
        return None
    label = label.lower()
    if label not in LABELS:
        raise ValueError(f"label {label!r} is not one of {', '.join(LABELS)}")
    return label


def validate_reason(reason: str | None) -> str | None:
    """Return ``reason`` normalised or raise ``ValueError``."""
    reason = _clean(reason)
    if reason is None:
        return None
    reason = reason.lower().replace(" ", "_").replace("-", "_")
    if reason not in REASONS:
        raise ValueError(f"reason {reason!r} is not one of {', '.join(REASONS)}")
    return reason


def _parse_bool(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t"):
        return True
    if text in ("", "0", "false", "no", "n", "f", "none"):
        return False
    raise ValueError(f"reference {value!r} is not 0/1 or true/false")


def default_store_path(dataset: str | os.PathLike[str], store: str | os.PathLike[str] | None = None
                       ) -> Path:
    """Return where the labels of ``dataset`` are kept.

    Order: ``store`` if given, else ``$SCANQC_LABELS`` if set, else
    ``<dataset_parent>/<dataset_name>.scanqc-labels.sqlite`` (beside the dataset, never in
    it, so input folders are not written). When that file does not exist and its folder
    cannot be written (an archive on a read-only mount, a CD), the store goes to the
    user's data folder instead: ``$XDG_DATA_HOME/scanqc/labels/`` (default
    ``~/.local/share/scanqc/labels/``), named after the dataset and a hash of its path, so
    labelling works and each dataset keeps its own store.

    Args:
        dataset: The dataset root folder (or a single file).
        store: An explicit store path chosen by the user.
    """
    if store:
        return Path(store).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    root = Path(dataset).expanduser().resolve()
    name = root.name or "dataset"
    beside = root.parent / f"{name}.scanqc-labels.sqlite"
    if beside.exists() or os.access(root.parent, os.W_OK):
        return beside
    data = Path(os.environ.get("XDG_DATA_HOME", "").strip() or Path.home() / ".local" / "share")
    digest = hashlib.sha1(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return data / "scanqc" / "labels" / f"{name}-{digest}.scanqc-labels.sqlite"


def _relative(path: str, root: Path | None) -> str:
    """``path`` relative to ``root`` where it lies under it, as stored (valid Unicode)."""
    if not path:
        return ""
    p = Path(path)
    if root is not None and p.is_absolute():
        # the path as the dataset names it first: a file that links to a place outside
        # the dataset keeps its own name (its target's absolute path may identify someone)
        for cand in (Path(os.path.abspath(p)), p.resolve()):
            try:
                return printable(cand.relative_to(root).as_posix())
            except ValueError:
                continue
    return printable(p.as_posix())


class LabelStore:
    """Labels of one dataset in SQLite; every :meth:`set` is one durable transaction.

    Safe to call from several threads (one connection behind a lock). Other processes
    may read the same file at the same time (WAL mode).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, root: Path | None) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        self.root = root

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
             ) -> LabelStore:
        """Open (creating if needed) the store at ``path``.

        Args:
            path: The SQLite file.
            root: Dataset root used to make paths relative; remembered in ``meta`` and read
                back from it when not given.

        Raises:
            ValueError: The file is not a scanqc label store (one line).
        """
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError as exc:  # e.g. a read-only or missing place
            raise ValueError(f"{path}: cannot open or create the label store here ({exc}); "
                             "choose another store (--store, or the SCANQC_LABELS "
                             "environment variable)") from None
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path}: not a scanqc label store ({exc})") from None
        if version is not None and int(version[0]) > SCHEMA_VERSION:
            conn.close()
            raise ValueError(
                f"{path}: label store schema {version[0]} is newer than this scanqc "
                f"({SCHEMA_VERSION}); update scanqc"
            )
        stored_root = conn.execute("SELECT value FROM meta WHERE key='dataset_root'").fetchone()
        root_path = Path(root).expanduser().resolve() if root else None
        if root_path is None and stored_root is not None:
            root_path = Path(stored_root[0])
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                     (str(SCHEMA_VERSION),))
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (_now(),))
        if root_path is not None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('dataset_root', ?)",
                         (str(root_path),))
        conn.execute("COMMIT")
        return cls(conn, path, root_path)

    @classmethod
    def for_dataset(cls, dataset: str | os.PathLike[str],
                    store: str | os.PathLike[str] | None = None) -> LabelStore:
        """Open the store of ``dataset`` at :func:`default_store_path`."""
        return cls.open(default_store_path(dataset, store), root=dataset)

    def close(self) -> None:
        """Close the connection (the data are already on disk)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._conn is None

    def meta(self) -> dict[str, str]:
        """Return the ``meta`` table as a dict."""
        with self._lock:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    # -- writing -------------------------------------------------------------------------

    def set(
        self,
        scan_id: str,
        *,
        path: str | None = _UNSET,
        label: str | None = _UNSET,
        reason: str | None = _UNSET,
        region: str | None = _UNSET,
        note: str | None = _UNSET,
        reference: bool | None = _UNSET,
    ) -> LabelRecord:
        """Change the labels of one scan in one committed, fsync'd transaction.

        Only the fields passed are changed; passing ``None`` clears a field. Setting
        ``label="reference"`` also sets ``reference``; ``label="bad"`` clears it (a bad
        scan cannot be a reference) unless ``reference`` is given explicitly.

        Returns:
            The record as stored once the change is durable.

        Raises:
            ValueError: An invalid label or reason (one line).
        """
        return self.set_many([scan_id], path=path, label=label, reason=reason, region=region,
                             note=note, reference=reference)[0]

    def set_many(
        self,
        scan_ids: Iterable[str],
        *,
        path: str | None = _UNSET,
        label: str | None = _UNSET,
        reason: str | None = _UNSET,
        region: str | None = _UNSET,
        note: str | None = _UNSET,
        reference: bool | None = _UNSET,
        paths: dict[str, str] | None = None,
    ) -> list[LabelRecord]:
        """Apply the same change to several scans in one transaction (see :meth:`set`).

        ``paths`` optionally gives each scan its own path (``{scan_id: path}``).
        """
        changes: dict[str, Any] = {}
        if path is not _UNSET:
            changes["path"] = _relative(path or "", self.root)
        if label is not _UNSET:
            changes["label"] = validate_label(label)
            if reference is _UNSET and changes["label"] == "reference":
                changes["reference"] = True
            elif reference is _UNSET and changes["label"] == "bad":
                changes["reference"] = False
        if reason is not _UNSET:
            changes["reason"] = validate_reason(reason)
        if region is not _UNSET:
            changes["region"] = _clean(region)
        if note is not _UNSET:
            changes["note"] = _clean(note)
        if reference is not _UNSET:
            changes["reference"] = bool(reference)
        ids = [str(s) for s in scan_ids]
        items = []
        for sid in ids:
            ch = dict(changes)
            if paths and sid in paths:
                ch["path"] = _relative(paths[sid] or "", self.root)
            items.append((sid, ch))
        with self._lock:
            return self._write(items)

    def _write(self, items: list[tuple[str, dict[str, Any]]]) -> list[LabelRecord]:
        conn = self._conn
        if conn is None:
            raise ValueError(f"{self.path}: label store is closed")
        now = _now()
        out = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # locked by another program, disk gone, read-only
            raise ValueError(f"{self.path}: the label change was not saved ({exc})") from None
        try:
            for scan_id, changes in items:
                old = self._get(scan_id) or LabelRecord(scan_id=scan_id)
                fields = {
                    "path": old.path, "label": old.label, "reason": old.reason,
                    "region": old.region, "note": old.note, "reference": old.reference,
                }
                fields.update(changes)
                rec = LabelRecord(scan_id=scan_id, updated_at=now, **fields)
                values = (rec.scan_id, rec.path, rec.label, rec.reason, rec.region, rec.note,
                          int(rec.reference))
                conn.execute(
                    "INSERT OR REPLACE INTO labels (scan_id, path, label, reason, region, note,"
                    " reference, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, now),
                )
                conn.execute(
                    "INSERT INTO history (scan_id, path, label, reason, region, note,"
                    " reference, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, now),
                )
                out.append(rec)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):  # keep the first error, not this one
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise ValueError(f"{self.path}: the label change was not saved ({exc})"
                                 ) from None
            raise
        return out

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def _record(row: tuple) -> LabelRecord:
        return LabelRecord(scan_id=row[0], path=row[1] or "", label=row[2], reason=row[3],
                           region=row[4], note=row[5], reference=bool(row[6]),
                           updated_at=row[7])

    def _get(self, scan_id: str) -> LabelRecord | None:
        row = self._conn.execute(
            "SELECT scan_id, path, label, reason, region, note, reference, updated_at"
            " FROM labels WHERE scan_id = ?", (scan_id,)).fetchone()
        return self._record(row) if row else None

    def get(self, scan_id: str) -> LabelRecord | None:
        """Return the labels of ``scan_id``, or ``None`` if it has none."""
        with self._lock:
            return self._get(scan_id)

    def all(self) -> list[LabelRecord]:
        """Return every labelled scan, ordered by path then scan_id."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT scan_id, path, label, reason, region, note, reference, updated_at"
                " FROM labels ORDER BY path, scan_id").fetchall()
        return [self._record(r) for r in rows]

    def as_dict(self) -> dict[str, LabelRecord]:
        """Return ``{scan_id: record}`` for every labelled scan."""
        return {r.scan_id: r for r in self.all()}

    def references(self) -> list[LabelRecord]:
        """Return the scans in the reference set."""
        return [r for r in self.all() if r.reference]

    def history(self, scan_id: str | None = None) -> list[dict[str, Any]]:
        """Return the change history (oldest first), optionally of one scan."""
        sql = ("SELECT scan_id, path, label, reason, region, note, reference, changed_at"
               " FROM history")
        args: tuple = ()
        if scan_id is not None:
            sql += " WHERE scan_id = ?"
            args = (scan_id,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        keys = ("scan_id", "path", "label", "reason", "region", "note", "reference",
                "changed_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- CSV -----------------------------------------------------------------------------

    def export_csv(self, out: str | os.PathLike[str], *, include_identifiers: bool = False,
                   sources: dict[str, str] | None = None) -> int:
        """Write every label to a CSV file; return the number of rows.

        Columns: :data:`EXPORT_COLUMNS` (no patient identifiers). With
        ``include_identifiers`` an ``abs_path`` column (absolute source path, which may
        carry names) is added; it is off by default. ``sources`` (``{scan_id: absolute
        path}``, from discovering the dataset) gives the real paths of scans whose stored
        path has redacted names.
        """
        out = Path(out)
        records = self.all()
        columns = list(EXPORT_COLUMNS) + (["abs_path"] if include_identifiers else [])
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for rec in records:
                row = rec.to_row()
                if include_identifiers:
                    row["abs_path"] = printable((sources or {}).get(rec.scan_id) or (
                        str(self.root / rec.path) if self.root and rec.path else rec.path))
                writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        return len(records)

    def import_csv(
        self,
        csv_path: str | os.PathLike[str],
        entries: Iterable[ScanEntry],
        *,
        root: str | os.PathLike[str] | None = None,
    ) -> ImportResult:
        """Apply labels from a CSV file to the scans in ``entries``, in one transaction.

        The CSV needs a ``scan_id`` or a ``path`` column, and any of ``label``, ``reason``,
        ``region``, ``note``, ``reference``. A ``path`` matches a scan when it equals one
        of the scan's files or its series folder, given relative to the dataset root or
        absolute. Empty cells leave a field unchanged. Every row is validated before
        anything is written.

        Raises:
            ValueError: A missing key column or an invalid value (one line naming the
                file and the line).
        """
        csv_path = Path(csv_path)
        root_path = Path(root).expanduser().resolve() if root else self.root
        index, rels = _path_index(entries, root_path)
        ids = set(rels)
        items: list[tuple[str, dict[str, Any]]] = []
        unmatched: list[str] = []
        fieldnames, rows = read_table(csv_path)
        cols = {c.strip().lower(): c for c in fieldnames}
        if "scan_id" not in cols and "path" not in cols:
            raise ValueError(f"{csv_path}: needs a 'scan_id' or a 'path' column")
        for lineno, row in enumerate(rows, start=2):
            def cell(name: str, row: dict = row) -> str:
                key = cols.get(name)
                return (row.get(key) or "").strip() if key else ""

            sid = cell("scan_id")
            rel = cell("path")
            scan_id = sid if sid in ids else None
            if scan_id is None and rel:
                scan_id = _match_path(rel, index, root_path)
            if scan_id is None:
                unmatched.append(rel or sid)
                continue
            changes: dict[str, Any] = {}
            try:
                if cell("label"):
                    changes["label"] = validate_label(cell("label"))
                    if changes["label"] == "reference":
                        changes["reference"] = True
                    elif changes["label"] == "bad":
                        changes["reference"] = False
                if cell("reason"):
                    changes["reason"] = validate_reason(cell("reason"))
                if cell("reference"):
                    changes["reference"] = _parse_bool(cell("reference"))
            except ValueError as exc:
                raise ValueError(f"{csv_path} line {lineno}: {exc}") from None
            for name in ("region", "note"):
                if cell(name):
                    changes[name] = cell(name)
            changes["path"] = rels.get(scan_id, rel)
            items.append((scan_id, changes))
        with self._lock:
            self._write(items)
        return ImportResult(matched=len(items), unmatched=unmatched)


def read_table(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """``(column names, rows)`` of a CSV file, as spreadsheets write them.

    UTF-8 with or without a byte-order mark, else Windows-1252 (what Excel writes as "CSV"
    on Windows); comma-separated, or semicolon- or tab-separated when the header line
    holds no comma (Excel in locales with a decimal comma writes semicolons).

    Raises:
        ValueError: The file cannot be read (one line naming it).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    header = text.split("\n", 1)[0]
    delimiter = "," if "," in header else max((";", "\t"), key=header.count)
    if delimiter != "," and header.count(delimiter) == 0:
        delimiter = ","
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = list(reader)
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
    return list(reader.fieldnames or []), rows


def entry_relpath(entry: ScanEntry, root: str | os.PathLike[str] | None) -> str:
    """Return the path of ``entry`` relative to ``root``: its file, or its series folder.

    Folder and file names that hold a patient identifier are ``[redacted]``
    (``entry.private_names``; :func:`scanqc.io.privacy.redact_names`).
    """
    root_path = Path(root).resolve() if root else None
    if entry.kind == "series" and len(entry.paths) > 1:
        base = str(Path(entry.paths[0]).parent)
    else:
        base = entry.path
    rel = _relative(os.path.abspath(base) if base else "", root_path)
    return export_text(rel, entry.private_names)


def _path_index(entries: Iterable[ScanEntry], root: Path | None
                ) -> tuple[dict[str, str], dict[str, str]]:
    """Return ``{absolute path: scan_id}`` (files and series folders), ``{scan_id: rel}``."""
    index: dict[str, str] = {}
    rels: dict[str, str] = {}
    for e in entries:
        rels[e.scan_id] = entry_relpath(e, root)
        for p in e.paths:
            ap = Path(p).resolve()
            index[str(ap)] = e.scan_id
            if e.kind == "series":
                index.setdefault(str(ap.parent), e.scan_id)
    return index, rels


def _match_path(text: str, index: dict[str, str], root: Path | None) -> str | None:
    p = Path(file_name_of(text)).expanduser()  # a name exported as printable text
    candidates = [p] if p.is_absolute() else ([root / p] if root else []) + [Path.cwd() / p]
    for c in candidates:
        try:
            key = str(c.resolve())
        except (OSError, ValueError):  # ValueError: a NUL byte in the text
            continue
        if key in index:
            return index[key]
    return None
