from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest

from batch import (
    CALLS,
    by_id,
    config,
    counting_prepare,
    crashy_prepare,
    make_dataset,
    write_volume,
)
from scanqc.batch.cache import ResultCache
from scanqc.batch.columns import COLUMNS
from scanqc.batch.engine import score, score_all
from scanqc.io.scan import ScanEntry
from scanqc.progress import Cancelled, CancelToken


def _close(a, b, tol=1e-4):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol) or (math.isnan(a) and math.isnan(b))
    return a == b


def test_every_file_gets_a_row_and_corrupt_file_is_an_error(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=2)
    rows = score_all([root], config=config())
    assert len(rows) == 6
    for r in rows:
        assert set(COLUMNS) <= set(r)
    bad = [r for r in rows if r["path"] == "broken.nii.gz"]
    assert len(bad) == 1 and bad[0]["status"] == "error"
    assert bad[0]["error"].startswith("broken.nii.gz: ") and "\n" not in bad[0]["error"]
    assert str(tmp_path) not in bad[0]["error"]  # no absolute paths in the report
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 5
    assert {r["path"] for r in ok} >= {"sub/vol0.nii.gz", "img0.png"}
    for r in ok:
        assert 0.0 <= r["bad_score"] <= 1.0
        assert r["reference_set_id"] == "knn" and r["model"] and r["model_version"]
        assert r["shape"]


def test_fallback_streams_errors_before_scores(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=0)
    order = [r["status"] for r in score([root], config=config())]
    assert order[0] == "error" and order.count("ok") == 3


def test_skipped_entry_gets_skipped_row(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=0, corrupt=False)
    from scanqc.io.discover import discover

    entries = discover([root], root=root)
    sr = ScanEntry(scan_id="sr0", paths=(str(root / "report.dcm"),), kind="image",
                   format="dicom", status="skipped", error="structured report, not an image")
    rows = by_id(score_all([*entries, sr], config=config(root=str(root))))
    assert rows["sr0"]["status"] == "skipped"
    assert "structured report" in rows["sr0"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 2


def test_references_score_odd_scans_higher(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=5, n_img=0, corrupt=False, odd=1)
    write_volume(root / "stripes.nii.gz", 7, kind="stripes")
    refs = [str(root / "sub" / f"vol{i}.nii.gz") for i in range(3)]
    rows = score_all([root], references=refs, config=config())
    assert len(rows) == 7
    by_path = {r["path"]: r for r in rows}
    normal = [by_path[f"sub/vol{i}.nii.gz"]["mean_distance"] for i in (3, 4)]
    odd = [by_path["odd0.nii.gz"]["mean_distance"], by_path["stripes.nii.gz"]["mean_distance"]]
    assert min(odd) > max(normal)
    assert by_path["odd0.nii.gz"]["bad_score"] > by_path["sub/vol3.nii.gz"]["bad_score"]
    thr = {r["threshold"] for r in rows}
    assert len(thr) == 1  # one threshold from the reference spread
    ids = {r["reference_set_id"] for r in rows}
    assert len(ids) == 1 and "knn" not in ids
    for r in rows:
        assert r["min_distance"] <= r["mean_distance"] + 1e-9
        assert len(r["worst_slices"].split(";")) == 3
    # a reference given by scan id selects the same set
    sid = [by_path[f"sub/vol{i}.nii.gz"]["scan_id"] for i in range(3)]
    rows2 = by_id(score_all([root], references=sid, config=config()))
    for r in rows:
        assert _close(rows2[r["scan_id"]]["bad_score"], r["bad_score"])


def test_references_errors(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=0)
    with pytest.raises(ValueError, match="no such scan id or file"):
        score_all([root], references=["nope-not-there"], config=config())
    with pytest.raises(ValueError, match="at least 2 readable"):
        score_all([root], references=[str(root / "broken.nii.gz"),
                                      str(root / "sub" / "vol0.nii.gz")], config=config())


def test_cancel_stops_the_run(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=1)
    token = CancelToken()
    got = []
    with pytest.raises(Cancelled):
        for row in score([root], config=config(), cancel=token):
            got.append(row)
            token.cancel()
    assert len(got) == 1


def test_progress_reports_total(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=1)
    seen = []
    score_all([root], config=config(), progress=lambda d, t, m: seen.append((d, t)))
    assert seen[-1][0] == 4 and {t for _d, t in seen if t} == {4}


def test_progress_names_the_scoring_phase_after_the_references(tmp_path):
    """The console bar and the docks label a run by its last phase message: with
    references the scans were counted under "references" (the phase before)."""
    from scanqc.cli.score import _PHASES

    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=0, corrupt=False)
    refs = [str(root / "sub" / f"vol{i}.nii.gz") for i in range(2)]
    seen = []
    score_all([root], references=refs, config=config(),
              progress=lambda d, t, m: seen.append((d, t, m)))
    refs_at = [m for _d, _t, m in seen].index("reading references")
    first_row = next(i for i, (d, t, _m) in enumerate(seen) if i > refs_at and d > 0 and t == 4)
    phases = [m for _d, _t, m in seen[refs_at:first_row] if m in _PHASES]
    assert phases[0] == "reading references" and phases[-1] == "scoring"
    assert seen[-1][:2] == (4, 4)


def test_resume_scores_each_scan_exactly_once(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=5, n_img=3)
    refs = [str(write_volume(tmp_path / f"ref{i}.nii.gz", 50 + i)) for i in range(2)]
    cache = ResultCache(tmp_path / "c.sqlite", commit_every=1)
    CALLS.clear()
    first = []
    for row in score([root], references=refs, config=config(), cache=cache,
                     prepare=counting_prepare):
        first.append(row)
        if len(first) == 4:
            break  # like a kill after 4 rows
    second = score_all([root], references=refs, config=config(resume=True), cache=cache,
                       prepare=counting_prepare)
    assert len(second) == 9 and len(by_id(second)) == 9
    assert {r["scan_id"] for r in first} <= {r["scan_id"] for r in second}
    assert all(r.get("_cached") for r in second if r["scan_id"] in
               {f["scan_id"] for f in first if f["status"] == "ok"})
    read = [c for c in CALLS if not c.startswith(str(tmp_path / "ref"))]
    # each of the 8 readable scans was read exactly once over the two runs
    assert sorted(read) == sorted(set(read)) and len(read) == 8
    CALLS.clear()
    third = score_all([root], references=refs, config=config(resume=True), cache=cache,
                      prepare=counting_prepare)
    assert all(c.startswith(str(tmp_path / "ref")) for c in CALLS)
    assert all(r.get("_cached") for r in third if r["path"] != "broken.nii.gz")
    a, b = by_id(second), by_id(third)
    for sid in a:
        assert _close(a[sid]["bad_score"], b[sid]["bad_score"])


def test_resume_without_references_rescores_with_cached_vectors(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=2, corrupt=False)
    cache = ResultCache(tmp_path / "c.sqlite", commit_every=1)
    a = by_id(score_all([root], config=config(), cache=cache))
    b = by_id(score_all([root], config=config(resume=True), cache=cache))
    assert all(r.get("_cached") for r in b.values())
    for sid in a:
        assert _close(a[sid]["bad_score"], b[sid]["bad_score"])


def test_cache_misses_when_file_changes(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=0, corrupt=False)
    cache = ResultCache(tmp_path / "c.sqlite")
    score_all([root], config=config(), cache=cache)
    write_volume(root / "sub" / "vol0.nii.gz", 99, kind="noise")
    rows = by_id(score_all([root], config=config(resume=True), cache=cache))
    changed = [r for r in rows.values() if r["path"] == "sub/vol0.nii.gz"][0]
    assert not changed.get("_cached")
    assert all(r.get("_cached") for r in rows.values() if r is not changed)


@pytest.mark.slow
def test_worker_counts_give_same_results_and_survive_crash(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=2)
    refs = [str(root / "sub" / f"vol{i}.nii.gz") for i in range(2)]
    r0 = by_id(score_all([root], references=refs, config=config(workers=0)))
    shutil.copy(root / "img0.png", root / "crash_me.png")
    r1 = by_id(score_all([root], references=refs, config=config(workers=1),
                         prepare=crashy_prepare))
    r2 = by_id(score_all([root], references=refs, config=config(workers=2, queue_size=4),
                         prepare=crashy_prepare))
    for rows in (r1, r2):
        crash = [r for r in rows.values() if r["path"] == "crash_me.png"]
        assert len(crash) == 1 and crash[0]["status"] == "error"
        assert "worker process died" in crash[0]["error"]
        assert len(rows) == len(r0) + 1
        for sid, ref in r0.items():
            for col in COLUMNS:
                assert _close(rows[sid][col], ref[col]), (col, rows[sid][col], ref[col])


@pytest.mark.slow
def test_hung_scan_times_out(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=2, n_img=1, corrupt=False)
    shutil.copy(root / "img0.png", root / "hang.png")
    rows = score_all([root], config=config(workers=2, timeout=3), prepare=crashy_prepare)
    by_path = {r["path"]: r for r in rows}
    assert by_path["hang.png"]["status"] == "error"
    assert "timed out" in by_path["hang.png"]["error"]
    assert sum(r["status"] == "ok" for r in rows) == 3
    assert np.isfinite([by_path["img0.png"]["bad_score"]]).all()


def test_finetune_on_references_changes_scores_and_flags_odd_scans(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=5, n_img=0, corrupt=False, odd=1)
    write_volume(root / "stripes.nii.gz", 7, kind="stripes")
    refs = [str(root / "sub" / f"vol{i}.nii.gz") for i in range(3)]
    plain = by_id(score_all([root], references=refs, config=config()))
    tuned = by_id(score_all([root], references=refs,
                            config=config(finetune=True, finetune_epochs=30)))
    assert set(plain) == set(tuned)
    for sid, r in tuned.items():
        assert "+ft" in r["model_version"] and "+ft" not in plain[sid]["model_version"]
        assert r["reference_set_id"] != plain[sid]["reference_set_id"]
    # the trained head is used: distances differ from the frozen encoder's
    diffs = [abs(tuned[s]["mean_distance"] - plain[s]["mean_distance"]) for s in tuned]
    assert max(diffs) > 1e-4
    by_path = {r["path"]: r for r in tuned.values()}
    odd = [by_path["odd0.nii.gz"], by_path["stripes.nii.gz"]]
    normal = [by_path[f"sub/vol{i}.nii.gz"] for i in (3, 4)]
    assert min(r["mean_distance"] for r in odd) > max(r["mean_distance"] for r in normal)
    assert all(r["flagged"] for r in odd)
    assert min(r["bad_score"] for r in odd) > max(r["bad_score"] for r in normal)


def test_public_reference_api_matches_score(tmp_path):
    from scanqc.batch.engine import build_reference_context, fit_references
    from scanqc.io.discover import discover

    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=0, corrupt=False, odd=1)
    entries = list(discover([root], root=root))
    refs = [e.scan_id for e in entries if e.path.endswith(("vol0.nii.gz", "vol1.nii.gz",
                                                           "vol2.nii.gz"))]
    cfg = config(root=str(root))
    # a fitted ReferenceModel passed in the config gives the same rows as finetune=True
    rm = fit_references(refs, entries, cfg, epochs=10)
    assert len(rm.history) == 10
    tuned = by_id(score_all(entries, references=refs,
                            config=config(root=str(root), finetune=True, finetune_epochs=10)))
    given = by_id(score_all(entries, references=refs,
                            config=config(root=str(root), reference_model=rm)))
    for sid, r in tuned.items():
        assert _close(given[sid]["mean_distance"], r["mean_distance"])
        assert given[sid]["model_version"] == r["model_version"]
    # the context scores one scan exactly like the batch run and gives per-slice scores
    ctx = build_reference_context(refs, entries, config(root=str(root), reference_model=rm))
    try:
        odd = [e for e in entries if e.path.endswith("odd0.nii.gz")][0]
        row = ctx.score_entries([odd])[0]
        assert _close(row["mean_distance"], tuned[odd.scan_id]["mean_distance"])
        assert row["reference_set_id"] == ctx.reference_set_id
        from scanqc.batch.pipeline import prepare_entry

        again = ctx.score_entries([odd])[0]  # the dock scores the same scan twice
        assert "duplicate" not in again["warnings"] and again["warnings"] == row["warnings"]
        res = prepare_entry(odd, cfg.prep_options(str(root), False))
        ss = ctx.slice_scores(res["slices"], res["slice_index"])
        assert len(ss.bad_scores) == len(res["slice_index"])
        assert ";".join(map(str, ss.worst(3))) == row["worst_slices"]
    finally:
        ctx.close()


def test_checks_prepare_once_per_scan(tmp_path, monkeypatch):
    import scanqc.scoring.checks as checks_mod

    calls = {"check_scan": 0, "prepare": 0}
    real_check, real_prepare = checks_mod.check_scan, checks_mod.prepare

    def counting_check(*a, **k):
        calls["check_scan"] += 1
        return real_check(*a, **k)

    def counting_prep(*a, **k):
        calls["prepare"] += 1
        return real_prepare(*a, **k)

    monkeypatch.setattr(checks_mod, "check_scan", counting_check)
    monkeypatch.setattr(checks_mod, "prepare", counting_prep)
    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=2)
    rows = score_all([root], config=config())
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 5
    assert calls == {"check_scan": 5, "prepare": 5}
    assert all(r["snr"] is not None for r in ok)  # the metrics came from the same pass


def test_missing_model_fails_before_reading(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=1, n_img=0)
    CALLS.clear()
    with pytest.raises(ValueError, match="cannot load model 'no-such-model'"):
        score_all([root], config=config(encoder=None, model_name="no-such-model"),
                  prepare=counting_prepare)
    assert CALLS == []


def test_largest_first_orders_by_bytes_on_disk(tmp_path):
    from scanqc.batch.runners import largest_first

    def entry(name, sizes):
        paths = []
        for i, n in enumerate(sizes):
            p = tmp_path / f"{name}_{i}"
            p.write_bytes(b"x" * n)
            paths.append(str(p))
        return ScanEntry(name, tuple(paths), "image", "png")

    small, series, big, tie = entry("small", [10]), entry("series", [300, 300]), \
        entry("big", [500]), entry("tie", [10])
    gone = ScanEntry("gone", (str(tmp_path / "missing"),), "image", "png")
    order = largest_first([small, gone, series, big, tie])
    assert [e.scan_id for e in order] == ["series", "big", "small", "tie", "gone"]


def test_parallel_runs_submit_the_largest_scans_first(tmp_path, monkeypatch):
    from scanqc.batch import runners

    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=3, corrupt=False)
    submitted: list[str] = []
    original = runners.LocalRunner.submit

    def record(self, entry):
        submitted.append(entry.path)
        original(self, entry)

    monkeypatch.setattr(runners.LocalRunner, "submit", record)
    rows = score_all([root], config=config(workers=2))
    sizes = [os.path.getsize(p) for p in submitted]
    assert len(submitted) == len(rows) == 6
    assert sizes == sorted(sizes, reverse=True)


def test_a_lone_scan_without_references_is_flagged_by_its_checks_only(tmp_path):
    """No dataset to compare with: a blank image is still flagged; a normal scan is not."""
    from PIL import Image

    from batch import write_png

    Image.new("L", (64, 64), 0).save(tmp_path / "blank.png")
    write_png(tmp_path / "ok.png", 3)
    (row,) = score_all([tmp_path / "blank.png"], config=config())
    assert row["flagged"] is True and row["bad_score"] == pytest.approx(0.9)
    assert "constant_image" in row["warnings"]
    (row,) = score_all([tmp_path / "ok.png"], config=config())
    assert row["status"] == "ok" and row["flagged"] is False and row["bad_score"] is None


def test_scans_unlike_every_reference_are_named(tmp_path):
    """The engine compares each scan's acquisition with the references' (acquisition.py)."""
    import nibabel as nib

    from batch import write_png

    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=0, corrupt=False)
    rng = np.random.default_rng(5)
    vol = (400 + 50 * rng.standard_normal((32, 32, 10))).clip(0).astype(np.int16)
    # 3 mm pixels, 6 mm slices: an EPI among 1 mm structurals
    nib.save(nib.Nifti1Image(vol, np.diag([3.0, 3.0, 6.0, 1.0])), root / "coarse.nii.gz")
    # the same grid stored with the slice axis left-right: sagittal slices
    sag = np.array([[0, 0, 2.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(vol, sag), root / "sagittal.nii.gz")
    write_png(root / "photo.png", 1)
    refs = [str(root / "sub" / f"vol{i}.nii.gz") for i in range(3)]
    rows = {r["path"]: r for r in score_all([root], references=refs, config=config())}

    def codes(path):
        return set(filter(None, rows[path]["warnings"].split(";")))

    unlike = {"modality_unlike_references", "dimension_unlike_references",
              "plane_unlike_references", "resolution_unlike_references"}
    assert "resolution_unlike_references" in codes("coarse.nii.gz")
    assert "3 mm pixels, the references 1 mm" in rows["coarse.nii.gz"]["warnings_detail"]
    assert codes("sagittal.nii.gz") & unlike == {"plane_unlike_references"}
    assert "dimension_unlike_references" in codes("photo.png")
    for i in range(4):  # the references and a scan like them: nothing
        assert not codes(f"sub/vol{i}.nii.gz") & unlike
    assert rows["coarse.nii.gz"]["max_severity"] in ("warn", "high")
    # the Score dock's path (a reference context scoring one scan) names the same reasons
    from scanqc.batch.engine import build_reference_context
    from scanqc.io.discover import discover

    entries = list(discover([root], root=root))
    ctx = build_reference_context(refs, entries, config(root=str(root)))
    try:
        coarse = [e for e in entries if e.path.endswith("coarse.nii.gz")]
        one = ctx.score_entries(coarse)[0]
        assert one["warnings_detail"] == rows["coarse.nii.gz"]["warnings_detail"]
    finally:
        ctx.close()
    # without references there is nothing to be unlike
    knn = {r["path"]: r for r in score_all([root], config=config())}
    assert not any(set(r["warnings"].split(";")) & unlike for r in knn.values())


def test_without_references_scans_unlike_the_dataset_are_named(tmp_path):
    """kNN runs compare each scan with the dataset's typical acquisition, resume included."""
    import nibabel as nib

    root = make_dataset(tmp_path / "ds", n_vol=22, n_img=0, corrupt=False)
    rng = np.random.default_rng(7)
    vol = (400 + 50 * rng.standard_normal((32, 32, 10))).clip(0).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.diag([3.0, 3.0, 6.0, 1.0])), root / "coarse.nii.gz")
    four = np.repeat(vol[..., None], 5, axis=3)
    nib.save(nib.Nifti1Image(four, np.diag([1.0, 1.0, 2.0, 1.0])), root / "series4d.nii.gz")
    cache = ResultCache(tmp_path / "cache.sqlite")
    rows = {r["path"]: r for r in score_all([root], config=config(), cache=cache)}
    assert "resolution_unlike_dataset" in rows["coarse.nii.gz"]["warnings"]
    assert "most scans 1 mm" in rows["coarse.nii.gz"]["warnings_detail"]
    assert "dimension_unlike_dataset" in rows["series4d.nii.gz"]["warnings"]
    typical = [r for p, r in rows.items() if p.startswith("sub/")]
    assert len(typical) == 22 and not any("_unlike_" in r["warnings"] for r in typical)
    # a resumed run recomputes them from the cached profiles: same warnings, no repeats
    again = {r["path"]: r for r in score_all([root], config=config(resume=True), cache=cache)}
    for path in ("coarse.nii.gz", "series4d.nii.gz"):
        assert again[path]["_cached"] and again[path]["warnings"] == rows[path]["warnings"]
    # too few scans for a typical acquisition: nothing is named
    small = make_dataset(tmp_path / "small", n_vol=4, n_img=0, corrupt=False)
    nib.save(nib.Nifti1Image(vol, np.diag([3.0, 3.0, 6.0, 1.0])), small / "coarse.nii.gz")
    assert not any("_unlike_" in r["warnings"] for r in score_all([small], config=config()))


def test_a_scan_of_another_region_than_the_references_is_named(tmp_path, monkeypatch):
    """The engine compares each scan's predicted region with the references' regions."""
    from types import SimpleNamespace

    from batch import write_png
    from scanqc.batch import engine

    root = make_dataset(tmp_path / "ds", n_vol=0, n_img=4, corrupt=False)
    write_png(root / "hand.png", 7)

    def fake_region(self, res, base):  # a probe that knows the hand by its file name
        hand = "hand" in str(res["row"]["path"])
        return SimpleNamespace(region="upper_limb" if hand else "chest", confidence=0.97,
                               warnings=[], columns=lambda: {
                                   "region": "upper_limb" if hand else "chest",
                                   "region_confidence": 0.97})

    monkeypatch.setattr(engine._Run, "_predict_region", fake_region)
    monkeypatch.setattr(engine.Embedder, "_region_probe",
                        lambda self, config: SimpleNamespace(metadata={"sha256": "fake"}))
    refs = [str(root / f"img{i}.png") for i in range(3)]
    rows = {r["path"]: r for r in score_all([root], references=refs, config=config())}
    assert "region_unlike_references" in rows["hand.png"]["warnings"]
    assert "predicted region upper limb (97%), the references' chest" in \
        rows["hand.png"]["warnings_detail"]
    for i in range(4):
        assert "region_unlike" not in rows[f"img{i}.png"]["warnings"]
    # without references: against the region of at least 90 % of the dataset (info)
    for i in range(4, 22):
        write_png(root / f"img{i}.png", 100 + i)
    knn = {r["path"]: r for r in score_all([root], config=config())}
    assert "predicted region upper limb (97%), most scans' chest" in \
        knn["hand.png"]["warnings_detail"]
    assert "region_unlike_dataset (info)" in knn["hand.png"]["warnings_detail"]
    assert not any("region_unlike" in r["warnings"] for p, r in knn.items() if p != "hand.png")


def test_a_failing_acquisition_profile_never_fails_the_scan(tmp_path, monkeypatch):
    import scanqc.scoring.acquisition as acquisition

    def broken(scan):
        raise RuntimeError("odd header")

    monkeypatch.setattr(acquisition, "acquisition_profile", broken)
    root = make_dataset(tmp_path / "ds", n_vol=3, n_img=0, corrupt=False)
    refs = [str(root / "sub" / f"vol{i}.nii.gz") for i in range(2)]
    rows = score_all([root], references=refs, config=config())
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert not any("_unlike_" in r["warnings"] for r in rows)
