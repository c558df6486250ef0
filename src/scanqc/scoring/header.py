"""Header-versus-content checks: modality, pixel spacing, body region, template space."""

from __future__ import annotations

import re

import numpy as np

from scanqc.io.privacy import declares_burned_in_text
from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring.body_mask import CheckData, meta_get, meta_text, prepare
from scanqc.scoring.order_stats import percentiles

#: Region classes shared with the region classifier.
REGIONS: tuple[str, ...] = (
    "head", "neck", "chest", "abdomen", "pelvis", "spine", "upper limb", "lower limb",
    "breast", "whole body",
)

#: In-plane spacing outside [MIN, MAX] mm and slice spacing above MAX_SLICE mm are
#: implausible.
MIN_SPACING_MM = 0.01
MAX_INPLANE_MM = 20.0
MAX_SLICE_MM = 50.0

#: Header keyword (a regular expression on lower-case words) -> region classes.
REGION_KEYWORDS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (pat, frozenset(regs))
    for pat, regs in (
        # BodyPartExamined is at most 16 characters: "TOTAL B"; "TOTBODY" in protocols
        (r"whole ?body|wholebody|\bwb\b|tot(al)?\.? ?body|\btotal b\b|pet ?ct|bone ?scan",
         {"whole body"}),
        (r"\bcap\b|chest.?abd\w*.?pelv|thorax.?abd\w*.?pelv|\btap\b",
         {"chest", "abdomen", "pelvis"}),
        (r"abd\w*.?pelv|\bap\b(?=.*pelv)", {"abdomen", "pelvis"}),
        (r"c.?spine|cervical|\bcs\b", {"spine", "neck"}),
        (r"t.?spine|l.?spine|thoracic spine|lumbar|sacrum|coccyx|spine|vertebra|scolio|"
         r"\bcord\b|\bspinal", {"spine"}),
        (r"brain|head|skull|cran|neuro|orbit|sinus|face|facial|mandible|dental|teeth|"
         r"\biac\b|pituitary|\bmaxill|temporal bone|\bcow\b|circle of willis|\biam\b",
         {"head"}),
        (r"neck|thyroid|larynx|pharyn|carotid|parotid|soft tissue neck", {"neck"}),
        (r"breast|mammo|\bmg\b|\bcc\b(?=.*(breast|mammo))|\bmlo\b", {"breast"}),
        (r"chest|thorax|thorac|lung|pulm|cardiac|heart|coronar|\bcta ?chest|\bcxr\b|"
         r"rib|sternum|mediastin", {"chest"}),
        (r"abdom|\babd\b|liver|hepat|pancrea|kidney|renal|spleen|bowel|colon|stomach|"
         r"enterograph|urogra|\bkub\b|gallbladder|biliar", {"abdomen"}),
        (r"pelvi|hip|prostate|bladder|uterus|ovar|rectum|sacroiliac|\bsij\b", {"pelvis"}),
        (r"shoulder|humer|elbow|forearm|radius|ulna|wrist|hand|finger|thumb|clavic|"
         r"scapul|arm\b|upper ?(limb|extremity|ext)", {"upper limb"}),
        (r"knee|femur|femoral|tibia|fibula|ankle|foot|feet|toe|calcan|leg\b|thigh|"
         r"lower ?(limb|extremity|ext)|patella", {"lower limb"}),
    )
)

#: Classes that overlap in practice (a mismatch between them is not reported).
_COMPATIBLE = {
    frozenset({"neck", "spine"}),
    frozenset({"chest", "spine"}),
    frozenset({"abdomen", "spine"}),
    frozenset({"pelvis", "spine"}),
    frozenset({"chest", "abdomen"}),
    frozenset({"abdomen", "pelvis"}),
    frozenset({"head", "neck"}),
    frozenset({"chest", "breast"}),
    frozenset({"pelvis", "lower limb"}),
    frozenset({"chest", "upper limb"}),
}

_CT_NAME = re.compile(r"(^|[^a-z])(ct|cta|ctp|cect|ncct)([^a-z]|$)", re.IGNORECASE)


def _sample(data: np.ndarray, n: int = 65536) -> np.ndarray:
    flat = np.asarray(data).ravel()
    if flat.size > n:
        flat = flat[:: int(np.ceil(flat.size / n))]
    flat = flat.astype(np.float64, copy=False)
    return flat[np.isfinite(flat)]


def hounsfield_plausible(data: np.ndarray) -> bool:
    """True when values are plausible CT Hounsfield units.

    Air near -1000 with tissue below 4000, or (cropped CT without air) clearly negative
    fat values and nothing below -1100 outside a reconstruction-circle padding value.
    """
    s = _sample(data)
    if s.size == 0:
        return False
    p1, p5, p99 = percentiles(s, [1, 5, 99])
    if p99 >= 4000 or p99 <= -200:
        return False
    if p1 <= -500:
        return True
    return bool(-1100 <= p1 < -30 and p5 < 0)


def claimed_modality(scan: Scan) -> tuple[str, str]:
    """Return ``(modality, source)`` claimed for the scan.

    The DICOM Modality, else one named in the file name or description (``"CT"`` from
    ``CT_AVM.nii.gz``), else ``("", "")``.
    """
    if scan.modality:
        return scan.modality.upper(), "header"
    text = " ".join([scan.name or "", meta_text(scan, "SeriesDescription", "descrip")])
    if _CT_NAME.search(text):
        return "CT", "name"
    return "", ""


def check_modality_mismatch(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``modality_mismatch``: the claimed modality does not fit the pixel values.

    CT (from the header, or from the file name when there is no header) whose values are
    not Hounsfield units: ``high`` when the DICOM header says CT, ``warn`` when only the
    name does (e.g. a uint8-windowed "CT" NIfTI). MR/PET/NM whose values look like HU:
    ``warn``.
    """
    mod, source = claimed_modality(scan)
    if not mod or scan.rgb:
        return []
    d = data if data is not None else None
    values = d.raw if d is not None else scan.data
    if mod == "CT":
        if (scan.is_volume or _is_axial_ct_slice(scan)) and not hounsfield_plausible(values):
            sev = "high" if source == "header" else "warn"
            where = "header" if source == "header" else "file name"
            return [ScanWarning("modality_mismatch",
                                f"{where} says CT but the values are not Hounsfield units "
                                f"(range {float(np.nanmin(values)):g} to "
                                f"{float(np.nanmax(values)):g})", severity=sev)]
        return []
    if mod in ("MR", "PT", "NM"):
        s = _sample(values)
        if s.size and np.percentile(s, 1) <= -500:
            return [ScanWarning("modality_mismatch",
                                f"header says {mod} but the values look like CT Hounsfield "
                                "units", severity="warn")]
    return []


def _is_axial_ct_slice(scan: Scan) -> bool:
    """A 2D CT image that is a cross-section (not a scout/topogram projection)."""
    itype = meta_text(scan, "ImageType")
    return "localizer" not in itype


def check_spacing(scan: Scan) -> list[ScanWarning]:
    """``implausible_spacing``: spacing missing, non-positive or out of range.

    In-plane < 0.01 mm or > 20 mm, slice spacing > 50 mm, or non-finite.
    """
    sp = [float(s) for s in (scan.spacing or ())]
    if not sp:
        return [ScanWarning("implausible_spacing", "no pixel spacing", severity="warn")]
    n = len(sp)
    inplane = sp[-2:] if n >= 2 else sp
    slice_sp = sp[0] if n == 3 else None
    bad = []
    for v in sp:
        if not np.isfinite(v) or v <= 0:
            bad.append(f"{v:g}")
    if not bad:
        for v in inplane:
            if v < MIN_SPACING_MM or v > MAX_INPLANE_MM:
                bad.append(f"in-plane {v:g} mm")
        if slice_sp is not None and (slice_sp > MAX_SLICE_MM or slice_sp < MIN_SPACING_MM):
            bad.append(f"slice {slice_sp:g} mm")
    if bad:
        return [ScanWarning("implausible_spacing", "implausible spacing: " + ", ".join(bad),
                            severity="warn", value=float(min(sp)) if sp else None)]
    return []


#: NIfTI ``sform_code``/``qform_code`` values that name a standard space (3 Talairach,
#: 4 MNI152, 5 another template).
TEMPLATE_XFORM_CODES = {3: "Talairach", 4: "MNI152", 5: "a template"}
#: Grids (voxels along the three axes, isotropic voxel size in mm) of the common standard
#: spaces: FSL's MNI152 (0.5, 1, 2 mm), SPM's bounding boxes (1, 1.5, 2, 3 mm),
#: MNI152NLin2009c (1, 2 mm), ICBM 2009a/b, Colin27/Talairach (1 mm).
TEMPLATE_GRIDS: tuple[tuple[tuple[int, int, int], float, str], ...] = (
    ((182, 218, 182), 1.0, "MNI152 (FSL)"), ((91, 109, 91), 2.0, "MNI152 (FSL)"),
    ((364, 436, 364), 0.5, "MNI152 (FSL)"),
    ((157, 189, 156), 1.0, "MNI (SPM)"), ((121, 145, 121), 1.5, "MNI (SPM)"),
    ((79, 95, 79), 2.0, "MNI (SPM)"), ((53, 63, 52), 3.0, "MNI (SPM)"),
    ((193, 229, 193), 1.0, "MNI152NLin2009c"), ((97, 115, 97), 2.0, "MNI152NLin2009c"),
    ((197, 233, 189), 1.0, "ICBM 2009"), ((181, 217, 181), 1.0, "Colin27/Talairach"),
)


def template_space(scan: Scan) -> str:
    """The standard space a volume is stored in ("" for a native acquisition).

    From the NIfTI transform codes (:data:`TEMPLATE_XFORM_CODES`), else from the grid: a
    volume whose voxel counts and isotropic voxel size are those of a standard template
    (:data:`TEMPLATE_GRIDS`, in any axis order, voxel size within 1 %).
    """
    if not scan.is_volume:
        return ""
    for key in ("sform_code", "qform_code"):
        try:
            code = int(meta_get(scan, key, default=0) or 0)
        except (TypeError, ValueError):
            code = 0
        if code in TEMPLATE_XFORM_CODES:
            return f"{TEMPLATE_XFORM_CODES[code]}, {key} {code}"
    sp = [float(s) for s in (scan.spacing or ())]
    if len(sp) != 3 or not all(np.isfinite(sp)) or max(sp) > 1.01 * min(sp):
        return ""
    shape = tuple(sorted(int(n) for n in scan.spatial_shape))
    for grid, size, name in TEMPLATE_GRIDS:
        if shape == tuple(sorted(grid)) and abs(sp[0] - size) <= 0.01 * size:
            dims = "x".join(str(n) for n in grid)
            return f"{name}, {dims} voxels of {size:g} mm"
    return ""


def check_template_space(scan: Scan) -> list[ScanWarning]:
    """``template_space`` (warn): a template or a spatially normalised derivative.

    A volume in a standard space (:func:`template_space`) is an atlas template or an
    image registered to one (statistics, VBM, group averages), not an acquisition: its
    anatomy is a population's or has been resampled, and its header no longer describes
    a scanner's grid.
    """
    space = template_space(scan)
    if not space:
        return []
    return [ScanWarning("template_space", f"stored in a standard space ({space}): a template "
                        "or a registered derivative, not an acquisition", severity="warn")]


def check_burned_in(scan: Scan) -> list[ScanWarning]:
    """``burned_in_text`` (warn): the header says the pixels carry burned-in annotation.

    DICOM ``BurnedInAnnotation`` YES (ultrasound, screen captures, some secondary
    captures): names, IDs or dates may be part of the image itself, which removing header
    fields does not de-identify. scanqc's HTML report shows no thumbnail of such a scan.
    """
    if not declares_burned_in_text(scan.metadata):
        return []
    return [ScanWarning("burned_in_text", "the header says the image carries burned-in text "
                        "(BurnedInAnnotation YES): names, IDs or dates may be in the pixels; "
                        "de-identify them before sharing", severity="warn")]


def header_regions(scan: Scan) -> frozenset[str]:
    """Region classes named by the header (empty when none matches).

    Looks at BodyPartExamined, then ProtocolName/SeriesDescription, then
    StudyDescription.
    """
    for keys in (("BodyPartExamined",), ("ProtocolName", "SeriesDescription"),
                 ("StudyDescription",)):
        text = meta_text(scan, *keys).replace("_", " ")
        if not text.strip():
            continue
        found: set[str] = set()
        for pat, regs in REGION_KEYWORDS:
            if re.search(pat, text):
                found |= regs
                if regs == {"whole body"} or len(regs) > 1:
                    break
        if found:
            return frozenset(found)
    return frozenset()


def regions_compatible(a: str, b: str, limbs: bool = True) -> bool:
    """True when two region names are the same class or overlap (chest/abdomen ...).

    ``limbs=False`` leaves out the pairs with a limb (chest/upper limb, pelvis/lower
    limb): a shoulder film may be labelled chest, but it is another examination.
    """
    a, b = _normalise_region(a), _normalise_region(b)
    if a == b:
        return True
    pair = frozenset({a, b})
    return pair in _COMPATIBLE and (limbs or not pair & {"upper limb", "lower limb"})


def _normalise_region(region: str) -> str:
    r = (region or "").strip().lower().replace("_", " ")
    aliases = {"upper extremity": "upper limb", "lower extremity": "lower limb",
               "wholebody": "whole body", "brain": "head", "thorax": "chest",
               "abdomen pelvis": "abdomen", "knee": "lower limb", "hand": "upper limb",
               "wrist": "upper limb", "shoulder": "upper limb", "hip": "pelvis",
               "head neck": "head", "cervical spine": "spine", "lumbar spine": "spine",
               "upper abdomen": "abdomen"}
    return aliases.get(r, r)


def region_header_mismatch(
    scan: Scan, predicted_region: str, confidence: float, min_confidence: float = 0.7
) -> list[ScanWarning]:
    """``region_header_mismatch``: the predicted body region disagrees with the header.

    Args:
        scan: The scan (its header words give the expected region).
        predicted_region: The classifier's region (one of :data:`REGIONS`; common
            aliases such as "knee" or "thorax" are accepted).
        confidence: The classifier's probability for it (0..1).
        min_confidence: Below this nothing is reported.

    Returns:
        One warning (``high`` from confidence 0.9) or none.
    """
    pred = _normalise_region(predicted_region)
    if not pred or not np.isfinite(confidence) or confidence < min_confidence:
        return []
    expected = header_regions(scan)
    if not expected or pred in expected or "whole body" in expected or pred == "whole body":
        return []
    if any(frozenset({pred, e}) in _COMPATIBLE for e in expected):
        return []
    sev = "high" if confidence >= 0.9 else "warn"
    return [ScanWarning("region_header_mismatch",
                        f"looks like {pred} ({confidence:.0%}) but the header says "
                        f"{'/'.join(sorted(expected))}", severity=sev, value=float(confidence))]


def check_header(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """All header checks that need no outside information."""
    d = data if data is not None else prepare(scan)
    return [*check_modality_mismatch(scan, d), *check_spacing(scan)]


def declared_body_part(scan: Scan) -> str:
    """The raw BodyPartExamined value ("" when absent)."""
    return str(meta_get(scan, "BodyPartExamined", default="") or "")
