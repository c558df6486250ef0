"""The encoder in the main process: batched slice embedding for the scoring engine.

Workers never load the model; the engine gathers their slices and embeds them here, on
``ScoreConfig.device``. On the CPU the encoder runs as a frozen, batch-norm-folded
TorchScript graph (traced once per process and weights), with the torch threads the
worker processes leave.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from typing import Any

import numpy as np

from scanqc.batch.config import ScoreConfig

log = logging.getLogger(__name__)

#: Optimised CPU modules by (id of the model, hash of its weights, input size).
_FAST_CACHE: dict[tuple[int, str, int], Any] = {}
_FAST_LOCK = threading.Lock()


class Embedder:
    """The encoder in the main process: batched slice embedding and scan pooling."""

    def __init__(self, config: ScoreConfig) -> None:
        import torch

        from scanqc.models.device import get_device

        self._threads_before: int | None = None
        threads = config.torch_threads or auto_torch_threads(config)
        if threads and int(threads) != torch.get_num_threads():
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(int(threads))
        if config.encoder is not None:
            self.model = config.encoder
            self.device = get_device(config.device)
            self.model.to(self.device).eval()
            self.name = config.model_name if config.model_name != "encoder" else type(
                self.model).__name__
            self.version = config.model_version or weights_hash(self.model)
        else:
            from scanqc.models.encoder import load_encoder
            from scanqc.models.registry import model_dir
            from scanqc.models.weights import read_metadata

            self.device = get_device(config.device)
            try:
                self.model = load_encoder(config.model_name, self.device)
            except Exception as exc:  # noqa: BLE001 - one line for the CLI and the widgets
                raise ValueError(f"cannot load model {config.model_name!r}: {exc}") from exc
            try:
                meta = read_metadata(model_dir(config.model_name))
            except Exception:  # noqa: BLE001 - the version is informative
                meta = {}
            self.name = str(meta.get("name") or config.model_name)
            self.version = str(meta.get("version") or "") + (
                f"+{str(meta.get('sha256', ''))[:8]}" if meta.get("sha256")
                else weights_hash(self.model))
        on_cpu = getattr(self.device, "type", str(self.device)) == "cpu"
        self.batch = max(1, int(config.forward_batch if on_cpu else config.embed_batch))
        # traced on the first embed, while the workers are already reading
        self._optimize, self._size, self._fast = bool(config.optimize), int(config.size), None
        self.reference_model: Any = None  # a fitted scanqc.models.siamese.ReferenceModel
        if config.reference_model is not None:
            self.use_reference_model(config.reference_model)
        self.region_probe = self._region_probe(config)

    def release(self) -> None:
        """Restore the torch thread count changed for this run."""
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def _region_probe(self, config: ScoreConfig) -> Any:
        """The bundled region probe when it was trained on this encoder, else None."""
        if config.encoder is not None:
            return None
        try:
            from scanqc.models.region_probe import load_bundled_probe
            from scanqc.models.registry import model_dir
            from scanqc.models.weights import read_metadata

            probe = load_bundled_probe()
            enc_sha = read_metadata(model_dir(config.model_name)).get("sha256")
        except Exception as exc:  # noqa: BLE001 - region columns stay empty
            log.info("no region probe (%s); region columns stay empty", exc)
            return None
        if probe.metadata.get("encoder", {}).get("sha256") != enc_sha:
            log.warning("the bundled region probe was trained on another encoder; "
                        "region columns stay empty")
            return None
        return probe

    def use_reference_model(self, model: Any) -> None:
        """Embed through the fitted head of ``model`` from now on (version gets ``+ft``)."""
        self.reference_model = model
        self.version = self.version.split("+ft")[0] + f"+ft{weights_hash(model, 8)}"

    @property
    def model_id(self) -> str:
        """``name@version`` plus the region probe's hash (cache key part)."""
        probe, region = "", getattr(self, "region_probe", None)
        if region is not None:
            probe = "+region" + str(region.metadata.get("sha256", ""))[:8]
        return f"{self.name}@{self.version}{probe}"

    @property
    def fast(self) -> Any:
        """The optimised CPU module (built on first use), or None (eager mode).

        Kept per process for the same weights and input size (:data:`_FAST_CACHE`), so
        that repeated runs (the napari docks, a reference context, benchmarks) trace the
        encoder once (about 0.4 s).
        """
        if self._optimize:
            self._optimize = False
            if getattr(self.device, "type", str(self.device)) == "cpu":
                key = (id(self.model), weights_hash(self.model), self._size)
                with _FAST_LOCK:
                    if key not in _FAST_CACHE:
                        while len(_FAST_CACHE) >= 4:
                            _FAST_CACHE.pop(next(iter(_FAST_CACHE)))
                        _FAST_CACHE[key] = self._optimized(self.model, self._size)
                    self._fast = _FAST_CACHE[key]
        return self._fast

    def _optimized(self, model: Any, size: int) -> Any:
        """A frozen, BN-folded TorchScript copy of ``model`` for CPU inference, or None."""
        import torch

        if getattr(self.device, "type", str(self.device)) != "cpu":
            return None
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optimize_for_inference's deprecation note
                traced = torch.jit.trace(model.eval(), torch.zeros(2, 1, size, size),
                                         check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        except Exception as exc:  # noqa: BLE001 - any untraceable module runs eagerly
            log.info("encoder not optimised for inference (%s); eager mode", exc)
            return None

    def embed(self, slices: np.ndarray) -> np.ndarray:
        """``(N, S, S)`` -> unit slice embeddings ``(N, D)`` (through the fitted head, if any)."""
        return self.embed_both(slices)[1]

    def embed_both(self, slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(base, used)``: base-encoder embeddings and those through the fitted head."""
        from scanqc.models.encoder import embed_slices

        base = embed_slices(self.fast or self.model, slices, batch_size=self.batch,
                            device=self.device)
        if self.reference_model is not None:
            return base, self.reference_model.embed(base)  # the head on the base embeddings
        return base, base


def auto_torch_threads(config: ScoreConfig) -> int | None:
    """Torch threads for the main process when ``config.torch_threads`` is None.

    With local worker processes embedding on the CPU: the cores the workers leave, at
    least one (two workers on two cores: one thread; more threads than free cores make
    the spinning intra-op pool compete with the readers). Otherwise None (leave).
    """
    if config.scheduler or config.workers <= 0:
        return None
    from scanqc.models.device import get_device

    try:
        if getattr(get_device(config.device), "type", "cpu") != "cpu":
            return None
    except ValueError:  # CUDA asked for and missing: the embedder reports it
        return None
    return max(1, (os.cpu_count() or 1) - int(config.workers))


def weights_hash(model: Any, length: int = 12) -> str:
    """Hex digest (``length`` characters) of ``model``'s state dict: its version stamp."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]

