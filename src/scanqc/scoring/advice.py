"""What each warning code means for the person reviewing the scan, and what to do next.

One short sentence per code, shown beside the findings of the HTML report and in the
tooltips of the Score dock's warning list. :func:`advice` also covers the families of codes
that end in ``_unlike_references`` / ``_unlike_dataset``. A test checks that every code the
package can emit has an entry here.
"""

from __future__ import annotations

#: code -> what it means and what to do (one sentence, plain words).
ADVICE: dict[str, str] = {
    # content
    "constant_image": "Every pixel has the same value: an empty or failed export; exclude it.",
    "no_anatomy": "Almost nothing but air or background: check that the right series was "
                  "exported; exclude it from training.",
    "noise_only": "No structure, only noise: a failed reconstruction or a calibration image; "
                  "exclude it.",
    "tiny_image": "Too few pixels to show anatomy (icon, thumbnail, test file); exclude it or "
                  "find the full-size image.",
    "label_map": "A segmentation or mask stored as an image: move it to the labels, not the "
                 "images.",
    "derived_map": "A statistic, phase or difference map, not an anatomical image: keep it "
                   "out of image datasets.",
    "template_space": "A template or an image registered to one: not an acquisition; keep it "
                      "out unless the dataset is meant to be normalised.",
    "blank_slices": "Some slices are empty: check the ends of the volume; crop them if the "
                    "rest is fine.",
    "low_information": "Few distinct grey levels: over-windowed, 8-bit screenshot or mostly "
                       "background; check the export settings.",
    "dark": "Mostly dark after windowing: under-exposed or wrongly windowed; check before use.",
    "bright": "Mostly bright after windowing: over-exposed or inverted; check before use.",
    "blurry": "Little fine detail (motion or a resampled copy): acceptable for coarse tasks, "
              "not for fine ones.",
    "clipped": "Many pixels at the top or bottom of the value range: detail is lost there; "
               "re-export from the source if possible.",
    "inverted": "Background brighter than the anatomy: the greyscale is probably inverted; "
                "invert it (or fix MONOCHROME1 handling) before use.",
    "air_artifacts": "Signal in the air around the body (ghosts, streaks, motion): look at the "
                     "scan before using it.",
    "metal_artifact": "Metal causes streaks on these slices: leave them out of training or ask "
                      "a radiologist whether the anatomy of interest is hidden.",
    "burned_in_text": "The header says names or IDs may be written into the pixels: review or "
                      "mask the image before sharing it.",
    # field of view and coverage
    "fov_cut": "Anatomy touches the image border on this side: fine for limbs and chest films, "
               "a problem when the organ of interest is cut.",
    "truncated_coverage": "Anatomy continues past the first or last slice: check that the "
                          "region you need is complete.",
    "short_coverage": "The volume covers too little along its slice axis: a partial or "
                      "localiser acquisition; check it is the full series.",
    "localizer": "A scout or localiser, not a diagnostic series: exclude it.",
    "plane_mismatch": "The slices are in another plane than the description says: check the "
                      "series label before routing it.",
    "missing_slices": "Slices are missing from the series: re-export it; distances and volumes "
                      "measured on it are wrong.",
    "uneven_spacing": "Slices are unevenly spaced: resample before 3D use, or re-export.",
    "duplicate_slices": "Two slices share a position: duplicated files or two series mixed "
                        "in one folder; sort them out.",
    "repeated_frame_positions": "Several frames share a position (a time series or "
                                "multi-echo set), kept in stored order: split it before 3D "
                                "use.",
    "sorted_by_instance": "Positions were missing, so slices were ordered by instance number: "
                          "check the slice order.",
    "duplicate_instance": "Another file has the same SOPInstanceUID: a copy, or a broken "
                          "anonymiser; keep one.",
    # header and geometry
    "modality_mismatch": "The pixel values contradict the stated modality: the header may "
                         "be wrong; check before mixing it with others.",
    "region_header_mismatch": "The image shows another body region than the header says: fix "
                              "the label before routing or training on it.",
    "implausible_spacing": "The pixel size is missing or impossible: measurements are wrong; "
                           "find the true spacing.",
    "missing_spacing": "No pixel size in the header (1 mm assumed): measurements are in "
                       "pixels.",
    "no_spacing": "An image file without a pixel size: sizes are in pixels.",
    "invalid_spacing": "The stored voxel size is invalid: measurements are unreliable; find "
                       "the true spacing.",
    "missing_slice_spacing": "No slice spacing in the header (assumed): volumes and distances "
                             "along the slice axis are unreliable.",
    "invalid_affine": "The orientation matrix is unusable (a diagonal one was used): "
                      "left-right and orientation may be wrong.",
    "qform_sform_mismatch": "The file's two orientation matrices disagree: tools may place or "
                            "flip it differently; fix the header.",
    "pixel_representation_mismatch": "The pixel data and the header disagree on signedness: "
                                     "other viewers may show wrong values.",
    "bits_stored_mismatch": "The codestream's bit depth differs from BitsStored: values were "
                            "read from the codestream; usually harmless.",
    "invalid_header": "A header field could not be read: the file may be damaged or "
                      "non-conformant.",
    "missing_photometric": "No PhotometricInterpretation (MONOCHROME2 assumed): check the grey "
                           "scale direction.",
    "monochrome1_inverted": "MONOCHROME1 data were inverted for display, as DICOM requires: "
                            "nothing to do.",
    "no_file_meta": "An old-style DICOM file without its meta header: it was read, but other "
                    "tools may refuse it.",
    "non_finite_values": "The file holds NaN or infinite values: check the processing that "
                         "made it.",
    "complex_magnitude": "Complex data: the magnitude is shown and scored.",
    "colour_to_gray": "A colour image was converted to grey for scoring: expected for photos "
                      "and screenshots.",
    "multi_frame_first": "Only the first frame or page is shown and scored.",
    "4d_first_volume": "A 4D series (time, diffusion, ASL): only its first volume is shown and "
                       "scored.",
    # across scans
    "exact_duplicate": "Identical pixels to another scan: keep one copy, or the data leak "
                       "between training and test sets.",
    "near_duplicate": "Nearly identical to another scan (re-encoded or resized copy): keep one "
                      "unless both are intended.",
    "suspicious_reference": "This reference looks unlike the other references: check that it "
                            "really is a good example.",
    "asymmetry_needs_pair": "A single-side image: compare it with the other side's image "
                            "(scanqc asymmetry).",
    "check_failed": "A check could not run on this scan: the other checks still ran; report it "
                    "if it repeats.",
}

#: Families of codes: the part before ``_unlike_`` -> what it means.
UNLIKE: dict[str, str] = {
    "modality": "another modality than",
    "dimension": "another dimension (2D, 3D or 4D) than",
    "plane": "another acquisition plane than",
    "resolution": "a much coarser or finer voxel size than",
    "region": "another body region than",
}


def advice(code: str) -> str:
    """What ``code`` means and what to do ("" for an unknown code)."""
    if code in ADVICE:
        return ADVICE[code]
    kind, sep, against = code.partition("_unlike_")
    if sep and kind in UNLIKE:
        whom = "your references" if against == "references" else "most of the dataset"
        return (f"Acquired with {UNLIKE[kind]} {whom}: probably the wrong series for this set;"
                " check it before use.")
    return ""
