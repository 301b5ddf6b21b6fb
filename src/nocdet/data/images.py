"""Image loading that is strict about broken files and uniform about pixel formats.

Every loader returns an ``H x W x 3`` uint8 RGB array, whatever the file holds:

* grayscale, bilevel, palette, CMYK and YCbCr images are converted to RGB;
* transparent images (RGBA, LA, palette with transparency) are composited on **white**, so
  fully transparent pixels do not turn into whatever colour they happen to store (often black);
* 16-bit images (``I;16`` PNG, 32-bit ``I``) are scaled from ``0..65535`` to ``0..255``.

EXIF orientation is applied, as Detectron2 does: pixels, sizes and therefore annotations are
in the *displayed* (EXIF-rotated) frame. :func:`image_size` reports that frame too.

Broken files fail with :class:`~nocdet.errors.DataError` naming the file: missing, empty,
not an image, or truncated. A truncated file is always an error, never an image padded with
grey: decoding is forced while PIL's ``LOAD_TRUNCATED_IMAGES`` is held False.

Size: nocdet decodes at most :data:`MAX_PIXELS` pixels of one image, counted as decoded (a JPEG
that :func:`load_image_bounded` decodes reduced counts at its reduced size), and refuses larger
ones with a DataError naming the file and both numbers. This replaces PIL's decompression-bomb
check, which counts the stored size and would refuse a 20000 x 20000 JPEG that decodes at 1/8.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from nocdet.errors import DataError

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the transposition that displays the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_STRICT_LOCK = threading.Lock()
_BOMB_LOCK = threading.Lock()
#: the most pixels decoded of one image: 16384 x 16384, about 0.8 GB as RGB (see the module doc)
MAX_PIXELS = 2 ** 28


def load_image(path: str | Path) -> np.ndarray:
    """Decode the whole image at ``path`` to an ``H x W x 3`` uint8 RGB array (displayed frame)."""
    with _open(path) as img:
        _check_pixels(img.size, path)
        _load(img, path)
        orientation = _orientation(img, path)
        rgb = _to_rgb(img, path)
    return _as_array(_upright(rgb, orientation))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` in the displayed (EXIF-rotated) frame, from the file header only.

    A truncated file is not detected here (nothing is decoded). PNG EXIF data stored after the
    pixel data is not seen either, since reading it would decode the image.
    """
    with _open(path) as img:
        width, height = img.size
        if _orientation(img, path) in (5, 6, 7, 8):
            width, height = height, width
    return width, height


def load_image_bounded(path: str | Path, max_side: int) -> tuple[np.ndarray, float]:
    """Load an image with its longer side at most ``max_side``; return it and the scale used.

    The scale is ``max_side / max(W, H)`` (1.0 when the image is small enough) and applies to
    both axes; output sides are rounded to whole pixels. JPEGs are decoded at reduced size by
    libjpeg's DCT scaling (PIL ``draft``, down to 1/8), so a 10000 x 10000 JPEG never occupies
    its full size in memory; other formats are decoded fully (up to :data:`MAX_PIXELS`) and
    then reduced.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    with _open(path) as img:
        stored_w, stored_h = img.size
        scale = min(1.0, max_side / max(stored_w, stored_h))
        target = (max(1, round(stored_w * scale)), max(1, round(stored_h * scale)))
        region = (0.0, 0.0, float(stored_w), float(stored_h))
        if scale < 1.0:
            drafted = img.draft(None, target)
            if drafted is not None:
                region = tuple(float(v) for v in drafted[1])
        _check_pixels(img.size, path)  # as decoded: the drafted size
        _load(img, path)
        orientation = _orientation(img, path)
        rgb = _to_rgb(img, path)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BILINEAR, box=region, reducing_gap=2.0)
    return _as_array(_upright(rgb, orientation)), scale


@contextlib.contextmanager
def _open(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` with every failure turned into a DataError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError("empty file (0 bytes), not an image", path=path)
        with _BOMB_LOCK:  # PIL's check off while the header is read; _check_pixels applies nocdet's
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except FileNotFoundError as err:
        raise DataError("image file does not exist", path=path) from err
    except IsADirectoryError as err:
        raise DataError("is a folder, not an image file", path=path) from err
    except UnidentifiedImageError as err:
        raise DataError("not an image file (format not recognised)", path=path) from err
    except OSError as err:
        raise DataError(f"cannot open image: {err.strerror or err}", path=path) from err
    with img:
        yield img


def _check_pixels(size: tuple[int, int], path: str | Path) -> None:
    """DataError when an image decoded at ``size`` would exceed :data:`MAX_PIXELS`."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise DataError(f"image of {width} x {height} = {width * height:,} pixels (as decoded) is over nocdet's "
                        f"limit of {MAX_PIXELS:,} (nocdet.data.images.MAX_PIXELS, a guard against "
                        "decompression bombs): reduce the image, or raise the limit if it is genuine", path=path)


def _load(img: Image.Image, path: str | Path) -> None:
    """Decode all pixels now, refusing truncated data whatever the global PIL setting is.

    PIL's default (``LOAD_TRUNCATED_IMAGES = False``) decodes without any lock; only when some
    other code has switched it on is it switched off around this decode, under a lock.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        _decode(img, path)
        return
    with _STRICT_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            _decode(img, path)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _decode(img: Image.Image, path: str | Path) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as err:  # an animated GIF's frame over PIL's limit
        raise DataError(f"image too large to decode ({err})", path=path) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"cannot decode image (truncated or corrupt file?): {err}", path=path) from err


def _orientation(img: Image.Image, path: str | Path) -> int:
    """The EXIF orientation (1..8; 1 when absent or unreadable: bad metadata spoils no pixels)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PIL would decode the whole PNG to look for a trailing eXIf chunk
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as err:  # PIL raises many types on malformed EXIF blocks
        warnings.warn(f"{path}: ignoring unreadable EXIF data ({err})", stacklevel=3)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(img: Image.Image, path: str | Path) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        wide = np.asarray(img).astype(np.int64)
        narrow = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(narrow, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise DataError(f"unsupported pixel format {mode!r}: {err}", path=path) from err


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


def _as_array(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def unit_tensor(array: np.ndarray):
    """An ``[H, W, 3]`` uint8 RGB array as a ``[3, H, W]`` float32 tensor in [0, 1] (a copy): the
    one conversion every detector input starts from."""
    import torch

    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float().div_(255.0)
