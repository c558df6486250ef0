"""A self-contained HTML report of a scoring run (one file, images inline).

Summary counts, the histogram of the distance (or bad score) with the threshold line, the
findings (each warning code with its severity and the number of scans that have it, the
most severe first; info notes on one line), then the scans: flagged first (highest score
first) with thumbnails of the middle and the worst slice, their warnings and region, and a
relative link to the file. Every string from the data is HTML-escaped; only the report
columns (no patient identifiers) are shown. Thumbnails are re-read from the files for the
first ``max_thumbnails`` scored scans in report order (flagged ones first), so the report
stays small for large datasets.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from scanqc import __version__
from scanqc.io.privacy import REDACTED, declares_burned_in_text
from scanqc.io.scan import file_name_of

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
td.wrap{overflow-wrap:anywhere} td.name{min-width:16em} th{white-space:nowrap}
tr.flagged{background:#fff1f0} tr.error{background:#fffbe6} tr.skipped{color:#888}
.counts span{display:inline-block;margin-right:1.5em;font-size:15px}
img.thumb{width:96px;height:96px;object-fit:contain;background:#000;margin-right:2px}
.small{color:#666;font-size:12px}
table.findings{width:auto;margin-bottom:1em} tr.high td{color:#b71c1c} tr.warn td{color:#8a5a00}
td.advice{color:#444;max-width:48em}
"""


def _esc(value: Any) -> str:
    """HTML-escape any value ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.3f}"
    return html.escape(str(value), quote=True)


def _png_b64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def histogram_png(values: Sequence[float], threshold: float | None, xlabel: str) -> str:
    """Base64 PNG of a histogram with a dashed threshold line (matplotlib Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.6), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if vals.size:
        ax.hist(vals, bins=min(50, max(5, int(np.sqrt(vals.size)) * 2)), color="#4a78b5")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(float(threshold), color="#c0392b", linestyle="--",
                   label=f"threshold {threshold:.3g}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("scans")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb(slice2d: np.ndarray, window: tuple[float, float], size: int = 96) -> np.ndarray:
    from PIL import Image

    from scanqc.io.intensity import normalize

    img = (normalize(slice2d, window=window) * 255).astype(np.uint8)
    im = Image.fromarray(img)
    im.thumbnail((size, size))
    return np.asarray(im)


class BurnedInText(Exception):
    """The scan's header says its pixels carry burned-in text (names, IDs, dates)."""


def thumbnails(row: dict[str, Any], root: str | None, burned_in: bool = False
               ) -> list[tuple[str, str]]:
    """``[(label, base64 png)]`` for the middle and the worst slice of the row's scan.

    Raises:
        BurnedInText: The header says ``BurnedInAnnotation`` YES (ultrasound, screen
            captures): its pixels may show the patient's name, so no thumbnail is made
            unless ``burned_in`` (the user asked for identifiers).
    """
    from scanqc.io.intensity import robust_window
    from scanqc.io.load import load_scan
    from scanqc.io.scan import ScanEntry

    paths = tuple(row.get("_paths") or ())
    if not paths and row.get("path"):
        paths = (os.path.join(root or "", file_name_of(str(row["path"]))),)
    if not paths:
        return []
    entry = ScanEntry(scan_id=str(row.get("scan_id") or ""), paths=paths,
                      kind=row.get("kind") or "image", format=row.get("format") or "")
    scan = load_scan(entry)
    if not burned_in and declares_burned_in_text(scan.metadata):
        raise BurnedInText
    stack = scan.slices()
    window = robust_window(stack, scan.modality)
    mid = stack.shape[0] // 2
    out = [(f"slice {mid}", _png_b64(_thumb(stack[mid], window)))]
    worst = str(row.get("worst_slices") or "").split(";")[0]
    if worst.strip().isdigit() and int(worst) < stack.shape[0] and int(worst) != mid:
        out.append((f"worst slice {int(worst)}", _png_b64(_thumb(stack[int(worst)], window))))
    return out


def _href(row: dict[str, Any], root: str | None, out_dir: Path) -> str:
    """A relative link to the row's file; ``""`` when its path names a patient."""
    if REDACTED in str(row.get("path") or ""):
        return ""  # the link would carry the name the report leaves out
    paths = row.get("_paths") or ()
    target = paths[0] if paths else os.path.join(
        root or "", file_name_of(str(row.get("path") or "")))
    try:
        rel = os.path.relpath(os.path.abspath(target), os.path.abspath(out_dir))
    except ValueError:
        rel = os.path.abspath(target)
    # a name that is not UTF-8 links by its own bytes (%FF), as a browser opens it
    return quote(Path(rel).as_posix(), errors="surrogateescape")


def _finite(value: object, default: float = -1.0) -> float:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else default


def _order(row: dict[str, Any], distance: str = "mean_distance") -> tuple:
    """Flagged, then scored, error and skipped rows; by bad score, then by distance.

    The distance breaks the ties of the bad scores that saturate at 1.0 (scans far from
    every reference, or forced by a high-severity warning), so the farthest come first.
    """
    status = row.get("status") or ""
    group = 0 if row.get("flagged") else 1 if status == "ok" else 2 if status == "error" else 3
    return (group, -_finite(row.get("bad_score")), -_finite(row.get(distance)),
            str(row.get("path") or ""))


def _warnings_cell(row: dict[str, Any]) -> str:
    """The warnings cell: warn/high codes in bold with their messages; info notes below.

    Info notes (a PNG without pixel size, the cut border of a radiograph) are listed by
    code only, their messages in the tooltip, so the findings that matter stand out.
    """
    from scanqc.scoring.checks import row_warnings

    found = row_warnings(row)
    major = [w for w in found if w.severity != "info"]
    notes = [w for w in found if w.severity == "info"]
    codes = ";".join(dict.fromkeys(w.code for w in major))
    out = f"<b>{_esc(codes)}</b>" if codes else ""
    if major:
        out += "<div class='small'>" + _esc(" | ".join(
            f"{w.code} ({w.severity}): {w.message}" for w in major)) + "</div>"
    if notes:
        tip = " | ".join(f"{w.code}: {w.message}" for w in notes)
        out += (f"<div class='small note' title='{_esc(tip)}'>notes: "
                f"{_esc(', '.join(dict.fromkeys(w.code for w in notes)))}</div>")
    return out


def _fmt_float(value: object) -> str:
    """A finite number as text (4 significant digits), anything else as ``""``."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.4g}"
    return ""


class Findings:
    """Counts of ``(code, severity)`` over report rows, added one row at a time.

    A scan counts once per code, at the highest severity that code has in it (read from
    ``warnings_detail``), so ``fov_cut`` can appear as ``warn`` on some scans and ``info``
    on others. Only scored rows (status ``ok``) count.
    """

    def __init__(self) -> None:
        """Start with no rows."""
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, row: dict[str, Any]) -> None:
        """Count the warnings of one report row."""
        from scanqc.io.scan import SEVERITIES
        from scanqc.scoring.checks import row_warnings

        if row.get("status") != "ok" or not row.get("warnings"):
            return
        worst: dict[str, int] = {}
        for w in row_warnings(row):
            rank = SEVERITIES.index(w.severity) if w.severity in SEVERITIES else 0
            worst[w.code] = max(worst.get(w.code, 0), rank)
        for code, rank in worst.items():
            key = (code, SEVERITIES[rank])
            self.counts[key] = self.counts.get(key, 0) + 1

    def table(self) -> list[tuple[str, str, int]]:
        """``(code, severity, scans)``, the most severe first, then the commonest."""
        from scanqc.io.scan import SEVERITIES

        return sorted(((c, s, n) for (c, s), n in self.counts.items()),
                      key=lambda t: (-SEVERITIES.index(t[1]), -t[2], t[0]))

    def top(self, n: int) -> list[tuple[str, str, int]]:
        """The first ``n`` rows of :meth:`table` with severity warn or high."""
        return [f for f in self.table() if f[1] != "info"][:n]


def findings_table(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """``(code, severity, scans)`` of the warnings in ``rows`` (:class:`Findings`)."""
    found = Findings()
    for row in rows:
        found.add(row)
    return found.table()


def _findings_html(rows: Sequence[dict[str, Any]]) -> str:
    from scanqc.scoring.advice import advice

    found = findings_table(rows)
    if not found:
        return ""
    main = [f"<tr class='{_esc(s)}'><td>{_esc(c)}</td><td>{_esc(s)}</td><td>{n}</td>"
            f"<td class='advice'>{_esc(advice(c))}</td></tr>"
            for c, s, n in found if s != "info"]
    info = ", ".join(f"{_esc(c)} ({n})" for c, s, n in found if s == "info")
    return ("<h2>Findings</h2>"
            + ("<table class='findings'><thead><tr><th>warning</th><th>severity</th>"
               "<th>scans</th><th>what it means</th></tr></thead><tbody>" + "".join(main)
               + "</tbody></table>" if main else "")
            + (f"<p class='small'>notes (info): {info}</p>" if info else ""))


def write_html_report(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    root: str | None = None,
    statistic: str = "mean",
    title: str = "scanqc report",
    max_thumbnails: int = 48,
    max_rows: int = 5000,
    load_thumbnails: bool = True,
    include_identifiers: bool = False,
) -> Path:
    """Write the HTML report of ``rows`` to ``path``.

    Args:
        rows: Report rows (typed, e.g. from :func:`scanqc.batch.output.read_report`).
        path: Output ``.html`` file.
        root: Dataset root the row paths are relative to (for thumbnails and links).
        statistic: Which distance column the histogram shows (``mean`` or ``min``).
        title: Page title.
        max_thumbnails: Scans that get thumbnails (read again from disk), in report
            order, so flagged scans get them first.
        max_rows: Rows listed in the table (flagged first); the rest are counted only.
        load_thumbnails: Read the files for thumbnails at all.
        include_identifiers: Also make thumbnails of scans whose header says their pixels
            carry burned-in text (``BurnedInAnnotation`` YES); by default they get none.

    Returns:
        The written path.
    """
    path = Path(path)
    out_dir = path.parent
    col = f"{statistic}_distance" if statistic in ("mean", "min") else "mean_distance"
    rows = sorted(rows, key=lambda r: _order(r, col))
    n = len(rows)
    n_ok = sum(r.get("status") == "ok" for r in rows)
    n_err = sum(r.get("status") == "error" for r in rows)
    n_skip = sum(r.get("status") == "skipped" for r in rows)
    n_flag = sum(bool(r.get("flagged")) for r in rows)
    n_dup = sum(bool({"exact_duplicate", "near_duplicate"} & set(
        str(r.get("warnings") or "").split(";"))) for r in rows)
    dist = [r.get(col) for r in rows if isinstance(r.get(col), (int, float))]
    thr_vals = [r.get("threshold") for r in rows if isinstance(r.get("threshold"), (int, float))]
    refset = {r.get("reference_set_id") for r in rows if r.get("reference_set_id")}
    if dist:
        hist = histogram_png(dist, thr_vals[0] if thr_vals else None,
                             "kNN distance" if refset == {"knn"} else f"{statistic} distance")
    else:
        scores = [r.get("bad_score") for r in rows if isinstance(r.get("bad_score"), float)]
        hist = histogram_png(scores, 0.5, "bad score")
    models = sorted({f"{r.get('model')} {r.get('model_version') or ''}".strip()
                     for r in rows if r.get("model")})
    # the asymmetry column appears when the run computed it (scanqc score --asymmetry)
    has_asym = any(_fmt_float(r.get("asymmetry_score")) for r in rows)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p class='small'>scanqc {_esc(__version__)}, {_esc(time.strftime('%Y-%m-%d %H:%M'))}"
        f"; model {_esc(', '.join(models) or '-')}; reference set "
        f"{_esc(', '.join(sorted(str(s) for s in refset)) or '-')}</p>",
        "<div class='counts'>",
        f"<span><b>{n}</b> scans</span><span><b>{n_ok}</b> scored</span>",
        f"<span><b>{n_flag}</b> flagged</span><span><b>{n_err}</b> errors</span>",
        f"<span><b>{n_skip}</b> skipped</span>"
        + (f"<span><b>{n_dup}</b> duplicates of another scan</span>" if n_dup else "")
        + "</div>",
        f"<p><img alt='score histogram' src='data:image/png;base64,{hist}'></p>",
        _findings_html(rows),
        "<table><thead><tr><th>images</th><th>scan</th><th>status</th><th>bad score</th>"
        "<th>distance</th><th>warnings</th><th>region</th>"
        + ("<th>asymmetry</th>" if has_asym else "") + "</tr></thead><tbody>",
    ]
    n_thumbs = 0
    for row in rows[:max_rows]:
        status = str(row.get("status") or "")
        cls = "flagged" if row.get("flagged") else status
        imgs = ""
        if load_thumbnails and status == "ok" and (
                n_thumbs < max_thumbnails):
            n_thumbs += 1
            try:
                imgs = "".join(
                    f"<img class='thumb' title='{_esc(lbl)}' alt='{_esc(lbl)}' "
                    f"src='data:image/png;base64,{b64}'>"
                    for lbl, b64 in thumbnails(row, root, include_identifiers))
            except BurnedInText:
                imgs = ("<span class='small'>no thumbnail: the header says the pixels carry "
                        "burned-in text</span>")
            except Exception as exc:  # noqa: BLE001 - a thumbnail never breaks the report
                log.debug("no thumbnail for %s: %s", row.get("path"), exc)
        href = _href(row, root, out_dir)
        cell = _warnings_cell(row)
        if status != "ok":
            cell = f"<div class='small'>{_esc(row.get('error'))}</div>{cell}"
        region = row.get("region") or ""
        if row.get("region_mismatch"):
            region = f"{region} (header: {row.get('header_region') or '?'})"
        label = _esc(row.get("name") or row.get("path"))
        parts.append(
            f"<tr class='{_esc(cls)}'><td>{imgs}</td>"
            f"<td class='wrap name'>"
            + (f"<a href='{_esc(href)}'>{label}</a>" if href else label) +
            f"<div class='small'>{_esc(row.get('path'))} &middot; {_esc(row.get('kind'))} "
            f"{_esc(row.get('modality'))} {_esc(row.get('shape'))}</div></td>"
            f"<td>{_esc(status)}{' &#9873;' if row.get('flagged') else ''}</td>"
            f"<td>{_esc(row.get('bad_score'))}</td><td>{_esc(row.get(col))}</td>"
            f"<td class='wrap'>{cell}</td>"
            f"<td>{_esc(region)}</td>"
            + (f"<td>{_esc(_fmt_float(row.get('asymmetry_score')))}</td>" if has_asym else "")
            + "</tr>"
        )
    parts.append("</tbody></table>")
    if n > max_rows:
        parts.append(f"<p class='small'>{n - max_rows} more rows are in the table file.</p>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8", errors="backslashreplace")
    os.replace(tmp, path)
    return path
