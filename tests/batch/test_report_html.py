from __future__ import annotations

import base64
import re

from batch import make_dataset, write_png
from scanqc.batch.report_html import write_html_report


def _rows(root):
    evil = root / "<script>alert(1)</script>"
    evil.mkdir(parents=True)
    write_png(evil / "a&b.png", 1)
    return [
        {"scan_id": "s1", "path": "<script>alert(1)</script>/a&b.png", "name": "<b>x</b>",
         "kind": "image", "format": "image", "status": "ok", "bad_score": 0.9,
         "flagged": True, "mean_distance": 0.8, "threshold": 0.5,
         "warnings": "blurry", "warnings_detail": "blurry (warn): <img src=x onerror=1>",
         "region": "chest", "reference_set_id": "abc"},
        {"scan_id": "s2", "path": "sub/vol0.nii.gz", "name": "vol0", "kind": "volume",
         "format": "nifti", "status": "ok", "bad_score": 0.1, "flagged": False,
         "mean_distance": 0.2, "threshold": 0.5, "reference_set_id": "abc"},
        {"scan_id": "s3", "path": "broken.nii.gz", "name": "broken", "status": "error",
         "error": "broken.nii.gz: cannot read \"header\" <eof>"},
    ]


def test_html_escapes_everything_and_embeds_images(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=1, n_img=0)
    out = write_html_report(_rows(root), tmp_path / "rep" / "r.html", root=str(root))
    text = out.read_text()
    assert "<script>" not in text and "<b>x</b>" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;eof&gt;" in text
    # summary counts, one histogram and a thumbnail for the flagged scan, all inline
    assert re.search(r"<b>3</b> scans", text) and re.search(r"<b>1</b> flagged", text)
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(imgs) >= 2
    assert all(base64.b64decode(b)[:4] == b"\x89PNG" for b in imgs)
    assert "http" not in text.replace("http-equiv", "")  # self-contained
    # flagged first; links relative to the report folder, URL-quoted
    assert text.index("a&amp;b.png") < text.index("vol0")
    assert "href='../ds/%3Cscript%3Ealert%281%29%3C/script%3E/a%26b.png'" in text


def test_html_without_distances_uses_scores(tmp_path):
    rows = [{"scan_id": f"s{i}", "path": f"p{i}", "status": "ok", "bad_score": i / 10,
             "flagged": i > 7} for i in range(10)]
    out = write_html_report(rows, tmp_path / "r.html", load_thumbnails=False)
    assert "<b>2</b> flagged" in out.read_text()


def _thumb_counts(text: str) -> list[int]:
    """Thumbnails per table row, in report order."""
    scans = text.split("<th>images</th>", 1)[1]  # the scans' table (after the findings)
    rows = scans.split("<tr")[1:]  # skip its header row
    return [r.count("class='thumb'") for r in rows]


def test_thumbnails_go_to_flagged_scans_first(tmp_path):
    root = make_dataset(tmp_path / "ds", n_vol=1, n_img=0)
    rows = _rows(root)
    text = write_html_report(rows, tmp_path / "all.html", root=str(root)).read_text()
    counts = _thumb_counts(text)
    assert counts[0] >= 1 and counts[1] >= 1  # the flagged image, then the unflagged volume
    assert counts[2] == 0  # the unreadable file: no thumbnail, no crash
    one = write_html_report(rows, tmp_path / "one.html", root=str(root), max_thumbnails=1)
    assert _thumb_counts(one.read_text())[:2] == [counts[0], 0]


def test_asymmetry_column_only_when_computed(tmp_path):
    rows = [{"scan_id": f"s{i}", "path": f"p{i}", "status": "ok", "bad_score": i / 10,
             "asymmetry_score": float("nan")} for i in range(3)]
    text = write_html_report(rows, tmp_path / "a.html", load_thumbnails=False).read_text()
    assert "<th>asymmetry</th>" not in text
    rows[1]["asymmetry_score"] = 12.3456
    text = write_html_report(rows, tmp_path / "b.html", load_thumbnails=False).read_text()
    assert "<th>asymmetry</th>" in text and "<td>12.35</td>" in text
    # every row has the same number of cells as the header
    body = text.split("<tbody>")[1]
    assert all(r.count("<td") == 8 for r in body.split("<tr")[1:])


def test_no_thumbnail_of_pixels_with_burned_in_text_unless_asked(tmp_path):
    """Ultrasound and screen captures print the patient's name into the pixels."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.BurnedInAnnotation = "US", "YES"
    ds.Rows = ds.Columns = 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = (np.add.outer(np.arange(48), np.arange(48)) * 2).astype(np.uint8).tobytes()
    ds.save_as(tmp_path / "us.dcm", enforce_file_format=True)
    rows = [{"scan_id": "u", "path": "us.dcm", "name": "us", "kind": "image",
             "format": "dicom", "status": "ok", "bad_score": 0.9, "flagged": True}]
    text = write_html_report(rows, tmp_path / "r.html", root=str(tmp_path)).read_text()
    assert _thumb_counts(text) == [0] and "burned-in text" in text
    text = write_html_report(rows, tmp_path / "r2.html", root=str(tmp_path),
                             include_identifiers=True).read_text()
    assert _thumb_counts(text)[0] >= 1


def test_findings_summarise_the_warnings_by_code_most_severe_first(tmp_path):
    from scanqc.batch.report_html import findings_table

    def row(i, codes, detail):
        return {"scan_id": f"s{i}", "path": f"s{i}.png", "status": "ok", "bad_score": 0.1,
                "flagged": False, "warnings": codes, "warnings_detail": detail}

    rows = [
        row(1, "fov_cut;metal_artifact", "fov_cut (info): cut | metal_artifact (warn): metal"),
        row(2, "metal_artifact", "metal_artifact (warn): metal"),
        row(3, "fov_cut;fov_cut", "fov_cut (warn): cut top | fov_cut (info): cut left"),
        row(4, "no_anatomy", "no_anatomy (high): <empty>"),
        {"scan_id": "s5", "path": "bad", "status": "error", "warnings": "metal_artifact"},
    ]
    assert findings_table(rows) == [("no_anatomy", "high", 1), ("metal_artifact", "warn", 2),
                                    ("fov_cut", "warn", 1), ("fov_cut", "info", 1)]
    text = write_html_report(rows, tmp_path / "r.html", load_thumbnails=False).read_text()
    assert "<h2>Findings</h2>" in text
    assert "<tr class='high'><td>no_anatomy</td><td>high</td><td>1</td>" in text
    assert "Almost nothing but air or background" in text  # what it means
    assert text.index("no_anatomy</td>") < text.index("metal_artifact</td>")
    info_only = [row(1, "no_spacing", "no_spacing (info): none")]
    text = write_html_report(info_only, tmp_path / "i.html", load_thumbnails=False).read_text()
    assert "notes (info): no_spacing (1)" in text and "class='findings'" not in text
    assert "<h2>Findings</h2>" not in write_html_report(
        [row(1, "", "")], tmp_path / "e.html", load_thumbnails=False).read_text()


def test_ties_at_the_top_score_go_by_distance_and_info_notes_are_condensed(tmp_path):
    def row(i, score, dist, codes, detail):
        return {"scan_id": f"s{i}", "path": f"scan{i}.png", "name": f"scan{i}.png",
                "status": "ok", "bad_score": score, "flagged": score > 0.5,
                "mean_distance": dist, "threshold": 0.04, "warnings": codes,
                "warnings_detail": detail}

    note = "no_spacing (info): image file has no pixel size"
    rows = [row(0, 1.0, 0.044, "no_spacing", note),
            row(1, 1.0, 0.052, "no_spacing;dark", f"{note} | dark (warn): dark image"),
            row(2, 0.2, 0.030, "no_spacing", note),
            row(3, 1.0, 0.048, "", "")]
    text = write_html_report(rows, tmp_path / "r.html", load_thumbnails=False).read_text()
    table = text.split("<th>images</th>", 1)[1]
    order = [table.index(f"scan{i}.png") for i in (1, 3, 0, 2)]
    assert order == sorted(order)  # saturated scores: the farthest first
    cell = table.split("scan1.png", 2)[2].split("</tr>")[0]
    assert "<b>dark</b>" in cell and "dark (warn): dark image" in cell
    assert "notes: no_spacing" in cell and "<b>no_spacing" not in cell
    assert "title='no_spacing: image file has no pixel size'" in cell  # the note's message
