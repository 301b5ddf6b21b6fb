"""Image loading: pixel formats, EXIF orientation, broken files, bounded decoding."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from nocdet.data.images import image_size, load_image, load_image_bounded
from nocdet.errors import DataError


def _pattern(h: int, w: int) -> np.ndarray:
    """An RGB image whose every pixel is distinct enough to track where it went."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows * 7 % 256, cols * 11 % 256, (rows + cols) * 3 % 256], -1).astype(np.uint8)


def test_rgb_png_is_returned_unchanged(tmp_path):
    a = _pattern(5, 7)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, a)
    assert image_size(tmp_path / "a.png") == (7, 5)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = np.array([[0, 100], [200, 255]], np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_bilevel_image(tmp_path):
    Image.new("1", (3, 2), 1).save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_image(tmp_path / "b.png"), np.full((2, 3, 3), 255))


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png").astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]  # invisible red shows the white background
    assert out[0, 1].tolist() == [0, 0, 255]  # opaque blue stays blue
    # black at alpha 128/255 over white: 255 * (1 - 128/255) = 127
    assert np.all(np.abs(out[0, 2] - 127) <= 1)


def test_gray_with_alpha(tmp_path):
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png"), np.full((2, 2, 3), 255))


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png")[0], [[10, 20, 30], [200, 100, 50]])
    p.save(tmp_path / "pt.png", transparency=0)  # index 0 transparent: composited on white
    np.testing.assert_array_equal(load_image(tmp_path / "pt.png")[0], [[255, 255, 255], [200, 100, 50]])


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg").astype(int)
    assert out.shape == (8, 8, 3)
    assert np.all(np.abs(out - [255, 0, 0]) <= 3)  # no cyan, full magenta and yellow: red


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 65535, 32768, 257, 65534]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    # round(v * 255 / 65535): 0, 255, 127.50 -> 128, 1.0 -> 1, 254.996 -> 255
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 128, 1, 255])
    assert out.dtype == np.uint8


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    np.testing.assert_array_equal(load_image(tmp_path / "one.png"), [[[1, 2, 3]]])
    assert image_size(tmp_path / "one.png") == (1, 1)


def _with_orientation(a: np.ndarray, path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(path, exif=exif.tobytes())


# Displayed image for each EXIF orientation, written from the EXIF 2.3 definitions of where the
# stored row 0 / column 0 go ("visual top / left side"), independently of PIL's tables.
_DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # stored row 0 is the visual left column
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],  # stored row 0 is the visual right column (90 CW)
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # stored row 0 is the right column, bottom-up
    8: lambda a: a.transpose(1, 0, 2)[::-1, :],  # stored row 0 is the left column, bottom-up (90 CCW)
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_lossless(tmp_path, orientation):
    a = _pattern(4, 6)
    _with_orientation(a, tmp_path / "o.png", orientation)
    out = load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, _DISPLAYED[orientation](a))
    assert image_size(tmp_path / "o.png") == (out.shape[1], out.shape[0])


def test_exif_orientation_6_jpeg(tmp_path):
    a = np.zeros((32, 48, 3), np.uint8)  # 48 wide, 32 high as stored
    a[:16, :24] = (255, 0, 0)  # top-left quadrant red
    _with_orientation(a, tmp_path / "r.jpg", 6)
    assert image_size(tmp_path / "r.jpg") == (32, 48)
    out = load_image(tmp_path / "r.jpg").astype(int)
    assert out.shape == (48, 32, 3)
    # rotated 90 degrees clockwise: the red quadrant is now top-right
    assert np.all(np.abs(out[4:20, 20:28] - [255, 0, 0]) < 40)
    assert np.all(out[4:20, 4:12] < 40)


def _truncated_jpeg(tmp_path):
    Image.fromarray(_pattern(64, 64)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.jpg"


def test_truncated_jpeg_is_an_error(tmp_path):
    path = _truncated_jpeg(tmp_path)
    with pytest.raises(DataError, match="truncated") as err:
        load_image(path)
    assert err.value.path == str(path)
    assert image_size(path) == (64, 64)  # the header alone is intact


def test_truncated_jpeg_is_an_error_even_if_pil_is_told_to_pad(tmp_path, monkeypatch):
    path = _truncated_jpeg(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="truncated"):
        load_image(path)
    with pytest.raises(DataError, match="truncated"):
        load_image_bounded(path, 16)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


@pytest.mark.parametrize("loader", [load_image, image_size, lambda p: load_image_bounded(p, 10)])
def test_broken_files(tmp_path, loader):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    cases = {"empty.jpg": "empty file", "text.jpg": "not an image", "missing.jpg": "does not exist"}
    for name, reason in cases.items():
        with pytest.raises(DataError, match=reason) as err:
            loader(tmp_path / name)
        assert err.value.path == str(tmp_path / name)


def test_bounded_small_image_is_not_resized(tmp_path):
    a = _pattern(20, 30)
    Image.fromarray(a).save(tmp_path / "s.png")
    out, scale = load_image_bounded(tmp_path / "s.png", 30)
    assert scale == 1.0
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_bounded_large_image(tmp_path, ext):
    ramp = np.linspace(0, 255, 2000)
    a = np.broadcast_to(ramp[None, :, None], (1500, 2000, 3)).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / f"big.{ext}")
    out, scale = load_image_bounded(tmp_path / f"big.{ext}", 400)
    assert scale == pytest.approx(400 / 2000)
    assert out.shape == (300, 400, 3)
    # the horizontal ramp survives: output column j shows input column (j + 0.5) / scale - 0.5
    expected = np.interp((np.arange(400) + 0.5) / scale - 0.5, np.arange(2000), ramp)
    assert np.abs(out[150, :, 0] - expected).max() <= 3


def test_bounded_jpeg_is_decoded_at_reduced_size(tmp_path, monkeypatch):
    Image.fromarray(_pattern(1600, 1600)).save(tmp_path / "big.jpg")
    decoded_sizes = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out, scale = load_image_bounded(tmp_path / "big.jpg", 190)
    assert out.shape == (190, 190, 3) and scale == pytest.approx(190 / 1600)
    assert decoded_sizes == [(200, 200)]  # libjpeg decoded at 1/8 scale, not 1600 x 1600


def test_bounded_applies_exif_orientation(tmp_path):
    a = np.zeros((100, 200, 3), np.uint8)
    a[:50, :100] = 255  # top-left quadrant white
    _with_orientation(a, tmp_path / "r.png", 6)
    out, scale = load_image_bounded(tmp_path / "r.png", 100)
    assert scale == 0.5 and out.shape == (100, 50, 3)
    assert out[10, 40].min() > 200 and out[10, 10].max() < 50  # white quadrant now top-right


@pytest.mark.slow
def test_bounded_huge_jpeg_keeps_memory_small(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("L", (10000, 10000), 128).save(path)
    code = textwrap.dedent(f"""
        import resource
        from nocdet.data.images import load_image_bounded
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image, scale = load_image_bounded({str(path)!r}, 1000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert image.shape == (1000, 1000, 3) and scale == 0.1, (image.shape, scale)
        print((after - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown_mib = int(out.stdout.strip())
    assert grown_mib < 60  # a full decode would need 100 MB (L) to 300 MB (RGB)
