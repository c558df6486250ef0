"""The "Batch" dock: score a whole folder into a report file, as ``scanqc score`` does.

Choose the input folder (default: the Dataset dock's root), the report file (CSV, parquet
or JSON lines, from its suffix), an optional HTML report, worker processes, device and
resume; **Run** runs :func:`scanqc.batch.engine.score` in a worker (progress bar,
rate/ETA, Cancel) and writes rows crash-safe as they finish
(:class:`scanqc.batch.output.ReportWriter`). Rows also fill the Dataset table when the
folder is the open dataset. At the end a summary line, and a button opening the HTML
report in the browser. References are the scans marked in the Dataset dock (kNN fallback
without them).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer, QUrl
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from scanqc.progress import Cancelled, CancelToken, check
from scanqc.widgets._present import few_references_hint
from scanqc.widgets._state import get_state
from scanqc.widgets._threading import WorkerHandle, start_worker
from scanqc.widgets.score import make_config, reference_entries, table_fields

if TYPE_CHECKING:
    import napari

#: Milliseconds between two pushes of arrived rows into the table.
FLUSH_MS = 200
#: Report suffixes offered in the save dialog.
REPORT_FILTER = "CSV (*.csv);;Parquet (*.parquet);;JSON lines (*.jsonl *.json)"


def run_batch(
    folder: str,
    out: str,
    html: str | None,
    config: Any,
    references: list[str] | None,
    sink: list[dict[str, Any]],
    lock: threading.Lock,
    *,
    progress: Any = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Score ``folder`` into the report ``out`` (worker side); rows also go to ``sink``.

    Args:
        folder: Input folder (searched recursively).
        out: Report file; its suffix picks the format.
        html: Optional HTML report path.
        config: Engine settings (``config.resume`` keeps an earlier report's rows).
        references: Reference scan ids or paths (None: kNN fallback).
        sink: Rows are appended here (under ``lock``) as they arrive.
        lock: Guards ``sink``.
        progress: ``progress(done, total, message)``.
        cancel: Stops the run; rows written so far are kept.

    Returns:
        Summary: ``n``, ``ok``, ``flagged``, ``error``, ``skipped``, ``cached``, ``seconds``,
        ``out``, ``html``, ``findings`` (the three most severe, then commonest, warn/high
        warnings: ``(code, severity, scans)``, :class:`scanqc.batch.report_html.Findings`).

    Raises:
        scanqc.progress.Cancelled: ``cancel`` was set (the report keeps its rows).
    """
    from scanqc.batch.cache import ResultCache
    from scanqc.batch.engine import score
    from scanqc.batch.output import ReportWriter, format_from_path, read_report
    from scanqc.batch.report_html import Findings

    t0 = time.perf_counter()
    out_path = Path(out)
    fmt = format_from_path(out_path)
    cache = ResultCache(out_path.with_name(out_path.name + ".cache.sqlite"))
    writer = ReportWriter(out_path, fmt, resume=bool(config.resume))
    counts = {"ok": 0, "error": 0, "skipped": 0, "flagged": 0, "cached": 0}
    found = Findings()  # the sink is drained by the dock: count as rows arrive
    paths: dict[str, tuple[str, ...]] = {}
    finished = False
    try:
        for row in score([folder], references=references or None, config=config,
                         progress=progress, cancel=cancel, cache=cache):
            writer.write(row)
            status = row.get("status") or "error"
            counts[status] = counts.get(status, 0) + 1
            counts["cached"] += bool(row.get("_cached"))
            found.add(row)
            if row.get("flagged"):
                counts["flagged"] += 1
                paths[str(row["scan_id"])] = tuple(row.get("_paths") or ())
            with lock:
                sink.append(row)
            check(cancel)  # rows of one embedding batch arrive together
        finished = True
    finally:
        written = writer.close(finalize=finished)
        cache.close()
    findings = found.top(3)
    html_path = None
    if html:
        from scanqc.batch.report_html import write_html_report

        rows = read_report(out_path, fmt)
        for r in rows:
            if str(r.get("scan_id")) in paths:
                r["_paths"] = paths[str(r["scan_id"])]
        html_path = str(write_html_report(rows, html, root=config.root or folder,
                                          statistic=config.statistic,
                                          include_identifiers=config.include_identifiers))
    return {
        "n": counts["ok"] + counts["error"] + counts["skipped"],
        **counts,
        "seconds": time.perf_counter() - t0,
        "out": str(written),
        "html": html_path,
        "findings": findings,
    }


def summary_line(s: dict[str, Any]) -> str:
    """One line about a finished run."""
    resumed = f" ({s['cached']} from the resume cache)" if s.get("cached") else ""
    text = (f"{s['n']} scanned{resumed}, {s['flagged']} flagged, {s['error']} errors, "
            f"{s['skipped']} skipped in {s['seconds']:.1f} s -> {Path(s['out']).name}")
    if s.get("findings"):
        text += "; most found: " + ", ".join(f"{c} ({n})" for c, _sev, n in s["findings"])
    return text


def rate_eta(done: int, total: int, seconds: float) -> str:
    """``"3.2 scans/s, ETA 0:41"`` (empty before the first scan)."""
    if done <= 0 or seconds <= 0:
        return ""
    rate = done / seconds
    text = f"{rate:.2f} scans/s" if rate < 10 else f"{rate:.0f} scans/s"
    if total > done:
        left = int(round((total - done) / rate))
        text += f", ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"
    return text


class BatchWidget(QWidget):
    """Dock widget: run the scoring engine on a folder and write a report.

    Attributes:
        config_overrides: Extra :class:`~scanqc.batch.engine.ScoreConfig` fields.
        summary: The last run's summary (see :func:`run_batch`), or None.
        run_status: ``"idle"``, ``"running"``, ``"done"``, ``"cancelled"`` or ``"error: ..."``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None
                 ) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.config_overrides: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.run_status = "idle"
        self._handle: WorkerHandle | None = None
        self._token: CancelToken | None = None
        self._sink: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._timer = QTimer(self)
        self._timer.setInterval(FLUSH_MS)
        self._timer.timeout.connect(self._flush_rows)
        self._build_ui()
        self.state.dataset_changed.connect(self._on_dataset_changed)
        self._on_dataset_changed()

    # -- UI ------------------------------------------------------------------------------
    def _path_row(self, edit: QLineEdit, slot: Any) -> QHBoxLayout:
        row = QHBoxLayout()
        btn = QPushButton("…")
        btn.setFixedWidth(32)
        btn.clicked.connect(slot)
        row.addWidget(edit, 1)
        row.addWidget(btn)
        return row

    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder to score (recursively)")
        form.addRow("Input", self._path_row(self.folder_edit, self._browse_folder))
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("report.csv / .parquet / .jsonl")
        form.addRow("Report", self._path_row(self.out_edit, self._browse_out))
        self.html_edit = QLineEdit()
        self.html_edit.setPlaceholderText("optional report.html")
        form.addRow("HTML", self._path_row(self.html_edit, self._browse_html))
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(0, max(1, os.cpu_count() or 1) * 2)
        self.workers_spin.setValue(max(1, min(8, (os.cpu_count() or 2) - 1)))
        self.workers_spin.setToolTip("worker processes reading scans (0: in this process)")
        form.addRow("Workers", self.workers_spin)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        form.addRow("Device", self.device_combo)
        self.resume_check = QCheckBox("resume (keep rows of an earlier run of this report)")
        form.addRow("", self.resume_check)
        self.asymmetry_check = QCheckBox("asymmetry score (left-right; ~6 s per head volume)")
        self.asymmetry_check.setToolTip(
            "fill the asymmetry column with each scan's left-right asymmetry score; "
            "heatmaps: the Asymmetry dock or scanqc asymmetry")
        form.addRow("", self.asymmetry_check)
        self.identifiers_check = QCheckBox("keep patient names in paths (include identifiers)")
        self.identifiers_check.setToolTip(
            "by default folder and file names that hold the patient's name or an ID from the "
            "DICOM header are written as [redacted], and images with burned-in text get no "
            "thumbnail in the HTML report")
        form.addRow("", self.identifiers_check)
        lay.addLayout(form)
        self.refs_label = QLabel("")
        lay.addWidget(self.refs_label)

        row = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        self.progress = QProgressBar()
        lay.addWidget(self.progress)
        self.rate_label = QLabel("")
        lay.addWidget(self.rate_label)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.open_btn = QPushButton("Open HTML report")
        self.open_btn.setEnabled(False)
        lay.addWidget(self.open_btn)
        lay.addStretch(1)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.open_btn.clicked.connect(self.open_report)
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        self.progress.setVisible(busy)

    def _browse_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder to score", self.folder_edit.text())
        if d:
            self.folder_edit.setText(d)

    def _browse_out(self) -> None:
        f, _ = QFileDialog.getSaveFileName(self, "Report file", self.out_edit.text(),
                                           REPORT_FILTER)
        if f:
            self.out_edit.setText(f)

    def _browse_html(self) -> None:
        f, _ = QFileDialog.getSaveFileName(self, "HTML report", self.html_edit.text(),
                                           "HTML (*.html)")
        if f:
            self.html_edit.setText(f)

    def _on_dataset_changed(self) -> None:
        if self.state.root is not None:
            self.folder_edit.setText(str(self.state.root))
            if not self.out_edit.text():
                self.out_edit.setText(str(Path(self.state.root).parent /
                                          f"{Path(self.state.root).name}_scanqc.csv"))
        n = len(reference_entries(self.state))
        self.refs_label.setText(
            f"{n} reference scans marked in the Dataset dock{few_references_hint(n)}" if n >= 2
            else "no reference set marked: scans are compared with each other (kNN)")

    # -- run ------------------------------------------------------------------------------
    def config(self, folder: str) -> Any:
        """The engine settings of a run on ``folder``."""
        root = str(self.state.root) if self._is_dataset(folder) else folder
        kw: dict[str, Any] = {
            "workers": self.workers_spin.value(),
            "device": self.device_combo.currentText(),
            "resume": self.resume_check.isChecked(),
            "asymmetry": self.asymmetry_check.isChecked(),
            "include_identifiers": self.identifiers_check.isChecked(),
            "root": root,
        }
        kw.update(self.config_overrides)
        return make_config(**kw)

    def _is_dataset(self, folder: str) -> bool:
        return self.state.root is not None and \
            Path(folder).resolve() == Path(self.state.root).resolve()

    def run(self) -> None:
        """Start scoring the folder into the report (engine in a worker)."""
        if self._handle is not None and self._handle.running:
            return
        folder = self.folder_edit.text().strip()
        out = self.out_edit.text().strip()
        if not folder or not Path(folder).is_dir():
            self.status.setText(f"{folder or 'input'}: no such folder")
            return
        if not out:
            self.status.setText("choose a report file")
            return
        refs = [e.path for e in reference_entries(self.state)]
        refs = refs if len(refs) >= 2 else []
        html = self.html_edit.text().strip() or None
        self.summary = None
        self.open_btn.setEnabled(False)
        with self._lock:
            self._sink.clear()
        self._token = CancelToken()
        self._t0 = time.monotonic()
        self.run_status = "running"
        self.progress.setRange(0, 0)
        self.rate_label.setText("")
        self.status.setText(f"Scoring {folder} …")
        self._set_busy(True)
        self._timer.start()
        self._handle = start_worker(
            run_batch, folder, out, html, self.config(folder), refs, self._sink, self._lock,
            cancel=self._token, on_progress=self._on_progress, on_done=self._on_done,
            on_error=self._on_error, on_cancelled=self._on_cancelled)

    def cancel(self) -> None:
        """Stop the run at its next scan; rows already written are kept."""
        if self._token is not None:
            self._token.cancel()
        if self._handle is not None:
            self._handle.cancel()

    def open_report(self) -> None:
        """Open the HTML report in the browser."""
        if self.summary and self.summary.get("html"):
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.summary["html"])))

    # -- callbacks (GUI thread) -----------------------------------------------------------
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
            self.progress.setFormat(f"%v/%m {message}"[:80])
        self.rate_label.setText(rate_eta(done, total, time.monotonic() - self._t0))
        self._flush_rows()

    def _flush_rows(self) -> None:
        with self._lock:
            rows, self._sink[:] = list(self._sink), []
        if rows and self.state.rows:
            self.state.update_rows([table_fields(r) for r in rows])

    def _finish(self, status: str, text: str) -> None:
        self._flush_rows()
        self._timer.stop()
        self._handle = None
        self.run_status = status
        self.status.setText(text)
        self._set_busy(False)

    def _on_done(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        self.open_btn.setEnabled(bool(summary.get("html")))
        self._finish("done", summary_line(summary))

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._on_cancelled()
            return
        msg = " ".join(str(exc).split()) or type(exc).__name__
        self._finish(f"error: {msg}", f"error: {msg}")

    def _on_cancelled(self) -> None:
        self._finish("cancelled", "cancelled; rows already written are kept (run again with "
                     "resume to finish)")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Stop the run and disconnect from the shared state."""
        self.cancel()
        self._timer.stop()
        with contextlib.suppress(Exception):  # already gone
            self.state.dataset_changed.disconnect(self._on_dataset_changed)
        super().closeEvent(event)
