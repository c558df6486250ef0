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
    """Per-sample ``(orig, mirrored, positions)`` slice embeddings, cached."""
    key = hashlib.sha1(("|".join(s.path for s in samples) + tag + str(max_slices) + "v2")
                       .encode()).hexdigest()[:16]
    f = cache / f"region_emb_{tag}_{key}.npz"
    if f.is_file():
        z = np.load(f)
        off, e, m, g = z["offsets"], z["emb"], z["mir"], z["pos"]
        out = [(e[a:b], m[a:b], g[a:b]) if b > a else (None, None, None)
               for a, b in zip(off[:-1], off[1:], strict=True)]
        return out, list(z["errors"])
    out, errors = [], []
    t0 = time.time()
    for i, s in enumerate(samples):
        try:
            sl, pos = rp.sample_slices(s.path, max_slices=max_slices, return_positions=True)
            out.append((embed_slices(encoder, sl), embed_slices(encoder, sl[:, :, ::-1].copy()),
                        np.asarray(pos, np.float32)))
        except Exception as exc:  # noqa: BLE001 - report and go on
            out.append((None, None, None))
            errors.append(" ".join(f"{s.path}: {exc}".split()))
        if (i + 1) % 100 == 0:
            print(f"  embedded {i + 1}/{len(samples)} in {time.time() - t0:.0f}s", flush=True)
    lens = [0 if o[0] is None else len(o[0]) for o in out]
    off = np.r_[0, np.cumsum(lens)]
    emb = np.concatenate([o[0] for o in out if o[0] is not None])
    mir = np.concatenate([o[1] for o in out if o[1] is not None])
    pos = np.concatenate([o[2] for o in out if o[2] is not None])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, offsets=off, emb=emb, mir=mir, pos=pos, errors=np.array(errors, dtype=str))
    return out, errors


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


def fit(embs, slabs, index, hidden=0, seed=0, syn=None, mirror=True):
    """Train a probe on the slices of ``index`` (+ synthetic slices, + mirrored copies).

    ``slabs[i]`` holds the class of each slice of sample ``i`` (``None``: not annotated).
    """
    xs, ys = [], []
    for i in index:
        e, m, _p = embs[i]
        if e is None:
            continue
        parts = [e, m] if mirror else [e]
        for part in parts:
            x, y = rp.stack_slices([part], [slabs[i]], [0]) if any(
                v is not None for v in slabs[i]) else (None, None)
            if x is not None:
                xs.append(x)
                ys += y
    if syn is not None:
        xs.append(syn)
        ys += ["non_anatomical"] * len(syn)
    return rp.train_probe(np.concatenate(xs), ys, hidden=hidden, seed=seed)


def acceptance(probe, encoder, data: Path) -> dict:
    """Region, coverage and header checks of named files (product readers)."""
    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan
    from scanqc.scoring.header import check_modality_mismatch
    from scanqc.scoring.region import predict_region

    res = {}
    sample = ROOT / "resources" / "sample_data"
    cases = [("torchio_dicom_series (CT header, MR brain pixels)",
              data / "torchio_dicom_series" / "dicom"),
             ("TotalSegmentator example_ct.nii.gz (abdomen-pelvis CT)",
              data / "totalsegmentator_examples" / "example_ct.nii.gz"),
             ("sample ct_abdomen_pelvis.nii.gz", sample / "ct_abdomen_pelvis.nii.gz"),
             ("sample ct_chest_abdomen_dicom", sample / "ct_chest_abdomen_dicom"),
             ("sample mr_head_template.nii.gz", sample / "mr_head_template.nii.gz"),
             ("sample wrist_xr.png", sample / "wrist_xr.png"),
             ("sample chest_xr.png", sample / "chest_xr.png"),
             ("sample noise_xr.png", sample / "noise_xr.png")]
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
            row["top3"] = sorted(pred.probs.items(), key=lambda kv: -kv[1])[:3]
            res[name] = row
        except Exception as exc:  # noqa: BLE001
            res[name] = {"error": " ".join(str(exc).split())}
    return res


#: Real DICOM files (not in the shipped probe's training data: no permissive licence)
#: whose BodyPartExamined is replaced, in memory, by a wrong and by the right region.
HEADER_FILES = (
    ("torchxrayvision_tests/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
     "chest", "SKULL"),
    ("dicomsamples_jl/CT_Explicit_Little.dcm", "head", "ABDOMEN"),
    ("dicomsamples_jl/MR_Implicit_Little.dcm", "head", "KNEE"),
    ("torchio_dicom_series/dicom", "head", "PELVIS"),
    ("totalsegmentator_examples/example_ct.nii.gz", "abdomen", "HEAD"),
)


def header_file_cases(probe, encoder, data: Path) -> list[dict]:
    """Flag check on real files with a wrong / the right BodyPartExamined."""
    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan
    from scanqc.scoring.region import predict_region

    rows = []
    for rel, truth, wrong in HEADER_FILES:
        path = data / rel
        if not path.exists():
            continue
        entries = [e for e in discover([str(path)]) if e.status == "ok"]
        scan = load_scan(entries[0])
        out = {"file": rel, "truth": truth, "wrong": wrong}
        for key, word in (("flag_wrong", wrong), ("flag_right", HEADER_WORD[truth])):
            scan.metadata = {**(scan.metadata or {}), "BodyPartExamined": word}
            pred = predict_region(scan, encoder, probe, max_slices=64)
            out[key] = pred.mismatch
            out["region"], out["conf"] = pred.region, pred.confidence
        rows.append(out)
    return rows


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


def machine() -> str:
    """One line of machine facts."""
    import os
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), load average {load[0]:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--probe", default=None, help="probe for the acceptance cases "
                    "(default: the bundled one when it matches the encoder)")
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
    slabs = [[] if e[0] is None else s.slice_labels(e[2]) for s, e in zip(samples, embs,
                                                                            strict=True)]
    xr = [i for i, s in enumerate(samples) if s.source.startswith("region_xr_v1")]
    xr_set = set(xr)
    other = [i for i in range(len(samples)) if i not in xr_set]
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
    counts = {c: test_labels.count(c) for c in sorted(set(test_labels))}
    lines = [f"Encoder: {enc_desc}.", "",
             f"Held-out: {len(test)} region_xr_v1 radiographs ({len(test_groups)} "
             f"patients/studies; n per class: "
             + ", ".join(f"{c} {n}" for c, n in counts.items())
             + f"), stratified and grouped by patient/study (seed 0). Training: {len(train)} "
             f"scans (the other region_xr_v1 radiographs and every other labelled file of "
             f"the manifest, all licences: evaluation only) + {len(syn)} generated patterns.",
             ""]
    # headline recipe, fixed in advance: linear probe, mirrored training slices, no TTA
    results = {}
    variants = [("**linear probe + mirrored training slices (headline, fixed recipe)**",
                 {"hidden": 0}, False, True),
                ("ablation: linear probe, no mirrored slices", {"hidden": 0}, False, False),
                ("ablation: headline + TTA (mirror)", {"hidden": 0}, True, True),
                ("ablation: MLP head (64 hidden) + mirrored slices", {"hidden": 64}, False,
                 True)]
    head = None
    for name, kw, tta, mirror in variants:
        probe = fit(embs, slabs, train, syn=syn, mirror=mirror, **kw)
        res = rp.evaluate(probe.classes, scan_probs(probe, test_embs, tta), test_labels)
        syn_ok = float(np.mean(np.array(probe.predict(syn_test)[0]) == "non_anatomical"))
        results[name] = {"accuracy": res["accuracy"], "synthetic_non_anatomical": syn_ok}
        print(f"{name}: top-1 {res['accuracy']:.3f} (n={res['n']}); generated test patterns "
              f"-> non_anatomical {syn_ok:.2f}")
        if head is None:
            head = (probe, res)
    lines += ["| variant | top-1 accuracy | generated patterns -> non_anatomical |",
              "|---|---|---|"]
    lines += [f"| {k} | {v['accuracy']:.3f} | {v['synthetic_non_anatomical']:.2f} |"
              for k, v in results.items()]
    lines += ["", "The ablations are reported, not used to choose the recipe.", "",
              "Confusion matrix of the headline probe (rows: truth; n per class):", "",
              rp.confusion_markdown(head[1]), ""]
    # few labels
    rng_classes = sorted({labels[i] for i in xr})
    train_xr = [i for i in train if i in xr_set]
    accs = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        pick = []
        for c in rng_classes:
            cand = [i for i in train_xr if labels[i] == c]
            pick += [int(v) for v in rng.choice(cand, size=min(5, len(cand)), replace=False)]
        probe = fit(embs, slabs, pick, seed=seed)
        accs.append(rp.evaluate(probe.classes, scan_probs(probe, test_embs),
                                test_labels)["accuracy"])
    accs = np.array(accs)
    few = (f"5 labels per class (5 training radiographs for each of the {len(rng_classes)} "
           f"classes, nothing else; headline recipe; {args.seeds} seeds drawing the "
           f"labelled scans): top-1 **{accs.mean():.3f}** +- {accs.std():.3f} (sd; min "
           f"{accs.min():.3f}, max {accs.max():.3f}), same {len(test)} held-out scans.")
    print(few)
    lines += [few, ""]
    # shipped recipe (permissive only)
    perm = [i for i in train if samples[i].permissive]
    probe_p = fit(embs, slabs, perm, syn=syn)
    res_p = rp.evaluate(probe_p.classes, scan_probs(probe_p, test_embs), test_labels)
    have = {labels[i] for i in perm}
    sub = [k for k, t in enumerate(test_labels) if t in have]
    res_ps = rp.evaluate(probe_p.classes, scan_probs(probe_p, [test_embs[k] for k in sub]),
                         [test_labels[k] for k in sub])
    shipped = (f"Shipped recipe (permissively licensed training files only, {len(perm)} "
               f"scans, classes with data: {', '.join(sorted(have))}): top-1 "
               f"{res_p['accuracy']:.3f} on all {res_p['n']} held-out radiographs; "
               f"{res_ps['accuracy']:.3f} on the {res_ps['n']} of classes it has data for "
               "(no spine or lower-limb training data; its head class comes from CT/MR only, "
               "the held-out head radiographs are dental panoramics).")
    print(shipped)
    lines += [shipped, "", rp.confusion_markdown(res_ps), ""]
    # header disagreement (simulated on held-out radiographs)
    hf = header_flags(head[0].classes, scan_probs(head[0], test_embs), test_labels)
    hline = (f"Header/pixel disagreement, held-out radiographs given a random wrong or the "
             f"right BodyPartExamined (in memory; headline probe, min confidence 0.7): "
             f"flagged {hf['flagged_with_wrong_header']:.1%} with a wrong header, "
             f"{hf['flagged_with_correct_header']:.1%} with the right one (n={hf['n']}).")
    print(hline)
    lines += [hline, ""]
    from scanqc.scoring.region import rank_region_issues

    issues = rank_region_issues(test_labels, scan_probs(head[0], test_embs), head[0].classes)
    low = [f"{Path(samples[test[i.index]].path).name} (label {i.label}, looks {i.predicted}, "
           f"{i.quality:.2f})" for i in issues[:5]]
    lines += ["Lowest cleanlab label quality on the held-out side (self-confidence): "
              + "; ".join(low), ""]
    # coverage, honestly held out: the permissive recipe without the TotalSegmentator subject
    sub_out = [i for i, s in enumerate(samples) if s.permissive
               and s.group != "totalsegmentator:subject"]
    probe_lo = fit(embs, slabs, sub_out, syn=syn)
    rp.calibrate_threshold(probe_lo, *rp.stack_slices(
        [t[0] for t in test_embs], test_labels, range(len(test))))
    lo = acceptance(probe_lo, encoder, data)
    key = "TotalSegmentator example_ct.nii.gz (abdomen-pelvis CT)"
    lo_row = lo.get(key, {})
    lo_line = (f"Coverage of the abdomen-pelvis CT with that subject left out of training "
               f"(permissive recipe): `{lo_row.get('region_coverage', lo_row.get('error'))}` "
               "(truth: pelvis in the first ~45 % of the slices, abdomen above).")
    print(lo_line)
    # acceptance cases: the bundled probe (or the shipped recipe on every permissive file)
    from scanqc.models.registry import model_dir

    pdir = Path(args.probe) if args.probe else model_dir("region")
    probe_a, which = None, ""
    if (pdir / "model.safetensors").is_file():
        pa = rp.load_probe(pdir)
        if str(pa.metadata.get("encoder", {}).get("sha256", ""))[:16] == tag:
            probe_a, which = pa, f"bundled probe `{pdir.name}` (threshold {pa.threshold:.2f})"
            ev = pa.metadata.get("evaluation", {})
            lines += [f"Bundled probe (`resources/models/region`, permissive files only, "
                      f"{pa.metadata.get('training', {}).get('scans')} scans): held-out "
                      f"accuracy in its model card {ev.get('accuracy', float('nan')):.3f} "
                      f"(n={ev.get('n')}, incl. generated patterns); "
                      f"{ev.get('accuracy_real', float('nan')):.3f} on the "
                      f"{ev.get('n_real')} real files.", ""]
    if probe_a is None:
        allp = [i for i, s in enumerate(samples) if s.permissive]
        probe_a = fit(embs, slabs, allp, syn=syn)
        rp.calibrate_threshold(probe_a, *rp.stack_slices(
            [t[0] for t in test_embs], test_labels, range(len(test))))
        which = ("shipped recipe trained here on every permissive file (no bundled probe for "
                 f"this encoder; threshold {probe_a.threshold:.2f})")
    acc = acceptance(probe_a, encoder, data)
    lines += [f"Acceptance cases ({which}):", "",
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
    lines += ["", "The abdomen-pelvis CT (and the sample derived from it) is in the shipped "
              "probe's training data, with hand-annotated slice ranges "
              "(`SLICE_REGIONS`): its coverage above checks the mechanism, not generalisation. "
              + lo_line, ""]
    hrows = header_file_cases(probe_a, encoder, data)
    lines += ["Real files with BodyPartExamined replaced (in memory) by a wrong / the right "
              "region (same probe):", "",
              "| file | pixels (truth) | predicted | conf | flagged with wrong header | "
              "flagged with right header |", "|---|---|---|---|---|---|"]
    for r in hrows:
        print(json.dumps(r))
        lines.append(f"| {r['file']} | {r['truth']} | {r['region']} | {r['conf']:.2f} | "
                     f"{r['wrong']}: {r['flag_wrong']} | {HEADER_WORD[r['truth']]}: "
                     f"{r['flag_right']} |")
    lines += ["", f"Run time {time.time() - t0:.0f} s (slice embeddings cached under --cache "
              f"after the first run); {machine()}.", ""]
    cmd = ("`.venv/bin/python benchmarks/region_accuracy.py --data ../shared/data"
           + (f" --encoder {args.encoder}" if args.encoder else "")
           + (f" --seeds {args.seeds}" if args.seeds != 10 else "") + "`")
    block = "\n".join([START, "", f"Command: {cmd}", "", *lines, END])
    doc = Path(args.doc)
    if doc.is_file() and START in doc.read_text(encoding="utf-8"):
        text = doc.read_text(encoding="utf-8")
        head_txt, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        doc.write_text(head_txt + block + tail, encoding="utf-8")
        print(f"updated {doc}")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
