"""Matplotlib canvases of the Score dock: per-slice scores and the bad_score histogram.

* :class:`SliceScorePlot`: one point per scored slice of a volume (its bad_score), the
  worst slices in red; clicking a point emits :attr:`SliceScorePlot.slice_clicked` with
  the slice index.
* :class:`ScoreHistogram`: the dataset's bad_scores with the threshold as a vertical line
  that can be dragged; dragging emits :attr:`ScoreHistogram.threshold_changed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QSizePolicy

#: napari dark theme colours.
BACKGROUND = "#262930"
FOREGROUND = "#d6d0ce"
ACCENT = "#4fc3f7"
WORST = "#ef5350"
THRESHOLD = "#ffa726"


def _style(ax: Any) -> None:
    ax.set_facecolor(BACKGROUND)
    for spine in ax.spines.values():
        spine.set_color(FOREGROUND)
    ax.tick_params(colors=FOREGROUND, labelsize=7)
    ax.xaxis.label.set_color(FOREGROUND)
    ax.yaxis.label.set_color(FOREGROUND)
    ax.title.set_color(FOREGROUND)


class _Canvas(FigureCanvasQTAgg):
    def __init__(self, height: float = 1.8) -> None:
        fig = Figure(figsize=(3.6, height), dpi=100, facecolor=BACKGROUND,
                     layout="constrained")
        super().__init__(fig)
        self.ax = fig.add_subplot(111)
        _style(self.ax)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setFixedHeight(int(height * 100))


class SliceScorePlot(_Canvas):
    """Per-slice bad_scores of the current volume; click a point to go to that slice."""

    slice_clicked = Signal(int)

    def __init__(self) -> None:
        super().__init__()
        self.slice_index = np.zeros(0, dtype=int)
        self.scores = np.zeros(0, dtype=float)
        self.worst: list[int] = []
        self._points: Any = None
        self.mpl_connect("pick_event", self._on_pick)
        self.clear_scores()

    def clear_scores(self, message: str = "no per-slice scores") -> None:
        """Show an empty plot with ``message``."""
        self.slice_index = np.zeros(0, dtype=int)
        self.scores = np.zeros(0, dtype=float)
        self.worst = []
        self.ax.clear()
        _style(self.ax)
        self.ax.text(0.5, 0.5, message, ha="center", va="center", color=FOREGROUND,
                     fontsize=8, transform=self.ax.transAxes)
        self.ax.set_xticks([])
        self.ax.set_yticks([])
        self._points = None
        self.draw_idle()

    def set_scores(self, slice_index: Sequence[int], scores: Sequence[float],
                   worst: Sequence[int] = (), threshold: float | None = 0.5) -> None:
        """Plot ``scores`` (one per slice in ``slice_index``), ``worst`` slices in red."""
        self.slice_index = np.asarray(slice_index, dtype=int)
        self.scores = np.asarray(scores, dtype=float)
        self.worst = [int(w) for w in worst]
        self.ax.clear()
        _style(self.ax)
        order = np.argsort(self.slice_index, kind="stable")
        x, y = self.slice_index[order], self.scores[order]
        self.ax.plot(x, y, "-", color=ACCENT, lw=1, alpha=0.6)
        colors = [WORST if int(i) in self.worst else ACCENT for i in x]
        self._points = self.ax.scatter(x, y, s=14, c=colors, picker=True, pickradius=6,
                                       zorder=3)
        self._order = order
        if threshold is not None:
            self.ax.axhline(threshold, color=THRESHOLD, lw=1, ls="--")
        self.ax.set_ylim(-0.02, 1.02)
        self.ax.set_xlabel("slice", fontsize=8)
        self.ax.set_ylabel("bad_score", fontsize=8)
        self.draw_idle()

    def _on_pick(self, event: Any) -> None:
        if event.artist is not self._points or not len(event.ind):
            return
        # nearest of the picked points to the click
        ind = list(event.ind)
        if event.mouseevent is not None and event.mouseevent.xdata is not None:
            xs = self.slice_index[self._order][ind]
            ind = [ind[int(np.argmin(np.abs(xs - event.mouseevent.xdata)))]]
        self.slice_clicked.emit(int(self.slice_index[self._order][ind[0]]))


class ScoreHistogram(_Canvas):
    """Histogram of bad_scores with a draggable threshold line."""

    threshold_changed = Signal(float)

    def __init__(self) -> None:
        super().__init__()
        self.values = np.zeros(0, dtype=float)
        self.threshold = 0.5
        self._line: Any = None
        self._dragging = False
        self.mpl_connect("button_press_event", self._on_press)
        self.mpl_connect("motion_notify_event", self._on_motion)
        self.mpl_connect("button_release_event", self._on_release)
        self.set_scores([])

    def set_scores(self, values: Sequence[float]) -> None:
        """Redraw the histogram of ``values`` (finite bad_scores)."""
        v = np.asarray([float(x) for x in values], dtype=float)
        self.values = v[np.isfinite(v)]
        self.ax.clear()
        _style(self.ax)
        bins = np.linspace(0.0, 1.0, 26)
        if len(self.values):
            self.ax.hist(np.clip(self.values, 0, 1), bins=bins, color=ACCENT, alpha=0.85)
        else:
            self.ax.text(0.5, 0.5, "no scores yet", ha="center", va="center",
                         color=FOREGROUND, fontsize=8, transform=self.ax.transAxes)
        self.ax.set_xlim(0, 1)
        self.ax.set_xlabel("bad_score", fontsize=8)
        self.ax.set_ylabel("scans", fontsize=8)
        self._line = self.ax.axvline(self.threshold, color=THRESHOLD, lw=2)
        self.draw_idle()

    def set_threshold(self, value: float) -> None:
        """Move the line (does not emit :attr:`threshold_changed`)."""
        self.threshold = float(np.clip(value, 0.0, 1.0))
        if self._line is not None:
            self._line.set_xdata([self.threshold, self.threshold])
        self.draw_idle()

    def drag_to(self, value: float) -> None:
        """Move the line as a drag would and emit :attr:`threshold_changed`."""
        self.set_threshold(value)
        self.threshold_changed.emit(self.threshold)

    def _near_line(self, event: Any) -> bool:
        if event.inaxes is not self.ax or event.xdata is None:
            return False
        x_px = self.ax.transData.transform((self.threshold, 0))[0]
        return abs(event.x - x_px) <= 8

    def _on_press(self, event: Any) -> None:
        if event.inaxes is not self.ax or event.xdata is None:
            return
        self._dragging = True
        if not self._near_line(event):  # a click elsewhere moves the line there
            self.drag_to(event.xdata)

    def _on_motion(self, event: Any) -> None:
        if self._dragging and event.inaxes is self.ax and event.xdata is not None:
            self.drag_to(event.xdata)

    def _on_release(self, event: Any) -> None:
        if self._dragging and event.inaxes is self.ax and event.xdata is not None:
            self.drag_to(event.xdata)
        self._dragging = False
