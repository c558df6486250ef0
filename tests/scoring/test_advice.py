"""Every warning code the package can emit has a line of advice (scoring/advice.py)."""

from __future__ import annotations

import re
from pathlib import Path

from scanqc.scoring.advice import ADVICE, UNLIKE, advice

SRC = Path(__file__).resolve().parents[2] / "src" / "scanqc"
#: A literal code as the first argument of ScanWarning (same line or the next) or code=.
_CODE = re.compile(r'ScanWarning\(\s*"([a-z0-9_]+)"|\bcode="([a-z0-9_]+)"')


def emitted_codes() -> set[str]:
    codes = set()
    for path in SRC.rglob("*.py"):
        for a, b in _CODE.findall(path.read_text()):
            codes.add(a or b)
    return codes - {"max", "cached"}  # the engine's severity-only placeholders


def test_every_emitted_code_has_advice():
    codes = emitted_codes()
    assert {"metal_artifact", "fov_cut", "duplicate_instance", "suspicious_reference"} <= codes
    missing = sorted(c for c in codes if not advice(c))
    assert missing == []
    assert all(len(text) < 200 and text.endswith(".") for text in ADVICE.values())


def test_unlike_families_and_unknown_codes():
    for kind in UNLIKE:
        assert "your references" in advice(f"{kind}_unlike_references")
        assert "most of the dataset" in advice(f"{kind}_unlike_dataset")
    assert advice("colour_unlike_references") == "" and advice("no_such_code") == ""
