"""The one scoring engine: folders in, report rows out, as a stream.

Used by ``scanqc score``, the napari Batch/Score docks and the Dask runner.

Pipeline (see docs/batch.md):

1. **Discovery** (main process, header only): :func:`scanqc.io.discover.discover`.
2. **Per-scan work** in worker processes (:func:`scanqc.batch.pipeline.prepare_entry`:
   read, checks, quality metrics, model input slices) on a local
   ``ProcessPoolExecutor`` (``workers`` processes; ``workers=0`` runs inline) or on a
   Dask cluster (:mod:`scanqc.batch.dask_runner`). At most ``queue_size`` scans are in
   flight, so memory does not grow with the folder. A scan running longer than
   ``timeout`` seconds, or one whose worker process dies, becomes an error row; the
   pool is restarted and the other scans in flight are retried one at a time.
3. **Embedding** in the main process, batched across scans (torch, ``device``).
4. **Scoring.** With references, they are read and embedded first (optionally
   fine-tuned, ``finetune``), the threshold comes from their spread, and every row is
   final when yielded. **Without references** the kNN fallback needs the whole dataset:
   error/skipped rows stream at once, while scored rows (one ``2D``-float vector per
   scan is kept) are yielded in a second pass at the end.

Settings are :class:`scanqc.batch.config.ScoreConfig`, the per-scan runners live in
:mod:`scanqc.batch.runners` and the encoder in :mod:`scanqc.batch.embedder`.

Rows are dicts with the keys of :data:`scanqc.batch.columns.COLUMNS` plus internal keys
(``_paths``: source files, ``_cached``: True when taken from the resume cache).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.batch.cache import ResultCache, content_key
from scanqc.batch.config import KNN_REFERENCE_ID, ScoreConfig
from scanqc.batch.embedder import Embedder
from scanqc.batch.pipeline import entry_row, error_row, prepare_entry
from scanqc.batch.runners import InlineRunner, Result, largest_first, make_runner
from scanqc.io.scan import ScanEntry, file_name_of
from scanqc.progress import CancelToken, ProgressCallback, check, report

__all__ = ["KNN_REFERENCE_ID", "ReferenceContext", "RowCallback", "ScoreConfig",
           "build_reference_context", "default_root", "entries_rows", "fit_references",
           "resolve_references", "score", "score_all"]

log = logging.getLogger(__name__)

#: ``on_row(row)`` is called for every row, in the order rows are yielded.
RowCallback = Callable[[dict[str, Any]], None]


# ----------------------------------------------------------------------------- inputs
def _common_root(entries: Sequence[ScanEntry]) -> str | None:
    return _common_root_paths([e.path for e in entries if e.path])


def _discover(paths: Sequence[str | Path], root: str | None, progress: ProgressCallback | None,
              cancel: CancelToken | None) -> list[ScanEntry]:
    from scanqc.io.discover import discover

    return list(discover([str(p) for p in paths], root=root, progress=progress, cancel=cancel))


def resolve_references(
    references: Iterable[str | Path],
    entries: Sequence[ScanEntry],
    root: str | None,
) -> list[ScanEntry]:
    """Map reference items (scan ids or paths to files/series folders) to entries.

    Raises:
        ValueError: An item matches nothing (one line naming it).
    """
    by_id = {e.scan_id: e for e in entries}
    by_path: dict[str, ScanEntry] = {}
    for e in entries:
        for p in e.paths:
            by_path[os.path.abspath(p)] = e
    out: list[ScanEntry] = []
    for item in references:
        text = str(item).strip()
        if not text:
            continue
        if text in by_id:
            out.append(by_id[text])
            continue
        cand = []
        for name in dict.fromkeys((text, file_name_of(text))):  # a path copied from a report
            cand += [name] if os.path.isabs(name) or not root else [name, os.path.join(root, name)]
        found = None
        for c in cand:
            ap = os.path.abspath(c)
            if ap in by_path:
                found = [by_path[ap]]
                break
            if os.path.isdir(ap):  # a series folder: every entry below it
                inside = [e for e in entries if os.path.abspath(e.path).startswith(ap + os.sep)]
                found = inside or _discover([ap], root, None, None)
                break
            if os.path.exists(ap):
                found = _discover([ap], root, None, None)
                break
        if not found:
            raise ValueError(f"reference {text!r}: no such scan id or file")
        out.extend(found)
    seen: set[str] = set()
    return [e for e in out if not (e.scan_id in seen or seen.add(e.scan_id))]


# ----------------------------------------------------------------------------- engine
class _Run:
    """State of one :func:`score` call."""

    def __init__(self, config: ScoreConfig, progress: ProgressCallback | None,
                 cancel: CancelToken | None, on_row: RowCallback | None,
                 cache: ResultCache | None, runner_fn: Callable = prepare_entry) -> None:
        self.config, self.progress, self.cancel, self.on_row = config, progress, cancel, on_row
        self.cache = cache
        self.runner_fn = runner_fn
        self.runner: Any = None
        self._embedder: Embedder | None = None
        self.refset: Any = None
        self.refset_id = KNN_REFERENCE_ID
        self._ref_results: dict[str, tuple[ScanEntry, dict[str, Any]]] = {}
        self._ref_profiles: list[Any] = []  # AcquisitionProfile of each reference
        self._ref_regions: list[tuple[str, float]] = []  # predicted (region, confidence)
        self._held: list[tuple[dict[str, Any], np.ndarray, list, str | None]] = []
        from scanqc.scoring.duplicates import DuplicateIndex

        self._dup_index = DuplicateIndex()
        self.done = 0
        self.total = 0
        self.root: str | None = None

    # -- helpers ------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.config)
        return self._embedder

    def _duplicates(self, row: dict[str, Any]) -> None:
        """Add exact/near duplicate warnings against the rows emitted before this one."""
        from scanqc.scoring.duplicates import from_text

        fp = from_text(row.get("fingerprint")) if row.get("status") == "ok" else None
        if fp is None:
            return
        found = self._dup_index.add(str(row.get("path") or row.get("name") or ""), fp,
                                    key=str(row.get("scan_id") or "") or None)
        if found:
            _rewrite_warnings(row, found)

    def _emit(self, row: dict[str, Any], count: bool = True) -> dict[str, Any]:
        self._duplicates(row)
        if count:
            self.done += 1
            report(self.progress, self.done, self.total, row.get("name") or "")
        if self.on_row is not None:
            self.on_row(row)
        return row

    def _cache_key(self) -> tuple[str, str, str]:
        return self.embedder.model_id, self.refset_id, self.config.cache_hash()

    def _cache_put(self, row: dict[str, Any], content: str | None,
                   vector: np.ndarray | None = None) -> None:
        if self.cache is None or not content:
            return
        public = {k: v for k, v in row.items() if not k.startswith("_")}
        self.cache.put(row["scan_id"], content, *self._cache_key(), public, vector)

    def _commit(self) -> None:
        """Commit the cache before rows are yielded.

        A row the caller wrote before a kill is then always found by ``--resume``, so
        no scan is read twice.
        """
        if self.cache is not None:
            self.cache.commit()

    def _cache_get(self, entry: ScanEntry) -> tuple[dict[str, Any], np.ndarray | None] | None:
        if self.cache is None or not self.config.resume:
            return None
        hit = self.cache.get(entry.scan_id, content_key(entry.paths), *self._cache_key())
        if hit is None:
            return None
        row, vec = hit
        row.update(_paths=tuple(entry.paths), _cached=True)
        return row, vec

    def _runner(self, content: bool) -> Any:
        if self.runner is None:
            opts = self.config.prep_options(self.root, content)
            self.runner = make_runner(self.config, opts, self.runner_fn)
        return self.runner

    def _stamp(self, row: dict[str, Any]) -> dict[str, Any]:
        row["model"] = self.embedder.name
        row["model_version"] = self.embedder.version
        row["reference_set_id"] = self.refset_id
        return row

    # -- references -----------------------------------------------------------------
    def _run_all(self, entries: Sequence[ScanEntry]) -> list[tuple[ScanEntry, Result]]:
        runner = self._runner(self.cache is not None)
        queue, out = deque(entries), []
        while queue or runner.busy():
            check(self.cancel)
            while queue and runner.accepting():
                runner.submit(queue.popleft())
            out.extend(runner.poll(0.2))
        return out

    def read_references(self, references: Sequence[str | Path], entries: Sequence[ScanEntry],
                        ) -> list[tuple[ScanEntry, dict[str, Any]]]:
        """Read and prepare the reference scans, sorted by scan id.

        Raises:
            ValueError: An unknown reference, or fewer than 2 readable references.
        """
        ref_entries = resolve_references(references, entries, self.root)
        report(self.progress, 0, len(ref_entries), "reading references")
        results = self._run_all([e for e in ref_entries if e.status == "ok"])
        good, problems = [], [f"{e.path}: {e.error or e.status}" for e in ref_entries
                              if e.status != "ok"]
        for entry, res in results:
            if isinstance(res, str) or res["slices"] is None:
                problems.append(res if isinstance(res, str) else res["row"]["error"])
            else:
                good.append((entry, res))
        if len(good) < 2:
            detail = f" ({'; '.join(problems[:3])})" if problems else ""
            raise ValueError(
                f"a reference set needs at least 2 readable scans, got {len(good)}{detail}")
        if problems:
            log.warning("%d reference scans could not be read: %s", len(problems),
                        "; ".join(problems[:5]))
        good.sort(key=lambda t: t[0].scan_id)  # same set whatever the arrival order
        return good

    def build_references(self, references: Sequence[str | Path], entries: Sequence[ScanEntry],
                         ) -> None:
        from scanqc.models.encoder import pool_slices
        from scanqc.scoring.reference import ReferenceSet, few_references_note

        good = self.read_references(references, entries)
        note = few_references_note(len(good))
        if note:
            log.warning(note)
        if self.config.finetune and self.embedder.reference_model is None:
            self._finetune([res for _e, res in good])
        from scanqc.scoring.acquisition import AcquisitionProfile

        self._ref_profiles = [AcquisitionProfile.from_dict(res["row"].get("acquisition"))
                              for _e, res in good]
        vectors, slice_vecs, ids, contents = [], [], [], []
        self._ref_regions = []
        for entry, res in good:
            base, sv = self.embedder.embed_both(res["slices"])
            pred = self._predict_region(res, base)
            if pred is not None:
                self._ref_regions.append((pred.region, pred.confidence))
            vectors.append(pool_slices(sv))
            slice_vecs.append(sv)
            ids.append(entry.scan_id)
            contents.append(res.get("content") or "")
            self._ref_results[entry.scan_id] = (entry, res)
        self.refset = ReferenceSet.from_embeddings(
            ids, np.stack(vectors), slice_embeddings=slice_vecs,
            model={"name": self.embedder.name, "version": self.embedder.version},
            statistic=self.config.statistic, threshold=self.config.threshold,
            quality=[res.get("metrics") for _e, res in good])
        h = hashlib.sha1(json.dumps([ids, contents, self.embedder.model_id]).encode())
        self.refset_id = h.hexdigest()[:12]

    def _finetune(self, results: list[dict[str, Any]]) -> None:
        from scanqc.models.siamese import fit_reference_model

        report(self.progress, 0, 0, "fine-tuning on the references")
        rm = fit_reference_model(
            [r["slices"] for r in results], encoder=self.embedder.model,
            epochs=int(self.config.finetune_epochs), device=self.embedder.device,
            progress=self.progress, cancel=self.cancel)
        self.embedder.use_reference_model(rm)

    # -- scoring --------------------------------------------------------------------
    def score_batch(self, items: list[tuple[ScanEntry, dict[str, Any]]]) -> list[dict]:
        """Embed a batch of prepared scans (one forward pass set) and score them."""
        from scanqc.models.encoder import pool_slices

        counts = [len(res["slices"]) for _e, res in items]
        try:
            base, emb = self.embedder.embed_both(
                np.concatenate([res["slices"] for _e, res in items]))
        except Exception as exc:  # noqa: BLE001 - fall back to one scan at a time
            if len(items) > 1:
                return [r for it in items for r in self.score_batch([it])]
            entry, res = items[0]
            row = error_row(entry, self.root, f"embedding failed: {type(exc).__name__}: {exc}")
            return [self._stamp(row)]
        out = []
        splits = np.split(emb, np.cumsum(counts)[:-1])
        vectors = np.stack([pool_slices(s) for s in splits])
        regions = self._regions(items, np.split(base, np.cumsum(counts)[:-1]))
        if self.refset is not None:
            for _entry, res in items:
                self._unlike_references(res, regions.setdefault(id(res), {}))
            from scanqc.scoring.reference import score_against_references, slice_scores

            scores = score_against_references(
                vectors, self.refset, statistic=self.config.statistic,
                threshold=self.config.threshold, warnings=[res["warnings"] for _e, res in items],
                quality=[res.get("metrics") for _e, res in items])
            for (_entry, res), sc, sv in zip(items, scores, splits, strict=True):
                row = self._stamp(dict(res["row"]))
                row.update(regions.get(id(res), {}))
                row.update(bad_score=sc.bad_score, flagged=sc.flagged,
                           mean_distance=sc.mean_distance, min_distance=sc.min_distance,
                           threshold=sc.threshold)
                if len(sv) > 1 and self.refset.slice_embeddings:
                    ss = slice_scores(sv, self.refset, res["slice_index"])
                    row["worst_slices"] = ";".join(str(i) for i in ss.worst(3))
                self._cache_put(row, res.get("content"))
                out.append(row)
        else:
            for (_entry, res), vec in zip(items, vectors, strict=True):
                row = self._stamp(dict(res["row"]))
                row.update(regions.get(id(res), {}))
                self._held.append((row, vec, _severity_only(res["warnings"]),
                                   res.get("content")))
                self._cache_put(row, res.get("content"), vec)
        return out

    def _unlike_references(self, res: dict[str, Any], cols: dict[str, Any]) -> None:
        """Add what makes this scan unlike every reference (acquisition, region), once.

        ``cols`` are the scan's region columns; the warnings columns are written there, so
        they reach the row with them.
        """
        from scanqc.scoring.acquisition import AcquisitionProfile, unlike_references
        from scanqc.scoring.region import region_unlike_references

        if res.get("_compared"):
            return
        res["_compared"] = True
        found = [*unlike_references(AcquisitionProfile.from_dict(res["row"].get("acquisition")),
                                    self._ref_profiles),
                 *region_unlike_references(cols.get("region"), cols.get("region_confidence"),
                                           self._ref_regions)]
        had = {w.code for w in res["warnings"]}  # e.g. the worker's short_coverage
        _add_warnings(res, cols, [w for w in found if w.code not in had])

    def _predict_region(self, res: dict[str, Any], base: np.ndarray) -> Any:
        """The region prediction of a prepared scan (None without a probe or on failure)."""
        from scanqc.scoring.region import region_from_embeddings

        probe = self.embedder.region_probe
        if probe is None:
            return None
        try:
            return region_from_embeddings(
                base, probe, res["slice_index"], n_slices=res.get("n_slices"),
                is_volume=res.get("is_volume"), header=res.get("region_header"))
        except Exception as exc:  # noqa: BLE001 - region is informative, never fatal
            log.info("region failed: %s", exc)
            return None

    def _regions(self, items: list[tuple[ScanEntry, dict[str, Any]]],
                 base: list[np.ndarray]) -> dict[int, dict[str, Any]]:
        """Region columns per prepared scan, keyed by ``id(res)``.

        A region warning is added to ``res["warnings"]`` so that it reaches the warnings
        columns and the scores.
        """
        out: dict[int, dict[str, Any]] = {}
        if self.embedder.region_probe is None:
            return out
        for (_entry, res), b in zip(items, base, strict=True):
            pred = self._predict_region(res, b)
            if pred is None:
                continue
            cols = pred.columns()
            cols.pop("region_coverage", None)
            _add_warnings(res, cols, pred.warnings)
            out[id(res)] = cols
        return out

    def _unlike_dataset(self, held: list[tuple[dict[str, Any], Any, list, Any]]) -> None:
        """Name the scans unlike the dataset's typical scans (runs without references).

        Recomputed over every held row, cached ones included: a resumed run replaces the
        ``*_unlike_dataset`` warnings its cache holds.
        """
        from scanqc.scoring.acquisition import (
            AcquisitionProfile,
            typical_profiles,
            unlike_dataset,
        )
        from scanqc.scoring.region import region_unlike_dataset, typical_region

        profiles = [AcquisitionProfile.from_dict(row.get("acquisition")) for row, *_ in held]
        typical = typical_profiles(profiles)
        region = typical_region([(row.get("region"), row.get("region_confidence"))
                                 for row, *_ in held])
        for (row, *_rest), profile in zip(held, profiles, strict=True):
            found = unlike_dataset(profile, typical) if typical else []
            found += region_unlike_dataset(row.get("region"), row.get("region_confidence"),
                                           region)
            if found or "_unlike_dataset" in (row.get("warnings") or ""):
                _rewrite_warnings(row, found, drop="_unlike_dataset")

    def fallback_rows(self) -> list[dict[str, Any]]:
        """Second pass of the no-reference mode: kNN outlier scores for held rows."""
        from scanqc.scoring.outlier import knn_outlier_scores
        from scanqc.scoring.reference import combine_with_warnings

        held, self._held = self._held, []
        self._unlike_dataset(held)
        if len(held) < 2:  # nothing to compare with: flagged only by a counting warning
            for row, _vec, warns, _content in held:
                bad, forced = combine_with_warnings(0.0, warns)
                row.update(flagged=forced, bad_score=bad if forced else None)
            return [row for row, *_ in held]
        scores = knn_outlier_scores(np.stack([h[1] for h in held]), k=self.config.knn_k)
        out = []
        for (row, vec, warns, content), sc in zip(held, scores, strict=True):
            thr = self.config.threshold
            flagged = sc.flagged if thr is None else sc.knn_distance > float(thr)
            bad, forced = combine_with_warnings(sc.bad_score, warns)
            row.update(bad_score=bad, flagged=bool(flagged or forced),
                       mean_distance=sc.knn_distance,
                       threshold=sc.threshold if thr is None else float(thr))
            self._cache_put(row, content, vec)
            out.append(row)
        return out

    # -- the stream -------------------------------------------------------------------
    def execute(self, inputs: Any, references: Sequence[str | Path] | None,
                ) -> Iterator[dict[str, Any]]:
        _ = self.embedder  # load the model first: a missing model fails before any reading
        items = list(inputs) if not isinstance(inputs, (str, Path)) else [inputs]
        if items and all(isinstance(i, ScanEntry) for i in items):
            from scanqc.io.discover import share_private_names

            entries = list(items)
            share_private_names(entries)  # handed in by a caller, maybe in parts (the docks)
            self.root = self.config.root or _common_root(entries)
        else:
            self.root = self.config.root or _common_root_paths(items)
            from scanqc.batch.discovery import discover_parallel

            # large folders: headers read in worker processes (the same entries)
            entries = discover_parallel(items, self.root, self.config.workers, self.progress,
                                        self.cancel)
        if self.config.include_identifiers:  # rows keep the names as they are
            entries = [replace(e, private_names={}) if e.private_names else e for e in entries]
        self.total, self.done = len(entries), 0
        report(self.progress, 0, self.total, "scoring")
        use_cache = self.cache is not None
        if references:
            self.build_references(references, entries)
            report(self.progress, 0, self.total, "scoring")  # the phase after the references
        runner = self._runner(use_cache)
        queue = deque(entries if isinstance(runner, InlineRunner) else largest_first(entries))
        batch: list[tuple[ScanEntry, dict[str, Any]]] = []
        n_slices, oldest = 0, 0.0
        while queue or runner.busy() or batch:
            check(self.cancel)
            while queue and runner.accepting():
                entry = queue.popleft()
                if entry.status != "ok":
                    yield self._emit(error_row(entry, self.root, entry.error or entry.status,
                                               status=entry.status))
                    continue
                hit = self._cache_get(entry)
                if hit is not None:
                    row, vec = hit
                    if self.refset is None and vec is not None and row.get("status") == "ok":
                        self._held.append((row, vec, _warnings_of(row), None))
                        self.done += 1
                        report(self.progress, self.done, self.total, row.get("name") or "")
                    else:
                        yield self._emit(row)
                    continue
                if entry.scan_id in self._ref_results:
                    batch.append(self._ref_results.pop(entry.scan_id))
                    n_slices += len(batch[-1][1]["slices"])
                    oldest = oldest or time.monotonic()
                    continue
                runner.submit(entry)
            for entry, res in runner.poll(0.1 if not batch else 0.02):
                if isinstance(res, str):
                    yield self._emit(self._stamp(error_row(entry, self.root, res)))
                elif res["slices"] is None:
                    row = self._stamp(res["row"])
                    self._cache_put(row, res.get("content"))
                    self._commit()
                    yield self._emit(row)
                else:
                    batch.append((entry, res))
                    n_slices += len(res["slices"])
                    oldest = oldest or time.monotonic()
            if batch and (
                n_slices >= self.config.embed_batch
                or not (queue or runner.busy())
                or time.monotonic() - oldest > self.config.flush_seconds
            ):
                todo, batch, n_slices, oldest = batch, [], 0, 0.0
                rows = self.score_batch(todo)
                self._commit()  # a row reaches the report only once it is in the cache
                if self.refset is None:
                    self.done += len(todo)
                    report(self.progress, self.done, self.total, "embedded")
                for row in rows:
                    yield self._emit(row)
        if self.refset is None:
            report(self.progress, self.done, self.total, "kNN outlier scores")
            rows = self.fallback_rows()
            self._commit()
            for row in rows:
                yield self._emit(row, count=False)
        if self.cache is not None:
            self.cache.commit()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        if self._embedder is not None:
            self._embedder.release()
        if self.cache is not None:
            with contextlib.suppress(Exception):
                self.cache.commit()


def _add_warnings(res: dict[str, Any], cols: dict[str, Any], found: Sequence[Any]) -> None:
    """Add warnings found in the main process to a prepared scan and its row columns."""
    if not found:
        return
    from scanqc.batch.pipeline import warnings_columns

    res["warnings"] = [*res["warnings"], *found]
    cols["warnings"], cols["warnings_detail"], cols["max_severity"] = \
        warnings_columns(res["warnings"])


def _rewrite_warnings(row: dict[str, Any], add: Sequence[Any], drop: str | None = None,
                      ) -> None:
    """Rewrite a finished row's warnings columns: codes ending in ``drop`` out, ``add`` in."""
    from scanqc.batch.pipeline import warnings_columns
    from scanqc.scoring.checks import row_warnings

    had = row_warnings(row, default="info")
    kept = [w for w in had if not (drop and w.code.endswith(drop))]
    row["warnings"], row["warnings_detail"], row["max_severity"] = \
        warnings_columns([*kept, *add])


def _severity_only(warnings: Sequence[Any]) -> list:
    """The one warning that decides :func:`combine_with_warnings`: the most severe."""
    from scanqc.io.scan import SEVERITIES, ScanWarning

    sevs = [w.severity for w in warnings if w.severity in SEVERITIES]
    if not sevs:
        return []
    return [ScanWarning(code="max", message="", severity=max(sevs, key=SEVERITIES.index))]


def _warnings_of(row: dict[str, Any]) -> list:
    """Rebuild severity-only warnings from a cached row (for the kNN combination)."""
    from scanqc.io.scan import ScanWarning

    sev = row.get("max_severity") or ""
    return [ScanWarning(code="cached", message="", severity=sev)] if sev else []


def default_root(paths: Sequence[str | Path]) -> str | None:
    """The root report paths are relative to: the folder given, or the common folder."""
    return _common_root_paths(list(paths))


def _common_root_paths(items: Sequence[Any]) -> str | None:
    paths = [os.path.abspath(str(p)) for p in items]
    if not paths:
        return None
    if len(paths) == 1:
        return paths[0] if os.path.isdir(paths[0]) else os.path.dirname(paths[0])
    try:
        common = os.path.commonpath(paths)
    except ValueError:
        return None
    return common if os.path.isdir(common) else os.path.dirname(common)


def score(
    paths_or_entries: Iterable[str | Path | ScanEntry] | str | Path,
    *,
    references: Sequence[str | Path] | None = None,
    config: ScoreConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_row: RowCallback | None = None,
    cache: ResultCache | None = None,
    prepare: Callable[[ScanEntry, dict[str, Any]], dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Score scans and yield one report row per scan as it finishes.

    Args:
        paths_or_entries: Files/folders to discover, or already discovered entries.
        references: Known-good scans (paths or scan ids); None: the kNN fallback.
        config: Settings (:class:`ScoreConfig`).
        progress: ``progress(done, total, message)``.
        cancel: Stops the run at the next scan (raises :class:`scanqc.progress.Cancelled`).
        on_row: Called with every row as it is yielded.
        cache: Resume cache: rows are stored in it; with ``config.resume`` scans found in
            it are not read again and their cached rows are yielded (``_cached=True``).
        prepare: The per-scan worker function (default
            :func:`scanqc.batch.pipeline.prepare_entry`; a module-level function so that
            it pickles). For tests and extensions.

    Yields:
        Row dicts (see :mod:`scanqc.batch.columns`). Every discovered scan gets exactly
        one row: ``ok``, ``error`` (one-line cause) or ``skipped`` (reason).

    Raises:
        ValueError: Unusable references (fewer than 2 readable, unknown id), or the model
            cannot be loaded (before any scan is read).
        scanqc.progress.Cancelled: ``cancel`` was set.
    """
    run = _Run(config or ScoreConfig(), progress, cancel, on_row, cache,
               prepare or prepare_entry)
    try:
        yield from run.execute(paths_or_entries, references)
    finally:
        run.close()


class ReferenceContext:
    """A reference set built once, reused to score single scans (the Score dock).

    Build it with :func:`build_reference_context`; it runs inline (no process pool), so
    keeping it holds only the model and the reference embeddings. Call :meth:`close`
    when done.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def refset(self) -> Any:
        """The :class:`scanqc.scoring.reference.ReferenceSet`."""
        return self._run.refset

    @property
    def reference_set_id(self) -> str:
        """The ``reference_set_id`` column of the rows it scores."""
        return self._run.refset_id

    def embed(self, slices: np.ndarray) -> np.ndarray:
        """Unit slice embeddings ``(N, D)`` of ``slices`` (through the fitted head, if any)."""
        return self._run.embedder.embed(slices)

    def score_entries(self, entries: Sequence[ScanEntry], *,
                      progress: ProgressCallback | None = None,
                      cancel: CancelToken | None = None) -> list[dict[str, Any]]:
        """Score ``entries`` against the reference set: one row each (as :func:`score`)."""
        self._run.progress, self._run.cancel = progress, cancel
        return list(self._run.execute(list(entries), None))

    def slice_scores(self, slices: np.ndarray, slice_index: Sequence[int]) -> Any:
        """Per-slice scores (:class:`scanqc.scoring.reference.SliceScores`) of one scan.

        Returns:
            None when the scan has a single slice or the set has no slice embeddings.
        """
        from scanqc.scoring.reference import slice_scores

        if len(slices) < 2 or not self.refset.slice_embeddings:
            return None
        return slice_scores(self.embed(slices), self.refset, np.asarray(slice_index))

    def close(self) -> None:
        """Release the run (and its cache handle, if any)."""
        self._run.close()


def _inline_run(config: ScoreConfig, pool: Sequence[ScanEntry],
                progress: ProgressCallback | None, cancel: CancelToken | None,
                prepare: Callable | None = None) -> _Run:
    import dataclasses

    run = _Run(dataclasses.replace(config, workers=0, scheduler=None), progress, cancel,
               None, None, prepare or prepare_entry)
    run.root = config.root or _common_root(pool)
    return run


def build_reference_context(
    references: Sequence[str | Path],
    pool: Sequence[ScanEntry],
    config: ScoreConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ReferenceContext:
    """Read and embed the references once (fine-tuned as ``config`` says).

    Args:
        references: Scan ids or paths (as for :func:`score`).
        pool: Discovered entries the references are looked up in.
        config: Settings; ``workers``/``scheduler`` are ignored (inline).
        progress: ``progress(done, total, message)``.
        cancel: Cancel token.

    Raises:
        ValueError: Unknown references or fewer than 2 readable ones.
    """
    run = _inline_run(config or ScoreConfig(), pool, progress, cancel)
    try:
        run.build_references(references, pool)
    except BaseException:
        run.close()
        raise
    return ReferenceContext(run)


def fit_references(
    references: Sequence[str | Path],
    pool: Sequence[ScanEntry],
    config: ScoreConfig | None = None,
    *,
    epochs: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Any:
    """Fine-tune the reference head (FewSOME) on the references; keep the result.

    Pass the returned :class:`scanqc.models.siamese.ReferenceModel` as
    ``ScoreConfig.reference_model`` to score with the fine-tuned model.

    Args:
        references: Scan ids or paths.
        pool: Entries the references are looked up in.
        config: Settings (encoder, device, slice options).
        epochs: Optimiser steps (default ``config.finetune_epochs``).
        progress: ``progress(done, total, message)``.
        cancel: Cancel token.

    Raises:
        ValueError: Unknown references or fewer than 2 readable ones.
    """
    import dataclasses

    from scanqc.models.siamese import fit_reference_model

    cfg = dataclasses.replace(config or ScoreConfig(), reference_model=None)
    run = _inline_run(cfg, pool, progress, cancel)
    try:
        good = run.read_references(references, pool)
        return fit_reference_model(
            [res["slices"] for _e, res in good], encoder=run.embedder.model,
            epochs=int(epochs if epochs is not None else cfg.finetune_epochs),
            device=run.embedder.device, progress=progress, cancel=cancel)
    finally:
        run.close()


def score_all(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`score` collected into a list."""
    return list(score(*args, **kwargs))


def entries_rows(entries: Sequence[ScanEntry], root: str | None = None) -> list[dict[str, Any]]:
    """Descriptive rows for entries without scoring (e.g. to fill a table early)."""
    return [entry_row(e, root) for e in entries]
