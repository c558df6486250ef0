"""``scanqc score --asymmetry``: the asymmetry score in the report (issue 9)."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tests.scoring.test_asymmetry import phantom_head

from scanqc.batch.engine import ScoreConfig, score_all


def _write(path: Path, vol: np.ndarray) -> Path:
    # scanqc reads NIfTI as (S, P, L): store x, y, z; 1.5 mm voxels as in the scoring tests
    # (the planted lesion is then 15 mm across)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image((vol * 1000).astype(np.int16).transpose(2, 1, 0), affine), path)
    return path


@pytest.fixture
def heads(tmp_path: Path) -> Path:
    clean, _ = phantom_head()
    lesioned, _ = phantom_head(lesion=(-13.0, -12.0, 0.0, 5.0, 1.0))
    _write(tmp_path / "clean.nii.gz", clean)
    _write(tmp_path / "lesion.nii.gz", lesioned)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    return tmp_path


def test_asymmetry_column_filled_only_when_asked(heads: Path) -> None:
    rows = {Path(r["path"]).name: r for r in score_all(
        [heads], config=ScoreConfig(workers=0, asymmetry=True))}
    assert rows["broken.nii.gz"]["status"] == "error"
    clean, lesion = rows["clean.nii.gz"], rows["lesion.nii.gz"]
    assert clean["status"] == lesion["status"] == "ok"
    assert math.isfinite(clean["asymmetry_score"]) and math.isfinite(lesion["asymmetry_score"])
    assert lesion["asymmetry_score"] > clean["asymmetry_score"]

    plain = {Path(r["path"]).name: r for r in score_all([heads], config=ScoreConfig(workers=0))}
    value = plain["lesion.nii.gz"].get("asymmetry_score")
    assert value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def test_asymmetry_setting_changes_the_resume_key() -> None:
    assert ScoreConfig(asymmetry=True).cache_hash() != ScoreConfig().cache_hash()


def test_a_mammogram_is_not_scored_alone(tmp_path: Path) -> None:
    from tests.test_cli_asymmetry_pairs import _breast, _mammo

    _mammo(tmp_path / "l_mlo.dcm", _breast(lesion=True, flip=False), "L", "MLO")
    # a radiograph of another body part tagged with a laterality is scored on its own
    _mammo(tmp_path / "l_hand.dcm", _breast(lesion=False, flip=False), "L", "PA", "DX")
    rows = {Path(r["path"]).name: r for r in score_all(
        [tmp_path], config=ScoreConfig(workers=0, asymmetry=True))}
    mammo, hand = rows["l_mlo.dcm"], rows["l_hand.dcm"]
    assert mammo["status"] == hand["status"] == "ok"
    assert math.isnan(mammo["asymmetry_score"])
    assert "asymmetry_needs_pair" in mammo["warnings"]
    assert math.isfinite(hand["asymmetry_score"])
    assert "asymmetry_needs_pair" not in (hand["warnings"] or "")
