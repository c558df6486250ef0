"""The wheel ships napari.yaml and resources/ inside the package (STYLE.md section 3.2)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", ".hypothesis", ".whl", ".gl", ".cache", "tests", "benchmarks",
)


@pytest.mark.slow
def test_wheel_ships_manifest_and_resources(tmp_path):
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True)
    # build from a copy (symlinks kept) so the working tree gets no build/ or egg-info
    src = tmp_path / "src_copy"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_IGNORE)
    assert (src / "src" / "scanqc" / "napari.yaml").is_symlink()
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(src)])
    whl = next(wheels.glob("napari_scanqc-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    assert "scanqc/napari.yaml" in names
    assert "scanqc/io/_napari_reader.py" in names and "scanqc/sample_data.py" in names
    # every resource file (sample data, model weights and cards) is in the wheel
    resources = src / "resources"
    files = [p for p in resources.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.parent.name == "sample_data" and p.name == "LICENSE" for p in files)
    for p in files:
        rel = p.relative_to(src).as_posix()
        assert f"scanqc/{rel}" in names, rel

    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target",
         str(site), str(whl)])
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel copy shadows the editable install
    res = run([sys.executable, "-m", "npe2", "validate", "napari-scanqc", "--imports"], env=env)
    assert "valid" in (res.stdout + res.stderr).lower()
    code = (
        "import scanqc, importlib.resources as r\n"
        "from scanqc.sample_data import sample_dir, sample_paths\n"
        "print(scanqc.__file__)\n"
        "assert r.files('scanqc').joinpath('resources/sample_data/LICENSE').is_file()\n"
        "assert str(sample_dir()).startswith(" + repr(str(site)) + ")\n"
        "assert len(sample_paths()) == 7\n"
        "import npe2\n"
        "pm = npe2.PluginManager.instance(); pm.discover()\n"
        "assert 'napari-scanqc' in pm._manifests\n"
    )
    res = run([sys.executable, "-c", code], env=env)
    assert res.stdout.startswith(str(site)), res.stdout
