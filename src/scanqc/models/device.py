"""Pick the torch device for inference and fine-tuning (CUDA when present, else CPU)."""

from __future__ import annotations

from typing import Any

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def get_device(pref: str | Any = "auto") -> Any:
    """Return a ``torch.device`` for ``pref``.

    Args:
        pref: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"`` or an existing ``torch.device``.

    Raises:
        ValueError: ``pref`` is unknown, or CUDA was asked for and is not available.
    """
    import torch

    if isinstance(pref, torch.device):
        pref = str(pref)
    choice = str(pref or "auto").strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {pref!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        return torch.device(choice)
    raise ValueError(f"unknown device {pref!r}; choose one of {', '.join(DEVICE_CHOICES)}")
