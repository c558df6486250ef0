"""Progress reporting and cancellation shared by every layer (imports nothing heavy).

Long functions take ``progress: ProgressCallback | None`` and ``cancel: CancelToken | None``.
The CLI drives them with tqdm; the widgets forward them to napari progress bars from a
worker thread. A cancelled function raises :class:`Cancelled` at its next check.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

#: ``progress(done, total, message)``; ``total`` is 0 when unknown.
ProgressCallback = Callable[[int, int, str], None]


class Cancelled(Exception):
    """Raised inside long work when its :class:`CancelToken` was cancelled."""


class CancelToken:
    """A thread-safe cancel flag shared between a worker and its controller."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancelled."""
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def report(progress: ProgressCallback | None, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if given; never let a broken callback stop the work."""
    if progress is None:
        return
    # A broken progress display must not kill scoring.
    with contextlib.suppress(Exception):
        progress(done, total, message)


def check(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set."""
    if cancel is not None:
        cancel.check()
