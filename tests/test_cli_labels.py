"""``scanqc labels import`` / ``export`` on a small synthetic NIfTI dataset."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scanqc.cli.main import main
from scanqc.io.labels import LabelStore, default_store_path


def _fake_discover(paths, *, root=None, progress=None, cancel=None):
    from scanqc.io.scan import ScanEntry, make_scan_id

    root = Path(root or paths[0])
    out = []
    for p in sorted(Path(paths[0]).rglob("*.nii.gz")):
        rel = p.relative_to(root).as_posix()
        out.append(ScanEntry(make_scan_id(rel), (str(p),), "volume", "nifti", name=p.name))
    return out


@pytest.fixture(autouse=True)
def _discover_available(monkeypatch) -> None:
    """Use the real discovery; a stand-in only while scanqc.io.discover is not written yet."""
    try:
        import scanqc.io.discover  # noqa: F401
    except ModuleNotFoundError:
        import types

        mod = types.ModuleType("scanqc.io.discover")
        mod.discover = _fake_discover
        monkeypatch.setitem(sys.modules, "scanqc.io.discover", mod)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    ds = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for i in range(5):
        p = ds / ("a" if i < 3 else "b") / f"scan_{i}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(rng.integers(0, 100, (8, 8, 4)).astype(np.int16),
                        np.eye(4)).to_filename(p)
    return ds


def test_import_then_export(dataset: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("SCANQC_LABELS", raising=False)
    src = tmp_path / "in.csv"
    src.write_text(
        "path,label,reason,region\n"
        "a/scan_0.nii.gz,reference,,head\n"
        f"{dataset / 'a' / 'scan_1.nii.gz'},bad,artifact,\n"
        "b/scan_4.nii.gz,bad,no_anatomy,\n"
        "c/missing.nii.gz,good,,\n"
    )
    before = sorted(p.stat().st_mtime_ns for p in dataset.rglob("*"))
    assert main(["labels", "import", str(dataset), str(src)]) == 0
    out = capsys.readouterr().out
    assert "3 rows matched, 1 unmatched" in out
    assert sorted(p.stat().st_mtime_ns for p in dataset.rglob("*")) == before
    store_path = default_store_path(dataset)
    assert store_path.parent == dataset.parent and store_path.is_file()

    exported = tmp_path / "out.csv"
    assert main(["labels", "export", str(dataset), "--out", str(exported)]) == 0
    rows = {r["path"]: r for r in csv.DictReader(exported.open())}
    assert set(rows) == {"a/scan_0.nii.gz", "a/scan_1.nii.gz", "b/scan_4.nii.gz"}
    assert rows["a/scan_0.nii.gz"]["reference"] == "1"
    assert rows["a/scan_1.nii.gz"]["reason"] == "artifact"
    assert str(tmp_path) not in exported.read_text()
    with LabelStore.open(store_path) as store:
        assert len(store.references()) == 1


def test_custom_store_and_errors(dataset: Path, tmp_path: Path, capsys) -> None:
    store = tmp_path / "elsewhere.sqlite"
    src = tmp_path / "in.csv"
    src.write_text("path,label\na/scan_2.nii.gz,wonderful\n")
    assert main(["labels", "import", str(dataset), str(src), "--store", str(store)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "wonderful" in err and err.count("\n") == 1
    assert main(["labels", "export", str(dataset), "--out", str(tmp_path / "o.csv"),
                 "--store", str(tmp_path / "none.sqlite")]) == 1
    assert "no label store" in capsys.readouterr().err


@pytest.mark.parametrize("content", [
    b"\xef\xbb\xbfpath;label;note\r\na/scan_0.nii.gz;bad;H\xc3\xa9lo\xc3\xafse\r\n",  # Excel, de
    b"path\tlabel\tnote\na/scan_0.nii.gz\tbad\tH\xe9lo\xefse\n",  # tab, Windows-1252
    b"path,label,note\r\na/scan_0.nii.gz,bad,H\xe9lo\xefse\r\n",  # Excel "CSV" on Windows
])
def test_import_spreadsheet_csv_variants(dataset: Path, tmp_path: Path, content: bytes,
                                         monkeypatch) -> None:
    """Semicolons, tabs, a byte-order mark and Windows-1252 text, as spreadsheets save."""
    monkeypatch.delenv("SCANQC_LABELS", raising=False)
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes(content)
    assert main(["labels", "import", str(dataset), str(sheet)]) == 0
    with LabelStore.open(default_store_path(dataset)) as store:
        (rec,) = store.all()
    assert (rec.path, rec.label, rec.note) == ("a/scan_0.nii.gz", "bad", "Héloïse")


def test_unreadable_csv_is_one_line(dataset: Path, tmp_path: Path, capsys) -> None:
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes(b"path,label\n" + b"x" * 200_000 + b",bad\n")  # over csv's field limit
    assert main(["labels", "import", str(dataset), str(sheet), "--store",
                 str(tmp_path / "s.sqlite")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"scanqc: error: {sheet}: not a readable CSV")
    sheet.write_bytes(b'path,label\na/scan_0.nii.gz\x00,bad\n')  # a NUL byte: no match
    assert main(["labels", "import", str(dataset), str(sheet), "--store",
                 str(tmp_path / "s.sqlite")]) == 0
    assert "0 rows matched, 1 unmatched" in capsys.readouterr().out
