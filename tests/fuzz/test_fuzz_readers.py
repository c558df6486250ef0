"""Fuzzing the readers: malformed inputs never crash, hang or exhaust memory.

Every case goes through ``discover`` + ``load_scan`` (+ ``open_scans`` for folders) under a
10 s watchdog (see ``tests/fuzz/mutations.py``) and must end as a Scan, a one-line
``ScanReadError`` naming the file, or a discovery entry with status error/skipped and a
one-line error. Hypothesis runs derandomized (same cases on every run).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz.mutations import (
    STRUCTURES,
    Case,
    HypothesisDraw,
    RandomDraw,
    clear_folder,
    dicom_bytes,
    dicom_dataset,
    m_dicom_tags,
    m_flip_header,
    m_nifti_header,
    m_truncate,
    make_case,
    peak_rss_mb,
    real_seeds,
    run_case,
    synthetic_seeds,
)

#: Malformed inputs the CI run must cover (synthetic; the real-data test adds more).
MIN_CI_CASES = 500
FUZZ_MAX_SCAN_BYTES = 256 * 1024**2
MAX_PEAK_GROWTH_MB = 512


def _settings(n: int):
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(autouse=True)
def _fuzz_env(monkeypatch):
    monkeypatch.setenv("SCANQC_MAX_SCAN_BYTES", str(FUZZ_MAX_SCAN_BYTES))
    logging.disable(logging.CRITICAL)  # nibabel/tifffile log every bad header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def _assert_ok(outcomes) -> None:
    bad = [f"{o.kind}: {f}" for o in outcomes for f in o.failures]
    assert not bad, "\n".join(bad[:20])


def test_fuzz_synthetic_inputs():
    """>= 500 mutated synthetic files and folder structures, 0 crashes/hangs, one-line errors."""
    seeds = synthetic_seeds()
    outcomes = []
    peak0 = peak_rss_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scanqc-fuzz-") as tmp:
        folder = Path(tmp) / "case"
        folder.mkdir()

        @_settings(MIN_CI_CASES + 20)
        @given(st.data())
        def one(data):
            clear_folder(folder)
            case = make_case(HypothesisDraw(data), folder, seeds, bombs=False)
            out = run_case(case, pipeline=True)  # loaded scans: checks + slices too
            outcomes.append(out)
            assert out.ok, f"{case.kind} ({case.seed}): {out.failures}"

        one()
    elapsed = time.perf_counter() - t0
    print(f"fuzz: {len(outcomes)} malformed inputs in {elapsed:.1f} s")
    assert len(outcomes) >= MIN_CI_CASES
    _assert_ok(outcomes)
    assert peak_rss_mb() - peak0 < MAX_PEAK_GROWTH_MB
    # the cases really are malformed: most end as errors, and there are several kinds
    n_err = sum(any(r.startswith(("error", "discover_error")) for r in o.results)
                for o in outcomes)
    assert n_err > len(outcomes) // 3
    assert len({o.kind.split(":")[0] for o in outcomes}) >= 8
    assert elapsed < 120  # typically ~15 s on 2 cores


def test_fuzz_real_files(shared_data):
    """Mutations of a handful of real NIfTI / DICOM (several syntaxes) / PNG / PGM / JPEG."""
    seeds = real_seeds(shared_data)
    assert len(seeds) >= 6
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="scanqc-fuzz-") as tmp:
        folder = Path(tmp) / "case"
        folder.mkdir()

        @_settings(120)
        @given(st.data())
        def one(data):
            clear_folder(folder)
            case = make_case(HypothesisDraw(data), folder, seeds, bombs=False)
            out = run_case(case, pipeline=True)  # loaded scans: checks + slices too
            outcomes.append(out)
            assert out.ok, f"{case.kind} ({case.seed}): {out.failures}"

        one()
    assert len(outcomes) >= 100
    _assert_ok(outcomes)


@pytest.mark.parametrize("mutation", [m_nifti_header, m_dicom_tags, m_truncate, m_flip_header])
def test_targeted_header_mutations(tmp_path, mutation):
    """Every value of the impossible-header tables, on NIfTI-1, NIfTI-2 and DICOM seeds."""
    import random

    seeds = synthetic_seeds()
    keys = ["nii_int16", "nii_gz_f32", "nii2", "dcm_explicit", "dcm_implicit", "dcm_big",
            "dcm_multiframe"]
    outcomes = []
    for i in range(40):
        name, data = seeds[keys[i % len(keys)]]
        name, data, kind = mutation(RandomDraw(random.Random(i)), name, data)
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        (folder / name).write_bytes(data)
        outcomes.append(run_case(Case(folder / name, kind)))
    _assert_ok(outcomes)


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_structures(tmp_path, structure):
    """Empty files, folders named like files, symlink loops, FIFOs, unreadable files."""
    import random

    if structure == "unreadable" and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop reads (see docs/reliability.md)")
    for i in range(4):
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        target, kind = STRUCTURES[structure](RandomDraw(random.Random(i)), folder)
        out = run_case(Case(target, kind))
        assert out.ok, out.failures
        if target.is_file() or target.is_symlink():  # a named file always gets an answer
            assert out.results, "the case produced no entry and no error"


def test_symlink_loop_is_cut_and_reported(tmp_path):
    from scanqc.io.discover import discover

    target, _ = STRUCTURES["symlink_loop"](RandomDraw(__import__("random").Random(0)), tmp_path)
    entries = discover([tmp_path])
    by_name = {e.name: e for e in entries}
    assert by_name["ok.png"].status == "ok"
    assert by_name["dangling.nii"].status == "error"
    assert all("\n" not in e.error for e in entries)
    assert sum(e.name == "ok.png" for e in entries) == 1  # the loop did not repeat it


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st_ = p.lstat()
            if p.is_file() and not p.is_symlink():
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                digest = "dir" if p.is_dir() else "other"
            out[str(p.relative_to(root))] = (digest, st_.st_mtime_ns)
    return out


def test_mixed_folder_inputs_untouched(tmp_path):
    """discover + load over good and malformed files: every byte and mtime unchanged."""
    import random

    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan, open_scans
    from scanqc.io.scan import ScanReadError

    root = tmp_path / "mixed"
    root.mkdir()
    seeds = synthetic_seeds()
    for key, (name, data) in seeds.items():
        (root / f"good_{key}_{name}").write_bytes(data)
    draw = RandomDraw(random.Random(3))
    for i, key in enumerate(sorted(seeds)):
        name, data = seeds[key]
        mut = (m_truncate, m_flip_header, m_nifti_header, m_dicom_tags)[i % 4]
        name, data, _ = mut(draw, name, data)
        (root / f"bad{i}_{name}").write_bytes(data)
    (root / "series").mkdir()
    for i in range(3):
        (root / "series" / f"s{i}.dcm").write_bytes(
            dicom_bytes(dicom_dataset(series_uid="1.2.3.9", instance=i + 1, z=2.0 * i)))
    (root / "empty.nii").write_bytes(b"")
    before = _snapshot(root)

    entries = discover([root])
    n_ok = 0
    for e in entries:
        if e.status == "ok":
            try:
                load_scan(e)
                n_ok += 1
            except ScanReadError:
                pass
    results = list(open_scans([root]))
    assert n_ok >= len(seeds)  # the good files (and series) load
    assert any(isinstance(r, ScanReadError) for _, r in results)
    for p in sorted(root.iterdir()):
        if p.is_file():
            try:
                load_scan(p)
            except ScanReadError as err:
                assert "\n" not in str(err)
    assert _snapshot(root) == before  # same files, bytes, mtimes; nothing added
