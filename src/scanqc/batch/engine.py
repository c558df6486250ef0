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

Rows are dicts with the keys of :data:`scanqc.batch.columns.COLUMNS` plus internal keys
(``_paths``: source files, ``_cached``: True when taken from the resume cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.batch.cache import ResultCache, content_key
from scanqc.batch.pipeline import entry_row, error_row, prepare_entry, worker_init
from scanqc.io.scan import ScanEntry
from scanqc.progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)

#: ``on_row(row)`` is called for every row, in the order rows are yielded.
RowCallback = Callable[[dict[str, Any]], None]

#: Key of the kNN fallback in the ``reference_set_id`` column.
KNN_REFERENCE_ID = "knn"


@dataclass
class ScoreConfig:
    """Settings of one scoring run.

    Attributes:
        workers: Worker processes for reading/checks/preprocessing (0: inline, no pool).
        scheduler: None (local processes), ``"local"`` (a Dask LocalCluster with
            ``workers`` processes) or the address of a Dask scheduler.
        device: Torch device for embedding: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        root: Dataset root; report paths are relative to it (default: the common folder
            of the inputs).
        size: Model input side in pixels.
        max_slices: Slices per volume, evenly sub-sampled (None or 0: all).
        embed_batch: Slices gathered across scans before they are embedded together.
        forward_batch: Slices per forward pass on the CPU (``embed_batch`` on a GPU): 32
            keeps the activations in the CPU caches (0.44 instead of 0.54 ms per 128 px
            slice with 128, same embeddings to 1e-7).
        statistic: ``"mean"`` or ``"min"`` distance to the references.
        threshold: User threshold (default: from the references' spread; kNN: IQR rule).
        finetune: Fit the Siamese/FewSOME head on the references before scoring
            (:func:`scanqc.models.siamese.fit_reference_model`).
        finetune_epochs: Its optimiser steps.
        reference_model: An already fitted :class:`scanqc.models.siamese.ReferenceModel`
            (e.g. from :func:`fit_references`); slices are embedded through its head
            (and ``finetune`` is not repeated).
        model_name: Bundled encoder name (:func:`scanqc.models.encoder.load_encoder`).
        encoder: An already built encoder module (tests, custom models); overrides
            ``model_name``.
        model_version: Version reported for ``encoder`` (default: a hash of its weights).
        timeout: Seconds one scan may take in a worker.
        max_bytes: Per-scan memory ceiling (default ``SCANQC_MAX_SCAN_BYTES``).
        checks: Run the QC checks and quality metrics.
        queue_size: Scans in flight (default ``4 * workers + 2``).
        knn_k: Neighbours of the kNN fallback.
        resume: Reuse rows from ``cache`` (scans already scored are not read again).
        torch_threads: ``torch.set_num_threads`` in the main process. None: automatic,
            i.e. with local worker processes on the CPU, the cores the workers leave
            (``max(1, cpus - workers)``) for the duration of the run (the previous value
            is restored when the run ends), so that the embedder and the readers do not
            oversubscribe the cores; otherwise torch's default.
        flush_seconds: Embed a partial batch when its oldest scan waited this long.
        optimize: On CPU, run the encoder as a frozen TorchScript graph with batch norm
            folded into the convolutions (about 3x faster, same embeddings to 1e-6);
            falls back to eager mode when the model cannot be traced.
        asymmetry: Fill ``asymmetry_score`` with the left-right asymmetry score of
            :func:`scanqc.scoring.asymmetry.asymmetry_map` (in the workers; about 5-7 s
            per head volume, so off by default).
    """

    workers: int = 2
    scheduler: str | None = None
    device: str = "auto"
    root: str | None = None
    size: int = 128
    max_slices: int | None = 32
    embed_batch: int = 128
    forward_batch: int = 32
    statistic: str = "mean"
    threshold: float | None = None
    finetune: bool = False
    finetune_epochs: int = 60
    reference_model: Any = field(default=None, repr=False, compare=False)
    model_name: str = "encoder"
    encoder: Any = field(default=None, repr=False, compare=False)
    model_version: str = ""
    timeout: float = 600.0
    max_bytes: int | None = None
    checks: bool = True
    queue_size: int | None = None
    knn_k: int = 10
    resume: bool = False
    torch_threads: int | None = None
    flush_seconds: float = 2.0
    optimize: bool = True
    asymmetry: bool = False

    def prep_options(self, root: str | None, content: bool) -> dict[str, Any]:
        """Options passed to :func:`scanqc.batch.pipeline.prepare_entry`."""
        return {
            "root": root,
            "size": int(self.size),
            "max_slices": int(self.max_slices) if self.max_slices else None,
            "max_bytes": self.max_bytes,
            "checks": bool(self.checks),
            "asymmetry": bool(self.asymmetry),
            "content_key": bool(content),
        }

    def cache_hash(self) -> str:
        """Hash of every setting that changes a row (for the resume cache key)."""
        keys = ("size", "max_slices", "statistic", "threshold", "finetune", "finetune_epochs",
                "checks", "knn_k", "asymmetry")
        d = asdict(self) if self.encoder is None else {k: getattr(self, k) for k in keys}
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def in_flight(self) -> int:
        """Maximum scans in flight in the workers."""
        return int(self.queue_size or 4 * max(1, self.workers) + 2)


# ----------------------------------------------------------------------------- runners
Result = dict[str, Any] | str  # a prepare_entry result, or a one-line failure


class InlineRunner:
    """Run the per-scan work in the calling process (``workers=0``)."""

    def __init__(self, options: dict[str, Any], fn: Callable = prepare_entry) -> None:
        self.options, self.fn = options, fn
        self._ready: list[tuple[ScanEntry, Result]] = []

    def accepting(self) -> bool:
        """True when another scan may be submitted."""
        return not self._ready

    def busy(self) -> bool:
        """True while results are pending."""
        return bool(self._ready)

    def submit(self, entry: ScanEntry) -> None:
        """Run ``entry`` now."""
        try:
            self._ready.append((entry, self.fn(entry, self.options)))
        except Exception as exc:  # noqa: BLE001
            self._ready.append((entry, f"{type(exc).__name__}: {exc}"))

    def poll(self, timeout: float = 0.0) -> list[tuple[ScanEntry, Result]]:
        """Return finished results."""
        out, self._ready = self._ready, []
        return out

    def close(self) -> None:
        """Nothing to release."""


def _mp_context() -> Any:
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # workers start from a server that has already imported the heavy modules (the
        # checks: scipy.ndimage and the scoring modules, 0.3 s per worker otherwise)
        ctx.set_forkserver_preload(["scanqc.batch.pipeline", "scanqc.models.preprocess",
                                    "scanqc.io.load", "torch", "scanqc.scoring.checks",
                                    "scanqc.scoring.region", "scanqc.scoring.artifacts"])
        return ctx
    return mp.get_context("spawn")


class LocalRunner:
    """A ``ProcessPoolExecutor`` that survives crashed workers and hung scans.

    Args:
        workers: Processes.
        options: Passed to ``fn``.
        timeout: Seconds a scan may run (counted from when it is handed to a process).
        max_in_flight: Scans submitted and not yet collected.
        fn: The per-scan function (picklable, module level).
    """

    CRASH = "worker process died while reading this scan (crash or out of memory)"

    def __init__(
        self,
        workers: int,
        options: dict[str, Any],
        timeout: float,
        max_in_flight: int,
        fn: Callable = prepare_entry,
    ) -> None:
        self.workers = max(1, int(workers))
        self.options, self.timeout, self.fn = options, float(timeout), fn
        self.max_in_flight = max(1, int(max_in_flight))
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Any, list[Any]] = {}  # future -> [entry, started]
        self._suspects: deque[ScanEntry] = deque()
        self._ready: list[tuple[ScanEntry, Result]] = []
        self.restarts = 0
        self.succeeded = 0

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=_mp_context(), initializer=worker_init
            )
        return self._pool

    def accepting(self) -> bool:
        """True when another scan may be submitted."""
        return not self._suspects and len(self._futures) < self.max_in_flight

    def busy(self) -> bool:
        """True while scans are in flight or results wait to be collected."""
        return bool(self._futures or self._suspects or self._ready)

    def submit(self, entry: ScanEntry) -> None:
        """Queue ``entry`` in the pool."""
        fut = self._executor().submit(self.fn, entry, self.options)
        self._futures[fut] = [entry, None]

    def _restart(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for p in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    p.kill()
            pool.shutdown(wait=True, cancel_futures=True)
        self.restarts += 1

    def poll(self, timeout: float = 0.2) -> list[tuple[ScanEntry, Result]]:
        """Wait up to ``timeout`` s; return finished ``(entry, result)`` pairs."""
        if not self._futures and self._suspects:
            self.submit(self._suspects.popleft())  # isolation: one suspect at a time
        if self._futures:
            done, _ = wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
            broken: list[ScanEntry] = []
            for fut in done:
                entry, _started = self._futures.pop(fut)
                try:
                    self._ready.append((entry, fut.result()))
                    self.succeeded += 1
                except BrokenProcessPool:
                    broken.append(entry)
                except Exception as exc:  # noqa: BLE001
                    self._ready.append((entry, f"worker failed: {type(exc).__name__}: {exc}"))
            if broken:
                self._on_crash(broken)
            else:
                self._check_timeouts()
        out, self._ready = self._ready, []
        return out

    def _on_crash(self, broken: list[ScanEntry]) -> None:
        if not self.succeeded and self.restarts >= 3:
            self.close()
            raise RuntimeError(
                "worker processes keep dying before finishing any scan; if scanqc is called "
                "from a script, guard it with `if __name__ == '__main__':`, or use workers=0")
        # every other scan in flight fails with the pool; collect them all
        rest = [rec[0] for rec in self._futures.values()]
        self._futures.clear()
        self._restart()
        lost = broken + rest
        if len(lost) == 1:
            self._ready.append((lost[0], self.CRASH))
        else:
            log.warning("a worker process died; retrying %d scans one at a time", len(lost))
            self._suspects.extend(lost)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        late = None
        for fut, rec in self._futures.items():
            if rec[1] is None and fut.running():
                rec[1] = now
            elif rec[1] is not None and now - rec[1] > self.timeout:
                late = fut
                break
        if late is None:
            return
        entry = self._futures.pop(late)[0]
        self._ready.append((entry, f"timed out after {self.timeout:g} s"))
        rest = [rec[0] for rec in self._futures.values()]
        self._futures.clear()
        self._restart()
        self._suspects.extend(rest)

    def close(self) -> None:
        """Stop the workers (killing scans still running)."""
        self._futures.clear()
        self._suspects.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            procs = list((getattr(pool, "_processes", None) or {}).values())
            for p in procs:
                with contextlib.suppress(Exception):
                    p.terminate()
            for p in procs:
                with contextlib.suppress(Exception):
                    p.join(timeout=5)


def largest_first(entries: Sequence[ScanEntry]) -> list[ScanEntry]:
    """``entries`` ordered by bytes on disk, largest first (ties keep their order).

    Parallel runs hand scans to the workers in this order (longest-processing-time-first
    scheduling): the few long scans of a folder (a large series, a big volume) start early
    instead of keeping one worker busy at the end while the others idle. On
    ../shared/data (a few large series among many small files) a two-worker run took 5.8 s
    instead of 6.1 s (medians of 4); a folder of equal-sized scans gains nothing. Unreadable
    sizes count as 0.
    """

    def size(entry: ScanEntry) -> int:
        total = 0
        for p in entry.paths:
            with contextlib.suppress(OSError):
                total += os.stat(p).st_size
        return total

    return sorted(entries, key=size, reverse=True)


def make_runner(config: ScoreConfig, options: dict[str, Any], fn: Callable = prepare_entry) -> Any:
    """Return the runner for ``config``: inline, local processes or Dask."""
    if config.scheduler:
        from scanqc.batch.dask_runner import DaskRunner

        return DaskRunner(config.scheduler, max(1, config.workers), options, config.timeout,
                          config.in_flight, fn=fn)
    if config.workers <= 0:
        return InlineRunner(options, fn)
    return LocalRunner(config.workers, options, config.timeout, config.in_flight, fn)


# ----------------------------------------------------------------------------- model
#: Optimised CPU modules by (id of the model, hash of its weights, input size).
_FAST_CACHE: dict[tuple[int, str, int], Any] = {}
_FAST_LOCK = threading.Lock()


class Embedder:
    """The encoder in the main process: batched slice embedding and scan pooling."""

    def __init__(self, config: ScoreConfig) -> None:
        import torch

        from scanqc.models.device import get_device

        self._threads_before: int | None = None
        threads = config.torch_threads or _auto_torch_threads(config)
        if threads and int(threads) != torch.get_num_threads():
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(int(threads))
        if config.encoder is not None:
            self.model = config.encoder
            self.device = get_device(config.device)
            self.model.to(self.device).eval()
            self.name = config.model_name if config.model_name != "encoder" else type(
                self.model).__name__
            self.version = config.model_version or _weights_hash(self.model)
        else:
            from scanqc.models.encoder import load_encoder
            from scanqc.models.registry import model_dir
            from scanqc.models.weights import read_metadata

            self.device = get_device(config.device)
            try:
                self.model = load_encoder(config.model_name, self.device)
            except Exception as exc:  # noqa: BLE001 - one line for the CLI and the widgets
                raise ValueError(f"cannot load model {config.model_name!r}: {exc}") from exc
            try:
                meta = read_metadata(model_dir(config.model_name))
            except Exception:  # noqa: BLE001 - the version is informative
                meta = {}
            self.name = str(meta.get("name") or config.model_name)
            self.version = str(meta.get("version") or "") + (
                f"+{str(meta.get('sha256', ''))[:8]}" if meta.get("sha256")
                else _weights_hash(self.model))
        on_cpu = getattr(self.device, "type", str(self.device)) == "cpu"
        self.batch = max(1, int(config.forward_batch if on_cpu else config.embed_batch))
        # traced on the first embed, while the workers are already reading
        self._optimize, self._size, self._fast = bool(config.optimize), int(config.size), None
        self.reference_model: Any = None  # a fitted scanqc.models.siamese.ReferenceModel
        if config.reference_model is not None:
            self.use_reference_model(config.reference_model)
        self.region_probe = self._region_probe(config)

    def release(self) -> None:
        """Restore the torch thread count changed for this run."""
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def _region_probe(self, config: ScoreConfig) -> Any:
        """The bundled region probe when it was trained on this encoder, else None."""
        if config.encoder is not None:
            return None
        try:
            from scanqc.models.region_probe import load_bundled_probe
            from scanqc.models.registry import model_dir
            from scanqc.models.weights import read_metadata

            probe = load_bundled_probe()
            enc_sha = read_metadata(model_dir(config.model_name)).get("sha256")
        except Exception as exc:  # noqa: BLE001 - region columns stay empty
            log.info("no region probe (%s); region columns stay empty", exc)
            return None
        if probe.metadata.get("encoder", {}).get("sha256") != enc_sha:
            log.warning("the bundled region probe was trained on another encoder; "
                        "region columns stay empty")
            return None
        return probe

    def use_reference_model(self, model: Any) -> None:
        """Embed through the fitted head of ``model`` from now on (version gets ``+ft``)."""
        self.reference_model = model
        self.version = self.version.split("+ft")[0] + f"+ft{_head_hash(model)}"

    @property
    def model_id(self) -> str:
        """``name@version`` plus the region probe's hash (cache key part)."""
        probe, region = "", getattr(self, "region_probe", None)
        if region is not None:
            probe = "+region" + str(region.metadata.get("sha256", ""))[:8]
        return f"{self.name}@{self.version}{probe}"

    @property
    def fast(self) -> Any:
        """The optimised CPU module (built on first use), or None (eager mode).

        Kept per process for the same weights and input size (:data:`_FAST_CACHE`), so
        that repeated runs (the napari docks, a reference context, benchmarks) trace the
        encoder once (about 0.4 s).
        """
        if self._optimize:
            self._optimize = False
            if getattr(self.device, "type", str(self.device)) == "cpu":
                key = (id(self.model), _weights_hash(self.model), self._size)
                with _FAST_LOCK:
                    if key not in _FAST_CACHE:
                        while len(_FAST_CACHE) >= 4:
                            _FAST_CACHE.pop(next(iter(_FAST_CACHE)))
                        _FAST_CACHE[key] = self._optimized(self.model, self._size)
                    self._fast = _FAST_CACHE[key]
        return self._fast

    def _optimized(self, model: Any, size: int) -> Any:
        """A frozen, BN-folded TorchScript copy of ``model`` for CPU inference, or None."""
        import torch

        if getattr(self.device, "type", str(self.device)) != "cpu":
            return None
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optimize_for_inference's deprecation note
                traced = torch.jit.trace(model.eval(), torch.zeros(2, 1, size, size),
                                         check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        except Exception as exc:  # noqa: BLE001 - any untraceable module runs eagerly
            log.info("encoder not optimised for inference (%s); eager mode", exc)
            return None

    def embed(self, slices: np.ndarray) -> np.ndarray:
        """``(N, S, S)`` -> unit slice embeddings ``(N, D)`` (through the fitted head, if any)."""
        return self.embed_both(slices)[1]

    def embed_both(self, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(base, used)``: base-encoder embeddings and those through the fitted head."""
        from scanqc.models.encoder import embed_slices

        base = embed_slices(self.fast or self.model, slices, batch_size=self.batch,
                            device=self.device)
        if self.reference_model is not None:
            return base, self.reference_model.embed(base)  # the head on the base embeddings
        return base, base


def _auto_torch_threads(config: ScoreConfig) -> int | None:
    """Torch threads for the main process when ``config.torch_threads`` is None.

    With local worker processes embedding on the CPU: the cores the workers leave, at
    least one (two workers on two cores: one thread; more threads than free cores make
    the spinning intra-op pool compete with the readers). Otherwise None (leave).
    """
    if config.scheduler or config.workers <= 0:
        return None
    from scanqc.models.device import get_device

    try:
        if getattr(get_device(config.device), "type", "cpu") != "cpu":
            return None
    except ValueError:  # CUDA asked for and missing: the embedder reports it
        return None
    return max(1, (os.cpu_count() or 1) - int(config.workers))


def _head_hash(model: Any) -> str:
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:8]


def _weights_hash(model: Any) -> str:
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- inputs
def _common_root(entries: Sequence[ScanEntry]) -> str | None:
    paths = [os.path.abspath(e.path) for e in entries if e.path]
    if not paths:
        return None
    try:
        common = os.path.commonpath(paths)
    except ValueError:
        return None
    return common if os.path.isdir(common) else os.path.dirname(common)


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
        cand = [text] if os.path.isabs(text) else [text] + ([os.path.join(root, text)]
                                                             if root else [])
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
        self._held: list[tuple[dict[str, Any], np.ndarray, list, str | None]] = []
        self.done = 0
        self.total = 0
        self.root: str | None = None

    # -- helpers ------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.config)
        return self._embedder

    def _emit(self, row: dict[str, Any], count: bool = True) -> dict[str, Any]:
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
        from scanqc.scoring.reference import ReferenceSet

        good = self.read_references(references, entries)
        if self.config.finetune and self.embedder.reference_model is None:
            self._finetune([res for _e, res in good])
        vectors, slice_vecs, ids, contents = [], [], [], []
        for entry, res in good:
            sv = self.embedder.embed(res["slices"])
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

    def _regions(self, items: list[tuple[ScanEntry, dict[str, Any]]],
                 base: list[np.ndarray]) -> dict[int, dict[str, Any]]:
        """Region columns per prepared scan, keyed by ``id(res)``.

        A region warning is added to ``res["warnings"]`` so that it reaches the warnings
        columns and the scores.
        """
        from scanqc.batch.pipeline import warnings_columns
        from scanqc.scoring.region import region_from_embeddings

        probe = self.embedder.region_probe
        out: dict[int, dict[str, Any]] = {}
        if probe is None:
            return out
        for (_entry, res), b in zip(items, base, strict=True):
            try:
                pred = region_from_embeddings(
                    b, probe, res["slice_index"], n_slices=res.get("n_slices"),
                    is_volume=res.get("is_volume"), header=res.get("region_header"))
            except Exception as exc:  # noqa: BLE001 - region is informative, never fatal
                log.info("region failed: %s", exc)
                continue
            cols = pred.columns()
            cols.pop("region_coverage", None)
            if pred.warnings:
                res["warnings"] = [*res["warnings"], *pred.warnings]
                cols["warnings"], cols["warnings_detail"], cols["max_severity"] = \
                    warnings_columns(res["warnings"])
            out[id(res)] = cols
        return out

    def fallback_rows(self) -> list[dict[str, Any]]:
        """Second pass of the no-reference mode: kNN outlier scores for held rows."""
        from scanqc.scoring.outlier import knn_outlier_scores
        from scanqc.scoring.reference import combine_with_warnings

        held, self._held = self._held, []
        if len(held) < 2:
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
            entries = list(items)
            self.root = self.config.root or _common_root(entries)
        else:
            self.root = self.config.root or _common_root_paths(items)
            from scanqc.batch.discovery import discover_parallel

            # large folders: headers read in worker processes (the same entries)
            entries = discover_parallel(items, self.root, self.config.workers, self.progress,
                                        self.cancel)
        self.total, self.done = len(entries), 0
        report(self.progress, 0, self.total, "scoring")
        use_cache = self.cache is not None
        if references:
            self.build_references(references, entries)
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
