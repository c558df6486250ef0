"""The SQLite label store: round trip, validation, CSV import/export, location."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from scanqc.io.labels import (
    EXPORT_COLUMNS,
    REASONS,
    LabelStore,
    default_store_path,
)
from scanqc.io.scan import ScanEntry, make_scan_id


def _entries(root: Path, n: int = 4) -> list[ScanEntry]:
    out = []
    for i in range(n):
        p = root / "sub" / f"patient_smith_{i}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        rel = p.relative_to(root).as_posix()
        out.append(ScanEntry(scan_id=make_scan_id(rel), paths=(str(p),), kind="volume",
                             format="nifti", name=p.name))
    series = root / "series_a"
    series.mkdir()
    files = []
    for j in range(3):
        f = series / f"IM{j}.dcm"
        f.write_bytes(b"d")
        files.append(str(f))
    out.append(ScanEntry(scan_id=make_scan_id("1.2.3"), paths=tuple(files), kind="series",
                         format="dicom", name="series_a"))
    return out


def test_round_trip_and_partial_updates(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    with LabelStore.open(db, root=tmp_path) as store:
        rec = store.set("a", path=str(tmp_path / "x" / "a.nii"), label="Good", region="knee")
        assert rec.label == "good" and rec.path == "x/a.nii" and not rec.reference
        store.set("a", note="  motion  ")  # other fields unchanged
        store.set("b", label="reference")
        store.set("c", label="bad", reason="truncated fov")
        store.set("b", region="chest")
    store = LabelStore.open(db)  # root read back from meta
    try:
        a, b, c = store.get("a"), store.get("b"), store.get("c")
        assert (a.label, a.region, a.note, a.path) == ("good", "knee", "motion", "x/a.nii")
        assert b.reference and b.label == "reference" and b.region == "chest"
        assert c.reason == "truncated_fov" and not c.reference
        assert store.get("zzz") is None
        assert [r.scan_id for r in store.references()] == ["b"]
        assert {r.scan_id for r in store.all()} == {"a", "b", "c"}
        assert a.updated_at.endswith("+00:00")
        # clearing a field with None; bad clears the reference flag
        store.set("b", label="bad", reason="artifact")
        assert not store.get("b").reference
        store.set("a", note=None)
        assert store.get("a").note is None
        hist = store.history("b")
        assert [h["label"] for h in hist] == ["reference", "reference", "bad"]
        assert store.meta()["schema_version"] == "1"
    finally:
        store.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = [r[1] for r in con.execute("PRAGMA table_info(labels)")]
    assert cols == ["scan_id", "path", "label", "reason", "region", "note", "reference",
                    "updated_at"]


@pytest.mark.parametrize(("kw", "word"), [({"label": "meh"}, "label"),
                                          ({"reason": "blurry"}, "reason")])
def test_validation_one_line(tmp_path: Path, kw: dict, word: str) -> None:
    with LabelStore.open(tmp_path / "l.sqlite") as store:
        with pytest.raises(ValueError) as err:
            store.set("a", **kw)
        assert word in str(err.value) and "\n" not in str(err.value)
        assert store.get("a") is None  # nothing written


def test_not_a_store(tmp_path: Path) -> None:
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ValueError, match="junk.sqlite"):
        LabelStore.open(bad)


def test_default_location_beside_dataset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SCANQC_LABELS", raising=False)
    ds = tmp_path / "my_ds"
    ds.mkdir()
    assert default_store_path(ds) == tmp_path / "my_ds.scanqc-labels.sqlite"
    assert default_store_path(ds, tmp_path / "x.sqlite") == tmp_path / "x.sqlite"
    monkeypatch.setenv("SCANQC_LABELS", str(tmp_path / "env.sqlite"))
    assert default_store_path(ds) == tmp_path / "env.sqlite"
    monkeypatch.delenv("SCANQC_LABELS")
    before = sorted(ds.rglob("*"))
    LabelStore.for_dataset(ds).set("s", label="good")
    assert sorted(ds.rglob("*")) == before  # the dataset folder is not written


def test_read_only_dataset_location_falls_back_to_the_user_data_folder(
        tmp_path: Path, monkeypatch) -> None:
    """An archive on a read-only mount can still be labelled (and each keeps its store)."""
    import os

    monkeypatch.delenv("SCANQC_LABELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    archive = tmp_path / "mnt"
    (archive / "study_a").mkdir(parents=True)
    (archive / "study_b").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == archive
                        else real_access(p, mode))
    a = default_store_path(archive / "study_a")
    b = default_store_path(archive / "study_b")
    assert a.parent == tmp_path / "data" / "scanqc" / "labels" and a != b
    assert a.name.startswith("study_a-") and a.name.endswith(".scanqc-labels.sqlite")
    LabelStore.for_dataset(archive / "study_a").set("s", label="bad", reason="artifact")
    with LabelStore.open(default_store_path(archive / "study_a")) as store:
        assert store.get("s").label == "bad"
    assert not list(archive.glob("*.sqlite"))
    # a store already beside the dataset is kept where it is
    (archive / "study_b.scanqc-labels.sqlite").touch()
    assert default_store_path(archive / "study_b") == archive / "study_b.scanqc-labels.sqlite"


def test_export_has_no_identifiers(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    entries = _entries(ds)
    out = tmp_path / "labels.csv"
    with LabelStore.open(tmp_path / "l.sqlite", root=ds) as store:
        for e in entries[:3]:
            store.set(e.scan_id, path=e.path, label="bad", reason="artifact", note="n")
        assert store.export_csv(out) == 3
        rows = list(csv.DictReader(out.open()))
        assert list(rows[0]) == list(EXPORT_COLUMNS)
        text = out.read_text()
        assert str(tmp_path) not in text  # no absolute paths
        assert {r["path"] for r in rows} == {f"sub/patient_smith_{i}.nii.gz" for i in range(3)}
        store.export_csv(out, include_identifiers=True)
        assert str(ds) in out.read_text()


def test_import_matches_paths_and_ids(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    entries = _entries(ds)
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "scan_id", "label", "reason", "region", "note"])
        w.writerow(["sub/patient_smith_0.nii.gz", "", "reference", "", "knee", ""])  # relative
        w.writerow([str(ds / "sub/patient_smith_1.nii.gz"), "", "bad", "no_anatomy", "", "x"])
        w.writerow(["", entries[2].scan_id, "good", "", "", ""])  # by id
        w.writerow(["series_a", "", "bad", "wrong_plane", "", ""])  # series folder
        w.writerow(["nowhere/else.nii", "", "good", "", "", ""])  # unmatched
    with LabelStore.open(tmp_path / "l.sqlite", root=ds) as store:
        res = store.import_csv(src, entries)
        assert res.matched == 4 and res.unmatched == ["nowhere/else.nii"]
        got = store.as_dict()
        assert got[entries[0].scan_id].reference and got[entries[0].scan_id].region == "knee"
        assert got[entries[1].scan_id].reason == "no_anatomy"
        assert got[entries[2].scan_id].label == "good"
        assert got[entries[2].scan_id].path == "sub/patient_smith_2.nii.gz"
        assert got[entries[4].scan_id].path == "series_a"
        assert got[entries[4].scan_id].reason == "wrong_plane"
        # export -> import into a fresh store gives the same labels
        out = tmp_path / "out.csv"
        store.export_csv(out)
    with LabelStore.open(tmp_path / "l2.sqlite", root=ds) as fresh:
        assert fresh.import_csv(out, entries).matched == 4
        assert {k: (v.label, v.reason, v.reference) for k, v in fresh.as_dict().items()} == {
            k: (v.label, v.reason, v.reference) for k, v in got.items()}


def test_import_rejects_bad_value_before_writing(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    entries = _entries(ds)
    src = tmp_path / "in.csv"
    src.write_text("path,label,reason\nsub/patient_smith_0.nii.gz,good,\n"
                   f"sub/patient_smith_1.nii.gz,bad,{REASONS[0]}x\n")
    with LabelStore.open(tmp_path / "l.sqlite", root=ds) as store:
        with pytest.raises(ValueError, match="line 3"):
            store.import_csv(src, entries)
        assert store.all() == []
    src.write_text("file,label\na,good\n")
    with LabelStore.open(tmp_path / "l.sqlite", root=ds) as store, \
            pytest.raises(ValueError, match="scan_id"):
        store.import_csv(src, entries)


def test_concurrent_reader_sees_committed_rows(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    writer = LabelStore.open(db)
    reader = LabelStore.open(db)
    try:
        writer.set("a", label="good")
        assert reader.get("a").label == "good"
        writer.set_many(["b", "c"], label="bad", reason="corrupt")
        assert {r.scan_id for r in reader.all()} == {"a", "b", "c"}
    finally:
        writer.close()
        reader.close()


def test_a_failed_write_is_a_one_line_error_and_changes_nothing(tmp_path: Path) -> None:
    """Another program holding the store, a vanished disk: the dock says "not saved"."""
    store = LabelStore.open(tmp_path / "s.sqlite")
    store.set("a", label="good")
    real = store._conn

    class Failing:
        def __init__(self, fail_on: str) -> None:
            self.fail_on = fail_on

        def execute(self, sql: str, *args):
            if sql.startswith(self.fail_on):
                raise sqlite3.OperationalError("database is locked")
            return real.execute(sql, *args)

    for fail_on in ("BEGIN", "INSERT INTO history"):
        store._conn = Failing(fail_on)
        with pytest.raises(ValueError, match=r"s\.sqlite: the label change was not saved "
                                             r"\(database is locked\)"):
            store.set("a", label="bad", reason="artifact")
        store._conn = real
        assert store.get("a").label == "good"  # rolled back: nothing half-written
    store.close()
