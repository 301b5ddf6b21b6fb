"""The record a ``nocdet convert-caffe`` file carries, and the weights loader's check of it.

Kept apart from the converter (:mod:`nocdet.features.caffe_zf`) so that the weights loader can check
a converted file without importing the backbones it builds.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nocdet.errors import DataError

CONVERSION_KEY = "caffe_conversion"  # the record a `nocdet convert-caffe` file holds next to "backbone"
FORMAT = "nocdet-caffe-zf/1"
GEOMETRY = "py-faster-rcnn"
#: the network input is INPUT_SCALE * (RGB in [0, 1]) - PIXEL_MEAN_RGB: Caffe's 0-255 scale and
#: py-faster-rcnn's PIXEL_MEANS (BGR 102.9801, 115.9465, 122.7717) in RGB order
INPUT_SCALE = 255.0
PIXEL_MEAN_RGB = (122.7717, 115.9465, 102.9801)


def conversion_normalisation(record: Mapping[str, object], arch: str | None, source: str | Path
                             ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone (mean, std) on RGB in [0, 1] that a ``convert-caffe`` ``record`` prescribes.

    Raises DataError naming ``source`` when the record is not this converter's, is for another
    backbone than ``arch``, or says another channel order or geometry than nocdet's ZF.
    """
    problems = []
    if record.get("format") != FORMAT:
        problems.append(f"format {record.get('format')!r} (this nocdet reads {FORMAT!r})")
    if record.get("arch") != arch:
        problems.append(f"converted for backbone {record.get('arch')!r}, loaded into {arch!r}")
    if record.get("channel_order") != "RGB":
        problems.append(f"channel order {record.get('channel_order')!r} (nocdet feeds RGB)")
    if record.get("geometry") != GEOMETRY:
        problems.append(f"geometry {record.get('geometry')!r} (nocdet's ZF is {GEOMETRY!r})")
    scale, mean = record.get("input_scale"), record.get("pixel_mean_rgb")
    if not isinstance(scale, (int, float)) or scale <= 0 or not isinstance(mean, (list, tuple)) or len(mean) != 3:
        problems.append(f"no usable input convention (input_scale {scale!r}, pixel_mean_rgb {mean!r})")
    if problems:
        raise DataError(f"the '{CONVERSION_KEY}' record of this weights file does not fit: " + "; ".join(problems)
                        + ". Convert the caffemodel again with `nocdet convert-caffe` (docs/zf_weights.md)",
                        path=source)
    return tuple(float(m) / float(scale) for m in mean), (1.0 / float(scale),) * 3
