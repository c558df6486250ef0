"""The "Score" dock: score a dataset against reference scans and review the result.

* **References** are the scans marked as reference in the Dataset dock (the label store),
  or the scanqc image layers open in the viewer. Without references the engine's kNN
  fallback scores the dataset against itself.
* **Train on references** fine-tunes the reference head (FewSOME, see
  :func:`scanqc.models.siamese.fit_reference_model`) in a worker; later runs use it.
* **Score dataset** / **Score current scan** run :func:`scanqc.batch.engine.score` in a
  worker (progress bar, Cancel). Rows fill ``bad_score``/``flagged``/``warnings`` of the
  Dataset table as they arrive.
* The **current scan**'s score, flag and warnings are listed (click a warning to go to its
  slice), written on the canvas and drawn as rectangles on the affected slices/regions
  (:mod:`scanqc.widgets._overlays`); for volumes its per-slice scores are plotted (click a
  point to go to that slice).
* The **threshold** (bad_score space; 0.5 is the engine's own flag for reference scoring)
  can be dragged on the histogram or set with the slider/spin box: rows are re-flagged
  without recomputing anything.

The widget never computes: the module-level functions below run in workers and only call
``scanqc.batch`` / ``scanqc.scoring``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSlider,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from scanqc.io.scan import SEVERITIES, ScanEntry, ScanWarning
from scanqc.progress import CancelToken
from scanqc.scoring.advice import advice
from scanqc.widgets._overlays import SEVERITY_COLORS, clear_warning_overlay, show_warning_overlay
from scanqc.widgets._present import (
    few_references_hint,
    go_to_slice,
    label_banner,
    scan_layer,
    set_banner,
)
from scanqc.widgets._state import get_state
from scanqc.widgets._threading import WorkerHandle, start_worker
from scanqc.widgets.score_plots import ScoreHistogram, SliceScorePlot

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: Reference sources offered in the dock.
REFERENCE_SOURCES: tuple[str, ...] = ("marked in the Dataset dock", "open image layers")
#: Milliseconds between two pushes of arrived rows into the table.
FLUSH_MS = 150
#: Longest wait (ms) for the current scan's image before its details start anyway.
DETAILS_WAIT_MS = 400
#: Worker processes of a dataset run (reading, checks, preprocessing).
DEFAULT_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))
#: Threshold slider resolution (steps over 0..1).
SLIDER_STEPS = 1000


# ----------------------------------------------------------------------------- helpers
def reference_entries(state: Any) -> list[ScanEntry]:
    """The scans marked as reference in the Dataset dock (label store), in table order."""
    return [e for e in state.entries
            if state.rows.get(e.scan_id, {}).get("reference") and e.status == "ok"]


def layer_reference_paths(viewer: Any) -> list[str]:
    """Source files of the scanqc image layers open in ``viewer`` (one path per scan)."""
    out: list[str] = []
    for layer in viewer.layers:
        meta = layer.metadata.get("scanqc") if hasattr(layer, "metadata") else None
        if isinstance(meta, dict) and meta.get("path") and meta["path"] not in out:
            out.append(str(meta["path"]))
    return out


def table_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The Dataset-table fields of an engine row (``scan_id``, ``bad_score``, ...)."""
    status = row.get("status") or "ok"
    codes = [c for c in str(row.get("warnings") or "").split(";") if c]
    if status != "ok":
        codes.insert(0, f"{status}: {row.get('error')}" if row.get("error") else status)
    return {
        "scan_id": row.get("scan_id"),
        "bad_score": row.get("bad_score"),
        "flagged": bool(row.get("flagged")) if row.get("flagged") is not None else None,
        "warnings": ", ".join(codes),
        "max_severity": row.get("max_severity") or "",
        "score_status": status,
        **_region_fields(row),
        **_asymmetry_fields(row),
    }


def _asymmetry_fields(row: dict[str, Any]) -> dict[str, Any]:
    """``asymmetry_score`` when the engine computed one.

    An empty value never overwrites a score the Asymmetry dock put in the table.
    """
    value = row.get("asymmetry_score")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return {"asymmetry_score": float(value)}
    return {}


def _region_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The region columns of an engine row, when the engine predicted a region."""
    region = row.get("region")
    if not isinstance(region, str) or not region:
        return {}
    mismatch = row.get("region_mismatch")
    return {
        "region": region,
        "region_confidence": row.get("region_confidence"),
        "header_region": row.get("header_region") or None,
        "region_mismatch": None if mismatch is None or mismatch != mismatch
        else bool(mismatch),
    }


def default_threshold(rows: list[dict[str, Any]]) -> float:
    """The bad_score threshold that reproduces the engine's own flags.

    With references ``bad_score`` is 0.5 exactly at the distance threshold (see
    :mod:`scanqc.scoring.reference`), so 0.5; for the kNN fallback (other score scale)
    the midpoint between the highest unflagged and the lowest flagged score.
    """
    ok = [r for r in rows if r.get("status") == "ok" and _finite(r.get("bad_score"))]
    if not ok or any(r.get("reference_set_id") != "knn" for r in ok):
        return 0.5
    lo = [float(r["bad_score"]) for r in ok if not r.get("flagged")]
    hi = [float(r["bad_score"]) for r in ok if r.get("flagged")]
    if lo and hi and max(lo) < min(hi):
        return 0.5 * (max(lo) + min(hi))
    return 0.5


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating)) and bool(np.isfinite(v))


def reflag(rows: dict[str, dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Re-flag scored rows at a bad_score ``threshold``; return the changes.

    ``flagged = bad_score > threshold`` (scores are monotone in the distance, so this is a
    distance threshold; scans lifted by a high-severity warning have bad_score >= 0.9).
    ``rows`` (``{scan_id: row}``) is updated in place.
    """
    changes = []
    for sid, row in rows.items():
        if row.get("status") != "ok" or not _finite(row.get("bad_score")):
            continue
        flagged = float(row["bad_score"]) > float(threshold)
        if bool(row.get("flagged")) != flagged:
            row["flagged"] = flagged
            changes.append({"scan_id": sid, "flagged": flagged})
    return changes


def parse_warnings(row: dict[str, Any]) -> list[ScanWarning]:
    """Warnings of a report row: codes, messages and severities (no locations)."""
    from scanqc.scoring.checks import row_warnings  # scipy: not at napari start-up

    return row_warnings(row)


def merged_warnings(located: list[ScanWarning], row: dict[str, Any] | None,
                    ) -> list[ScanWarning]:
    """The worker's warnings (with slices and regions) plus those only the row holds.

    The engine adds some warnings after the worker (the region classifier's, duplicates,
    unlike the references or the dataset); they are in the row's columns only.
    """
    if not row:
        return list(located)
    have = {w.code for w in located}
    return [*located, *(w for w in parse_warnings(row) if w.code not in have)]


def score_banner(row: dict[str, Any] | None, warnings: list[ScanWarning] | None = None) -> str:
    """The canvas text of a scored scan, e.g. ``"bad_score 0.83 FLAGGED: fov_cut (right)"``."""
    if not row:
        return ""
    if row.get("status") not in (None, "ok"):
        return f"{row.get('status')}: {row.get('error') or ''}".strip()
    if not _finite(row.get("bad_score")):
        return ""
    text = f"bad_score {float(row['bad_score']):.2f}"
    warnings = warnings if warnings is not None else parse_warnings(row)
    ranked = sorted(warnings, key=lambda w: -SEVERITIES.index(w.severity)
                    if w.severity in SEVERITIES else 1)
    shown = [f"{w.code} ({w.region})" if w.region else w.code
             for w in ranked if w.severity in ("warn", "high")][:2]
    if row.get("flagged"):
        return text + " FLAGGED: " + (", ".join(shown) if shown else "unlike the references")
    return text + (" ok; " + ", ".join(shown) if shown else " ok")


# ----------------------------------------------------------------------------- workers
@dataclass
class ScanDetails:
    """What the dock shows about the current scan (built in a worker).

    Attributes:
        scan_id: The scan.
        row: Its engine row (None when only details were computed).
        warnings: Reader + check warnings, with slices and regions.
        shape: Spatial shape of the scan.
        slice_index: Scored slice indices (volumes with references), else empty.
        slice_scores: bad_score per scored slice.
        worst: Worst slice indices, worst first.
    """

    scan_id: str
    row: dict[str, Any] | None = None
    warnings: list[ScanWarning] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    slice_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    slice_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    worst: list[int] = field(default_factory=list)


def make_config(**overrides: Any) -> Any:
    """A :class:`scanqc.batch.engine.ScoreConfig` with ``overrides``."""
    from scanqc.batch.engine import ScoreConfig

    return ScoreConfig(**overrides)


def score_run(
    entries: list[ScanEntry],
    references: list[str] | None,
    config: Any,
    sink: list[dict[str, Any]],
    lock: threading.Lock,
    *,
    progress: Any = None,
    cancel: CancelToken | None = None,
) -> list[dict[str, Any]]:
    """Run the engine on ``entries``; append each row to ``sink`` (under ``lock``) as it comes.

    Returns:
        All rows.
    """
    from scanqc.batch.engine import score
    from scanqc.progress import check

    rows = []
    for row in score(entries, references=references or None, config=config,
                     progress=progress, cancel=cancel):
        rows.append(row)
        with lock:
            sink.append(row)
        check(cancel)  # rows of one embedding batch arrive together
    return rows


def train_references(
    ref_entries: list[ScanEntry],
    config: Any,
    *,
    epochs: int = 60,
    progress: Any = None,
    cancel: CancelToken | None = None,
) -> Any:
    """Fine-tune the reference head on ``ref_entries`` (worker side).

    Returns:
        The fitted :class:`scanqc.models.siamese.ReferenceModel`; the dock passes it as
        ``ScoreConfig.reference_model``, so later runs embed through the trained head.
    """
    from scanqc.batch.engine import fit_references

    if len(ref_entries) < 2:
        raise ValueError("mark at least 2 reference scans to train on")
    return fit_references([e.scan_id for e in ref_entries], ref_entries, config,
                          epochs=epochs, progress=progress, cancel=cancel)


def scan_details(
    entry: ScanEntry,
    references: list[str] | None,
    pool: list[ScanEntry],
    config: Any,
    context: Any = None,
    *,
    with_row: bool = True,
    progress: Any = None,
    cancel: CancelToken | None = None,
) -> tuple[ScanDetails, Any]:
    """Score one scan and compute what the dock shows about it (worker side).

    Args:
        entry: The scan.
        references: Reference scan ids or paths (None: no per-slice scores, and no row
            unless ``with_row`` is False).
        pool: Entries the references are looked up in.
        config: Engine settings.
        context: A previous :class:`scanqc.batch.engine.ReferenceContext` (reused).
        with_row: Also score the scan (its engine row).
        progress: ``progress(done, total, message)``.
        cancel: Stops the work (raises :class:`scanqc.progress.Cancelled`).

    Returns:
        ``(details, context)``; keep ``context`` to reuse the reference set.
    """
    from scanqc.batch.engine import build_reference_context
    from scanqc.batch.pipeline import prepare_entry

    if references and context is None:
        context = build_reference_context(references, pool, config, progress=progress,
                                          cancel=cancel)
    details = ScanDetails(scan_id=entry.scan_id)
    if with_row:
        if context is None:
            raise ValueError("mark at least 2 reference scans to score one scan "
                             "(or score the whole dataset)")
        rows = context.score_entries([entry], progress=progress, cancel=cancel)
        details.row = rows[0] if rows else None
    res = prepare_entry(entry, config.prep_options(config.root, False))
    details.warnings = list(res["warnings"])
    if res["slices"] is None:
        return details, context
    if entry.shape:
        details.shape = tuple(int(s) for s in entry.shape)
    if context is not None:
        ss = context.slice_scores(res["slices"], res["slice_index"])
        if ss is not None:
            details.slice_index = np.asarray(ss.slice_index, dtype=int)
            details.slice_scores = np.asarray(ss.bad_scores, dtype=float)
            details.worst = ss.worst(3)
    return details, context


# ----------------------------------------------------------------------------- widget
_SEVERITY_ICONS = {
    "high": QStyle.SP_MessageBoxCritical,
    "warn": QStyle.SP_MessageBoxWarning,
    "info": QStyle.SP_MessageBoxInformation,
}


class ScoreWidget(QWidget):
    """Dock widget: score the dataset against references, review and re-threshold.

    Attributes:
        config_overrides: Extra :class:`~scanqc.batch.engine.ScoreConfig` fields for every
            run (e.g. ``encoder=`` a custom module, ``workers=0``).
        rows: ``{scan_id: engine row}`` of the latest scoring.
        threshold: Current bad_score threshold.
        run_status: ``"idle"``, ``"running"``, ``"done"``, ``"cancelled"`` or
            ``"error: ..."``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None
                 ) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.config_overrides: dict[str, Any] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.details: ScanDetails | None = None
        self.threshold = 0.5
        self.run_status = "idle"
        self.finetuned: Any = None
        self.train_epochs = 60
        self._context: Any = None
        self._context_key: Any = None
        self._handle: WorkerHandle | None = None
        self._token: CancelToken | None = None
        self._details_handle: WorkerHandle | None = None
        self._sink: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush_rows)
        # the current scan's details start once its image is shown (or after a while)
        self._details_pending: str | None = None
        self._details_timer = QTimer(self)
        self._details_timer.setSingleShot(True)
        self._details_timer.setInterval(DETAILS_WAIT_MS)
        self._details_timer.timeout.connect(self._start_details)
        self._build_ui()
        self._connect()
        self._update_reference_label()

    # -- UI ------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        box = QGroupBox("References")
        bl = QVBoxLayout(box)
        row = QHBoxLayout()
        self.source_combo = QComboBox()
        self.source_combo.addItems(REFERENCE_SOURCES)
        self.statistic_combo = QComboBox()
        self.statistic_combo.addItems(["mean", "min"])
        self.statistic_combo.setToolTip("distance to the references: mean (Belton) or "
                                        "min (FewSOME)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        row.addWidget(self.source_combo, 1)
        row.addWidget(self.statistic_combo)
        row.addWidget(self.device_combo)
        bl.addLayout(row)
        self.refs_label = QLabel()
        bl.addWidget(self.refs_label)
        lay.addWidget(box)

        row = QHBoxLayout()
        self.train_btn = QPushButton("Train on references")
        self.score_btn = QPushButton("Score dataset")
        self.score_one_btn = QPushButton("Score current scan")
        row.addWidget(self.train_btn)
        row.addWidget(self.score_btn)
        row.addWidget(self.score_one_btn)
        lay.addLayout(row)

        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.cancel_btn = QPushButton("Cancel")
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)

        box = QGroupBox("Current scan")
        bl = QVBoxLayout(box)
        self.current_label = QLabel("no scan")
        self.current_label.setWordWrap(True)
        bl.addWidget(self.current_label)
        self.warnings_list = QListWidget()
        self.warnings_list.setMaximumHeight(110)
        bl.addWidget(self.warnings_list)
        self.slice_plot = SliceScorePlot()
        bl.addWidget(self.slice_plot)
        lay.addWidget(box)

        box = QGroupBox("Threshold")
        bl = QVBoxLayout(box)
        row = QHBoxLayout()
        self.threshold_slider = QSlider(Qt.Horizontal)
        self.threshold_slider.setRange(0, SLIDER_STEPS)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setSingleStep(0.01)
        row.addWidget(self.threshold_slider, 1)
        row.addWidget(self.threshold_spin)
        bl.addLayout(row)
        self.histogram = ScoreHistogram()
        bl.addWidget(self.histogram)
        self.flag_label = QLabel("")
        bl.addWidget(self.flag_label)
        lay.addWidget(box)
        lay.addStretch(1)
        self._show_threshold(self.threshold)
        self._set_busy(False)

    def _connect(self) -> None:
        self.train_btn.clicked.connect(self.train)
        self.score_btn.clicked.connect(self.score_dataset)
        self.score_one_btn.clicked.connect(self.score_current)
        self.cancel_btn.clicked.connect(self.cancel)
        self.source_combo.currentIndexChanged.connect(self._update_reference_label)
        self.threshold_slider.valueChanged.connect(
            lambda v: self.set_threshold(v / SLIDER_STEPS))
        self.threshold_spin.valueChanged.connect(self.set_threshold)
        self.histogram.threshold_changed.connect(self.set_threshold)
        self.slice_plot.slice_clicked.connect(self.go_to_slice)
        self.warnings_list.itemClicked.connect(self._on_warning_clicked)
        self.state.current_changed.connect(self._on_current_changed)
        self.state.rows_changed.connect(self._on_rows_changed)
        self.state.dataset_changed.connect(self._on_dataset_changed)
        self.state.scan_shown.connect(self._on_scan_shown)

    def _set_busy(self, busy: bool, text: str = "") -> None:
        for b in (self.train_btn, self.score_btn, self.score_one_btn):
            b.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        self.progress.setVisible(busy)
        if busy:
            self.progress.setRange(0, 0)
        if text:
            self.status.setText(text)

    # -- references -----------------------------------------------------------------------
    def references(self) -> tuple[list[str], list[ScanEntry]]:
        """Return ``(reference items for the engine, reference entries in the dataset)``."""
        if self.source_combo.currentIndex() == 1:
            paths = layer_reference_paths(self.viewer)
            by_path = {str(Path(p).resolve()): e for e in self.state.entries for p in e.paths}
            entries = [by_path[str(Path(p).resolve())] for p in paths
                       if str(Path(p).resolve()) in by_path]
            return paths, entries
        entries = reference_entries(self.state)
        return [e.scan_id for e in entries], entries

    def _update_reference_label(self, *_args: Any) -> None:
        items, _entries = self.references()
        n = len(items)
        where = "open layers" if self.source_combo.currentIndex() == 1 else "marked"
        text = f"{n} reference scan{'s' if n != 1 else ''} ({where})"
        if n < 2:
            text += ": fewer than 2, the dataset is scored against itself (kNN)"
        text += few_references_hint(n)
        if self.finetuned is not None:
            text += "; fine-tuned model in use"
        self.refs_label.setText(text)

    def config(self) -> Any:
        """The engine settings of the next run."""
        kw: dict[str, Any] = {
            "device": self.device_combo.currentText(),
            "statistic": self.statistic_combo.currentText(),
            "root": str(self.state.root) if self.state.root is not None else None,
            "workers": DEFAULT_WORKERS,
        }
        kw.update(self.config_overrides)
        if self.finetuned is not None:
            kw["reference_model"] = self.finetuned
        return make_config(**kw)

    # -- runs -----------------------------------------------------------------------------
    def _start(self, fn: Any, *args: Any, on_done: Any, text: str, **kw: Any) -> None:
        if self._handle is not None and self._handle.running:
            self.status.setText("a run is already in progress")
            return
        if self._details_handle is not None:
            self._details_handle.cancel()
            self._details_handle = None
        self._token = CancelToken()
        self.run_status = "running"
        self._set_busy(True, text)
        self._handle = start_worker(
            fn, *args, cancel=self._token, on_progress=self._on_progress,
            on_done=on_done, on_error=self._on_error, on_cancelled=self._on_cancelled, **kw)

    def _need_dataset(self) -> bool:
        if not self.state.entries:
            self.status.setText("open a dataset in the Dataset dock first")
            return False
        return True

    def score_dataset(self) -> None:
        """Score every scan of the dataset (engine in a worker)."""
        if not self._need_dataset():
            return
        refs, _ = self.references()
        if len(refs) < 2:
            refs = []
        with self._lock:
            self._sink.clear()
        self._flush_timer.start()
        self._drop_context()
        self._start(score_run, list(self.state.entries), refs, self.config(), self._sink,
                    self._lock, on_done=self._on_scored,
                    text=f"Scoring {len(self.state.entries)} scans …")

    def score_current(self) -> None:
        """Score the current scan against the references (engine in a worker)."""
        if not self._need_dataset():
            return
        entry = self.state.entry(self.state.current) if self.state.current else None
        if entry is None:
            self.status.setText("open a scan in the Dataset dock first")
            return
        refs, ref_entries = self.references()
        if len(refs) < 2:
            self.status.setText("mark at least 2 reference scans to score one scan "
                                "(or score the whole dataset)")
            return
        pool = list({e.scan_id: e for e in [entry, *ref_entries]}.values())
        self._start(scan_details, entry, refs, pool, self.config(), self._reuse_context(refs),
                    on_done=self._on_scored_one, text=f"Scoring {entry.name} …")

    def train(self) -> None:
        """Fine-tune the reference head on the reference scans (worker)."""
        if not self._need_dataset():
            return
        _refs, ref_entries = self.references()
        if len(ref_entries) < 2:
            self.status.setText("mark at least 2 reference scans to train on")
            return
        self.finetuned = None
        self._drop_context()
        self._start(train_references, ref_entries, self.config(), epochs=self.train_epochs,
                    on_done=self._on_trained,
                    text=f"Fine-tuning on {len(ref_entries)} references …")

    def cancel(self) -> None:
        """Stop the running work at its next check."""
        if self._token is not None:
            self._token.cancel()
        if self._handle is not None:
            self._handle.cancel()

    # -- worker callbacks (GUI thread) ----------------------------------------------------
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
            self.progress.setFormat(f"%v/%m {message}"[:80])
        else:
            self.progress.setRange(0, 0)
        if message:
            self.status.setText(message)
        self._flush_rows()

    def _finish(self, status: str, text: str) -> None:
        self._flush_timer.stop()
        self._handle = None
        self.run_status = status
        self._set_busy(False, text)

    def _on_error(self, exc: BaseException) -> None:
        self._flush_rows()
        msg = " ".join(str(exc).split()) or type(exc).__name__
        self._finish(f"error: {msg}", f"error: {msg}")

    def _on_cancelled(self) -> None:
        self._flush_rows()
        self._finish("cancelled", "cancelled")

    def _on_scored(self, rows: list[dict[str, Any]]) -> None:
        self._flush_rows()
        self.rows = {str(r["scan_id"]): r for r in rows}  # every row, in engine order
        self.set_threshold(default_threshold(rows), force=True)
        self._refresh_histogram()
        n_flag = sum(bool(r.get("flagged")) for r in rows)
        n_err = sum(r.get("status") == "error" for r in rows)
        self._finish("done", f"{len(rows)} scans scored, {n_flag} flagged, {n_err} errors")
        self._on_current_changed(self.state.current)

    def _on_scored_one(self, result: tuple[ScanDetails, Any]) -> None:
        details, context = result
        self._keep_context(context)
        if details.row is not None:
            self._ingest([details.row])
            self._refresh_histogram()
        self._finish("done", f"{self.state.entry(details.scan_id).name}: scored")
        self._show_details(details)

    def _on_trained(self, module: Any) -> None:
        self.finetuned = module
        self._update_reference_label()
        self._finish("done", "fine-tuned on the references; score again to use it")

    # -- rows -----------------------------------------------------------------------------
    def _ingest(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.rows[str(r["scan_id"])] = r
        self.state.update_rows([table_fields(r) for r in rows])

    def _flush_rows(self) -> None:
        with self._lock:
            rows, self._sink[:] = list(self._sink), []
        if rows:
            self._ingest(rows)
            if not (self._handle is not None and self._handle.running):
                return
            self._refresh_histogram()

    def _refresh_histogram(self) -> None:
        scores = [r["bad_score"] for r in self.rows.values()
                  if r.get("status") == "ok" and _finite(r.get("bad_score"))]
        self.histogram.set_scores(scores)
        self.histogram.set_threshold(self.threshold)
        n_flag = sum(bool(r.get("flagged")) for r in self.rows.values())
        self.flag_label.setText(f"{n_flag} of {len(scores)} scored scans flagged "
                                f"at bad_score > {self.threshold:.3f}")

    # -- threshold ------------------------------------------------------------------------
    def _show_threshold(self, value: float) -> None:
        for w in (self.threshold_slider, self.threshold_spin):
            w.blockSignals(True)
        self.threshold_slider.setValue(int(round(value * SLIDER_STEPS)))
        self.threshold_spin.setValue(value)
        for w in (self.threshold_slider, self.threshold_spin):
            w.blockSignals(False)
        self.histogram.set_threshold(value)

    def set_threshold(self, value: float, force: bool = False) -> None:
        """Set the bad_score threshold and re-flag the rows (nothing is recomputed)."""
        value = float(np.clip(value, 0.0, 1.0))
        if not force and abs(value - self.threshold) < 1e-9:
            return
        self.threshold = value
        self._show_threshold(value)
        changes = reflag(self.rows, value)
        if changes:
            self.state.update_rows(changes)
        self._refresh_histogram()
        self._update_current_view()

    # -- current scan ---------------------------------------------------------------------
    def _on_dataset_changed(self) -> None:
        self.rows = {}
        self.details = None
        self._drop_context()
        self._refresh_histogram()
        self._update_reference_label()

    def _on_rows_changed(self, _ids: Any) -> None:
        self._update_reference_label()

    def _reuse_context(self, refs: list[str]) -> Any:
        key = (tuple(refs), id(self.finetuned), self.statistic_combo.currentText())
        return self._context if self._context_key == key else None

    def _keep_context(self, context: Any) -> None:
        refs, _ = self.references()
        self._context = context
        self._context_key = (tuple(refs), id(self.finetuned),
                             self.statistic_combo.currentText())

    def _drop_context(self) -> None:
        if self._context is not None:
            self._context.close()
        self._context, self._context_key = None, None

    def _on_current_changed(self, scan_id: str | None) -> None:
        self.details = None
        self.slice_plot.clear_scores()
        if self._details_handle is not None:
            self._details_handle.cancel()
            self._details_handle = None
        self._details_timer.stop()
        self._details_pending = None
        clear_warning_overlay(self.viewer)
        self._update_current_view()
        row = self.rows.get(scan_id or "")
        entry = self.state.entry(scan_id) if scan_id else None
        busy = self._handle is not None and self._handle.running
        if row is None or entry is None or row.get("status") != "ok" or busy:
            return
        refs, _ref_entries = self.references()
        if len(refs) < 2 and not row.get("warnings"):
            return  # nothing more to show
        # The details read the scan again and run the checks: started together with the
        # Dataset dock's read of the image, they delayed the image (two worker threads
        # sharing the GIL). They start when the image is shown (scan_shown), at once when
        # it is already, or after DETAILS_WAIT_MS when no dock shows it.
        self._details_pending = scan_id
        if self._image_layer(scan_id) is not None:
            self._start_details()
        else:
            self._details_timer.start()

    def _start_details(self) -> None:
        scan_id, self._details_pending = self._details_pending, None
        self._details_timer.stop()
        busy = self._handle is not None and self._handle.running  # a run began meanwhile
        if (scan_id is None or scan_id != self.state.current or busy
                or self._details_handle is not None):
            return
        entry = self.state.entry(scan_id)
        if entry is None:
            return
        refs, ref_entries = self.references()
        pool = list({e.scan_id: e for e in [entry, *ref_entries]}.values())
        self._details_handle = start_worker(
            scan_details, entry, refs if len(refs) >= 2 else None, pool, self.config(),
            self._reuse_context(refs), with_row=False,
            on_done=partial(self._on_details, scan_id),
            on_error=lambda exc: self.status.setText(f"details: {exc}"))

    def _on_details(self, scan_id: str, result: tuple[ScanDetails, Any]) -> None:
        details, context = result
        if context is not None:
            self._keep_context(context)
        if scan_id == self.state.current:
            self._details_handle = None
            self._show_details(details)

    def _show_details(self, details: ScanDetails) -> None:
        self.details = details
        if details.scan_id != self.state.current:
            return
        if len(details.slice_index) > 1:
            self.slice_plot.set_scores(details.slice_index, details.slice_scores,
                                       details.worst, threshold=0.5)
        else:
            self.slice_plot.clear_scores("per-slice scores: volumes with references only")
        self._update_current_view()
        self._draw_overlay()

    def _image_layer(self, scan_id: str | None) -> Any:
        return scan_layer(self.viewer, scan_id)

    def _on_scan_shown(self, scan_id: Any) -> None:
        if scan_id is not None and scan_id == self._details_pending:
            self._start_details()
        if self.details is not None and scan_id == self.details.scan_id:
            self._draw_overlay()  # above the newly shown image
            self._update_current_view()

    def _draw_overlay(self) -> None:
        d = self.details
        if d is None or d.scan_id != self.state.current:
            return
        shown = [w for w in merged_warnings(d.warnings, self.rows.get(d.scan_id))
                 if w.severity in ("warn", "high")]
        layer = self._image_layer(d.scan_id)
        shape = d.shape
        if layer is not None:
            shape = tuple(layer.data.shape[:layer.ndim])
        entry = self.state.entry(d.scan_id)
        if not shown or not shape:
            clear_warning_overlay(self.viewer)
            return
        name = entry.name if entry is not None else d.scan_id
        show_warning_overlay(
            self.viewer, Path(name).name, shown, shape,
            scale=layer.scale if layer is not None else None,
            translate=layer.translate if layer is not None else None)

    def _update_current_view(self) -> None:
        sid = self.state.current
        row = self.rows.get(sid or "")
        entry = self.state.entry(sid) if sid else None
        self.warnings_list.clear()
        if entry is None:
            self.current_label.setText("no scan")
            return
        warnings = merged_warnings(self.details.warnings, row) if (
            self.details is not None and self.details.scan_id == sid) else (
            parse_warnings(row) if row else list(entry.warnings))
        text = score_banner(row, warnings)
        self.current_label.setText(f"<b>{entry.name}</b><br>{text or 'not scored'}")
        for w in warnings:
            item = QListWidgetItem(f"{w.code}: {w.message}" if w.message else w.code)
            item.setIcon(self.style().standardIcon(_SEVERITY_ICONS.get(
                w.severity, QStyle.SP_MessageBoxInformation)))
            item.setForeground(QBrush(QColor(SEVERITY_COLORS.get(w.severity, "#ffffff"))))
            hint = advice(w.code)
            item.setToolTip(f"{w.severity}; region {w.region or '-'}; slices "
                            f"{'-'.join(map(str, w.slices)) if w.slices else '-'}"
                            + (f"\n{hint}" if hint else ""))
            item.setData(Qt.UserRole, list(w.slices) if w.slices else None)
            self.warnings_list.addItem(item)
        if text:
            base, _color = label_banner(entry.name, self.state.rows.get(sid, {}))
            color = "#ef5350" if row and row.get("flagged") else "#66bb6a"
            set_banner(self.viewer, f"{base}  |  {text}", color)

    def _on_warning_clicked(self, item: QListWidgetItem) -> None:
        slices = item.data(Qt.UserRole)
        if slices:
            self.go_to_slice(int(slices[0]))

    def go_to_slice(self, index: int) -> None:
        """Move the viewer to slice ``index`` (axis 0) of the current scan."""
        go_to_slice(self.viewer, self._image_layer(self.state.current), index)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Stop running work and disconnect from the shared state."""
        self.cancel()
        self._flush_timer.stop()
        self._details_timer.stop()
        self._drop_context()
        for sig, slot in ((self.state.current_changed, self._on_current_changed),
                          (self.state.rows_changed, self._on_rows_changed),
                          (self.state.dataset_changed, self._on_dataset_changed),
                          (self.state.scan_shown, self._on_scan_shown)):
            with contextlib.suppress(Exception):  # already gone
                sig.disconnect(slot)
        super().closeEvent(event)
