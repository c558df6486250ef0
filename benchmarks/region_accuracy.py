"""Region classifier benchmark: held-out accuracy, 5-labels-per-class, acceptance cases.

Usage (from the repository root)::

    .venv/bin/python benchmarks/region_accuracy.py --data ../shared/data [--encoder DIR]
        [--seeds 10] [--doc docs/region.md]

* Split: ``region_xr_v1`` radiographs, stratified and grouped by ``patient_or_study_id``
  (StratifiedGroupKFold, 1/4 held out, seed 0): one patient is never on both sides. All
  other labelled files of the manifest (volumes, DICOM test files) and generated
  non-anatomical patterns are training-only.
* "all labels" probes train on every labelled training file (evaluation only: includes
  OAI, RSNA, Roboflow-spine and other non-permissive sources). The "shipped recipe" probe
  trains only on the permissively licensed training files, as ``scanqc region train``.
* Few-label: 5 scans per class drawn from the training side, repeated over seeds.
* Acceptance: the TorchIO series (CT header, MR brain pixels), header/pixel disagreement
  (held-out radiographs given a wrong BodyPartExamined in memory; files are not touched),
  and per-slice coverage of a chest-abdomen-pelvis CT.

Embeddings are cached under ``--cache`` keyed by the encoder's sha256.
Writes the figures to stdout and between the markers of ``--doc``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scanqc.models import region_probe as rp
from scanqc.models.encoder import SliceEncoder, embed_slices

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- region-benchmark:start -->", "<!-- region-benchmark:end -->"

#: BodyPartExamined written into a scan's header in the mismatch acceptance check.
HEADER_WORD = {"head": "SKULL", "chest": "CHEST", "abdomen": "ABDOMEN", "pelvis": "PELVIS",
               "spine": "LSPINE", "upper_limb": "HAND", "lower_limb": "KNEE",
               "breast": "BREAST", "neck": "NECK"}


def load_encoder(encoder_dir: str | None) -> tuple[torch.nn.Module, str, str]:
    """The encoder, a cache tag and a description."""
    from scanqc.models.registry import load_model_dir, model_dir

    path = Path(encoder_dir) if encoder_dir else model_dir("encoder")
    if (path / "model.safetensors").is_file():
        model, meta = load_model_dir(path, "cpu")
        mtime = time.strftime("%Y-%m-%d %H:%M UTC",
                              time.gmtime((path / "model.safetensors").stat().st_mtime))
        return model, str(meta["sha256"])[:16], f"{path} (sha256 {meta['sha256'][:12]}, {mtime})"
    torch.manual_seed(0)
    return SliceEncoder().eval(), "random0", "RANDOM SliceEncoder (seed 0): no trained weights"


def embed_all(samples, encoder, tag: str, cache: Path, max_slices: int = 12):
    """Per-sample ``(orig, mirrored)`` slice embeddings, cached."""
    key = hashlib.sha1(("|".join(s.path for s in samples) + tag + str(max_slices))
                       .encode()).hexdigest()[:16]
    f = cache / f"region_emb_{tag}_{key}.npz"
    if f.is_file():
        z = np.load(f)
        off, e, m, g = z["offsets"], z["emb"], z["mir"], z["glob"]
        out = [(e[a:b], m[a:b], g[a:b]) if b > a else (None, None, None)
               for a, b in zip(off[:-1], off[1:], strict=True)]
        return out, list(z["errors"])
    out, errors = [], []
    t0 = time.time()
    for i, s in enumerate(samples):
        try:
            sl = rp.sample_slices(s.path, max_slices=max_slices)
            out.append((embed_slices(encoder, sl), embed_slices(encoder, sl[:, :, ::-1].copy()),
                        global_features(sl)))
        except Exception as exc:  # noqa: BLE001 - report and go on
            out.append((None, None, None))
            errors.append(" ".join(f"{s.path}: {exc}".split()))
        if (i + 1) % 100 == 0:
            print(f"  embedded {i + 1}/{len(samples)} in {time.time() - t0:.0f}s", flush=True)
    lens = [0 if o[0] is None else len(o[0]) for o in out]
    off = np.r_[0, np.cumsum(lens)]
    emb = np.concatenate([o[0] for o in out if o[0] is not None])
    mir = np.concatenate([o[1] for o in out if o[1] is not None])
    glob = np.concatenate([o[2] for o in out if o[2] is not None])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, offsets=off, emb=emb, mir=mir, glob=glob, errors=np.array(errors, dtype=str))
    return out, errors


def global_features(slices: np.ndarray) -> np.ndarray:
    """Simple per-slice global features: 8x8 thumbnail, 16-bin histogram, padding share."""
    n, h, w = slices.shape
    thumb = slices.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)
    hist = np.stack([np.histogram(s, bins=16, range=(0, 1))[0] / s.size for s in slices])
    pad = np.array([[(s == 0).mean()] for s in slices])
    return np.concatenate([thumb, hist, pad], axis=1).astype(np.float32)


def with_global(embs):
    """Concatenate the unit embedding with the (scaled) global features."""
    return [(None, None, None) if e is None else
            (np.concatenate([e, 0.1 * g], 1), np.concatenate([m, 0.1 * g[:, ::-1]], 1), g)
            for e, m, g in embs]


def scan_probs(probe, embs, tta: bool = False) -> np.ndarray:
    """Mean slice probabilities per scan (mirrored slices averaged in with ``tta``)."""
    out = np.full((len(embs), len(probe.classes)), np.nan, np.float32)
    for i, (e, m, _g) in enumerate(embs):
        if e is None:
            continue
        p = probe.predict_proba(e)
        if tta:
            p = 0.5 * (p + probe.predict_proba(m))
        out[i] = p.mean(axis=0)
    return out


def fit(embs, labels, index, hidden=0, seed=0, syn=None, mirror=False):
    """Train a probe on the slices of ``index`` (+ synthetic slices, + mirrored copies)."""
    xs, ys = [], []
    for i in index:
        e, m, _g = embs[i]
        if e is None:
            continue
        xs.append(e)
        ys += [labels[i]] * len(e)
        if mirror:
            xs.append(m)
            ys += [labels[i]] * len(m)
    if syn is not None:
        xs.append(syn)
        ys += ["non_anatomical"] * len(syn)
    return rp.train_probe(np.concatenate(xs), ys, hidden=hidden, seed=seed)


def acceptance(probe, encoder, data: Path) -> dict:
    """TorchIO series, CAP CT coverage (needs the product readers)."""
    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan
    from scanqc.scoring.header import check_modality_mismatch
    from scanqc.scoring.region import predict_region

    res = {}
    cases = [("torchio_dicom_series (CT header, MR brain pixels)",
              data / "torchio_dicom_series" / "dicom"),
             ("sample ct_abdomen_pelvis.nii.gz", ROOT / "resources" / "sample_data" /
              "ct_abdomen_pelvis.nii.gz"),
             ("TotalSegmentator example_ct.nii.gz", data / "totalsegmentator_examples" /
              "example_ct.nii.gz"),
             ("sample ct_chest_abdomen_dicom", ROOT / "resources" / "sample_data" /
              "ct_chest_abdomen_dicom"),
             ("sample mr_head_template.nii.gz", ROOT / "resources" / "sample_data" /
              "mr_head_template.nii.gz"),
             ("sample wrist_xr.png", ROOT / "resources" / "sample_data" / "wrist_xr.png"),
             ("sample chest_xr.png", ROOT / "resources" / "sample_data" / "chest_xr.png"),
             ("sample noise_xr.png", ROOT / "resources" / "sample_data" / "noise_xr.png")]
    for name, path in cases:
        if not path.exists():
            res[name] = {"error": "missing"}
            continue
        try:
            entries = [e for e in discover([str(path)]) if e.status == "ok"]
            scan = load_scan(entries[0])
            pred = predict_region(scan, encoder, probe, max_slices=64)
            row = pred.columns()
            row["modality_warning"] = [w.code for w in check_modality_mismatch(scan)]
            row["region_warnings"] = [w.message for w in pred.warnings]
            row["top3"] = sorted(pred.probs.items(), key=lambda kv: -kv[1])[:3]
            res[name] = row
        except Exception as exc:  # noqa: BLE001
            res[name] = {"error": " ".join(str(exc).split())}
    return res


def header_flags(classes, probs, labels, min_confidence=0.7):
    """Flag rate of header/pixel disagreement: wrong vs correct BodyPartExamined."""
    from scanqc.io.scan import Scan
    from scanqc.scoring.header import region_header_mismatch

    rng = np.random.default_rng(0)
    wrong_hit = right_hit = n = 0
    for p, t in zip(probs, labels, strict=True):
        if not np.isfinite(p).all() or t not in HEADER_WORD:
            continue
        k = int(np.argmax(p))
        pred, conf = classes[k], float(p[k])
        if p.max() < 0:  # pragma: no cover
            continue
        n += 1
        others = [c for c in HEADER_WORD if c != t and c in ("head", "chest", "upper_limb",
                                                             "lower_limb", "abdomen")]
        wrong = str(rng.choice(others))
        wrong_scan = Scan(np.zeros((2, 2)), (1, 1), np.eye(4), "image",
                          metadata={"BodyPartExamined": HEADER_WORD[wrong]})
        right_scan = Scan(np.zeros((2, 2)), (1, 1), np.eye(4), "image",
                          metadata={"BodyPartExamined": HEADER_WORD[t]})
        wrong_hit += bool(region_header_mismatch(wrong_scan, pred, conf, min_confidence))
        right_hit += bool(region_header_mismatch(right_scan, pred, conf, min_confidence))
    return {"n": n, "flagged_with_wrong_header": wrong_hit / max(1, n),
            "flagged_with_correct_header": right_hit / max(1, n)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--cache", default="/tmp/scanqc_region_cache")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "region.md"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    t0 = time.time()
    encoder, tag, enc_desc = load_encoder(args.encoder)
    print(f"encoder: {enc_desc}")
    samples = rp.region_samples(data, permissive_only=False)
    embs, errors = embed_all(samples, encoder, tag, Path(args.cache))
    for e in errors:
        print(f"  unreadable: {e}")
    labels = [s.region for s in samples]
    xr = [i for i, s in enumerate(samples) if s.source.startswith("region_xr_v1")]
    other = [i for i in range(len(samples)) if i not in set(xr)]
    tr_x, te_x = rp.grouped_split([labels[i] for i in xr], [samples[i].group for i in xr],
                                  0.25, seed=0)
    train = [xr[i] for i in tr_x] + other
    test = [xr[i] for i in te_x]
    test_labels = [labels[i] for i in test]
    test_groups = {samples[i].group for i in test}
    assert not test_groups & {samples[i].group for i in train}, "group leak"
    syn = embed_slices(encoder, rp.synthetic_non_anatomical(48, seed=0))
    syn_test = embed_slices(encoder, rp.synthetic_non_anatomical(16, seed=99))
    test_embs = [embs[i] for i in test]
    lines = [f"Encoder: {enc_desc}.", "",
             f"Held-out: {len(test)} region_xr_v1 radiographs ({len(test_groups)} "
             f"patients/studies), training: {len(train)} scans + {len(syn)} generated "
             "patterns.", ""]
    results = {}
    variants = [("linear probe, all labels", {"hidden": 0}, False, False),
                ("linear probe + mirrored training slices", {"hidden": 0}, False, True),
                ("linear probe + TTA (mirror)", {"hidden": 0}, True, False),
                ("MLP head (64 hidden), all labels", {"hidden": 64}, False, False)]
    best = None
    variants.append(("linear probe + global features (thumbnail, histogram)", {"hidden": 0},
                     False, False))
    syn_raw = rp.synthetic_non_anatomical(48, seed=0)
    syn_raw_t = rp.synthetic_non_anatomical(16, seed=99)
    for name, kw, tta, mirror in variants:
        glob = "global" in name
        e_all = with_global(embs) if glob else embs
        s_tr = np.concatenate([syn, 0.1 * global_features(syn_raw)], 1) if glob else syn
        s_te = np.concatenate([syn_test, 0.1 * global_features(syn_raw_t)], 1) if glob \
            else syn_test
        probe = fit(e_all, labels, train, syn=s_tr, mirror=mirror, **kw)
        res = rp.evaluate(probe.classes, scan_probs(probe, [e_all[i] for i in test], tta),
                          test_labels)
        syn_ok = float(np.mean(np.array(probe.predict(s_te)[0]) == "non_anatomical"))
        results[name] = {"accuracy": res["accuracy"], "synthetic_non_anatomical": syn_ok}
        print(f"{name}: top-1 {res['accuracy']:.3f} (n={res['n']}); generated test patterns "
              f"-> non_anatomical {syn_ok:.2f}")
        if best is None or res["accuracy"] > best[1]["accuracy"]:
            best = (name, res, probe, tta)
        if name.startswith("linear probe, all"):
            lin = (probe, res)
    lines += ["| variant | top-1 accuracy | generated patterns -> non_anatomical |",
              "|---|---|---|"]
    lines += [f"| {k} | {v['accuracy']:.3f} | {v['synthetic_non_anatomical']:.2f} |"
              for k, v in results.items()]
    lines += ["", "Confusion matrix, linear probe, all labels (rows: truth; n per class):",
              "", rp.confusion_markdown(lin[1]), ""]
    # few labels
    rng_classes = sorted({labels[i] for i in xr})
    accs = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        pick = []
        for c in rng_classes:
            cand = [i for i in train if i in set(xr) and labels[i] == c]
            pick += list(rng.choice(cand, size=min(5, len(cand)), replace=False))
        probe = fit(embs, labels, pick, seed=seed)
        accs.append(rp.evaluate(probe.classes, scan_probs(probe, test_embs),
                                test_labels)["accuracy"])
    accs = np.array(accs)
    few = (f"5 labels per class ({len(rng_classes)} classes, {args.seeds} seeds): top-1 "
           f"{accs.mean():.3f} +- {accs.std():.3f} (min {accs.min():.3f}, max {accs.max():.3f})")
    print(few)
    lines += [few, ""]
    # shipped recipe (permissive only)
    perm = [i for i in train if samples[i].permissive]
    probe_p = fit(embs, labels, perm, syn=syn)
    res_p = rp.evaluate(probe_p.classes, scan_probs(probe_p, test_embs), test_labels)
    have = {labels[i] for i in perm}
    sub = [k for k, t in enumerate(test_labels) if t in have]
    res_ps = rp.evaluate(probe_p.classes, scan_probs(probe_p, [test_embs[k] for k in sub]),
                         [test_labels[k] for k in sub])
    shipped = (f"Shipped recipe (permissive files only, {len(perm)} training scans, classes "
               f"with data: {', '.join(sorted(have))}): top-1 {res_p['accuracy']:.3f} on all "
               f"{res_p['n']} held-out scans; {res_ps['accuracy']:.3f} on the {res_ps['n']} "
               "held-out scans of classes it has data for.")
    print(shipped)
    lines += [shipped, "", rp.confusion_markdown(res_ps), ""]
    # header disagreement
    hf = header_flags(lin[0].classes, scan_probs(lin[0], test_embs), test_labels)
    hline = (f"Header/pixel disagreement (held-out radiographs, BodyPartExamined set in memory; "
             f"linear probe, all labels, min confidence 0.7): flagged "
             f"{hf['flagged_with_wrong_header']:.1%} with a wrong header, "
             f"{hf['flagged_with_correct_header']:.1%} with the correct one (n={hf['n']}).")
    print(hline)
    lines += [hline, ""]
    # cleanlab ranking of the held-out labels
    from scanqc.scoring.region import rank_region_issues

    issues = rank_region_issues(test_labels, scan_probs(lin[0], test_embs), lin[0].classes)
    low = [f"{Path(samples[test[i.index]].path).name} (label {i.label}, looks {i.predicted}, "
           f"{i.quality:.2f})" for i in issues[:5]]
    lines += ["Lowest cleanlab label quality on the held-out side (self-confidence): "
              + "; ".join(low), ""]
    # acceptance cases with the permissive probe (calibrated threshold)
    rp.calibrate_threshold(probe_p, *rp.stack_slices(
        [t[0] for t in test_embs], test_labels, range(len(test))))
    acc = acceptance(probe_p, encoder, data)
    lines += ["Acceptance cases (shipped-recipe probe, threshold "
              f"{probe_p.threshold:.2f}):", "",
              "| case | region | conf | coverage (slices) | header region | mismatch | "
              "modality check |", "|---|---|---|---|---|---|---|"]
    for name, row in acc.items():
        print(f"{name}: {json.dumps(row)}")
        if "error" in row:
            lines.append(f"| {name} | error: {row['error']} | | | | | |")
        else:
            lines.append(f"| {name} | {row['region']} | {row['region_confidence']:.2f} | "
                         f"{row['region_coverage']} | {row['header_region'] or '-'} | "
                         f"{row['region_mismatch']} | "
                         f"{', '.join(row['modality_warning']) or '-'} |")
    lines += ["", f"Run time {time.time() - t0:.0f} s (2 shared CPU cores, 1 thread).", ""]
    cmd = "`.venv/bin/python benchmarks/region_accuracy.py --data ../shared/data`"
    block = "\n".join([START, "", f"Command: {cmd}", "", *lines, END])
    doc = Path(args.doc)
    if doc.is_file() and START in doc.read_text(encoding="utf-8"):
        text = doc.read_text(encoding="utf-8")
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        doc.write_text(head + block + tail, encoding="utf-8")
        print(f"updated {doc}")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
