"""Simulated labelling: learning curves of active-learning strategies on region labels.

Data: the region-labelled scans of ../shared/data (``region_xr_v1`` radiographs plus the
region-labelled files of the other sets, :func:`scanqc.models.region_probe.region_samples`
with all licences: this is evaluation, nothing is shipped). Embeddings come from the
bundled encoder (``resources/models/encoder``); when no bundled weights exist yet, a
seeded randomly initialised :class:`~scanqc.models.encoder.SliceEncoder` is used and the
output says so. Embeddings are cached in /tmp.

Protocol per seed: a stratified held-out test set (one fold of three, split by
patient/study group); the pool starts with ``--start`` labels drawn at random; each
strategy then asks for ``--step`` labels at a time (the oracle answers with the true
region), the probe is retrained and its accuracy on the held-out set recorded, up to
``--max-labels``.

Output: for each strategy the labels its mean curve needs to reach random order's mean
accuracy at ``--target-at`` labels (default 50, 100 and 200 = random order's final
accuracy, the headline), a paired seed-by-seed table for the last target, a plot (all
strategies, and a zoom), the command and the machine with its load.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/active_learning.py --seeds 10 \
        --plot docs/images/learning_curves.png --table /tmp/al_table.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STRATS = ("random", "examine", "entropy", "margin", "margin_diverse", "diversity")


def encoder_tag(folder: Path | None = None) -> tuple[object, str]:
    """The encoder to use (bundled, or the one in ``folder``) and a tag describing it."""
    import torch

    from scanqc.models.encoder import SliceEncoder, load_encoder

    try:
        from scanqc.models.registry import load_model_dir, model_dir
        from scanqc.models.weights import read_metadata

        if folder is None:
            model = load_encoder("encoder", "cpu")
            meta = read_metadata(model_dir("encoder"))
            kind = "bundled"
        else:
            model = load_model_dir(folder, "cpu")[0]
            meta = read_metadata(folder)
            kind = "dir"
        epochs = (meta.get("training") or {}).get("epochs", "?")
        return model, f"{kind}-{meta.get('sha256', '')[:12]}-{epochs}ep"
    except Exception as exc:  # noqa: BLE001 - fall back, and say so
        print(f"no bundled encoder ({' '.join(str(exc).split())[:120]}); using a seeded "
              "random SliceEncoder", file=sys.stderr)
        torch.manual_seed(0)
        model = SliceEncoder().eval()
        return model, "random-init-seed0"


def load_embeddings(data: Path, cache_dir: Path, folder: Path | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Embeddings, region labels and group ids of the region-labelled scans (cached)."""
    import torch

    from scanqc.models.encoder import embed_scan
    from scanqc.models.region_probe import region_samples
    from scanqc.models.training_data import read_scan

    torch.set_num_threads(1)
    model, tag = encoder_tag(folder)
    samples = region_samples(data, permissive_only=False)
    key = hashlib.sha1((tag + "|" + "|".join(s.path for s in samples)).encode()).hexdigest()[:10]
    cache = cache_dir / f"scanqc_al_emb_{tag}_{key}.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["x"], z["y"], z["g"], tag
    xs, ys, gs = [], [], []
    t0 = time.perf_counter()
    for k, s in enumerate(samples):
        try:
            scan = read_scan(s.path, prefer_io=True)
            xs.append(embed_scan(scan, model=model, max_slices=16).vector)
            ys.append(s.region)
            gs.append(s.group)
        except Exception as exc:  # noqa: BLE001 - skip unreadable files
            print(f"skip {s.path}: {' '.join(str(exc).split())[:100]}", file=sys.stderr)
        if k % 50 == 0:
            print(f"embedded {k}/{len(samples)} ({time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr)
    x, y, g = np.stack(xs), np.asarray(ys), np.asarray(gs)
    np.savez(cache, x=x, y=y, g=g)
    return x, y, g, tag


def split(y: np.ndarray, g: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Group-aware stratified split: one fold of ``StratifiedGroupKFold(3)`` is the test set
    (no patient/study group on both sides; about a third of each class)."""
    from sklearn.model_selection import StratifiedGroupKFold

    sgkf = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=seed)
    pool, test = next(iter(sgkf.split(np.zeros(len(y)), y, g)))
    return pool, test


def curve(x: np.ndarray, y: np.ndarray, pool: np.ndarray, test: np.ndarray, strategy: str,
          seed: int, start: int, step: int, max_labels: int) -> list[tuple[int, float]]:
    """Accuracy on ``test`` against number of labels for one strategy and seed."""
    from scanqc.scoring.active import compute_ranking, fit_probe

    rng = np.random.default_rng(seed)
    xp, yp = x[pool], y[pool]
    if strategy == "examine":  # label-free order: EXAMINE from the very first label
        labelled = []
    else:
        labelled = rng.choice(len(pool), size=start, replace=False).tolist()
    out = []
    while True:
        if len(labelled) >= start or strategy == "examine":
            n = len(labelled)
            if n >= 2 and len(np.unique(yp[labelled])) >= 2:
                clf = fit_probe(xp[labelled], yp[labelled], seed=seed)
                acc = float((clf.predict(x[test]) == y[test]).mean())
            else:
                acc = float((y[test] == (yp[labelled][0] if n else "")).mean())
            if n >= start:
                out.append((n, acc))
        if len(labelled) >= max_labels or len(labelled) >= len(pool):
            break
        want = step if len(labelled) >= start else start - len(labelled)
        order = compute_ranking(xp, labelled, yp[labelled].tolist(), strategy,
                                batch_size=want, seed=seed).order
        labelled += order
    return out


def labels_to_reach(curve_n: np.ndarray, curve_acc: np.ndarray, target: float) -> float:
    """Smallest number of labels whose mean accuracy reaches ``target`` (linear interp)."""
    for k in range(len(curve_n)):
        if curve_acc[k] >= target - 1e-9:
            if k == 0:
                return float(curve_n[0])
            a0, a1 = curve_acc[k - 1], curve_acc[k]
            n0, n1 = curve_n[k - 1], curve_n[k]
            return float(n0 + (target - a0) / (a1 - a0) * (n1 - n0)) if a1 > a0 else float(n1)
    return float("nan")


def paired_savings(curves: dict[str, list[list[tuple[int, float]]]], at: int
                   ) -> dict[str, list[float]]:
    """Per seed: saving (%) in labels to reach that seed's random-order accuracy at ``at``.

    The saving is ``1 - need / need_random`` with ``need_random`` the labels random order
    itself first reached the target with (its curve can cross before ``at``); NaN when the
    strategy never reaches it within the budget.
    """
    out: dict[str, list[float]] = {}
    rnd = curves["random"]
    for s, runs in curves.items():
        vals = []
        for seed, run in enumerate(runs):
            rn = np.array([n for n, _ in rnd[seed]])
            ra = np.array([a for _, a in rnd[seed]])
            target = float(ra[rn == at][0]) if at in rn else float(ra[-1])
            need_r = labels_to_reach(rn, ra, target)
            need = labels_to_reach(np.array([n for n, _ in run]),
                                   np.array([a for _, a in run]), target)
            vals.append(100.0 * (1 - need / need_r) if np.isfinite(need) else float("nan"))
        out[s] = vals
    return out


def machine_facts(seconds: float) -> str:
    """Command, machine and load, for the record."""
    import os
    import platform

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"Command: `{' '.join([Path(sys.executable).name] + sys.argv)}`  \n"
            f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; curves took {seconds:.0f} s wall "
            f"({time.process_time():.0f} s CPU of this process); load average at the end "
            f"{load}\n")


def plot(summary: dict[str, dict[str, list[float]]], strategies: list[str], target: float,
         at: int, seeds: int, tag: str, path: Path) -> None:
    """Learning curves, mean ± sd over seeds: all strategies, and a zoom on the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), dpi=110)
    for k, ax in enumerate(axes):
        for s in strategies:
            n = np.array(summary[s]["n"])
            m, sd = np.array(summary[s]["mean"]), np.array(summary[s]["std"])
            ax.plot(n, m, label=s, lw=2 if s == "random" else 1.4,
                    ls="--" if s == "random" else "-")
            ax.fill_between(n, m - sd, m + sd, alpha=0.10)
        ax.axhline(target, color="gray", lw=0.8, ls=":",
                   label=f"random order at {at} labels ({target:.3f})")
        ax.set_xlabel("number of labels")
        ax.grid(alpha=0.3)
        if k:
            lo = min(float(np.array(summary[s]["mean"])[len(summary[s]["n"]) // 4])
                     for s in strategies if s != "examine")
            ax.set_ylim(max(0.0, lo - 0.05), min(1.0, target + 0.06))
            ax.set_title("zoom", fontsize=9)
        else:
            ax.set_ylabel("held-out accuracy (region)")
            ax.set_title(f"Simulated labelling, {seeds} seeds (mean ± sd), encoder {tag}",
                         fontsize=9)
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--start", type=int, default=10)
    p.add_argument("--step", type=int, default=10)
    p.add_argument("--max-labels", type=int, default=200)
    p.add_argument("--target-at", type=int, nargs="+", default=[50, 100, 200],
                   help="labels at which random order's accuracy is a target; the last one "
                        "(default: random order's final accuracy) is the headline, drawn in "
                        "the plot and compared seed by seed")
    p.add_argument("--strategies", nargs="+", default=list(STRATS))
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp"))
    p.add_argument("--model-dir", type=Path, default=None,
                   help="encoder folder (metadata.json + model.safetensors; default: bundled)")
    args = p.parse_args(argv)

    x, y, g, tag = load_embeddings(args.data, args.cache_dir, args.model_dir)
    # rows without a patient/study id ("source:") are their own group, not one big group
    g = np.asarray([f"{v}#{i}" if str(v).endswith(":") else v for i, v in enumerate(g)])
    classes, counts = np.unique(y, return_counts=True)
    print(f"encoder {tag}: {len(y)} scans, {x.shape[1]}-d, classes "
          + ", ".join(f"{c} {n}" for c, n in zip(classes, counts, strict=True)))
    t0 = time.perf_counter()
    curves: dict[str, list[list[tuple[int, float]]]] = {s: [] for s in args.strategies}
    for seed in range(args.seeds):
        pool, test = split(y, g, seed)
        for s in args.strategies:
            curves[s].append(curve(x, y, pool, test, s, seed, args.start, args.step,
                                   args.max_labels))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    summary: dict[str, dict[str, list[float]]] = {}
    for s, runs in curves.items():
        n = min(len(r) for r in runs)
        ns = np.array([r[k][0] for k in range(n) for r in runs[:1]])
        acc = np.array([[r[k][1] for k in range(n)] for r in runs])
        summary[s] = {"n": ns.tolist(), "mean": acc.mean(0).tolist(), "std": acc.std(0).tolist()}
    rnd = summary["random"]
    rn = np.array(rnd["n"])
    ats = [a if a in rn else int(rn[-1]) for a in args.target_at]
    targets = [float(np.array(rnd["mean"])[rn == a][0]) for a in ats]
    target = targets[-1]
    head = (f"{args.seeds} seeds, encoder {tag}, {len(y)} scans, {len(classes)} classes. "
            "Targets: random order's mean accuracy at "
            + ", ".join(f"{a} labels = {t:.3f}" for a, t in zip(ats, targets, strict=True))
            + "\n\n| strategy | "
            + " | ".join(f"labels to reach {t:.3f} (saving)" for t in targets)
            + f" | accuracy at {int(rn[-1])} labels (mean ± sd) |\n|---|"
            + "---|" * len(targets) + "---|\n")
    body = ""
    per_seed = paired_savings(curves, ats[-1])
    for s in args.strategies:
        cells = []
        for t in targets:
            need = labels_to_reach(np.array(summary[s]["n"]), np.array(summary[s]["mean"]), t)
            rn_need = labels_to_reach(rn, np.array(rnd["mean"]), t)
            cells.append("not reached" if not np.isfinite(need) else
                         f"{need:.0f} ({100.0 * (1 - need / rn_need):+.0f} %)")
        body += (f"| {s} | " + " | ".join(cells)
                 + f" | {summary[s]['mean'][-1]:.3f} ± {summary[s]['std'][-1]:.3f} |\n")
    seed_tab = (f"\nSeed by seed (paired: same split and start): labels each strategy needs "
                f"to reach *that seed's* random-order accuracy at {ats[-1]} labels, and the "
                "saving against the labels random order itself first reached it with "
                "('-': not reached within the budget)\n\n| strategy | saving per seed | "
                "seeds reaching | median saving |\n|---|---|---|---|\n")
    for s in args.strategies:
        sav = per_seed[s]
        ok = [v for v in sav if np.isfinite(v)]
        med = float(np.median([v if np.isfinite(v) else -np.inf for v in sav]))
        seed_tab += (f"| {s} | " + ", ".join("-" if not np.isfinite(v) else f"{v:+.0f} %"
                                            for v in sav)
                     + f" | {len(ok)}/{len(sav)} | "
                     + ("not reached" if not np.isfinite(med) else f"{med:+.0f} %") + " |\n")
    facts = machine_facts(time.perf_counter() - t0)
    text = head + body + seed_tab + "\n" + facts
    print(text)
    if args.table:
        args.table.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"encoder": tag, "targets": targets, "at": ats,
                                         "summary": summary, "per_seed_saving": per_seed,
                                         "curves": curves}, indent=1))
    if args.plot:
        plot(summary, args.strategies, target, ats[-1], args.seeds, tag, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
