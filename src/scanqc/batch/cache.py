"""The resume cache: one SQLite file mapping a scan's inputs to its finished report row.

Key (all must match for a hit):

* ``scan_id`` (stable per dataset root, see :func:`scanqc.io.scan.make_scan_id`);
* the **content key** of its files (:func:`content_key`): for every file, its size, its
  modification time (ns) and the SHA-1 of its first and last MiB. Cheap on large files; a
  file edited in its middle without changing size or mtime would be missed (not a
  realistic case for image files). Copying a dataset changes mtimes, so it re-scores;
* the model name + version (+ weights hash), the reference-set id, and a hash of the
  scoring configuration (:meth:`scanqc.batch.engine.ScoreConfig.cache_hash`).

The value is the row (JSON) and, for the no-reference kNN fallback, the scan's embedding
vector (float32 bytes), which the fallback needs to rescore the whole dataset.
The database uses WAL journaling and commits every ``commit_every`` rows (and on close),
so a killed run loses at most the last uncommitted rows, which are simply scored again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_EDGE = 1024 * 1024


def file_key(path: str | os.PathLike[str]) -> str:
    """Return ``size:mtime_ns:sha1(first MiB + last MiB)`` of one file."""
    st = os.stat(path)
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if st.st_size > _EDGE:
            f.seek(max(_EDGE, st.st_size - _EDGE))
            h.update(f.read(_EDGE))
    return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"


def content_key(paths: Sequence[str]) -> str:
    """Return one SHA-1 over :func:`file_key` of every path (order kept).

    A missing or unreadable file contributes its error text, so the key still exists
    (and changes once the file appears).
    """
    h = hashlib.sha1()
    for p in paths:
        try:
            h.update(file_key(p).encode())
        except OSError as exc:
            h.update(f"missing:{exc.errno}".encode())
        h.update(b"\0")
    return h.hexdigest()


class ResultCache:
    """Finished rows keyed by scan inputs (see the module docstring).

    Args:
        path: SQLite file (created with its folder).
        commit_every: Commit after this many :meth:`put` calls.
    """

    def __init__(self, path: str | Path, commit_every: int = 16) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.commit_every = max(1, int(commit_every))
        self._pending = 0
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS rows ("
                " scan_id TEXT NOT NULL, content TEXT NOT NULL, model TEXT NOT NULL,"
                " refset TEXT NOT NULL, config TEXT NOT NULL, row TEXT NOT NULL, vector BLOB,"
                " PRIMARY KEY (scan_id, content, model, refset, config))"
            )
            self._db.commit()
        except sqlite3.Error as exc:  # unwritable folder, a file that is not a cache ...
            raise ValueError(f"{self.path}: cannot open the resume cache ({exc}); give "
                             "another --cache FILE or --no-cache") from None

    def get(
        self, scan_id: str, content: str, model: str, refset: str, config: str
    ) -> tuple[dict[str, Any], np.ndarray | None] | None:
        """Return ``(row, vector or None)`` or None when not cached."""
        with self._lock:
            cur = self._db.execute(
                "SELECT row, vector FROM rows WHERE scan_id=? AND content=? AND model=? "
                "AND refset=? AND config=?",
                (scan_id, content, model, refset, config),
            )
            hit = cur.fetchone()
        if hit is None:
            return None
        row = json.loads(hit[0])
        vec = np.frombuffer(hit[1], dtype=np.float32).copy() if hit[1] is not None else None
        return row, vec

    def put(
        self,
        scan_id: str,
        content: str,
        model: str,
        refset: str,
        config: str,
        row: dict[str, Any],
        vector: np.ndarray | None = None,
    ) -> None:
        """Store (or replace) a row and optional embedding vector."""
        blob = (
            np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            if vector is not None
            else None
        )
        text = json.dumps(row, default=_json_default)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)",
                (scan_id, content, model, refset, config, text, blob),
            )
            self._pending += 1
            if self._pending >= self.commit_every:
                self._db.commit()
                self._pending = 0

    def commit(self) -> None:
        """Commit pending rows."""
        with self._lock:
            self._db.commit()
            self._pending = 0

    def __len__(self) -> int:
        """Number of cached rows."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def close(self) -> None:
        """Commit and close the database."""
        with self._lock:
            if self._db is not None:
                self._db.commit()
                self._db.close()
                self._db = None  # type: ignore[assignment]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
