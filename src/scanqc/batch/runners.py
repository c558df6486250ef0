"""Where the per-scan work runs: inline, local worker processes, or Dask.

A runner takes discovered scans (``submit``) and hands back ``(entry, result)`` pairs
(``poll``), where the result is :func:`scanqc.batch.pipeline.prepare_entry`'s dict or a
one-line failure. :class:`LocalRunner` survives crashed workers and hung scans (see
docs/batch.md); :class:`scanqc.batch.dask_runner.DaskRunner` has the same interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from scanqc.batch.config import ScoreConfig
from scanqc.batch.pipeline import prepare_entry, worker_init
from scanqc.io.scan import ScanEntry

log = logging.getLogger(__name__)

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


def mp_context() -> Any:
    """The start method of the worker processes: a preloaded fork server, else spawn."""
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
                max_workers=self.workers, mp_context=mp_context(), initializer=worker_init
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

