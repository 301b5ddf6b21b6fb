"""scene-glyphs: a second embedded detection data set, of letters and symbols, not digits.

Twenty classes (as many as VOC has): thirteen capital letters and seven symbols, chosen so that
several sets look alike (:data:`SIMILARITY_GROUPS`). Each object is one character rendered with
PIL from a font file installed with matplotlib (DejaVu Sans, Sans Mono and Serif, STIX General,
Computer Modern, in regular, bold, oblique and italic faces), its ink 16..160 px tall, widened
or narrowed (0.75..1.3x), rotated (-20..20 degrees), painted in one of four styles: a plain fill,
a hollow outline, a fill inside a contour of another colour, or a two-colour gradient. The scenes
are composed by :mod:`nocdet.data.scenes` exactly as scene-digits' are (same photographs, sizes,
occluders, overlaps, noise, difficult rule, VOC + COCO layout), plus truncation: 15% of the
objects may stick out of the image by up to half their size.

What keeps it from being easy: test images use font faces that no train or val image uses
(:data:`TEST_FONTS`), the clutter holds whole characters of other classes' look-alikes that are
not classes ("D", "S", "K", "2", ...) and fragments of class glyphs, and the similar classes
differ by a tail (O/Q), a bar (C/G, E/F, P/R) or a serif (I/L/T). skimage's ``page`` photograph
(a page of printed text) is left out of the backgrounds: its letters would be unlabelled objects.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nocdet.data.scene_sources import contrasting_colour, photos_for, stroke_alpha, trim, warp_alpha
from nocdet.data.scenes import (
    Box, Layer, Pick, SceneConfig, SceneKind, SceneRecord, blend, generate_scenes, ink_height, is_output_of,
    paint_plain, read_scene_records, render_scene as _render_scene,
)
from nocdet.errors import DataError

GENERATOR = "nocdet scene-glyphs"
GENERATOR_VERSION = "1.0"
CHARACTERS: dict[str, str] = {
    "O": "O", "Q": "Q", "C": "C", "G": "G", "I": "I", "L": "L", "T": "T", "E": "E", "F": "F", "P": "P",
    "R": "R", "B": "B", "X": "X", "plus": "+", "asterisk": "*", "hash": "#", "percent": "%",
    "ampersand": "&", "at": "@", "question": "?",
}
"""Class name -> character. Symbols have word names: they end up in file names and XML."""
CLASSES: list[str] = list(CHARACTERS)
SIMILARITY_GROUPS: list[list[str]] = [["O", "Q", "C", "G"], ["I", "L", "T"], ["E", "F"], ["B", "E"],
                                      ["P", "R", "B"], ["X", "plus", "asterisk"], ["hash", "plus"]]
"""Classes that count as *similar* in the error diagnosis: round letters told apart by a tail or a
bar (O/Q/C/G), one stem with or without a bar (I/L/T), a stem with two or three bars (E/F), a
stem with three horizontal parts (B/E), a stem with a bowl, a bowl and a leg, or two bowls
(P/R/B), crossing strokes (X/+/*) and crossed bars (#/+). They hold the pairs a 5-NN pixel
classifier (20x20 glyphs of the train fonts, tested on the test fonts) confuses most: E-F, C-G,
B-E, I-T, B-R, F-P. "%", "&", "@" and "?" look like no other class much."""
NEGATIVE_CHARACTERS = "ADHKMNSUVWYZ2357aeghkmnr"
"""Characters drawn as clutter: not classes, some of them close to one (D to O, S to C, K to X)."""

FONT_FOLDER = "mpl-data/fonts/ttf"  # inside the matplotlib package
TRAIN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmss10.ttf", "cmb10.ttf",
)
TEST_FONTS = (
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf", "cmti10.ttf", "cmtt10.ttf",
)
"""Font faces of the test images, none of them used by a train or val image; every family
(DejaVu Sans, Sans Mono, Serif, STIX, Computer Modern) has faces on both sides."""
TEXT_PHOTOS = ("skimage:page",)  # photographs of printed text: never a background here
STYLES = ("fill", "outline", "contour", "gradient")
STYLE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
_PROBE_SIZE = 128  # font size at which each glyph's ink height per font size is measured


@dataclass(frozen=True)
class SceneGlyphsConfig(SceneConfig):
    """What to generate (see :class:`~nocdet.data.scenes.SceneConfig`), plus the share of objects
    that may be truncated by the image border."""

    truncation: float = 0.15


@dataclass
class GlyphObject:
    """One glyph: ``box`` is ``(x1, y1, x2, y2)`` of its visible ink in integer pixel coordinates."""

    label: int  # 1..20, class CLASSES[label - 1]
    box: Box
    difficult: bool
    font: str
    style: str
    angle: float
    ink_height: int  # height of the whole ink, hidden or cut off or not
    visible_fraction: float
    truncated: bool


# ------------------------------------------------------------------------------ drawing

def font_path(name: str) -> Path:
    """The file of a font installed with matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the package matplotlib is not installed; scene-glyphs draws with its fonts")
    path = Path(spec.submodule_search_locations[0]) / FONT_FOLDER / name
    if not path.is_file():
        raise DataError("this font is not installed with matplotlib", path=path)
    return path


@lru_cache(maxsize=512)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(str(font_path(name)), size)
    except OSError as err:
        raise DataError(f"cannot read the font: {err}", path=font_path(name)) from err


def _render(char: str, font: str, size: int) -> np.ndarray:
    """``char`` in ``font`` at ``size`` px as a float32 coverage image (0..1) cut to its ink."""
    face = _font(font, size)
    left, top, right, bottom = face.getbbox(char)
    image = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(image).text((2 - left, 2 - top), char, font=face, fill=255)
    coverage = np.asarray(image, np.float32) / 255
    if not coverage.any():
        raise DataError(f"the font draws nothing for {char!r}", path=font_path(font))
    return trim(coverage)


@lru_cache(maxsize=None)
def _ink_per_size(char: str, font: str) -> float:
    return _render(char, font, _PROBE_SIZE).shape[0] / _PROBE_SIZE


def glyph_alpha(char: str, font: str, height: float, aspect: float, angle: float,
                outline: float = 0.0) -> np.ndarray:
    """The alpha mask (float32, 0..1, trimmed) of ``char`` in ``font`` with its ink ``height`` px
    tall before rotation, widened by ``aspect``, rotated by ``angle`` degrees. ``outline`` > 0
    hollows it out, keeping a contour ``outline * height`` px thick (at least 1 px)."""
    size = max(4, round(height / _ink_per_size(char, font)))
    coverage = np.pad(_render(char, font, size), 1)
    grey = warp_alpha(coverage, height / (coverage.shape[0] - 2), aspect, angle)
    alpha = np.clip(grey, 0.0, 1.0)
    if outline > 0:
        alpha = np.clip(alpha - _eroded(alpha, outline * height), 0.0, 1.0)
    return trim(alpha)


def _eroded(alpha: np.ndarray, thickness: float) -> np.ndarray:
    """``alpha`` eroded by a disc of radius ``thickness`` px (at least 1)."""
    radius = max(1, round(thickness))
    return cv2.erode(alpha, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))


def _gradient(rng: np.random.Generator, shape: tuple[int, int], start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """An ``[h, w, 3]`` linear blend from ``start`` to ``end`` along a random direction."""
    theta = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    t = cols * np.float32(np.cos(theta)) + rows * np.float32(np.sin(theta))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return start + t[:, :, None] * (end - start)


# ------------------------------------------------------------------------------ the kind

def fonts_for(split: str) -> tuple[str, ...]:
    """The font faces of a split: val images are carved from the train side and share its fonts."""
    return TEST_FONTS if split == "test" else TRAIN_FONTS


class SceneGlyphs(SceneKind):
    """Glyphs of the 20 classes in the split's fonts; clutter: curves, arcs, non-class
    characters and fragments of class glyphs."""

    name = "scene-glyphs"
    generator = GENERATOR
    version = GENERATOR_VERSION
    classes = CLASSES
    similarity_groups = SIMILARITY_GROUPS
    object_type = GlyphObject

    def photos(self, split: str) -> tuple[str, ...]:
        return tuple(photo for photo in photos_for(split) if photo not in TEXT_PHOTOS)

    def pick(self, rng: np.random.Generator, split: str, config: SceneGlyphsConfig) -> Pick:
        label = int(rng.integers(len(CLASSES))) + 1
        fonts = fonts_for(split)
        font = fonts[rng.integers(len(fonts))]
        height = ink_height(rng, config)
        aspect, angle = float(rng.uniform(0.75, 1.3)), round(float(rng.uniform(-20, 20)), 2)
        style = STYLES[rng.choice(len(STYLES), p=STYLE_WEIGHTS)]
        outline = float(rng.uniform(0.04, 0.09)) if style in ("outline", "contour") else 0.0
        truncate = bool(rng.random() < config.truncation)
        char = CHARACTERS[CLASSES[label - 1]]
        hollow = outline if style == "outline" else 0.0
        return Pick(label, height, lambda h: glyph_alpha(char, font, h, aspect, angle, hollow),
                    {"font": font, "style": style, "angle": angle, "outline": outline}, truncate)

    def paint(self, canvas: np.ndarray, rng: np.random.Generator, layer: Layer, config: SceneConfig) -> None:
        style = layer.pick.source["style"]
        if style in ("fill", "outline"):
            paint_plain(canvas, rng, layer, config)
            return
        (y, x), alpha = layer.at, layer.alpha
        region = canvas[y:y + alpha.shape[0], x:x + alpha.shape[1]]
        outer = contrasting_colour(rng, region, rng.random() < config.low_contrast)
        if style == "contour":  # the whole glyph in one colour, its inside in a colour contrasting with it
            blend(canvas, alpha, y, x, outer)
            inner = contrasting_colour(rng, outer[None, None, :], False)
            thickness = layer.pick.source["outline"] * max(layer.ink_height, 1)
            blend(canvas, _eroded(alpha, thickness), y, x, inner)
        else:  # gradient between two colours that both contrast with the background
            other = contrasting_colour(rng, region, False)
            blend(canvas, alpha, y, x, _gradient(rng, alpha.shape, outer, other))

    def clutter(self, rng: np.random.Generator, split: str, size: float) -> np.ndarray:
        kind = ("curve", "arc", "character", "fragment")[rng.integers(4)]
        if kind in ("curve", "arc"):
            return stroke_alpha(rng, kind, size)
        fonts = fonts_for(split)
        font = fonts[rng.integers(len(fonts))]
        if kind == "character":
            char = NEGATIVE_CHARACTERS[rng.integers(len(NEGATIVE_CHARACTERS))]
            return glyph_alpha(char, font, size, rng.uniform(0.8, 1.25), rng.uniform(-20, 20))
        char = CHARACTERS[CLASSES[rng.integers(len(CLASSES))]]
        alpha = glyph_alpha(char, font, size / rng.uniform(0.25, 0.35), 1.0, rng.uniform(0, 360))
        side = int(np.ceil(size))
        h, w = alpha.shape
        y0, x0 = rng.integers(0, h - min(h, side) + 1), rng.integers(0, w - min(w, side) + 1)
        return alpha[y0:y0 + side, x0:x0 + side]

    def scene_object(self, layer: Layer, box: Box, difficult: bool, visible: float) -> GlyphObject:
        source = layer.pick.source
        return GlyphObject(layer.label, box, difficult, source["font"], source["style"], source["angle"],
                           layer.ink_height, visible, layer.truncated)

    def sources(self) -> dict:
        return {"photos": {split: list(self.photos(split)) for split in ("train", "val", "test")},
                "fonts": {"train": list(TRAIN_FONTS), "val": list(TRAIN_FONTS), "test": list(TEST_FONTS)},
                "characters": CHARACTERS, "clutter_characters": NEGATIVE_CHARACTERS}

    def readme(self, config: SceneConfig, counts: dict, table: str) -> str:
        return _readme(config, table)


# ------------------------------------------------------------------------------ the data set

def render_scene(config: SceneGlyphsConfig, side: str, index: int) -> tuple[np.ndarray, SceneRecord]:
    """Image ``index`` (from 1) of ``side`` ("trainval" or "test") as ``[H, W, 3] uint8`` and its record."""
    return _render_scene(SceneGlyphs(), config, side, index)


def generate_scene_glyphs(out: str | Path, num_train: int = 1000, num_test: int = 300, seed: int = 0,
                          image_size: int = 320, progress: bool = True, workers: int = 1) -> Path:
    """Generate scene-glyphs into ``out`` and return ``out``; see
    :func:`~nocdet.data.scenes.generate_scenes` for the layout, workers and what ``out`` may be."""
    config = SceneGlyphsConfig(num_train=num_train, num_test=num_test, seed=seed, image_size=image_size)
    return generate_scenes(SceneGlyphs(), config, out, progress=progress, workers=workers)


def read_records(root: str | Path) -> list[SceneRecord]:
    """The per-image records (fonts, styles and photos used) of a generated data set."""
    return read_scene_records(SceneGlyphs(), root)


def is_scene_glyphs_output(root: str | Path) -> bool:
    """Whether ``root`` holds a (maybe unfinished) output of this generator."""
    return is_output_of(root, GENERATOR)


def _readme(config: SceneConfig, rows: str) -> str:
    classes = ", ".join(f'"{name}" ({char})' if name != char else f'"{name}"' for name, char in CHARACTERS.items())
    return f"""# scene-glyphs

A detection data set generated by nocdet ({GENERATOR} {GENERATOR_VERSION}, seed {config.seed},
image size {config.image_size}): letters and symbols rendered from the fonts installed with
matplotlib, pasted into crops of real photographs bundled with scikit-image, scikit-learn and
matplotlib. Classes: {classes}. Test images use font faces and photographs that no train or val
image uses.

Regenerate with
`nocdet data make scene-glyphs --out DIR --train {config.num_train} --test {config.num_test} --seed {config.seed}`.

| split | images | objects | difficult |
| --- | --- | --- | --- |
{rows}

Layout: PASCAL VOC (`JPEGImages/`, `Annotations/` with `<difficult>`, `ImageSets/Main/`) and
COCO (`annotations/instances_<split>.json`, difficult objects marked `"difficult": 1`).
`similarity_groups.json` lists the classes that count as similar in the error diagnosis;
`records.jsonl` gives, per image, the photograph and per object the font, style, rotation, ink
height, visible fraction and whether the image border cuts it. An object is difficult when its
ink is under {config.tiny_height} px tall or less than {config.min_visible:.0%} of it is visible
(hidden or outside the image).

Sources: DejaVu fonts (Bitstream Vera licence), STIX fonts (SIL Open Font License) and the
BaKoMa Computer Modern fonts, as installed with matplotlib; photographs from `skimage.data`,
`sklearn.datasets.load_sample_image` and matplotlib's sample data, under their own licences.
"""
