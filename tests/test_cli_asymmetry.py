"""``scanqc asymmetry``: NIfTI heatmap that overlays the input, CSV with scores and errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
torch = pytest.importorskip("torch")

from scanqc.cli.main import main  # noqa: E402
from scanqc.models.asymmetry_net import BUNDLED_DIR, AsymmetryEncoder, save_model  # noqa: E402


def _head_spl(shape=(28, 64, 64), shift=6.0):
    """(S, P, L) head with a bright lesion on one side; returns volume and lesion mask."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    c = (np.asarray(shape) - 1) / 2.0
    zc, yc, xc = z - c[0], y - c[1], x - c[2] - shift
    vol = np.zeros(shape, np.float32)
    vol[(zc / 11) ** 2 + (yc / 26) ** 2 + (xc / 21) ** 2 <= 1] = 0.6
    for s in (-1, 1):
        vol[((zc - 3) ** 2 + (yc - 12) ** 2 + (xc - s * 11) ** 2) <= 9] = 0.9
    lesion = (zc**2 + (yc + 10) ** 2 + (xc - 10) ** 2) <= 16
    vol[lesion] = 1.0
    vol += np.random.default_rng(0).normal(0, 0.02, shape).astype(np.float32)
    return vol, lesion


def _spl_to_ras(a: np.ndarray) -> np.ndarray:
    # (S, P, L) -> (R, A, S): reverse L and P, then transpose
    return np.transpose(a, (2, 1, 0))[::-1, ::-1, :].copy()


def test_cli_writes_overlayable_nifti_and_csv_with_error_row(tmp_path) -> None:
    vol, lesion = _head_spl()
    src = tmp_path / "in"
    src.mkdir()
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-40.0, -50.0, -20.0]
    nib.save(nib.Nifti1Image(_spl_to_ras(vol), affine), str(src / "head.nii.gz"))
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a nifti")
    bundled = (BUNDLED_DIR / "model.safetensors").is_file()
    model_args: list[str] = []
    if not bundled:  # a tiny random model keeps the test independent of the bundled one
        torch.manual_seed(0)
        save_model(AsymmetryEncoder(width=4, dim=8), tmp_path / "model", {"seed": 0})
        model_args = ["--model", str(tmp_path / "model")]
    out = tmp_path / "out"
    rc = main(["asymmetry", str(src), "--out-dir", str(out), *model_args])
    assert rc == 0
    with open(out / "asymmetry.csv", newline="") as fh:
        rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(fh)}
    assert rows["broken.nii.gz"]["status"] == "error"
    assert "broken.nii.gz" in rows["broken.nii.gz"]["error"]
    ok = rows["head.nii.gz"]
    assert ok["status"] == "ok" and float(ok["asymmetry_score"]) > 0
    assert ok["top_region"].startswith("slices ")
    heat_img = nib.load(str(out / ok["heatmap"]))
    # same voxel grid and affine as the input file: the heatmap overlays it
    assert heat_img.shape == vol.shape[::-1]
    assert np.allclose(heat_img.affine, affine)
    heat = np.asarray(heat_img.dataobj)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    if bundled:
        assert _spl_to_ras(lesion)[peak]
    else:  # a random model may pick the wrong side, but the peak is on the lesion's row
        assert _spl_to_ras(lesion).any(axis=0)[peak[1], peak[2]]
    # inputs untouched
    assert (src / "broken.nii.gz").read_bytes() == b"\x1f\x8b not really a nifti"


def test_train_asymmetry_fine_tunes_a_usable_model(tmp_path) -> None:
    import json

    from safetensors.torch import load_file

    src = tmp_path / "in"
    src.mkdir()
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    for i, shift in enumerate((4.0, 7.0)):
        vol, _ = _head_spl(shift=shift)
        nib.save(nib.Nifti1Image(_spl_to_ras(vol), affine), str(src / f"head{i}.nii.gz"))
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a nifti")
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_model(AsymmetryEncoder(width=4, dim=8), base, {"seed": 0})
    out = tmp_path / "tuned"
    rc = main(["train", "asymmetry", str(src), "--model", str(base), "--out", str(out),
               "--steps", "4"])
    assert rc == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert sorted(p.rsplit("/", 1)[-1] for p in meta["training_files"]) == [
        "head0.nii.gz", "head1.nii.gz"]
    assert meta["steps"] == 4 and meta["fine_tuned_from"] == str(base)
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it did train
    # the tuned folder is a model scanqc asymmetry can use
    assert main(["asymmetry", str(src / "head0.nii.gz"), "--out-dir", str(tmp_path / "o"),
                 "--method", "siamese", "--model", str(out), "--no-heatmaps"]) == 0
    # no usable volume: a one-line error, exit 1
    assert main(["train", "asymmetry", str(src / "broken.nii.gz"), "--out",
                 str(tmp_path / "x")]) == 1
