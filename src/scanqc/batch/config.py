"""Settings of one scoring run (:class:`ScoreConfig`), shared by the CLI, docks and Dask."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: Key of the kNN fallback in the ``reference_set_id`` column.
KNN_REFERENCE_ID = "knn"


@dataclass
class ScoreConfig:
    """Settings of one scoring run.

    Attributes:
        workers: Worker processes for reading/checks/preprocessing (0: inline, no pool).
        scheduler: None (local processes), ``"local"`` (a Dask LocalCluster with
            ``workers`` processes) or the address of a Dask scheduler.
        device: Torch device for embedding: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        root: Dataset root; report paths are relative to it (default: the common folder
            of the inputs).
        size: Model input side in pixels.
        max_slices: Slices per volume, evenly sub-sampled (None or 0: all).
        embed_batch: Slices gathered across scans before they are embedded together.
        forward_batch: Slices per forward pass on the CPU (``embed_batch`` on a GPU): 32
            keeps the activations in the CPU caches (0.44 instead of 0.54 ms per 128 px
            slice with 128, same embeddings to 1e-7).
        statistic: ``"mean"`` or ``"min"`` distance to the references.
        threshold: User threshold (default: from the references' spread; kNN: IQR rule).
        finetune: Fit the Siamese/FewSOME head on the references before scoring
            (:func:`scanqc.models.siamese.fit_reference_model`).
        finetune_epochs: Its optimiser steps.
        reference_model: An already fitted :class:`scanqc.models.siamese.ReferenceModel`
            (e.g. from :func:`scanqc.batch.engine.fit_references`); slices are embedded
            through its head (and ``finetune`` is not repeated).
        model_name: Bundled encoder name (:func:`scanqc.models.encoder.load_encoder`).
        encoder: An already built encoder module (tests, custom models); overrides
            ``model_name``.
        model_version: Version reported for ``encoder`` (default: a hash of its weights).
        timeout: Seconds one scan may take in a worker.
        max_bytes: Per-scan memory ceiling (default ``SCANQC_MAX_SCAN_BYTES``).
        checks: Run the QC checks and quality metrics.
        queue_size: Scans in flight (default ``4 * workers + 2``).
        knn_k: Neighbours of the kNN fallback.
        resume: Reuse rows from ``cache`` (scans already scored are not read again).
        torch_threads: ``torch.set_num_threads`` in the main process. None: automatic,
            i.e. with local worker processes on the CPU, the cores the workers leave
            (``max(1, cpus - workers)``) for the duration of the run (the previous value
            is restored when the run ends), so that the embedder and the readers do not
            oversubscribe the cores; otherwise torch's default.
        flush_seconds: Embed a partial batch when its oldest scan waited this long.
        optimize: On CPU, run the encoder as a frozen TorchScript graph with batch norm
            folded into the convolutions (about 3x faster, same embeddings to 1e-6);
            falls back to eager mode when the model cannot be traced.
        asymmetry: Fill ``asymmetry_score`` with the left-right asymmetry score of
            :func:`scanqc.scoring.asymmetry.asymmetry_map` (in the workers; about 5-7 s
            per head volume, so off by default).
        include_identifiers: Write folder and file names that hold a patient identifier
            as they are; by default they become ``[redacted]``
            (:func:`scanqc.io.privacy.identifying_names`).
    """

    workers: int = 2
    scheduler: str | None = None
    device: str = "auto"
    root: str | None = None
    size: int = 128
    max_slices: int | None = 32
    embed_batch: int = 128
    forward_batch: int = 32
    statistic: str = "mean"
    threshold: float | None = None
    finetune: bool = False
    finetune_epochs: int = 60
    reference_model: Any = field(default=None, repr=False, compare=False)
    model_name: str = "encoder"
    encoder: Any = field(default=None, repr=False, compare=False)
    model_version: str = ""
    timeout: float = 600.0
    max_bytes: int | None = None
    checks: bool = True
    queue_size: int | None = None
    knn_k: int = 10
    resume: bool = False
    torch_threads: int | None = None
    flush_seconds: float = 2.0
    optimize: bool = True
    asymmetry: bool = False
    include_identifiers: bool = False

    def prep_options(self, root: str | None, content: bool) -> dict[str, Any]:
        """Options passed to :func:`scanqc.batch.pipeline.prepare_entry`."""
        return {
            "root": root,
            "size": int(self.size),
            "max_slices": int(self.max_slices) if self.max_slices else None,
            "max_bytes": self.max_bytes,
            "checks": bool(self.checks),
            "asymmetry": bool(self.asymmetry),
            "content_key": bool(content),
        }

    def cache_hash(self) -> str:
        """Hash of every setting that changes a row (for the resume cache key)."""
        keys = ("size", "max_slices", "statistic", "threshold", "finetune", "finetune_epochs",
                "checks", "knn_k", "asymmetry", "include_identifiers")
        d = asdict(self) if self.encoder is None else {k: getattr(self, k) for k in keys}
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def in_flight(self) -> int:
        """Maximum scans in flight in the workers."""
        return int(self.queue_size or 4 * max(1, self.workers) + 2)

