"""Bundled sample scans (``resources/sample_data``) and the napari sample-data command.

The files are small derivatives of permissively licensed public scans; their sources,
licences and derivation are in ``resources/sample_data/README.md`` and ``LICENSE``.
Imports neither napari nor torch.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


def sample_dir() -> Path:
    """Return the folder holding the bundled sample scans (inside the installed package)."""
    return Path(str(files("scanqc").joinpath("resources", "sample_data")))


def sample_paths() -> list[Path]:
    """Return the sample scans: one path per file scan and one folder per DICOM series."""
    root = sample_dir()
    out = []
    for p in sorted(root.iterdir()):
        if p.name in ("README.md", "LICENSE") or p.name.startswith("."):
            continue
        out.append(p)
    return out


def load_sample() -> list[LayerData]:
    """Read every sample scan into napari image LayerData tuples (napari sample_data hook)."""
    from scanqc.io._napari_reader import read_scans

    return read_scans([str(p) for p in sample_paths()])
