"""2D image reader: bit depth, colour handling, spacing warning, bombs and bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from scanqc.io.images import load_image
from scanqc.io.scan import ScanReadError


@pytest.fixture
def gray16(rng) -> np.ndarray:
    return rng.integers(0, 65535, size=(40, 30), dtype=np.uint16)


def test_png_16bit_stays_uint16(tmp_path, gray16):
    p = tmp_path / "a.png"
    Image.fromarray(gray16).save(p)
    scan = load_image(p, scan_id="x")
    assert scan.data.dtype == np.uint16
    np.testing.assert_array_equal(scan.data, gray16)
    assert scan.kind == "image" and not scan.rgb and scan.scan_id == "x"
    assert scan.spacing == (1.0, 1.0)
    codes = {w.code: w for w in scan.warnings}
    assert codes["no_spacing"].severity == "info"


def test_tiff_16bit_stays_uint16(tmp_path, gray16):
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, gray16)
    scan = load_image(p)
    assert scan.data.dtype == np.uint16
    np.testing.assert_array_equal(scan.data, gray16)


def test_pgm_16bit_stays_uint16(tmp_path, gray16):
    p = tmp_path / "a.pgm"
    h, w = gray16.shape
    p.write_bytes(f"P5\n{w} {h}\n65535\n".encode() + gray16.astype(">u2").tobytes())
    scan = load_image(p)
    assert scan.data.dtype == np.uint16
    np.testing.assert_array_equal(scan.data, gray16)


def test_gray_stored_as_rgb_becomes_gray(tmp_path, rng):
    g = rng.integers(0, 255, size=(20, 25), dtype=np.uint8)
    p = tmp_path / "g.png"
    Image.fromarray(np.stack([g, g, g], -1)).save(p)
    scan = load_image(p)
    assert not scan.rgb and scan.data.shape == (20, 25)
    np.testing.assert_array_equal(scan.data, g)


def test_colour_stays_rgb(tmp_path, rng):
    c = rng.integers(0, 255, size=(20, 25, 3), dtype=np.uint8)
    p = tmp_path / "c.png"
    Image.fromarray(c).save(p)
    scan = load_image(p)
    assert scan.rgb and scan.data.shape == (20, 25, 3)
    assert scan.spatial_shape == (20, 25)


def test_palette_and_rgba(tmp_path, rng):
    g = rng.integers(0, 255, size=(16, 16), dtype=np.uint8)
    pal = Image.fromarray(np.stack([g, g, g], -1)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    scan = load_image(tmp_path / "p.png")
    assert scan.data.ndim == 2  # grey palette -> gray
    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    scan = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(scan.data, g)
    half = np.dstack([g, g, g, np.full_like(g, 128)])
    Image.fromarray(half, "RGBA").save(tmp_path / "h.png")
    scan = load_image(tmp_path / "h.png")
    assert scan.data.ndim == 2 and scan.data.max() <= g.max() // 2 + 1


def test_jpeg_and_bmp(tmp_path, rng):
    g = (np.linspace(0, 255, 32 * 32).reshape(32, 32)).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(g).save(tmp_path / "a.bmp")
    assert load_image(tmp_path / "a.jpg").data.shape == (32, 32)
    np.testing.assert_array_equal(load_image(tmp_path / "a.bmp").data, g)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ScanReadError) as ei:
        load_image(tmp_path / "b.png")
    assert "decompression-bomb" in str(ei.value) and "\n" not in str(ei.value)


def test_truncated_png_one_line(tmp_path, rng):
    p = tmp_path / "t.png"
    Image.fromarray(rng.integers(0, 255, (200, 200), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:3000])
    with pytest.raises(ScanReadError) as ei:
        load_image(p)
    assert "\n" not in str(ei.value) and str(p) in str(ei.value)


def test_not_an_image(tmp_path):
    p = tmp_path / "x.png"
    p.write_text("hello")
    with pytest.raises(ScanReadError, match="not a readable image"):
        load_image(p)


def test_size_ceiling(tmp_path, gray16):
    p = tmp_path / "a.png"
    Image.fromarray(gray16).save(p)
    with pytest.raises(ScanReadError, match="limit"):
        load_image(p, max_bytes=100)


# --- load_scan dispatch (scanqc.io.load) -------------------------------------------------


def test_load_scan_dispatches_by_format(tmp_path, gray16):
    import nibabel as nib

    from scanqc.io.load import load_scan

    Image.fromarray(gray16).save(tmp_path / "a.png")
    nib.Nifti1Image(np.ones((3, 4, 5), np.int16), np.eye(4)).to_filename(tmp_path / "v.nii.gz")
    img = load_scan(tmp_path / "a.png")
    vol = load_scan(str(tmp_path / "v.nii.gz"))
    assert img.kind == "image" and img.data.dtype == np.uint16
    assert vol.kind == "volume" and vol.data.shape == (5, 4, 3)
    assert img.scan_id and vol.scan_id and img.scan_id != vol.scan_id


def test_load_scan_errors_are_one_line(tmp_path):
    from scanqc.io.load import load_scan

    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ScanReadError) as ei:
        load_scan(bad)
    assert "\n" not in str(ei.value) and "bad.nii.gz" in str(ei.value)
    with pytest.raises(ScanReadError, match="not found"):
        load_scan(tmp_path / "missing.png")
    (tmp_path / "two").mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "two" / n)
    with pytest.raises(ScanReadError, match="2 scans"):
        load_scan(tmp_path / "two")


def test_unexpected_reader_exception_becomes_scan_read_error(tmp_path, monkeypatch):
    from scanqc.io import images, load

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")

    def boom(*a, **k):
        raise RuntimeError("weird\nmultiline")

    monkeypatch.setattr(images, "load_image", boom)
    with pytest.raises(ScanReadError) as ei:
        load.load_scan(tmp_path / "a.png")
    assert str(ei.value).endswith("RuntimeError: weird multiline")


def test_open_scans_never_stops(tmp_path, gray16):
    from scanqc.io.load import open_scans

    Image.fromarray(gray16).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    Image.fromarray(gray16).save(tmp_path / "c.png")
    seen = []
    results = list(open_scans([tmp_path], progress=lambda d, t, m: seen.append((d, t))))
    kinds = sorted(type(r).__name__ for _, r in results)
    assert kinds == ["Scan", "Scan", "ScanReadError"]
    assert seen[-1] == (3, 3)


def test_webp_and_gif_are_found_and_read(tmp_path) -> None:
    """Web exports of teaching files and cine loops: WebP and (animated) GIF."""
    from scanqc.io.discover import discover
    from scanqc.io.load import load_scan

    base = (np.add.outer(np.arange(40), np.arange(50)) * 2).astype(np.uint8)
    Image.fromarray(base).save(tmp_path / "film.webp", lossless=True)
    frames = [Image.fromarray(base), Image.fromarray(255 - base)]
    frames[0].save(tmp_path / "cine.gif", save_all=True, append_images=frames[1:])
    entries = {e.name: e for e in discover([tmp_path])}
    assert set(entries) == {"film.webp", "cine.gif"}
    webp = load_scan(entries["film.webp"])
    assert webp.spatial_shape == (40, 50)
    np.testing.assert_array_equal(webp.gray().astype(np.uint8), base)
    gif = load_scan(entries["cine.gif"])
    np.testing.assert_array_equal(gif.data, base)  # the first frame, with a warning
    assert "multi_frame_first" in [w.code for w in gif.warnings]
