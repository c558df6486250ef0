"""The report schema: the columns of every scanqc report, in order, with their types.

One row per scan. Only sanitized, non-identifying fields appear (no patient name, id,
birth date, UIDs or absolute paths): ``scan_id`` is a hash, ``path`` is relative to the
dataset root. Columns that a later feature fills (region, asymmetry) stay empty until then.
Rows are plain dicts; keys starting with ``_`` are internal (never exported).
"""

from __future__ import annotations

import math
from typing import Any

from scanqc.io.scan import printable

#: Quality metrics copied from :func:`scanqc.scoring.quality.quality_metrics`.
QUALITY_COLUMNS: tuple[str, ...] = (
    "snr",
    "snr_dietrich",
    "cnr",
    "efc",
    "fber",
    "qi1",
    "body_fraction",
    "entropy_bits",
    "blur",
)

#: The report columns, in order.
COLUMNS: tuple[str, ...] = (
    "scan_id",
    "path",
    "name",
    "kind",
    "format",
    "modality",
    "shape",
    "spacing",
    "status",
    "error",
    "bad_score",
    "flagged",
    "mean_distance",
    "min_distance",
    "threshold",
    "worst_slices",
    "warnings",
    "warnings_detail",
    "max_severity",
    "region",
    "region_confidence",
    "header_region",
    "region_mismatch",
    "asymmetry_score",
    *QUALITY_COLUMNS,
    "model",
    "model_version",
    "reference_set_id",
)

FLOAT_COLUMNS: frozenset[str] = frozenset(
    {
        "bad_score",
        "mean_distance",
        "min_distance",
        "threshold",
        "region_confidence",
        "asymmetry_score",
        *QUALITY_COLUMNS,
    }
)
BOOL_COLUMNS: frozenset[str] = frozenset({"flagged", "region_mismatch"})

#: Row status values.
STATUSES: tuple[str, ...] = ("ok", "error", "skipped")


def _clean_text(value: Any) -> str:
    """One-line, valid Unicode text (no CR/LF/tabs, see :func:`scanqc.io.scan.printable`).

    Every CSV row is one physical line, and an undecodable file name cannot stop a report.
    """
    return printable(" ".join(str(value).split()))


def format_value(column: str, value: Any) -> str:
    """Return the CSV text of ``value`` in ``column`` ('' for missing)."""
    if value is None:
        return ""
    if column in BOOL_COLUMNS:
        if value == "":
            return ""
        return "true" if value in (True, "true", "True", 1, "1") else "false"
    if column in FLOAT_COLUMNS:
        if value == "":
            return ""
        try:
            f = float(value)
        except (TypeError, ValueError):
            return ""
        return "" if not math.isfinite(f) else repr(round(f, 6))
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value) if column in ("shape", "spacing") else ";".join(
            str(v) for v in value
        )
    return _clean_text(value)


def parse_value(column: str, text: Any) -> Any:
    """Inverse of :func:`format_value` for one CSV cell or JSON value (None for empty)."""
    if text == "" or text is None:
        return None
    if not isinstance(text, str):  # already typed (JSON lines)
        text = format_value(column, text)
        if text == "":
            return None
    if column in BOOL_COLUMNS:
        return text.lower() == "true"
    if column in FLOAT_COLUMNS:
        try:
            return float(text)
        except ValueError:
            return None
    return text


def empty_row() -> dict[str, Any]:
    """A row with every column present and empty."""
    return dict.fromkeys(COLUMNS)


def to_record(row: dict[str, Any]) -> dict[str, str]:
    """Return the exported text form of ``row``: exactly :data:`COLUMNS`, in order."""
    return {c: format_value(c, row.get(c)) for c in COLUMNS}


def from_record(record: dict[str, str]) -> dict[str, Any]:
    """Parse an exported record (e.g. a CSV row) back into typed values."""
    return {c: parse_value(c, record.get(c, "")) for c in COLUMNS}


def public(row: dict[str, Any]) -> dict[str, Any]:
    """Return ``row`` without internal (``_``-prefixed) keys, with every column present."""
    out = empty_row()
    out.update({k: v for k, v in row.items() if k in out})
    return out
