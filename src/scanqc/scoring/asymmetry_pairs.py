"""Pair left and right 2D images (mammograms) for :func:`scanqc.scoring.asymmetry.asymmetry_pair`.

A mammogram has no symmetry line of its own: its asymmetry is measured against the other
breast's image of the same view. Images are paired by their DICOM ``ImageLaterality``
(or series ``Laterality``) and ``ViewPosition``, within one folder (a study's images are
filed together; no study identifier leaves the reader, see :mod:`scanqc.io.privacy`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scanqc.io.scan import Scan, ScanEntry
from scanqc.progress import CancelToken, ProgressCallback


def laterality(entry: ScanEntry) -> str:
    """``"L"``, ``"R"`` or ``""`` from the entry's header (ImageLaterality, then Laterality)."""
    for key in ("ImageLaterality", "Laterality"):
        value = str(entry.header.get(key) or "").strip().upper()
        if value in ("L", "R"):
            return value
    return ""


def view(entry: ScanEntry) -> str:
    """The entry's ViewPosition (``"CC"``, ``"MLO"`` ...), upper case, or ``""``."""
    return str(entry.header.get("ViewPosition") or "").strip().upper()


#: Mammographic ViewPosition codes (DICOM CID 4014, the common ones).
MAMMO_VIEWS = frozenset({"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "AT",
                         "CV", "RL", "RM"})


def is_mammogram(entry: ScanEntry) -> bool:
    """Modality MG, BodyPartExamined BREAST, or a mammographic view."""
    modality = (entry.modality or str(entry.header.get("Modality") or "")).strip().upper()
    body = str(entry.header.get("BodyPartExamined") or "").strip().upper()
    return modality == "MG" or body == "BREAST" or view(entry) in MAMMO_VIEWS


@dataclass(frozen=True)
class Pairing:
    """The result of :func:`pair_by_laterality`.

    Attributes:
        pairs: ``(left, right)`` entries of the same view in the same folder.
        unpaired: Mammograms (:func:`is_mammogram`) with a laterality but no partner, with
            the reason: one breast's image has no symmetry line of its own.
        others: Everything else, scored alone: volumes, images without a laterality, and
            images of other body parts whose laterality has no partner (a left hand
            radiograph still has its own left-right layout to compare, a chest film tagged
            "L" is still a chest).
    """

    pairs: list[tuple[ScanEntry, ScanEntry]]
    unpaired: list[tuple[ScanEntry, str]]
    others: list[ScanEntry]


def pair_by_laterality(entries: Sequence[ScanEntry]) -> Pairing:
    """Pair 2D images with opposite laterality and the same view within each folder.

    Only a folder holding exactly one left and one right image of a view is paired: with
    more (a flat folder of many women's mammograms, repeated exposures) which image belongs
    with which cannot be told without identifiers, so none of them is paired and the reason
    says so (``--pair`` pairs them explicitly).

    Args:
        entries: Discovered scans (any kinds; only readable single images with a laterality
            are paired).
    """
    groups: dict[tuple[str, str], dict[str, list[ScanEntry]]] = defaultdict(
        lambda: {"L": [], "R": []})
    others: list[ScanEntry] = []
    for e in entries:
        side = laterality(e)
        if e.status != "ok" or e.kind != "image" or not side:
            others.append(e)
            continue
        groups[(os.path.dirname(e.path), view(e))][side].append(e)
    pairs: list[tuple[ScanEntry, ScanEntry]] = []
    unpaired: list[tuple[ScanEntry, str]] = []
    for (_folder, v), sides in groups.items():
        left, right = sides["L"], sides["R"]
        if len(left) == 1 and len(right) == 1:
            pairs.append((left[0], right[0]))
            continue
        for e in sorted(left + right, key=lambda e: e.path):
            if not is_mammogram(e):
                others.append(e)
                continue
            other = "R" if laterality(e) == "L" else "L"
            if left and right:
                why = (f"{len(left)} left and {len(right)} right images of view "
                       f"{v or 'unknown'} in its folder: which is its partner is unknown "
                       f"(pair them with --pair LEFT RIGHT)")
            else:
                why = (f"no image of the other side ({other}, view {v or 'unknown'}) in its "
                       f"folder to compare with")
            unpaired.append((e, why))
    return Pairing(pairs, unpaired, others)


def partner_of(entry: ScanEntry, entries: Sequence[ScanEntry]) -> ScanEntry | None:
    """The other side's image of ``entry`` (same view, same folder) among ``entries``.

    None unless ``entry`` is a 2D image with a laterality that :func:`pair_by_laterality`
    pairs.
    """
    if entry.kind != "image" or not laterality(entry):
        return None
    folder = os.path.dirname(entry.path)
    near = [e for e in entries if os.path.dirname(e.path) == folder]
    for left, right in pair_by_laterality(near).pairs:
        if left.scan_id == entry.scan_id:
            return right
        if right.scan_id == entry.scan_id:
            return left
    return None


def asymmetry_with_partner(scan: Scan, entry: ScanEntry, partner: Scan,
                           partner_entry: ScanEntry, model: Any = None,
                           progress: ProgressCallback | None = None,
                           cancel: CancelToken | None = None) -> Any:
    """The asymmetry map of ``scan`` against its partner (the other side, same view).

    Orders the two by laterality for :func:`scanqc.scoring.asymmetry.asymmetry_pair` and
    returns ``scan``'s :class:`~scanqc.scoring.asymmetry.AsymmetryResult`, whose
    ``info["pair"]`` names the partner.
    """
    from scanqc.scoring.asymmetry import asymmetry_pair

    if laterality(entry) == "L":
        result = asymmetry_pair(scan, partner, model, progress=progress, cancel=cancel)[0]
    else:
        result = asymmetry_pair(partner, scan, model, progress=progress, cancel=cancel)[1]
    result.info["pair"] = partner_entry.name or partner_entry.path
    return result
