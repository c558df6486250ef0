"""Anatomical region classifier: a linear (or small MLP) probe on frozen encoder embeddings.

After Langer et al. 2024 (docs/region.md, METHODS.md section 2): embed each slice with the
frozen self-supervised :class:`~scanqc.models.encoder.SliceEncoder`, train a class-balanced
logistic regression on the unit slice embeddings, and flag scans whose predicted region
disagrees with their header. The probe works per slice; a 2D image is one slice and a
volume is scored slice by slice (see :mod:`scanqc.scoring.region`).

Classes (:data:`CLASSES`): the ten body regions of :data:`scanqc.scoring.header.REGIONS`
(with underscores) plus ``non_anatomical`` (test patterns, photos, maps, phantoms).
``unknown`` is not a trained class: it is assigned when the top probability is below the
probe's calibrated ``threshold``. Finer labels of the development data map to these classes
through the one table :data:`LABEL_MAP`.

Weights: safetensors through :func:`scanqc.models.weights.save_model` (sha256 checked on
load, no pickle); the class names, threshold, input dimension and the encoder the probe was
trained on are in ``metadata.json``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scanqc.models.weights import ModelLoadError, load_state_dict, read_metadata, save_model
from scanqc.progress import CancelToken, ProgressCallback, check, report

log = logging.getLogger(__name__)

#: Trained output classes, in output-unit order of a fresh probe.
CLASSES: tuple[str, ...] = (
    "head", "neck", "chest", "abdomen", "pelvis", "spine", "upper_limb", "lower_limb",
    "breast", "whole_body", "non_anatomical",
)

#: Assigned when the probe is not confident (not a trained class).
UNKNOWN = "unknown"

#: Fine labels (manifest ``region``, region_xr_v1 ``region``, user labels) -> class.
#: ``None``: no usable class (left out of training). Labels not in the table and not in
#: :data:`CLASSES` are user classes (kept as they are).
LABEL_MAP: dict[str, str | None] = {
    # head and neck
    "head": "head", "brain": "head", "skull": "head", "dental": "head", "teeth": "head",
    "head_neck": "head", "head?": None, "neck": "neck", "thyroid": "neck",
    # trunk
    "chest": "chest", "thorax": "chest", "lung": "chest", "heart": "chest",
    "lower_chest_upper_abdomen": "abdomen", "abdomen": "abdomen", "upper_abdomen": "abdomen",
    "abdomen_pelvis": "abdomen", "trunk": None, "pelvis": "pelvis", "hip": "pelvis",
    # spine
    "spine": "spine", "cervical_spine": "spine", "thoracic_spine": "spine",
    "lumbar_spine": "spine",
    # limbs
    "upper_limb": "upper_limb", "shoulder": "upper_limb", "elbow": "upper_limb",
    "forearm": "upper_limb", "wrist": "upper_limb", "hand": "upper_limb",
    "lower_limb": "lower_limb", "knee": "lower_limb", "ankle": "lower_limb",
    "foot": "lower_limb", "femur": "lower_limb", "leg": "lower_limb",
    # other
    "breast": "breast", "whole_body": "whole_body", "wholebody": "whole_body",
    "non_anatomical": "non_anatomical", "none": "non_anatomical",
    "test_pattern": "non_anatomical", "phantom": "non_anatomical",
    "nonhuman": None, "unknown": None, "": None,
}


def map_label(label: str) -> str | None:
    """Map a fine region label to a class (see :data:`LABEL_MAP`); ``None``: not usable.

    Unlisted labels are normalised (lower case, spaces to underscores) and returned as they
    are, so users can label a class of their own.
    """
    key = str(label or "").strip().lower().replace(" ", "_").replace("-", "_")
    if key in LABEL_MAP:
        return LABEL_MAP[key]
    return key or None


class RegionProbe(nn.Module):
    """Softmax classifier on ``(N, in_dim)`` embeddings.

    The input is standardised with stored ``mean``/``scale`` buffers, then a linear layer
    (``hidden=0``, logistic regression) or a one-hidden-layer MLP gives one logit per class.

    Args:
        in_dim: Embedding dimension.
        classes: Output class names.
        hidden: Hidden units of the MLP head; 0 = linear probe.
        threshold: Below this top probability a prediction is :data:`UNKNOWN`.
    """

    def __init__(
        self, in_dim: int, classes: Sequence[str] = CLASSES, hidden: int = 0,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.classes: list[str] = [str(c) for c in classes]
        self.hidden = int(hidden)
        self.threshold = float(threshold)
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("scale", torch.ones(self.in_dim))
        if self.hidden > 0:
            self.body: nn.Module = nn.Sequential(nn.Linear(self.in_dim, self.hidden), nn.ReLU())
            last = self.hidden
        else:
            self.body = nn.Identity()
            last = self.in_dim
        self.head = nn.Linear(last, len(self.classes))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor kwargs (stored in ``metadata.json``)."""
        return {"in_dim": self.in_dim, "classes": list(self.classes), "hidden": self.hidden,
                "threshold": self.threshold}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(N, n_classes)`` logits."""
        return self.head(self.body((x - self.mean) / self.scale))

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` for ``(N, in_dim)`` embeddings."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.shape[1] != self.in_dim:
            raise ValueError(f"embeddings have dimension {x.shape[1]}, the probe expects "
                             f"{self.in_dim} (trained on another encoder?)")
        self.eval()
        with torch.inference_mode():
            p = torch.softmax(self(torch.from_numpy(np.ascontiguousarray(x))), dim=1)
        return p.numpy().astype(np.float32)

    def predict(self, embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Top class per row (:data:`UNKNOWN` below ``threshold``) and its probability."""
        p = self.predict_proba(embeddings)
        top = p.argmax(axis=1)
        conf = p[np.arange(len(p)), top]
        names = [self.classes[i] if c >= self.threshold else UNKNOWN
                 for i, c in zip(top, conf, strict=True)]
        return names, conf

    def add_class(self, name: str) -> int:
        """Add an output unit for a new class (existing outputs are unchanged).

        The new unit starts with zero weights and a bias well below the others, so
        predictions do not change until :func:`adapt` trains it. Returns its index.
        """
        name = str(name)
        if name in self.classes:
            return self.classes.index(name)
        old = self.head
        new = nn.Linear(old.in_features, old.out_features + 1)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:-1] = old.weight
            new.bias[:-1] = old.bias
            new.bias[-1] = old.bias.min() - 5.0
        self.head = new
        self.classes.append(name)
        return len(self.classes) - 1


# --------------------------------------------------------------------------- training


def _encode_labels(labels: Sequence[str], classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(lab)] for lab in labels], dtype=np.int64)


def _fit(
    probe: RegionProbe, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
    weight_decay: float, class_balanced: bool, anchor: dict[str, torch.Tensor] | None = None,
    anchor_weight: float = 0.0, seed: int = 0, progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> None:
    """Full-batch AdamW on cross-entropy.

    Optionally class-balanced, and optionally pulled towards ``anchor`` parameters so that
    classes absent from ``y`` are not forgotten.
    """
    torch.manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(y)
    k = len(probe.classes)
    if class_balanced:
        counts = np.bincount(y, minlength=k).astype(np.float32)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()),
                     0.0)
        loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(w.astype(np.float32)))
    else:
        loss_fn = nn.CrossEntropyLoss()
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    probe.train()
    for ep in range(epochs):
        check(cancel)
        opt.zero_grad()
        loss = loss_fn(probe(xt), yt)
        if anchor and anchor_weight > 0:
            for name, p in probe.named_parameters():
                ref = anchor.get(name)
                if ref is not None and ref.shape == p.shape:
                    loss = loss + anchor_weight * ((p - ref) ** 2).sum()
        loss.backward()
        opt.step()
        if ep % 50 == 0 or ep == epochs - 1:
            report(progress, ep + 1, epochs, f"probe loss {loss.item():.4f}")
    probe.eval()


def train_probe(
    embeddings: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str] | None = None,
    *,
    hidden: int = 0,
    epochs: int = 400,
    lr: float = 0.01,
    weight_decay: float = 1e-3,
    class_balanced: bool = True,
    threshold: float = 0.5,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> RegionProbe:
    """Train a probe on ``(N, D)`` embeddings and their class names.

    Args:
        embeddings: Unit slice embeddings.
        labels: One class name per row (already mapped with :func:`map_label`).
        classes: Output classes; default :data:`CLASSES` plus any other label seen.
        hidden: 0 for logistic regression, else MLP hidden units.
        epochs: Full-batch optimisation steps.
        lr: AdamW learning rate.
        weight_decay: L2 regularisation.
        class_balanced: Weight the loss by inverse class frequency.
        threshold: Initial unknown threshold (see :func:`calibrate_threshold`).
        seed: Torch seed.
        progress: Progress callback.
        cancel: Cancellation token.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    labels = [str(lab) for lab in labels]
    if len(labels) != len(x) or len(x) == 0:
        raise ValueError("need one label per embedding and at least one embedding")
    cls = list(classes) if classes is not None else list(CLASSES)
    for lab in labels:
        if lab not in cls:
            cls.append(lab)
    torch.manual_seed(seed)
    probe = RegionProbe(x.shape[1], cls, hidden=hidden, threshold=threshold)
    with torch.no_grad():
        probe.mean.copy_(torch.from_numpy(x.mean(axis=0)))
        probe.scale.copy_(torch.from_numpy(np.maximum(x.std(axis=0), 1e-3)))
        # classes without examples never win
        present = set(labels)
        for i, c in enumerate(cls):
            if c not in present:
                probe.head.bias[i] = -10.0
    y = _encode_labels(labels, cls)
    _fit(probe, x, y, epochs=epochs, lr=lr, weight_decay=weight_decay,
         class_balanced=class_balanced, seed=seed, progress=progress, cancel=cancel)
    return probe


def adapt(
    probe: RegionProbe,
    embeddings: np.ndarray,
    labels: Sequence[str],
    *,
    epochs: int = 200,
    lr: float = 0.01,
    anchor_weight: float = 1e-3,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> RegionProbe:
    """Few-label adaptation: retrain a copy of ``probe`` on a user's labelled embeddings.

    Labels are mapped with :func:`map_label`; rows with no usable label are ignored. A
    label that is not yet a class becomes a new output unit (a user class). Training starts
    from the current weights with a small pull back towards them (``anchor_weight``), so
    classes the user did not label keep working. Takes well under a second for hundreds
    of rows on a CPU.

    Returns:
        The adapted probe (a new object; ``probe`` is not modified).
    """
    import copy

    x = np.asarray(embeddings, dtype=np.float32)
    mapped = [map_label(lab) for lab in labels]
    keep = np.array([m is not None for m in mapped], dtype=bool)
    if not keep.any():
        raise ValueError("no usable labels to adapt on")
    x = x[keep]
    mapped = [m for m in mapped if m is not None]
    new = copy.deepcopy(probe)
    for lab in dict.fromkeys(mapped):
        if lab not in new.classes:
            new.add_class(lab)
    meta = getattr(new, "metadata", None)
    if isinstance(meta, dict) and meta.get("classes_without_data"):
        # the user's labels are training data: those classes can be recognised now
        meta["classes_without_data"] = [c for c in meta["classes_without_data"]
                                        if c not in set(mapped)]
    anchor = {k: v.detach().clone() for k, v in new.named_parameters()}
    y = _encode_labels(mapped, new.classes)
    _fit(new, x, y, epochs=epochs, lr=lr, weight_decay=0.0, class_balanced=True,
         anchor=anchor, anchor_weight=anchor_weight, seed=seed, progress=progress,
         cancel=cancel)
    return new


def calibrate_threshold(
    probe: RegionProbe, embeddings: np.ndarray, labels: Sequence[str], quantile: float = 0.05,
    floor: float = 0.3, ceiling: float = 0.9,
) -> float:
    """Set ``probe.threshold`` from held-out data and return it.

    The threshold is the ``quantile`` of the top probability over correctly classified
    held-out rows (so about 95 % of right answers stay above it), clipped to
    ``[floor, ceiling]``.
    """
    p = probe.predict_proba(embeddings)
    idx = {c: i for i, c in enumerate(probe.classes)}
    y = np.array([idx.get(str(lab), -1) for lab in labels])
    right = p.argmax(axis=1) == y
    if right.sum() >= 3:
        thr = float(np.quantile(p.max(axis=1)[right], quantile))
    else:
        thr = probe.threshold
    probe.threshold = float(np.clip(thr, floor, ceiling))
    return probe.threshold


# --------------------------------------------------------------------------- files


def save_probe(probe: RegionProbe, model_dir: str | Path, metadata: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Write the probe as ``model.safetensors`` + ``metadata.json`` (with sha256)."""
    meta = {"name": "region", "version": "1", "task": "anatomical region classification",
            "architecture": {"class": "RegionProbe", "kwargs": probe.config}}
    meta.update(metadata or {})
    meta["architecture"] = {"class": "RegionProbe", "kwargs": probe.config}
    return save_model(probe, model_dir, meta)


def load_probe(model_dir: str | Path) -> RegionProbe:
    """Load a probe folder written by :func:`save_probe` (safetensors, sha256 checked).

    Raises:
        ModelLoadError: missing or corrupt files, or weights that do not fit.
    """
    path = Path(model_dir)
    meta = read_metadata(path)
    arch = meta.get("architecture") or {}
    if arch.get("class") != "RegionProbe":
        raise ModelLoadError(path / "metadata.json", f"not a region probe ({arch.get('class')})")
    state = load_state_dict(path, meta.get("sha256"))
    try:
        probe = RegionProbe(**(arch.get("kwargs") or {}))
        probe.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(path / "model.safetensors",
                             f"weights do not fit the probe ({exc})") from exc
    probe.eval()
    probe.metadata = meta  # type: ignore[attr-defined]
    return probe


def load_bundled_probe(name: str = "region") -> RegionProbe:
    """Load the shipped probe ``resources/models/<name>``."""
    from scanqc.models.registry import model_dir

    return load_probe(model_dir(name))


# --------------------------------------------------------------------------- training data


#: Hand-annotated slice ranges of mixed-region training volumes: manifest path ->
#: ``(first, last, class)`` as fractions of data axis 0 as scanqc reads the file (0 = first
#: slice). Slices outside every range (the boundary zone) are left out of training; the
#: scan-level label stays the manifest's main region. Annotated by looking at the axial
#: slices, not by any model: example_ct (read with the axis-0 direction pointing
#: superior) shows femoral heads, acetabula and iliac wings up to about 0.42, the iliac
#: crest near 0.45, then kidneys, bowel and liver up to the liver dome at the top.
SLICE_REGIONS: dict[str, tuple[tuple[float, float, str], ...]] = {
    "totalsegmentator_examples/example_ct.nii.gz": ((0.0, 0.40, "pelvis"),
                                                    (0.50, 1.0, "abdomen")),
}

#: Files of the manifest that show the same subject (or the same source image): manifest
#: path prefix -> group, so that a held-out split never puts them on both sides.
SAME_SUBJECT: tuple[tuple[str, str], ...] = (
    ("totalsegmentator_examples/example_ct.nii", "totalsegmentator:subject"),
    ("totalsegmentator_examples/example_ct_sm", "totalsegmentator:subject"),
    ("totalsegmentator_examples/example_seg", "totalsegmentator:subject"),
    ("niivue-demo-images/chris_", "niivue:chris"),
    ("pydicom_3.0.2_testfiles/CT_small", "nema:CT1"),
    ("pydicom_3.0.2_testfiles/no_meta", "nema:CT1"),
    ("pylibjpeg-data/CT1_", "nema:CT1"),
    ("pydicom_3.0.2_testfiles/MR_", "nema:MR1"),
    ("pydicom_3.0.2_testfiles/zipMR", "nema:MR1"),
    ("pydicom_3.0.2_testfiles/JPEG2000", "nema:NM1"),
    ("pylibjpeg-data/966", "pylibjpeg:966"),
    ("pylibjpeg-data/TOSHIBA_J2K_SIZ", "pylibjpeg:toshiba_pelvis"),
    ("torchxrayvision_tests/1.2.276.0.7230010.3.1.4.8323329.6904", "rsna:6904"),
    ("torchxrayvision_tests/Fake_MONOHR1", "rsna:6904"),
)


def subject_group(set_name: str, rel_path: str) -> str:
    """Split group of a manifest file: its subject when known (:data:`SAME_SUBJECT`)."""
    for prefix, group in SAME_SUBJECT:
        if rel_path.startswith(prefix):
            return group
    return f"{set_name}:{rel_path}"


#: manifest flags of files that show no anatomy (class ``non_anatomical``).
NON_ANATOMICAL_FLAGS = frozenset({"non_anatomical", "test_pattern", "non_medical_content"})


@dataclass(frozen=True)
class RegionSample:
    """One labelled scan for the probe.

    Attributes:
        path: File or DICOM series folder.
        region: Class (after :func:`map_label`).
        group: Patient/study group id (a split never puts one group on both sides).
        source: Data set (and source repository for region_xr_v1).
        licence: Licence of the file.
        permissive: True when the licence allows shipping weights trained on it.
        fine_label: The label before mapping.
        spans: Per-slice annotation of a mixed-region volume (see :data:`SLICE_REGIONS`);
            empty: every slice has ``region``.
    """

    path: str
    region: str
    group: str
    source: str
    licence: str
    permissive: bool
    fine_label: str
    spans: tuple[tuple[float, float, str], ...] = ()

    def slice_labels(self, positions: Sequence[float]) -> list[str | None]:
        """Class of each slice at ``positions`` (fractions of axis 0); ``None``: unlabelled."""
        if not self.spans:
            return [self.region] * len(positions)
        out: list[str | None] = []
        for pos in positions:
            lab = None
            for a, b, cls in self.spans:
                if a <= float(pos) <= b:
                    lab = cls
                    break
            out.append(lab)
        return out


def region_samples(root: str | Path, permissive_only: bool = True) -> list[RegionSample]:
    """Labelled scans of the development data (``region_xr_v1`` plus manifest files).

    Uses :mod:`scanqc.models.training_data` for licences and data-quality exclusions:
    radiographs of ``region_xr_v1`` (group = ``patient_or_study_id``), decodable anatomy
    files of the other sets (a DICOM series folder is one scan), and files flagged as not
    anatomy (class ``non_anatomical``).

    Args:
        root: Data folder with ``manifest.csv``.
        permissive_only: Keep only files that may train shipped weights.
    """
    import csv

    from scanqc.models.training_data import classify_files, region_xr_labels

    root = Path(root)
    groups: dict[str, str] = {}
    with open(root / "region_xr_v1" / "labels.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            # no patient/study id (e.g. the Roboflow export): each image is its own group
            pid = row["patient_or_study_id"].strip() or row["file"]
            groups[row["file"]] = row["source_path"].split(":", 1)[0] + ":" + pid
    out: list[RegionSample] = []
    for f in region_xr_labels(root, permissive_only=permissive_only):
        cls = map_label(f.region)
        if cls is None:
            continue
        name = Path(f.path).name
        out.append(RegionSample(f.path, cls, groups.get(name, name),
                                "region_xr_v1:" + groups.get(name, "").split(":")[0],
                                f.licence, f.included, f.region))
    seen: set[str] = set()
    for f in classify_files(root):
        if f.set == "region_xr_v1":
            continue
        path = str(Path(f.path).parent) if f.kind == "series" else f.path
        if path in seen:
            continue
        reason = f.reason
        flags_ok = reason.startswith("included")
        licence_ok = not reason.startswith("excluded: licence")
        decode_ok = "decode" not in reason
        non_anat = f.region == "none" and decode_ok and \
            any(fl in reason for fl in NON_ANATOMICAL_FLAGS)
        if permissive_only and not licence_ok:
            continue
        if not (flags_ok or non_anat or (not permissive_only and decode_ok
                                         and "data quality" not in reason
                                         and not reason.startswith("optional"))):
            continue
        cls = "non_anatomical" if non_anat else map_label(f.region)
        if cls is None:
            continue
        seen.add(path)
        rel = Path(path).relative_to(root).as_posix() if Path(path).is_relative_to(root) \
            else path
        out.append(RegionSample(path, cls, subject_group(f.set, rel), f.set, f.licence,
                                licence_ok, f.region, SLICE_REGIONS.get(rel, ())))
    return out


def synthetic_non_anatomical(n: int = 48, size: int = 128, seed: int = 0) -> np.ndarray:
    """Model-ready ``(n, size, size)`` slices in [0, 1] that show no anatomy.

    Test patterns (bars, gradients, checkerboards, SMPTE-like blocks), uniform and
    Gaussian noise, geometric phantoms (discs and rods) and blank frames with text-like
    blocks: generated, so they carry no licence.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        kind = i % 8
        if kind == 0:  # bars
            k = rng.integers(4, 16)
            img = (np.floor(xx * k) % 2).astype(np.float32)
            if rng.random() < 0.5:
                img = img.T
        elif kind == 1:  # gradient
            a = rng.uniform(0, 2 * np.pi)
            img = (np.cos(a) * xx + np.sin(a) * yy)
        elif kind == 2:  # checkerboard
            k = rng.integers(2, 12)
            img = ((np.floor(xx * k) + np.floor(yy * k)) % 2).astype(np.float32)
        elif kind == 3:  # grey-level steps
            k = rng.integers(4, 12)
            img = np.floor(xx * k) / k
        elif kind == 4:  # uniform or Gaussian noise
            img = (rng.random((size, size)) if rng.random() < 0.5
                   else rng.normal(0.5, rng.uniform(0.05, 0.3), (size, size))).astype(np.float32)
        elif kind == 5:  # disc phantom with inserts
            img = np.zeros((size, size), np.float32)
            r0 = rng.uniform(0.3, 0.45)
            img[(xx - 0.5) ** 2 + (yy - 0.5) ** 2 < r0 ** 2] = 0.5
            for _ in range(rng.integers(3, 8)):
                cx, cy = rng.uniform(0.3, 0.7, 2)
                img[(xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(0.02, 0.06) ** 2] = \
                    rng.uniform(0, 1)
        elif kind == 6:  # colour-bar like blocks
            vals = rng.random(rng.integers(5, 9))
            img = vals[np.minimum((xx * len(vals)).astype(int), len(vals) - 1)]
            img[int(size * 0.7):] = rng.random()
        else:  # text-like blocks on a flat background
            img = np.full((size, size), rng.uniform(0, 0.2), np.float32)
            for _ in range(rng.integers(5, 20)):
                y0, x0 = rng.integers(0, size - 8, 2)
                img[y0:y0 + rng.integers(3, 8), x0:x0 + rng.integers(8, 40)] = 1.0
        img = np.asarray(img, dtype=np.float32)
        lo, hi = float(img.min()), float(img.max())
        out[i] = (img - lo) / (hi - lo) if hi > lo else img
    return np.clip(out, 0.0, 1.0)


def sample_slices(
    path: str, max_slices: int = 12, size: int = 128, prefer_io: bool = True,
    return_positions: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Read a scan and return model-ready slices (a volume: evenly spaced, central 80 %).

    Args:
        path: File or DICOM series folder.
        max_slices: Slices kept from a volume.
        size: Slice side in pixels.
        prefer_io: Read with the product reader first.
        return_positions: Also return each slice's position along data axis 0 as a
            fraction (0 = first slice, 1 = last; 0.5 for a 2D image).

    Raises:
        scanqc.io.scan.ScanReadError: the file cannot be read.
    """
    from scanqc.models.preprocess import scan_to_slices
    from scanqc.models.training_data import read_scan

    scan = read_scan(path, prefer_io=prefer_io)
    slices, idx = scan_to_slices(scan, size=size, max_slices=None if not scan.is_volume
                                 else max(max_slices * 5 // 4, 1))
    depth = int(scan.spatial_shape[0]) if scan.is_volume else 1
    if len(slices) > 2:
        n = len(slices)
        lo, hi = int(0.1 * n), max(int(0.1 * n) + 1, int(np.ceil(0.9 * n)))
        slices, idx = slices[lo:hi], idx[lo:hi]
        if len(slices) > max_slices:
            keep = np.unique(np.round(np.linspace(0, len(slices) - 1, max_slices)).astype(int))
            slices, idx = slices[keep], idx[keep]
    if not return_positions:
        return slices
    pos = (np.asarray(idx, dtype=np.float64) / (depth - 1)) if depth > 1 else \
        np.full(len(slices), 0.5)
    return slices, pos


# --------------------------------------------------------------------------- evaluation


def embed_samples(
    samples: Sequence[RegionSample],
    encoder: nn.Module,
    max_slices: int = 12,
    mirror: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[list[np.ndarray | None], list[list[str | None]], list[str]]:
    """Embed every sample's slices; unreadable samples give ``None`` and a one-line error.

    Args:
        samples: The scans.
        encoder: Slice encoder.
        max_slices: Slices per volume.
        mirror: Append the embeddings of the left-right mirrored slices (training
            augmentation): rows ``n:`` of each array are the mirrors of rows ``:n``.
        progress: Progress callback.
        cancel: Cancellation token.

    Returns:
        ``(embeddings, slice_labels, errors)``: one ``(n_slices, D)`` (``(2 n_slices, D)``
        with ``mirror``) array, or ``None``, per sample; the class of each row
        (:meth:`RegionSample.slice_labels`; ``None``: not annotated); the errors.
    """
    from scanqc.models.encoder import embed_slices

    out: list[np.ndarray | None] = []
    labs: list[list[str | None]] = []
    errors: list[str] = []
    for i, s in enumerate(samples):
        check(cancel)
        try:
            sl, pos = sample_slices(s.path, max_slices=max_slices, return_positions=True)
            if not len(sl):
                out.append(None)
                labs.append([])
                continue
            lab = s.slice_labels(pos)
            if mirror:
                sl = np.concatenate([sl, sl[:, :, ::-1]])
                lab = lab + lab
            out.append(embed_slices(encoder, sl))
            labs.append(lab)
        except Exception as exc:  # noqa: BLE001 - one bad file never stops training
            out.append(None)
            labs.append([])
            errors.append(" ".join(f"{s.path}: {exc}".split()))
        report(progress, i + 1, len(samples), "embedding training scans")
    return out, labs, errors


def grouped_split(
    labels: Sequence[str], groups: Sequence[str], test_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split that never puts one group (patient/study) on both sides.

    Uses :class:`sklearn.model_selection.StratifiedGroupKFold` with ``round(1/test_fraction)``
    folds and returns the first fold as the test side. Classes with a single group go to
    the training side.

    Returns:
        ``(train_index, test_index)`` arrays.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray([str(x) for x in labels])
    groups = np.asarray([str(g) for g in groups])
    n_splits = max(2, round(1.0 / test_fraction))
    n_groups = {c: len(set(groups[labels == c])) for c in set(labels)}
    ok = np.array([n_groups[c] >= n_splits for c in labels])
    rest = np.flatnonzero(~ok)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return np.arange(len(labels)), np.array([], dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    tr, te = next(cv.split(np.zeros(len(idx)), labels[idx], groups[idx]))
    return np.sort(np.r_[idx[tr], rest]).astype(np.int64), np.sort(idx[te]).astype(np.int64)


def stack_slices(
    embeddings: Sequence[np.ndarray | None],
    labels: Sequence[str | Sequence[str | None]],
    index: Sequence[int],
) -> tuple[np.ndarray, list[str]]:
    """Slice-level training rows ``(sum n_i, D)`` and labels for the samples in ``index``.

    ``labels[i]`` is one class for all rows of sample ``i``, or one class (``None``: leave
    the row out) per row.
    """
    xs, ys = [], []
    for i in index:
        e = embeddings[i]
        if e is None or len(e) == 0:
            continue
        lab = labels[i]
        if isinstance(lab, str):
            xs.append(e)
            ys.extend([lab] * len(e))
            continue
        if len(lab) != len(e):
            raise ValueError(f"sample {i}: {len(lab)} labels for {len(e)} rows")
        keep = [k for k, v in enumerate(lab) if v is not None]
        xs.append(e[keep])
        ys.extend(str(lab[k]) for k in keep)
    if not xs or not ys:
        raise ValueError("no readable training samples")
    return np.concatenate(xs).astype(np.float32), ys


def scan_probabilities(probe: RegionProbe, embeddings: Sequence[np.ndarray | None]
                       ) -> np.ndarray:
    """Scan-level probabilities: the mean of the slice probabilities (NaN rows if unread)."""
    out = np.full((len(embeddings), len(probe.classes)), np.nan, dtype=np.float32)
    for i, e in enumerate(embeddings):
        if e is not None and len(e):
            out[i] = probe.predict_proba(e).mean(axis=0)
    return out


def evaluate(classes: Sequence[str], probs: np.ndarray, labels: Sequence[str]
             ) -> dict[str, Any]:
    """Top-1 accuracy, per-class n and recall, and the confusion matrix (rows: truth).

    Rows with NaN probabilities (unreadable) count as wrong.
    """
    cls = list(classes)
    labels = [str(x) for x in labels]
    present = [c for c in cls if c in set(labels)]
    pred = [cls[int(np.nanargmax(p))] if np.isfinite(p).all() else UNKNOWN for p in probs]
    names = present + sorted({p for p in pred if p not in present})
    pos = {c: i for i, c in enumerate(names)}
    cm = np.zeros((len(present), len(names)), dtype=np.int64)
    for t, p in zip(labels, pred, strict=True):
        if t in pos and t in present:
            cm[present.index(t), pos[p]] += 1
    correct = sum(t == p for t, p in zip(labels, pred, strict=True))
    return {
        "n": len(labels),
        "accuracy": correct / len(labels) if labels else float("nan"),
        "per_class": {c: {"n": int(cm[i].sum()),
                          "recall": float(cm[i, pos[c]] / max(1, cm[i].sum()))}
                      for i, c in enumerate(present)},
        "confusion_rows": present,
        "confusion_cols": names,
        "confusion": cm.tolist(),
        "predicted": pred,
    }


def confusion_markdown(result: dict[str, Any]) -> str:
    """The confusion matrix of :func:`evaluate` as a Markdown table."""
    cols = result["confusion_cols"]
    lines = ["| truth \\ predicted | " + " | ".join(cols) + " | n | recall |",
             "|---" * (len(cols) + 3) + "|"]
    for r, row in zip(result["confusion_rows"], result["confusion"], strict=True):
        pc = result["per_class"][r]
        lines.append(f"| {r} | " + " | ".join(str(v) for v in row)
                     + f" | {pc['n']} | {pc['recall']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- shipped model


def resolve_encoder(encoder_dir: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder to embed with: ``encoder_dir``, else the bundled one.

    Returns:
        ``(model, metadata)``; metadata has at least ``name`` and ``sha256``.
    """
    from scanqc.models.registry import load_model, load_model_dir

    if encoder_dir is not None:
        return load_model_dir(encoder_dir, "cpu")
    return load_model("encoder", "cpu")


def _model_card(meta: dict[str, Any], held: dict[str, Any], command: str) -> str:
    tr = meta["training"]
    per_class = ", ".join(f"{c} {n} ({tr['slices_per_class'].get(c, 0)})"
                          for c, n in tr["scans_per_class"].items())
    lic_lines = "\n".join(f"| {d['set']} | {d['licence']} | {d['files']} |"
                          for d in meta["training_data"])
    ev = meta["evaluation"]
    return f"""# Region probe (scanqc anatomical region classifier)

Probe (class-balanced softmax regression; `hidden={meta['architecture']['kwargs']
['hidden']}`, 0 = linear, else a one-hidden-layer MLP head) on the frozen slice
embeddings of the bundled encoder (`{meta['encoder']['name']}`, sha256
`{str(meta['encoder']['sha256'])[:16]}...`). Classes:
{', '.join(meta['classes'])}; `unknown` below the calibrated threshold
{meta['threshold']:.3f}. See docs/region.md.

Reproduce: `{command}`

## Held-out evaluation

Patient/study-grouped, stratified split of the permissively licensed files (25 % held out;
one scan = mean of its slice probabilities), plus generated non-anatomical patterns.
The final weights are refitted on all files with the same settings.

- scans held out: {ev['n']}; top-1 accuracy: **{ev['accuracy']:.3f}**
- of which real files: {ev['n_real']}; top-1 accuracy on them: **{ev['accuracy_real']:.3f}**
  (the others are generated non-anatomical patterns)
- threshold calibrated on the held-out slices: {meta['threshold']:.3f}

{confusion_markdown(held)}

Classes without permissively licensed training data ({', '.join(meta['classes_without_data'])
or 'none'}) are never predicted by these weights; add them with few-label adaptation
(`scanqc.models.region_probe.adapt`, the Dataset dock's region column).

## Training data (permissive licences only)

| set | licence | scans |
|---|---|---|
{lic_lines}
| generated test patterns | none needed (generated) | {meta['synthetic_non_anatomical']} |

Training scans (slices) per class: {per_class}.

Files: `training_files` in metadata.json ({len(meta['training_files'])} scans).
Not used for these weights: OAI knee crops, RSNA bone age, the Roboflow spine export (no
licence file), the UFBA dental set, PMC figures, mini-MIAS, CC BY-NC and GPL data; the
benchmark (benchmarks/region_accuracy.py) evaluates with them.

## Limits

Few scans per class; each class mostly from one or two sources, so the probe may learn
source cues (size, contrast, borders) as well as anatomy. Volumes are classified slice by
slice along their acquisition axis. Mixed-region volumes are trained with hand-annotated
slice ranges (`SLICE_REGIONS` in `scanqc.models.region_probe`; boundary slices left out);
there is a single multi-region CT subject (TotalSegmentator example, abdomen-pelvis), so
the per-slice split of other chest-abdomen-pelvis or whole-body CTs is not validated
(docs/region.md, "Measured"). Files of one subject share a split group (`SAME_SUBJECT`).
"""


def train_region_model(
    root: str | Path,
    out_dir: str | Path,
    *,
    encoder_dir: str | Path | None = None,
    hidden: int = 0,
    seed: int = 0,
    max_slices: int = 12,
    n_synthetic: int = 64,
    mirror: bool = True,
    command: str = "scanqc region train",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Train, evaluate (held out) and write the shipped region probe.

    Only permissively licensed files (see :func:`region_samples`) and generated
    non-anatomical patterns are used. Writes ``model.safetensors``, ``metadata.json``
    and ``MODEL_CARD.md`` into ``out_dir``.

    Returns:
        The metadata written.
    """
    from scanqc.models.encoder import embed_slices

    torch.manual_seed(seed)
    root = Path(root)
    encoder, enc_meta = resolve_encoder(encoder_dir)
    samples = region_samples(root, permissive_only=True)
    embs, slabs, errors = embed_samples(samples, encoder, max_slices=max_slices,
                                        mirror=mirror, progress=progress, cancel=cancel)
    for e in errors:
        log.warning("%s", e)
    keep = [i for i, e in enumerate(embs) if e is not None]
    samples = [samples[i] for i in keep]
    embs = [embs[i] for i in keep]
    slabs = [slabs[i] for i in keep]
    syn = embed_slices(encoder, synthetic_non_anatomical(n_synthetic, seed=seed))
    labels = [s.region for s in samples] + ["non_anatomical"] * len(syn)
    row_labels: list[Any] = [*slabs, *(["non_anatomical"] * len(syn))]
    groups = [s.group for s in samples] + [f"synthetic:{i}" for i in range(len(syn))]
    all_embs: list[np.ndarray | None] = [*embs, *[syn[i:i + 1] for i in range(len(syn))]]
    # held-out evaluation on the original slices only (no mirrors)
    orig = [e if e is None or not mirror or i >= len(embs) else e[: len(e) // 2]
            for i, e in enumerate(all_embs)]
    orig_labels = [lab if isinstance(lab, str) or not mirror else lab[: len(lab) // 2]
                   for lab in row_labels]
    tr, te = grouped_split(labels, groups, 0.25, seed)
    x, y = stack_slices(all_embs, row_labels, tr)
    probe = train_probe(x, y, hidden=hidden, seed=seed, cancel=cancel)
    xt, yt = stack_slices(orig, orig_labels, te)
    thr = calibrate_threshold(probe, xt, yt)
    held = evaluate(probe.classes, scan_probabilities(probe, [orig[i] for i in te]),
                    [labels[i] for i in te])
    te_real = [i for i in te if i < len(samples)]  # without the generated patterns
    held_real = evaluate(probe.classes, scan_probabilities(probe, [orig[i] for i in te_real]),
                         [labels[i] for i in te_real])
    xa, ya = stack_slices(all_embs, row_labels, range(len(labels)))
    final = train_probe(xa, ya, hidden=hidden, seed=seed, threshold=thr, cancel=cancel)
    lic: dict[tuple[str, str], int] = {}
    for s in samples:
        lic[(s.source.split(":")[0], s.licence)] = lic.get((s.source.split(":")[0], s.licence),
                                                             0) + 1
    rel = [str(Path(s.path).relative_to(root)) if Path(s.path).is_relative_to(root)
           else Path(s.path).name for s in samples]
    meta: dict[str, Any] = {
        "name": "region", "version": "1",
        "task": "anatomical region classification (probe on frozen encoder embeddings)",
        "input": {"embedding": "unit slice embedding of the encoder", "size": 128},
        "embedding_dim": final.in_dim,
        "classes": list(final.classes),
        "classes_without_data": [c for c in final.classes if c not in set(ya)],
        "threshold": thr,
        "encoder": {"name": enc_meta.get("name", "encoder"), "sha256": enc_meta.get("sha256")},
        "label_map": {k: v for k, v in LABEL_MAP.items() if k},
        "training_data": [{"set": s, "licence": li, "files": n}
                          for (s, li), n in sorted(lic.items())],
        "training_files": [{"path": r, "region": s.region, "licence": s.licence,
                            **({"slice_regions": [list(sp) for sp in s.spans]}
                               if s.spans else {})}
                           for r, s in zip(rel, samples, strict=True)],
        "synthetic_non_anatomical": len(syn),
        "seed": seed,
        "evaluation": {"split": "StratifiedGroupKFold 1/4 held out, grouped by patient/study",
                       "n": held["n"], "accuracy": held["accuracy"],
                       "n_real": held_real["n"], "accuracy_real": held_real["accuracy"],
                       "per_class": held["per_class"],
                       "confusion_rows": held["confusion_rows"],
                       "confusion_cols": held["confusion_cols"],
                       "confusion": held["confusion"]},
        "training": {"command": command, "max_slices_per_volume": max_slices,
                     "mirror_augmentation": mirror,
                     "slices": int(len(xa)), "scans": len(samples), "errors": errors,
                     "scans_per_class": dict(sorted(Counter(labels).items())),
                     "slices_per_class": dict(sorted(Counter(ya).items()))},
    }
    meta = save_probe(final, out_dir, meta)
    (Path(out_dir) / "MODEL_CARD.md").write_text(_model_card(meta, held, command),
                                                 encoding="utf-8")
    return meta
