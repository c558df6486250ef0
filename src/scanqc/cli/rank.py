"""``scanqc rank``: which scans to label next (active learning / EXAMINE data valuation).

``scanqc rank PATH... --strategy examine|entropy|margin|least_confidence|disagreement|
diversity|random [--labels labels.csv] [--label-column auto|region|label] [--n N]
[--model-dir DIR] [--max-slices N] [--seed S] --out ranking.csv``

Every readable scan is embedded with the encoder (the bundled one, or ``--model-dir``), the
unlabelled ones are ranked (label first at rank 1) and written as CSV with the columns
``scan_id, path, rank, score, strategy, status, error``. Scans already labelled in
``labels.csv`` (as written by ``scanqc labels export``; matched by ``scan_id`` or ``path``)
follow with status ``labelled``; unreadable files come last with status ``error`` and a
one-line cause. With ``--strategy examine`` the score is EXAMINE = exp(MSV): the top rows
are the most representative scans, the bottom rows the most atypical (bad-data candidates).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from scanqc.cli.arg_types import non_negative_int, positive_int
from scanqc.scoring.active import STRATEGIES

#: Output columns, in order.
RANK_COLUMNS: tuple[str, ...] = ("scan_id", "path", "rank", "score", "strategy", "status",
                                 "error")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``scanqc rank``."""
    p = subparsers.add_parser(
        "rank",
        help="rank unlabelled scans: which to label next (active learning, EXAMINE)",
        description=(
            "Embed every scan under PATH... and rank the unlabelled ones for labelling. "
            "Uncertainty strategies train a small probe on the labels of --labels; "
            "examine, diversity and random need no labels."
        ),
    )
    p.add_argument("paths", nargs="+", type=Path, help="files or folders (searched recursively)")
    p.add_argument("--out", "-o", type=Path, required=True, help="ranking CSV to write")
    p.add_argument("--strategy", "-s", choices=STRATEGIES, default="margin",
                   help="ranking strategy (default: %(default)s, which needs labels of two "
                        "classes and ranks by diversity until then; margin saved 60%% of the "
                        "labels in docs/active_learning.md, EXAMINE as an order did not)")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels CSV (scanqc labels export): scan_id and/or path, and region "
                        "or label. Default: the labels in the dataset's label store (those "
                        "made in napari or by 'scanqc labels import'), if any")
    p.add_argument("--no-labels", action="store_true",
                   help="without --labels: ignore the labels in the dataset's label store")
    p.add_argument("--label-column", choices=("auto", "region", "label"), default="auto",
                   help="which column holds the classes (auto: region when any row has one, "
                        "else label)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="write only the first N ranked scans")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="encoder folder (metadata.json + model.safetensors; default: bundled)")
    p.add_argument("--max-slices", type=non_negative_int, default=16,
                   help="slices per volume (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--root", type=Path, default=None,
                   help="dataset root; paths are written relative to it (default: common "
                        "folder of PATH...)")
    p.add_argument("--include-identifiers", action="store_true",
                   help="write folder and file names that hold the patient's name or an ID "
                        "as they are (default: [redacted])")
    p.set_defaults(func=run)
    return p


def read_labels_csv(path: str | Path, column: str = "auto") -> dict[str, str]:
    """Read a labels CSV into ``{key: class}``; keys are scan_ids and paths.

    Raises:
        ValueError: the file cannot be read or has no usable column (one line).
    """
    from scanqc.io.labels import read_table

    path = Path(path)
    rows = read_table(path)[1]  # comma, semicolon or tab separated; UTF-8 or Windows-1252
    if not rows:
        return {}
    if not set(rows[0]) & {"scan_id", "path"}:
        raise ValueError(f"{path}: needs a scan_id or path column")
    return _classes(rows, column, path)


def _classes(rows: list[dict[str, str]], column: str, source: Path) -> dict[str, str]:
    """``{"scan_id:ID" or "path:PATH": class}`` from label rows (``column`` may be auto).

    In the ``label`` column a reference is a good scan: both are one class.
    """
    if column == "auto":
        column = "region" if any((r.get("region") or "").strip() for r in rows) else "label"
    if rows and column not in rows[0]:
        raise ValueError(f"{source}: no {column!r} column")
    out: dict[str, str] = {}
    for r in rows:
        value = (r.get(column) or "").strip()
        if not value:
            continue
        if column == "label" and value.lower() == "reference":
            value = "good"
        for key in ("scan_id", "path"):
            k = (r.get(key) or "").strip()
            if k:
                out[f"{key}:{k}"] = value
    return out


def store_labels(paths: list[Path], column: str = "auto") -> tuple[dict[str, str], Path] | None:
    """The labels in the label store of a single dataset folder, with the store's path.

    ``None`` when more than one path is given, or the folder has no store (none is made).
    """
    from scanqc.io.labels import LabelStore, default_store_path

    if len(paths) != 1 or not paths[0].is_dir():
        return None
    store = default_store_path(paths[0])
    if not store.is_file():
        return None
    with LabelStore.open(store) as st:
        rows = [{"scan_id": r.scan_id, "path": r.path, "label": r.label or "",
                 "region": r.region or ""} for r in st.all()]
    return _classes(rows, column, store), store


def _common_root(paths: list[Path]) -> Path:
    absolute = [p.resolve() for p in paths]
    dirs = [p if p.is_dir() else p.parent for p in absolute]
    return Path(os.path.commonpath([str(d) for d in dirs]))


def _load_model(model_dir: Path | None):  # noqa: ANN202 - torch module
    if model_dir is None:
        from scanqc.models.encoder import load_encoder

        return load_encoder("encoder", "cpu")
    from scanqc.models.registry import load_model_dir

    return load_model_dir(model_dir, "cpu")[0]


def run(args: argparse.Namespace) -> int:
    """Rank ``args.paths`` and write ``args.out``; return 0."""
    from dataclasses import replace

    import numpy as np

    from scanqc.io.discover import discover
    from scanqc.io.labels import entry_relpath
    from scanqc.io.privacy import export_text
    from scanqc.scoring.active import compute_ranking, embed_entries

    for p in args.paths:
        if not p.exists():
            raise ValueError(f"{p}: no such file or folder")
    root = (args.root or _common_root(list(args.paths))).resolve()
    labels: dict[str, str] = {}
    if args.labels:
        labels = read_labels_csv(args.labels, args.label_column)
    elif not args.no_labels:
        found = store_labels(list(args.paths), args.label_column)
        if found:
            labels = found[0]
            print(f"scanqc rank: labels from {found[1]} (--no-labels to ignore them)",
                  file=sys.stderr)
    entries = [e for e in discover([str(p) for p in args.paths], root=root)
               if e.status != "skipped"]
    if args.include_identifiers:
        for e in entries:
            e.private_names = {}
    rel = {e.scan_id: entry_relpath(e, root) for e in entries}  # identifying names redacted
    names = {e.scan_id: e.private_names for e in entries}
    # a labels file written by hand names the files as they are
    real = {e.scan_id: entry_relpath(replace(e, private_names={}), root)
            for e in entries if e.private_names}
    model = _load_model(args.model_dir)
    ids, z, errors = embed_entries(entries, model=model, max_slices=args.max_slices)
    known = []
    for i, sid in enumerate(ids):
        lab = (labels.get(f"scan_id:{sid}") or labels.get(f"path:{rel[sid]}")
               or (labels.get(f"path:{real[sid]}") if sid in real else None))
        if lab:
            known.append((i, lab))
    lab_idx = [i for i, _ in known]
    lab_val = [v for _, v in known]
    rows: list[dict[str, object]] = []
    used = args.strategy
    if len(ids):
        ranking = compute_ranking(z, lab_idx, lab_val, args.strategy, args.n, seed=args.seed)
        used = ranking.used
        if ranking.used != ranking.strategy:
            print(f"scanqc rank: {len(set(lab_val))} class(es) labelled; {args.strategy} "
                  f"needs two, ranked by {ranking.used} instead", file=sys.stderr)
        scores = ranking.scores
        if ranking.used == "examine":  # EXAMINE = exp(MSV); same order
            scores = [float(np.exp(s)) for s in scores]
        for r, (i, s) in enumerate(zip(ranking.order, scores, strict=True), start=1):
            rows.append({"scan_id": ids[i], "path": rel[ids[i]], "rank": r,
                         "score": f"{s + 0.0:.6g}", "strategy": ranking.used, "status": "ok",
                         "error": ""})
    for i in lab_idx:
        rows.append({"scan_id": ids[i], "path": rel[ids[i]], "rank": "", "score": "",
                     "strategy": used, "status": "labelled", "error": ""})
    for sid, err in errors.items():
        rows.append({"scan_id": sid, "path": rel.get(sid, ""), "rank": "", "score": "",
                     "strategy": used, "status": "error",
                     "error": export_text(" ".join(
                         err.replace(str(root) + os.sep, "").split()), names.get(sid))})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RANK_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, args.out)
    n_ranked = sum(1 for r in rows if r["status"] == "ok")
    print(f"scanqc rank: {n_ranked} ranked, {len(lab_idx)} labelled, {len(errors)} "
          f"unreadable -> {args.out}", file=sys.stderr)
    return 0
