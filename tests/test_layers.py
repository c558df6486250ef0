"""The house rules: each layer imports only the layers before it; plugin start-up skips torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "scanqc"
GUI = {"napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy"}
TORCHY = {"torch", "monai", "torchio", "safetensors"}
ORDER = ["io", "models", "scoring", "batch", "cli", "widgets"]
# layer -> scanqc subpackages it may import (besides itself and layer-0 modules)
ALLOWED = {
    "io": set(),
    "models": {"io"},
    "scoring": {"io", "models"},
    "batch": {"io", "models", "scoring"},
    "cli": {"io", "models", "scoring", "batch"},
    "widgets": {"io", "models", "scoring", "batch"},
}
FORBIDDEN_THIRD_PARTY = {
    "io": GUI | TORCHY,
    "models": GUI,
    "scoring": GUI,
    "batch": GUI,
    "cli": GUI,
    "widgets": set(),
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path}: use absolute imports (scanqc.x), not relative ones")
    return names


def _modules():
    for layer in ORDER:
        for path in sorted((SRC / layer).rglob("*.py")):
            yield layer, path


@pytest.mark.parametrize(("layer", "path"), list(_modules()), ids=lambda v: str(v))
def test_layer_imports(layer: str, path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "scanqc":
            parts = name.split(".")
            if len(parts) < 2 or parts[1] not in ORDER:
                continue  # layer-0 modules (scanqc.progress, scanqc.__version__)
            target = parts[1]
            assert target == layer or target in ALLOWED[layer], (
                f"{path.relative_to(SRC)} ({layer}) imports {name}"
            )
        else:
            assert top not in FORBIDDEN_THIRD_PARTY[layer], (
                f"{path.relative_to(SRC)} ({layer}) imports {top}"
            )


def test_layer0_modules_import_nothing_from_layers() -> None:
    for path in SRC.glob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "scanqc" and len(parts) > 1 and path.name not in (
                "__main__.py",
                "sample_data.py",  # the napari sample-data entry reads through io
            ):
                assert parts[1] not in ORDER, f"{path.name} imports {name}"


def test_plugin_import_does_not_import_torch() -> None:
    widget_mods = [f"scanqc.widgets.{p.stem}" for p in (SRC / "widgets").glob("*.py")]
    mods = ["scanqc", "scanqc.io", "scanqc.cli.main", *widget_mods]
    for extra in ("scanqc.io._napari_reader", "scanqc.sample_data"):
        if (SRC / (extra.split(".", 1)[1].replace(".", "/") + ".py")).exists():
            mods.append(extra)
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in ('torch', 'monai', 'torchio') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
