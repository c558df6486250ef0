"""The "Label next" dock: serves the scan to label next and shows the user's learning curve.

Works with the Dataset dock through the viewer's shared state
(:func:`scanqc.widgets._state.get_state`): the scans are the Dataset dock's entries, the
labels are the store's ``region`` (or ``label``) values, and "Next" makes the suggested scan
the Dataset dock's current row (which opens it). The first "Next" embeds the dataset in a
worker; after every ``retrain every`` new labels the probe is retrained and the queue
recomputed in a worker (:func:`scanqc.scoring.active.compute_ranking`). The plot shows the
cross-validated accuracy of the probe on the labels so far against their number.

No torch at import time; no computation in the GUI thread.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from scanqc.scoring.active import STRATEGIES, LabelNextQueue, Ranking, embed_entries
from scanqc.widgets._state import get_state
from scanqc.widgets._threading import WorkerHandle, start_worker

if TYPE_CHECKING:
    import napari

#: Keyboard shortcut of the Next button.
NEXT_SHORTCUT = "Alt+N"


class LabelNextWidget(QWidget):
    """Dock widget: pick a strategy, press Next, label; the queue learns as you go.

    Attributes:
        encoder: Encoder used to embed the scans (``None``: the bundled one).
        queue: The :class:`~scanqc.scoring.active.LabelNextQueue` once embedded.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None
                 ) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.encoder: Any = None
        self.queue: LabelNextQueue | None = None
        self.errors: dict[str, str] = {}
        self._worker: WorkerHandle | None = None
        self._want_next = False
        self._build_ui()
        self.state.dataset_changed.connect(self._on_dataset_changed)
        self.state.rows_changed.connect(self._on_rows_changed)

    # -- UI ------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.strategy_combo = QComboBox()
        self.strategy_combo.addItems(list(STRATEGIES))
        self.strategy_combo.setCurrentText("entropy")
        self.strategy_combo.setToolTip(
            "examine: most representative first (no labels needed); entropy / margin / "
            "least_confidence / disagreement: most uncertain for the probe; diversity: "
            "farthest from everything labelled; random")
        form.addRow("Strategy", self.strategy_combo)
        self.field_combo = QComboBox()
        self.field_combo.addItems(["region", "label"])
        self.field_combo.setToolTip("which label the probe learns (set in the Dataset dock)")
        form.addRow("Learn", self.field_combo)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 1000)
        self.batch_spin.setValue(10)
        self.batch_spin.setToolTip("retrain and re-rank after this many new labels")
        form.addRow("Retrain every", self.batch_spin)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.next_btn = QPushButton("Next")
        self.next_btn.setShortcut(QKeySequence(NEXT_SHORTCUT))
        self.next_btn.setToolTip(f"open the next suggested scan ({NEXT_SHORTCUT})")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.next_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        self.status = QLabel("Open a dataset in the Dataset dock, then press Next.")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.upcoming = QListWidget()
        self.upcoming.setMaximumHeight(110)
        self.upcoming.itemDoubleClicked.connect(
            lambda item: self._open(item.data(256)))
        lay.addWidget(self.upcoming)
        self._build_plot(lay)
        self.next_btn.clicked.connect(self.next_scan)
        self.cancel_btn.clicked.connect(self.cancel)
        self.strategy_combo.currentTextChanged.connect(self._on_strategy)
        self.batch_spin.valueChanged.connect(self._on_batch)
        self.field_combo.currentTextChanged.connect(lambda _t: self._sync_labels())

    def _build_plot(self, lay: QVBoxLayout) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.0), dpi=80)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(140)
        self.ax = self.figure.add_subplot(111)
        lay.addWidget(self.canvas)
        self._draw_curve()

    def _draw_curve(self) -> None:
        from matplotlib.ticker import MaxNLocator

        ax = self.ax
        ax.clear()
        hist = self.queue.history if self.queue is not None else []
        step = self.batch_spin.value()
        if hist:
            n, acc = zip(*hist, strict=True)
            ax.plot(n, acc, "o-", ms=3)
            ax.annotate(f"{acc[-1]:.2f}", (n[-1], acc[-1]), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=7)
            ax.set_xlim(0, max(n) + step)
        else:
            ax.set_xlim(0, 3 * step)
            ax.text(0.5, 0.5, "your learning curve appears\nafter a few labels of 2 classes",
                    transform=ax.transAxes, ha="center", va="center", fontsize=7,
                    color="gray")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("labels", fontsize=8)
        ax.set_ylabel("CV accuracy", fontsize=8)
        ax.set_title("your learning curve", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        self.figure.tight_layout()
        self.canvas.draw_idle()

    def _set_busy(self, busy: bool, text: str = "") -> None:
        self.cancel_btn.setEnabled(busy)
        if text:
            self.status.setText(text)

    # -- state ---------------------------------------------------------------------------

    def _on_dataset_changed(self) -> None:
        waiting = self._want_next and self.queue is None and not self._busy
        self.cancel()
        self.queue = None
        self.errors = {}
        self.upcoming.clear()
        self._draw_curve()
        if self.state.loading:
            self._want_next = waiting
            self.status.setText("Reading the dataset …")
            return
        self.status.setText(f"{len(self.state.entries)} scans; press Next to start.")
        if waiting:  # Next was pressed while the dataset was still being read
            self.next_scan()

    def _on_strategy(self, strategy: str) -> None:
        if self.queue is not None:
            self.queue.set_strategy(strategy)
            self._recompute()

    def _on_batch(self, value: int) -> None:
        if self.queue is not None:
            self.queue.retrain_every = int(value)

    def _current_labels(self) -> dict[str, str]:
        field = self.field_combo.currentText()
        out = {}
        for sid, row in self.state.rows.items():
            value = row.get(field)
            if value not in (None, ""):
                out[sid] = str(value)
        return out

    def _sync_labels(self) -> None:
        if self.queue is None:
            return
        self.queue.set_labels(self._current_labels())
        if self.queue.due and not self._busy:
            self._recompute()

    def _on_rows_changed(self, _ids: Any) -> None:
        self._sync_labels()

    @property
    def _busy(self) -> bool:
        return self._worker is not None and self._worker.running

    # -- work ----------------------------------------------------------------------------

    def next_scan(self) -> None:
        """Open the next suggested scan (embedding / ranking first when needed)."""
        if self.state.loading:  # the Dataset dock is still reading: start when it ends
            self._want_next = True
            self.status.setText("Waiting for the Dataset dock to finish reading the "
                                "folder; then the scans are embedded and ranked.")
            return
        if not self.state.entries:
            self.status.setText("Open a dataset in the Dataset dock first.")
            return
        if self.queue is None:
            self._want_next = True
            if not self._busy:
                self._embed()
            return
        if self.queue.due:
            self._want_next = True
            if not self._busy:
                self._recompute()
            return
        sid = self.queue.next()
        if sid is None:
            self.status.setText("Every scan is labelled or was suggested; change strategy "
                                "or label more to re-rank.")
            return
        self._open(sid)
        self._show_queue()

    def _embed(self) -> None:
        entries = list(self.state.entries)
        self._set_busy(True, f"Embedding {len(entries)} scans …")
        self._worker = start_worker(
            embed_entries, entries, model=self.encoder,
            on_progress=lambda d, t, m: self.status.setText(f"Embedding {d}/{t} {m}"),
            on_done=self._on_embedded, on_error=self._on_error,
            on_cancelled=lambda: self._set_busy(False, "Cancelled."))

    def _on_embedded(self, result: tuple[list[str], np.ndarray, dict[str, str]]) -> None:
        ids, z, errors = result
        self._worker = None
        self.errors = errors
        if not ids:
            self._set_busy(False, "No readable scans to rank.")
            return
        self.queue = LabelNextQueue(z, ids, strategy=self.strategy_combo.currentText(),
                                    retrain_every=self.batch_spin.value(), auto=False)
        self.queue.set_labels(self._current_labels())
        self._recompute()

    def _recompute(self) -> None:
        if self.queue is None:
            return
        if self._worker is not None:
            self._worker.cancel()
        fn, args, kw = self.queue.job()
        self._set_busy(True, f"Ranking by {self.queue.strategy} on "
                             f"{len(self.queue.labels)} labels …")
        self._worker = start_worker(fn, *args, on_done=self._on_ranked,
                                    on_error=self._on_error,
                                    on_cancelled=lambda: self._set_busy(False), **kw)

    def _on_ranked(self, ranking: Ranking) -> None:
        self._worker = None
        if self.queue is None:
            return
        self.queue.apply(ranking)
        note = "" if ranking.used == ranking.strategy else \
            f" (needs two classes: {ranking.used} for now)"
        acc = "" if not np.isfinite(ranking.cv_accuracy) else \
            f"; CV accuracy {ranking.cv_accuracy:.2f}"
        self._set_busy(False, f"{len(ranking.order)} to label, ranked by "
                              f"{ranking.used}{note}; {ranking.n_labels} labels{acc}.")
        self._draw_curve()
        self._show_queue()
        if self.queue.due and self.queue.labels:  # labels came in while we ranked
            self._recompute()
            return
        if self._want_next:
            self._want_next = False
            self.next_scan()

    def _on_error(self, exc: BaseException) -> None:
        self._worker = None
        self._want_next = False
        self._set_busy(False, f"Error: {' '.join(str(exc).split())}")

    def _show_queue(self) -> None:
        self.upcoming.clear()
        if self.queue is None:
            return
        for sid in self.queue.peek(8):
            entry = self.state.entry(sid)
            self.upcoming.addItem(entry.name if entry is not None else sid)
            self.upcoming.item(self.upcoming.count() - 1).setData(256, sid)

    def _open(self, scan_id: str | None) -> None:
        """Make ``scan_id`` current: through the Dataset dock when one is open."""
        if not scan_id:
            return
        dock = self._dataset_dock()
        if dock is not None:
            dock.select_scan(scan_id)
            if self.state.current != scan_id:  # filtered out of the table
                dock.open_scan(scan_id)
        else:
            self.state.set_current(scan_id)
        entry = self.state.entry(scan_id)
        self.status.setText(f"Label {entry.name if entry is not None else scan_id}; then "
                            f"press Next ({NEXT_SHORTCUT}).")

    def _dataset_dock(self) -> Any:
        from scanqc.widgets.dataset import DatasetWidget

        window = getattr(self.viewer, "window", None)
        docks = getattr(window, "dock_widgets", None) or {}
        for widget in dict(docks).values():
            if isinstance(widget, DatasetWidget):
                return widget
            inner = getattr(widget, "widget", None)
            inner = inner() if callable(inner) else inner
            if isinstance(inner, DatasetWidget):
                return inner
        return None

    def cancel(self) -> None:
        """Stop the running embedding or ranking."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._want_next = False
        self._set_busy(False)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Cancel work and disconnect from the shared state."""
        self.cancel()
        for sig, slot in ((self.state.dataset_changed, self._on_dataset_changed),
                          (self.state.rows_changed, self._on_rows_changed)):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                sig.disconnect(slot)
        super().closeEvent(event)
