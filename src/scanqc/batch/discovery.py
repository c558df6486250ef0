"""Discovery of large folders in worker processes.

:func:`scanqc.io.discover.discover` reads one header per file in one process: about 0.7 ms
per DICOM file here, so an archive of 10,000 DICOM slices takes 7 s before its first scan is
read. :func:`discover_parallel` lists the files in the main process
(:func:`~scanqc.io.discover.list_files`), cuts them into shares of whole folders, and has
worker processes read and group each share (:func:`~scanqc.io.discover.discover_files`):
they send back scan entries, which pickle cheaply (pydicom datasets do not: sending the
headers themselves made discovery slower than in one process). A DICOM series is grouped
within its share; the rare series whose files lie in folders of different shares is
grouped again in the main process from all its files. The result equals ``discover``'s,
in the same order (tested).

Small folders (fewer than :data:`MIN_FILES` files) and single-worker runs are read in the
main process. A worker that dies (or any other failure of the pool) makes the shares be
read again in the main process, so a crash never loses a scan.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from scanqc.io import discover as disc
from scanqc.io.scan import ScanEntry
from scanqc.progress import Cancelled, CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)

#: Fewest files for which discovery is spread over worker processes.
MIN_FILES = 1000
#: Files per share (whole folders: a larger folder is one share of its own).
SHARE = 250

Share = tuple[list[ScanEntry], dict[str, list[str]]]


def discover_parallel(
    paths: Sequence[str | Path],
    root: str | None,
    workers: int,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    mp_context: Any = None,
) -> list[ScanEntry]:
    """Every scan under ``paths``, as :func:`scanqc.io.discover.discover` finds them.

    Args:
        paths: Files and folders.
        root: The folder names are relative to (see ``discover``).
        workers: Worker processes (below 2, or fewer than :data:`MIN_FILES` files: none).
        progress: ``progress(done, total, message)`` after each share of files.
        cancel: Checked between shares; raises :class:`scanqc.progress.Cancelled`.
        mp_context: Multiprocessing context of the workers (default: the engine's).

    Returns:
        The entries, sorted as ``discover`` sorts them.
    """
    items, errors = disc.list_files([str(p) for p in paths], root=root, cancel=cancel)
    shares = folder_shares(items, SHARE)
    results: list[Share] | None = None
    if workers >= 2 and len(items) >= MIN_FILES:
        try:
            results = _in_workers(shares, workers, len(items), progress, cancel, mp_context)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a dead worker too: never lose a scan
            log.warning("discovery in worker processes failed (%s: %s); reading the headers "
                        "in one process", type(exc).__name__, exc)
    if results is None:
        results, done = [], 0
        for share in shares:
            results.append(disc.discover_files(share, cancel))
            done += len(share)
            report(progress, done, len(items), "reading headers")
    report(progress, len(items), len(items), "grouping DICOM series")
    entries = _merge(results, {it.path: it for it in items}, cancel)
    entries += errors
    entries.sort(key=disc.sort_key)
    disc.share_private_names(entries)
    return entries


def folder_shares(items: Sequence[disc.FileItem], size: int) -> list[list[disc.FileItem]]:
    """``items`` cut into shares of about ``size`` files, never splitting a folder.

    The files keep their order; a folder's files are consecutive in a walk, so each share
    is a run of whole folders.
    """
    shares: list[list[disc.FileItem]] = []
    current: list[disc.FileItem] = []
    folder = None
    for it in items:
        d = os.path.dirname(it.path)
        if d != folder and len(current) >= size:
            shares.append(current)
            current = []
        folder = d
        current.append(it)
    if current:
        shares.append(current)
    return shares


def _merge(results: list[Share], item_of: dict[str, disc.FileItem],
           cancel: CancelToken | None) -> list[ScanEntry]:
    """The shares' entries, with series found in several shares grouped again."""
    seen_in: dict[str, int] = {}
    split: set[str] = set()
    for i, (_entries, series) in enumerate(results):
        for uid in series:
            if seen_in.setdefault(uid, i) != i:
                split.add(uid)
    redo: set[str] = {p for _e, series in results for uid in split for p in series.get(uid, [])}
    entries: list[ScanEntry] = []
    for share_entries, _series in results:
        entries += [e for e in share_entries if not redo.intersection(e.paths)]
    if redo:
        log.info("%d DICOM series span folders of several shares; grouping them again",
                 len(split))
        again = [item_of[p] for p in item_of if p in redo]  # in walking order
        entries += disc.discover_files(again, cancel)[0]
    return entries


def _in_workers(
    shares: list[list[disc.FileItem]],
    workers: int,
    n_files: int,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    mp_context: Any,
) -> list[Share]:
    if mp_context is None:
        from scanqc.batch.runners import mp_context as start_method

        mp_context = start_method()
    results: list[Any] = [None] * len(shares)
    n = max(1, min(workers, len(shares), os.cpu_count() or 1))
    pool = ProcessPoolExecutor(max_workers=n, mp_context=mp_context)
    try:
        pending = {pool.submit(disc.discover_files, share): i for i, share in enumerate(shares)}
        done_files = 0
        while pending:
            check(cancel)
            done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                results[i] = fut.result()
                done_files += len(shares[i])
                report(progress, done_files, n_files, "reading headers")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results
