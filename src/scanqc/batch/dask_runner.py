"""Run the per-scan work of the engine on a Dask distributed cluster.

``scheduler="local"`` starts a ``LocalCluster`` of ``workers`` single-threaded worker
processes (closed at the end); any other value is the address of an existing scheduler
(``tcp://host:8786``), whose workers must have scanqc installed and see the same file
paths. Workers run exactly :func:`scanqc.batch.pipeline.prepare_entry` (read, checks,
slices); embedding and scoring stay in the calling process, so the report equals a local
run (modulo row order). Dask retries tasks of a worker that died; a scan that kills
workers repeatedly (``KilledWorker``) or exceeds the timeout becomes an error row (a
timed-out task is cancelled, but Dask cannot interrupt a task already running).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from scanqc.batch.pipeline import prepare_entry
from scanqc.io.scan import ScanEntry

log = logging.getLogger(__name__)


def start_client(scheduler: str, workers: int = 2) -> tuple[Any, Any]:
    """Return ``(client, cluster_or_None)`` for ``scheduler`` (``"local"`` or an address)."""
    from distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=max(1, int(workers)), threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        )
        return Client(cluster), cluster
    return Client(scheduler), None


class DaskRunner:
    """Runner with the engine's interface (``submit``/``poll``/``accepting``/``busy``).

    Args:
        scheduler: ``"local"`` or a scheduler address.
        workers: Worker processes of a local cluster.
        options: Passed to ``fn``.
        timeout: Seconds from submission to result before a scan is an error.
        max_in_flight: Scans submitted and not yet collected.
        fn: The per-scan function.
    """

    def __init__(
        self,
        scheduler: str,
        workers: int,
        options: dict[str, Any],
        timeout: float,
        max_in_flight: int,
        fn: Callable = prepare_entry,
    ) -> None:
        self.client, self.cluster = start_client(scheduler, workers)
        self.options, self.timeout, self.fn = options, float(timeout), fn
        self.max_in_flight = max(1, int(max_in_flight))
        self._futures: dict[Any, tuple[ScanEntry, float]] = {}

    def accepting(self) -> bool:
        """True when another scan may be submitted."""
        return len(self._futures) < self.max_in_flight

    def busy(self) -> bool:
        """True while scans are in flight."""
        return bool(self._futures)

    def submit(self, entry: ScanEntry) -> None:
        """Submit one scan to the cluster."""
        fut = self.client.submit(self.fn, entry, self.options, pure=False)
        self._futures[fut] = (entry, time.monotonic())

    def poll(self, timeout: float = 0.2) -> list[tuple[ScanEntry, Any]]:
        """Wait up to ``timeout`` s; return finished ``(entry, result or message)`` pairs."""
        from distributed import wait

        if not self._futures:
            return []
        try:
            wait(list(self._futures), timeout=max(timeout, 0.01), return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        except Exception as exc:  # noqa: BLE001 - distributed's own timeout class
            if "Timeout" not in type(exc).__name__:
                raise
        out: list[tuple[ScanEntry, Any]] = []
        now = time.monotonic()
        for fut in list(self._futures):
            entry, t0 = self._futures[fut]
            if fut.status == "finished":
                out.append((entry, fut.result()))
            elif fut.status in ("error", "lost", "cancelled"):
                try:
                    exc = fut.exception()
                    name = type(exc).__name__
                    msg = ("worker process died while reading this scan" if name == "KilledWorker"
                           else f"worker failed: {name}: {exc}")
                except Exception as err:  # noqa: BLE001
                    msg = f"worker failed: {fut.status} ({err})"
                out.append((entry, msg))
            elif now - t0 > self.timeout:
                fut.cancel()
                out.append((entry, f"timed out after {self.timeout:g} s"))
            else:
                continue
            del self._futures[fut]
        return out

    def close(self) -> None:
        """Cancel what is left and close the client (and the local cluster)."""
        try:
            if self._futures:
                self.client.cancel(list(self._futures))
            self._futures.clear()
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
