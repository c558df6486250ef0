"""Run long work off the GUI thread: one helper that every scanqc dock uses.

``start_worker(fn, *args, on_progress=..., on_done=..., on_error=..., **kw)`` runs
``fn(*args, **kw)`` in a napari thread worker. When ``fn`` takes ``progress`` and/or
``cancel`` keyword arguments (the scanqc convention), it gets a progress callback and a
:class:`~scanqc.progress.CancelToken`. Progress calls made in the worker thread are
emitted through a Qt signal, so ``on_progress`` always runs in the GUI thread (and at most
every 50 ms, so a chatty loop cannot flood the event loop). When ``fn`` takes a ``chunk``
keyword, each ``chunk(part)`` call reaches ``on_chunk(part)`` in the GUI thread, in order
and before ``on_done``: partial results (rows of a table that fills while it loads).

:func:`call_in_process` runs pure-Python CPU work in a child process; with ``on_item`` it
streams the items of a generator back one message each.

With ``SCANQC_NOTHREADS=1`` (the tests) everything runs synchronously in the caller.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

from scanqc.progress import Cancelled, CancelToken

log = logging.getLogger(__name__)

#: Minimum seconds between two progress signals.
PROGRESS_INTERVAL = 0.05
#: Items per message when a child process sends back a list.
RESULT_CHUNK = 200

_RUNNING: set[WorkerHandle] = set()


def threads_disabled() -> bool:
    """True when ``SCANQC_NOTHREADS`` asks for synchronous work."""
    return os.environ.get("SCANQC_NOTHREADS", "").strip() not in ("", "0", "false", "no")


class _Relay(QObject):
    """Lives in the GUI thread; signals emitted from the worker are queued to it."""

    progress = Signal(int, int, str)
    chunk = Signal(object)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class WorkerHandle:
    """A running (or finished) piece of work: cancel it, ask whether it still runs."""

    def __init__(self, token: CancelToken) -> None:
        self.token = token
        self.worker: Any = None
        self.running = True
        self._relay: _Relay | None = None

    def cancel(self) -> None:
        """Ask the work to stop at its next check (results are then dropped)."""
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self.token.cancelled


def start_worker(
    fn: Callable[..., Any],
    *args: Any,
    on_progress: Callable[[int, int, str], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_chunk: Callable[[Any], None] | None = None,
    **kw: Any,
) -> WorkerHandle:
    """Run ``fn(*args, **kw)`` in a worker thread and report back in the GUI thread.

    Args:
        fn: The work. Gets ``progress=`` and ``cancel=`` when its signature takes them.
        *args: Positional arguments of ``fn``.
        on_progress: ``(done, total, message)`` in the GUI thread.
        on_done: Called with the return value (not called after a cancel).
        on_error: Called with the exception (logged when not given).
        on_cancelled: Called when ``fn`` stopped because it was cancelled.
        on_chunk: Called in the GUI thread with each ``chunk(part)`` of ``fn`` (when its
            signature takes ``chunk``), in order, before ``on_done``.
        **kw: Keyword arguments of ``fn``.

    Returns:
        A :class:`WorkerHandle` (``.cancel()``).
    """
    token = CancelToken()
    handle = WorkerHandle(token)
    sync = threads_disabled()
    if sync:
        emit = on_progress
        emit_chunk = on_chunk
    else:
        relay = _Relay()
        handle._relay = relay
        if on_progress is not None:
            relay.progress.connect(on_progress)
        if on_chunk is not None:
            relay.chunk.connect(on_chunk)
        emit_chunk = relay.chunk.emit
        last = [0.0]

        def emit(done: int, total: int, message: str = "") -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL or (total and done >= total):
                last[0] = now
                relay.progress.emit(int(done), int(total), str(message))

    if _accepts(fn, "progress") and "progress" not in kw:
        kw["progress"] = emit
    if _accepts(fn, "cancel") and "cancel" not in kw:
        kw["cancel"] = token
    if on_chunk is not None and _accepts(fn, "chunk") and "chunk" not in kw:
        kw["chunk"] = emit_chunk

    def finish(result: Any) -> None:
        handle.running = False
        _RUNNING.discard(handle)
        if token.cancelled:
            if on_cancelled is not None:
                on_cancelled()
            return
        if on_done is not None:
            on_done(result)

    def fail(exc: BaseException) -> None:
        handle.running = False
        _RUNNING.discard(handle)
        if isinstance(exc, Cancelled) or token.cancelled:
            if on_cancelled is not None:
                on_cancelled()
            return
        if on_error is not None:
            on_error(exc)
        else:
            log.error("scanqc worker failed: %s", exc)

    if sync:
        try:
            result = fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - reported through on_error
            fail(exc)
        else:
            finish(result)
        return handle

    from napari.qt.threading import create_worker

    worker = create_worker(fn, *args, _start_thread=False, _ignore_errors=True, **kw)
    worker.returned.connect(finish)
    worker.errored.connect(fail)
    handle.worker = worker
    _RUNNING.add(handle)
    worker.start()
    return handle


def cancel_all() -> None:
    """Cancel every worker still running (used when a widget closes)."""
    for handle in list(_RUNNING):
        handle.cancel()


def _child_main(conn: Any, target: Callable[..., Any], args: tuple, kwargs: dict,
                stream: bool = False) -> None:
    """Body of the child process of :func:`call_in_process` (runs at a lower priority)."""
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(5)  # the GUI process keeps the CPU when cores are busy
    last = [0.0]

    def progress(done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL or (total and done >= total):
            last[0] = now
            conn.send(("progress", (int(done), int(total), str(message))))

    try:
        if _accepts(target, "progress"):
            kwargs = {**kwargs, "progress": progress}
        result = target(*args, **kwargs)
        if stream:
            for item in result:  # one message per item, sent as soon as it is made
                conn.send(("item", pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)))
            conn.send(("done", None))
        elif isinstance(result, list):
            # small messages: unpickling one huge result would hold the parent's GIL
            for i in range(0, len(result), RESULT_CHUNK):
                conn.send(("chunk", result[i:i + RESULT_CHUNK]))
            conn.send(("done", None))
        else:
            conn.send(("done", result))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"))
    finally:
        conn.close()


def call_in_process(
    target: Callable[..., Any],
    *args: Any,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: CancelToken | None = None,
    on_item: Callable[[Any], None] | None = None,
    raw_items: bool = False,
    **kwargs: Any,
) -> Any:
    """Run ``target(*args, **kwargs)`` in a spawned child process and return its result.

    Meant to be called from a worker thread for CPU-heavy pure-Python work (discovery of a
    large folder): the thread then only waits on a pipe, so it never competes with the GUI
    thread for the GIL. ``target`` must be an importable module-level function; its
    ``progress`` calls are forwarded; ``cancel`` terminates the child. With ``on_item``,
    ``target`` returns an iterable (a generator) whose items are sent back as they are
    made and passed to ``on_item`` in the calling thread; the call then returns ``None``.
    With ``raw_items`` as well, ``on_item`` gets each item still pickled (``bytes``), to be
    unpickled where the objects are wanted (the GUI thread): this thread then holds the
    GIL only for moments, so it never makes the GUI thread wait for it.

    Raises:
        Cancelled: ``cancel`` was set.
        RuntimeError: The child failed (one line with its error) or died.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child, target, args, kwargs, on_item is not None),
                       daemon=True)
    proc.start()
    child.close()
    chunks: list[Any] | None = None
    try:
        while True:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("cancelled by the user")
            if parent.poll(0.05):
                try:
                    kind, payload = parent.recv()
                except EOFError:
                    raise RuntimeError("worker process ended without a result") from None
                if kind == "progress":
                    if progress is not None:
                        progress(*payload)
                elif kind == "item":
                    on_item(payload if raw_items else pickle.loads(payload))  # type: ignore[misc]
                    time.sleep(0.001)  # let the GUI thread take the GIL
                elif kind == "chunk":
                    chunks = (chunks or []) + payload
                    time.sleep(0.001)  # let the GUI thread take the GIL
                elif kind == "done":
                    return chunks if chunks is not None else payload
                else:
                    raise RuntimeError(payload)
            elif not proc.is_alive() and not parent.poll(0):
                raise RuntimeError(f"worker process died (exit code {proc.exitcode})")
    finally:
        parent.close()
        if proc.is_alive():
            proc.terminate()
        proc.join(2)
