from __future__ import annotations

import math

import pytest

from batch import by_id, config, make_dataset
from scanqc.batch.columns import COLUMNS
from scanqc.batch.engine import score_all


@pytest.mark.slow
def test_dask_local_cluster_equals_local_run(tmp_path):
    pytest.importorskip("distributed")
    root = make_dataset(tmp_path / "ds", n_vol=4, n_img=1, odd=1)
    refs = [str(root / "sub" / "vol0.nii.gz"), str(root / "sub" / "vol1.nii.gz")]
    local = by_id(score_all([root], references=refs, config=config(workers=0)))
    dask = by_id(score_all([root], references=refs,
                           config=config(workers=2, scheduler="local")))
    assert set(local) == set(dask) and len(local) == 7
    for sid, a in local.items():
        b = dask[sid]
        for col in COLUMNS:
            if isinstance(a[col], float):
                assert math.isclose(a[col], b[col], rel_tol=1e-4, abs_tol=1e-5), col
            else:
                assert a[col] == b[col], (col, a[col], b[col])
