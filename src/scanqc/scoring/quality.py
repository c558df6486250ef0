"""Image-quality measures and checks (MRIQC no-reference IQMs, cleanvision-style checks).

All measures work on the shared downsampled :class:`~scanqc.scoring.body_mask.CheckData`.
Brightness checks (dark, bright, clipped) use the *bit-depth* range (8-bit: 0..255;
12-bit: 0..4095; 16-bit: 0..65535; ``BitsStored`` when known) and only apply to images
whose brightness means something (radiographs, photos, CT in HU); MR/PET intensities
are arbitrary. Content checks (entropy, blur, noise) use the modality-aware window of
:mod:`scanqc.io.intensity`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from scanqc.io.scan import Scan, ScanWarning
from scanqc.scoring.body_mask import CheckData, dilate_cross, meta_get, prepare
from scanqc.scoring.fov import is_projection
from scanqc.scoring.order_stats import median, percentiles

#: cleanvision thresholds (on the bit-depth scale).
DARK_P99 = 0.32
BRIGHT_P5 = 0.95
#: Entropy (bits, 256-bin histogram of the windowed data) under which an image has low
#: information (cleanvision: 3 bits).
LOW_ENTROPY_BITS = 3.0
#: Edge-to-contrast ratio under which an image is blurry.
BLUR_SCORE = 0.25
#: Neighbour correlation under which a scan is noise only.
NOISE_AUTOCORR = 0.3
#: Fraction of pixels at the bit-depth extreme for ``clipped``.
CLIPPED_FRACTION = 0.05
#: Border-minus-centre brightness (windowed) for ``inverted`` radiographs.
INVERTED_DELTA = 0.25
#: Fraction of negative values (non-CT data) and centring for ``derived_map``.
DERIVED_NEG_FRACTION = 0.05
DERIVED_CENTRE = 0.1
#: QI1-like artefact fraction of the air for ``air_artifacts``.
QI1_LIMIT = 0.2
#: Fewest pixels along each in-plane axis of an image that can show anatomy.
MIN_MATRIX = 32

_MR_LIKE = {"MR", "PT", "NM"}


def _data(scan: Scan, data: CheckData | None) -> CheckData:
    return data if data is not None else prepare(scan)


def bit_depth_range(scan: Scan, raw: np.ndarray | None = None) -> tuple[float, float]:
    """The nominal ``(min, max)`` of the stored values.

    From ``BitsStored`` when known, else the smallest standard depth (8, 10, 12, 14, 16
    bits) holding the data.

    Float data and signed data with negative values get the data range itself.
    """
    data = scan.data if raw is None else raw
    dt = scan.data.dtype
    vmin = float(np.nanmin(data)) if data.size else 0.0
    vmax = float(np.nanmax(data)) if data.size else 0.0
    if dt == np.uint8 or scan.rgb:
        return 0.0, 255.0
    bits = meta_get(scan, "BitsStored")
    try:
        bits = int(bits) if bits is not None else None
    except (TypeError, ValueError):
        bits = None
    if vmin >= 0 and (dt.kind in "ui" or float(vmax).is_integer()):
        if bits and 1 <= bits <= 32 and vmax <= 2**bits - 1:
            return 0.0, float(2**bits - 1)
        for b in (8, 10, 12, 14, 16, 32):
            if vmax <= 2**b - 1:
                return 0.0, float(2**b - 1)
    return vmin, vmax if vmax > vmin else vmin + 1.0


def _sub(values: np.ndarray, n: int = 16384) -> np.ndarray:
    """A strided subsample of at most about ``n`` values (for percentiles)."""
    flat = values.ravel()
    return flat[:: max(1, flat.size // n)]


def _brightness_applies(scan: Scan, d: CheckData) -> bool:
    """True where dark/bright mean something: stored values are display values.

    8-bit (and RGB) projection images and photos, and CT in HU. 16-bit radiographs are shown
    through a VOI window, MR/PET intensities are arbitrary.
    """
    eight_bit = scan.rgb or scan.data.dtype == np.uint8
    return (is_projection(scan) and eight_bit) or d.hounsfield


def _bit_scaled(scan: Scan, d: CheckData) -> np.ndarray:
    if d.hounsfield:
        return d.win
    lo, hi = bit_depth_range(scan, d.raw)
    return np.clip((d.raw - lo) / (hi - lo), 0, 1)


def entropy_bits(win: np.ndarray) -> float:
    """Shannon entropy (bits) of a 256-bin histogram of windowed data in [0, 1]."""
    # clip before the integer cast: same bins as clipping after it, ten times faster
    hist = np.bincount(np.clip(win.ravel() * 255, 0, 255).astype(np.uint8), minlength=256)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def efc(values: np.ndarray, integer: bool = False) -> float:
    """MRIQC's entropy focus criterion of non-negative ``values`` (NaN when undefined).

    ``sum(b * ln b) / efc_max`` with ``b = x / sqrt(sum x^2)`` over every value ``x`` and
    ``efc_max = n / sqrt(n) * ln(1 / sqrt(n))``.

    Args:
        values: Non-negative intensities, any shape.
        integer: The values are exact integers (8/16-bit data): the sums then run over the
            counts of each value present instead of every pixel (the same result to about
            1e-12, without a logarithm per pixel).
    """
    x = np.asarray(values).ravel()
    n = x.size
    if n < 2:
        return float("nan")
    counts = None
    if integer and x.dtype.kind == "f":
        top = float(x.max())
        if 0 <= top <= 65535 and float(x.min()) >= 0:
            counts = np.bincount(x.astype(np.intp), minlength=1)
    if counts is not None:
        present = np.flatnonzero(counts)
        weight = counts[present].astype(np.float64)
        v = present.astype(np.float64)
        cc = math.sqrt(float(weight @ (v * v)))
    else:
        v = x.astype(np.float64)
        weight = None
        cc = math.sqrt(float(v @ v))
    if not cc > 0:
        return float("nan")
    b = v / cc
    terms = b * np.log(b + 1e-16)
    total = float(terms.sum()) if weight is None else float(weight @ terms)
    efc_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    return total / efc_max


def neighbour_correlation(win: np.ndarray) -> float:
    """Mean lag-1 correlation between neighbouring pixels (rows and columns)."""
    if win.ndim == 2:
        win = win[None]
    if win.shape[0] > 6:
        win = win[np.linspace(0, win.shape[0] - 1, 6).round().astype(int)]
    if win.shape[1] < 3 or win.shape[2] < 3:
        return float("nan")
    flat = win.reshape(win.shape[0], -1)
    win = win[flat.std(axis=1) >= 1e-6]  # constant slices have no correlation
    vals = []
    # all kept slices at once: per slice sums over the two in-plane axes
    for a, b in ((win[:, 1:, :], win[:, :-1, :]), (win[:, :, 1:], win[:, :, :-1])):
        a0 = a - a.mean(axis=(1, 2), keepdims=True)
        b0 = b - b.mean(axis=(1, 2), keepdims=True)
        den = np.sqrt((a0 * a0).sum(axis=(1, 2), dtype=np.float64)
                      * (b0 * b0).sum(axis=(1, 2), dtype=np.float64))
        num = (a0 * b0).sum(axis=(1, 2), dtype=np.float64)
        vals.extend((num[den > 0] / den[den > 0]).tolist())
    return float(np.mean(vals)) if vals else float("nan")


def blur_score(img: np.ndarray, size: int = 128) -> float:
    """Edge-to-contrast ratio of a 2D windowed image (higher is sharper).

    ``std(FIND_EDGES(thumbnail)) / std(thumbnail)`` on a thumbnail of at most ``size``
    pixels (area-averaged). cleanvision's score adds the spread of the histogram, which
    saturates at 1 for most medical images, and ignores contrast; this ratio is
    independent of the window and of the bit depth.
    """
    step = max(1, int(math.ceil(max(img.shape) / size)))
    small = img.astype(np.float32)  # a 1-pixel uniform filter is the identity
    if step > 1:
        small = ndi.uniform_filter(small, size=step)[::step, ::step]
    sd = float(small.std())
    if sd <= 1e-6 or min(small.shape) < 3:
        return float("nan")
    kernel = -np.ones((3, 3), np.float32)
    kernel[1, 1] = 8
    edges = ndi.convolve(small, kernel, mode="nearest")
    return float(edges[1:-1, 1:-1].std()) / sd


def _open_2x2(a: np.ndarray) -> np.ndarray:
    """In-plane binary opening of a stack ``(N, y, x)`` by a 2x2 square.

    Same result as ``ndi.binary_opening(a, structure=np.ones((1, 2, 2), bool))``: the
    union of the 2x2 squares that lie entirely inside ``a``.
    """
    e = np.zeros_like(a)
    e[:, :-1, :-1] = a[:, 1:, 1:] & a[:, :-1, 1:] & a[:, 1:, :-1] & a[:, :-1, :-1]
    out = e.copy()
    out[:, 1:, :] |= e[:, :-1, :]
    out[:, :, 1:] |= e[:, :, :-1]
    out[:, 1:, 1:] |= e[:, :-1, :-1]
    return out


def _middle(d: CheckData) -> np.ndarray:
    areas = d.mask.reshape(d.mask.shape[0], -1).sum(axis=1)
    i = int(np.argmax(areas)) if areas.max() > 0 else d.win.shape[0] // 2
    return d.win[i]


def quality_metrics(scan: Scan, data: CheckData | None = None) -> dict[str, float]:
    """MRIQC-style and cleanvision-style numbers for the report (NaN where undefined).

    Keys: ``snr`` (mu_fg / sigma_fg), ``snr_dietrich`` (0.6551 mu_fg / MAD_air), ``cnr``
    (two Otsu classes inside the body against the air noise), ``efc`` (MRIQC entropy
    focus criterion), ``fber`` (mean |I|^2 body / mean |I|^2 air; MRIQC uses medians),
    ``qi1`` (fraction of the air with artefactual signal), ``body_fraction``,
    ``entropy_bits``, ``blur``, ``neighbour_corr``, ``p01_bit``/``p99_bit`` (1st/99th
    percentile on the bit-depth scale), ``clipped_high``/``clipped_low``.
    """
    d = _data(scan, data)
    if "metrics" in d.extra:
        return dict(d.extra["metrics"])
    nan = float("nan")
    raw = d.raw - float(d.raw.min()) if d.raw.size else d.raw
    fg = _sub(raw[d.mask])
    # = ~ndi.binary_dilation(d.mask, iterations=2), with numpy slices
    air_mask = ~dilate_cross(d.mask, (0, 1, 2), 2) if d.mask.any() else ~d.mask
    air = _sub(raw[air_mask])
    m: dict[str, float] = {"body_fraction": d.body_fraction}
    if fg.size > 2:
        mu, sd = float(fg.mean()), float(fg.std() * math.sqrt(fg.size / (fg.size - 1)))
        m["snr"] = mu / sd if sd > 0 else nan
    else:
        m["snr"] = nan
    if fg.size > 2 and air.size > 2:
        mad = median(np.abs(air - median(air)))
        m["snr_dietrich"] = 0.6551 * float(fg.mean()) / mad if mad > 0 else nan
        e_fg, e_air = float(np.mean(fg.astype(np.float64) ** 2)), float(
            np.mean(air.astype(np.float64) ** 2))
        m["fber"] = e_fg / e_air if e_air > 1e-3 else nan
        wfg = _sub(d.win[d.mask])
        t = median(wfg) if wfg.size else 0.5
        c1, c2 = wfg[wfg <= t], wfg[wfg > t]
        win_air = d.win[air_mask]
        s_air = float(win_air.std())
        if c1.size > 1 and c2.size > 1:
            den = math.sqrt(s_air**2 + float(c1.var()) + float(c2.var()))
            m["cnr"] = abs(float(c2.mean()) - float(c1.mean())) / den if den > 0 else nan
        else:
            m["cnr"] = nan
        # QI1-like: air pixels clearly above the air noise, after removing speckle.
        wa = _sub(win_air)
        med_wa = median(wa)
        thr = med_wa + max(0.1, 3 * 1.4826 * median(np.abs(wa - med_wa)))
        art = _open_2x2((d.win > thr) & air_mask)
        m["qi1"] = float(art.sum()) / float(air_mask.sum())
    else:
        m.update(snr_dietrich=nan, fber=nan, cnr=nan, qi1=nan)
    # 8/16-bit data: raw holds exact integers (float32 is exact below 2**24)
    m["efc"] = efc(raw, integer=scan.data.dtype.kind in "iub" and scan.data.dtype.itemsize <= 2
                   and not scan.rgb)
    m["entropy_bits"] = entropy_bits(d.win)
    m["neighbour_corr"] = neighbour_correlation(d.win)
    m["blur"] = blur_score(_middle(d))
    lo, hi = bit_depth_range(scan, d.raw)
    # = _sub(_bit_scaled(scan, d)): the scaling is element-wise, so only the sample is scaled
    bit = _sub(d.win) if d.hounsfield else np.clip((_sub(d.raw) - lo) / (hi - lo), 0, 1)
    p01, p05, p99 = percentiles(bit, [1, 5, 99])
    m["p01_bit"], m["p05_bit"], m["p99_bit"] = p01, p05, p99
    # CT in HU has no bit-depth ceiling worth checking (metal reaches the top legitimately).
    m["clipped_high"] = 0.0 if d.hounsfield else float(np.mean(d.raw >= hi))
    m["clipped_low"] = float(np.mean(d.raw[d.mask] <= lo)) if d.mask.any() else 0.0
    from scanqc.scoring.artifacts import artifact_metrics  # MR artefact measures (issue 4)

    m.update(artifact_metrics(scan, d))  # the keys of artifacts.ARTIFACT_KEYS
    d.extra["metrics"] = dict(m)
    return m


def check_constant(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``constant_image``: every finite value is the same (or no finite value at all)."""
    d = _data(scan, data)
    if d.raw.size == 0 or float(d.raw.max()) == float(d.raw.min()):
        # Downsampled copy is constant: confirm on the full data.
        g = scan.data
        finite = g[np.isfinite(g)] if g.dtype.kind == "f" else g
        if finite.size == 0 or float(finite.max()) == float(finite.min()):
            v = float(finite.flat[0]) if finite.size else float("nan")
            return [ScanWarning("constant_image", f"constant image (every value is {v:g})",
                                severity="high", value=v)]
    return []


def check_tiny(scan: Scan) -> list[ScanWarning]:
    """``tiny_image`` (high): under :data:`MIN_MATRIX` pixels along an in-plane axis.

    Icons, thumbnails and test files (16 x 16 DICOM test images, 10 x 10 dose grids) that
    no reader or model can use; the smallest real scans (64 x 64 EPI, nuclear medicine)
    are above the limit.
    """
    shape = tuple(int(n) for n in scan.spatial_shape[-2:])
    if len(shape) < 2 or min(shape) >= MIN_MATRIX:
        return []
    rows, cols = shape
    return [ScanWarning("tiny_image", f"{cols} x {rows} pixels: too few to show anatomy "
                        "(a thumbnail, icon or test file)", severity="high",
                        value=float(min(shape)))]


def check_blank_slices(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``blank_slices`` (info): constant slices inside a volume."""
    if not scan.is_volume:
        return []
    d = _data(scan, data)
    flat = d.raw.reshape(d.raw.shape[0], -1)
    const = flat.max(axis=1) == flat.min(axis=1)
    if not const.any() or const.all():
        return []
    idx = d.slice_index[const]
    return [ScanWarning("blank_slices", f"{int(const.sum())} of {const.size} sampled slices "
                        "are blank", severity="info", slices=(int(idx.min()), int(idx.max())),
                        value=float(const.mean()))]


def check_noise_only(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``noise_only``: no spatial structure (neighbouring pixels uncorrelated)."""
    d = _data(scan, data)
    r = quality_metrics(scan, d)["neighbour_corr"]
    if np.isfinite(r) and r < NOISE_AUTOCORR:
        return [ScanWarning("noise_only", f"looks like noise (neighbour correlation {r:.2f})",
                            severity="high", value=r)]
    return []


def check_brightness(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``dark`` / ``bright`` on the bit-depth scale (radiographs, photos, CT in HU)."""
    d = _data(scan, data)
    if not _brightness_applies(scan, d):
        return []
    m = quality_metrics(scan, d)
    out = []
    if m["p99_bit"] < DARK_P99:
        out.append(ScanWarning("dark", f"dark image (99th percentile at {m['p99_bit']:.0%} of "
                               "the range)", severity="warn", value=m["p99_bit"]))
    if 1 - m["p05_bit"] < 0.05 or m["p05_bit"] > BRIGHT_P5:
        out.append(ScanWarning("bright", f"bright image (5th percentile at {m['p05_bit']:.0%} "
                               "of the range)", severity="warn", value=m["p05_bit"]))
    return out


def check_low_information(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``low_information``: entropy of the windowed histogram under 3 bits."""
    d = _data(scan, data)
    e = quality_metrics(scan, d)["entropy_bits"]
    if e < LOW_ENTROPY_BITS:
        return [ScanWarning("low_information", f"low information (entropy {e:.1f} bits)",
                            severity="warn", value=e)]
    return []


def check_blur(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``blurry`` (info): edge-to-contrast ratio under :data:`BLUR_SCORE`."""
    d = _data(scan, data)
    b = quality_metrics(scan, d)["blur"]
    if np.isfinite(b) and b < BLUR_SCORE:
        return [ScanWarning("blurry", f"blurry (score {b:.2f})", severity="info", value=b)]
    return []


def check_clipped(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``clipped``: saturated intensities.

    A large fraction of pixels at the top of the bit depth, or of body pixels at its
    bottom.
    """
    d = _data(scan, data)
    m = quality_metrics(scan, d)
    out = []
    if m["clipped_high"] >= CLIPPED_FRACTION:
        out.append(ScanWarning("clipped", f"{m['clipped_high']:.0%} of pixels saturated at the "
                               "maximum", severity="warn", region="high", value=m["clipped_high"]))
    if m["clipped_low"] >= 4 * CLIPPED_FRACTION and not d.hounsfield:
        out.append(ScanWarning("clipped", f"{m['clipped_low']:.0%} of anatomy at the minimum "
                               "value", severity="warn", region="low", value=m["clipped_low"]))
    return out


def check_inverted(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``inverted``: a radiograph whose background is much brighter than its centre.

    MONOCHROME1 data the reader did not invert, or an inverted export. Applies to 2D
    projection images only; ``value`` is border minus centre mean (windowed).
    """
    if not is_projection(scan) or scan.rgb:
        return []
    d = _data(scan, data)
    img = d.win[0]
    h, w = img.shape
    if h < 8 or w < 8:
        return []
    by, bx = max(1, h // 10), max(1, w // 10)
    border = np.concatenate([img[:by].ravel(), img[-by:].ravel(), img[:, :bx].ravel(),
                             img[:, -bx:].ravel()])
    centre = img[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    delta = float(border.mean() - centre.mean())
    photometric = str(meta_get(scan, "PhotometricInterpretation", default="")).upper()
    if delta >= INVERTED_DELTA:
        why = " (MONOCHROME1)" if photometric == "MONOCHROME1" else ""
        return [ScanWarning("inverted", f"background brighter than the centre by {delta:.2f}: "
                            f"looks inverted{why}", severity="warn", value=delta)]
    return []


def check_air_artifacts(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``air_artifacts`` (info): QI1-like fraction of the air with structured signal.

    Ghosting, streaks; for cross-sectional scans only.
    """
    if not scan.is_volume:
        return []
    d = _data(scan, data)
    q = quality_metrics(scan, d)["qi1"]
    if np.isfinite(q) and q > QI1_LIMIT:
        return [ScanWarning("air_artifacts", f"signal in {q:.0%} of the air (artefacts?)",
                            severity="info", value=q)]
    return []


def is_mr_like(scan: Scan) -> bool:
    """True for modalities whose intensities have no absolute meaning."""
    return scan.modality.upper() in _MR_LIKE


def check_derived_map(scan: Scan, data: CheckData | None = None) -> list[ScanWarning]:
    """``derived_map``: values centred on zero with many negatives (a statistic map).

    Magnitude images (MR, PET, radiographs) are non-negative and CT in HU is excluded, so
    a non-CT scan with at least :data:`DERIVED_NEG_FRACTION` negative values whose
    non-zero values have a median near zero (under :data:`DERIVED_CENTRE` of their
    1-99% spread) is a derived map (t-statistics, phase, difference), not an image.
    """
    d = _data(scan, data)
    if d.hounsfield or scan.rgb:
        return []
    v = _sub(d.raw)
    neg = float(np.mean(v < 0))
    if neg < DERIVED_NEG_FRACTION:
        return []
    nz = v[v != 0]
    if nz.size < 10:
        return []
    p1, med, p99 = percentiles(nz, [1, 50, 99])
    spread = float(p99 - p1)
    if spread > 0 and abs(float(med)) / spread < DERIVED_CENTRE and p1 < 0 < p99:
        return [ScanWarning("derived_map", f"values centred on zero with {neg:.0%} negative: "
                            "a statistic or derived map, not an image", severity="warn",
                            value=neg)]
    return []
