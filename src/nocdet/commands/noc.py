"""``nocdet noc SPEC --input CxMxM``: describe a NoC (layers, output shapes, parameters, MACs)."""
from __future__ import annotations

import argparse
import json
import re

from nocdet.errors import ConfigError

NAME = "noc"
HELP = "describe a NoC architecture: its layers, output shapes, parameters and multiply-adds per RoI"

__all__ = ["NAME", "HELP", "add_arguments", "run", "parse_input_shape", "format_table"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", metavar="SPEC",
                        help='NoC string in the paper\'s notation, e.g. "c256-mo-c256-f4096-f4096-f21" '
                             'or "res5a,5b,5c, fcn+1" (the comma form may be left unquoted)')
    parser.add_argument("--input", required=True, metavar="CxMxM",
                        help="RoI-pooled input per region, e.g. 256x6x6 (ZF), 512x7x7 (VGG-16), "
                             "1024x14x14 (ResNet res4 for res5a,5b,5c)")
    parser.add_argument("--classes", type=int, metavar="N",
                        help="number of object classes (without background): resolves fn+1, checks f<N>")
    parser.add_argument("--box-regression", action="store_true",
                        help="include the sibling fc layer of class-specific box deltas")
    parser.add_argument("--stage-stride", type=int, choices=(1, 2), default=2,
                        help="2: res5a halves the pooled map (Detectron C4, pool 14x14); 1: keeps it")
    parser.add_argument("--json", action="store_true",
                        help='print {"layers": [...], "params": int, "macs_per_roi": int, ...}')


def parse_input_shape(text: str) -> tuple[int, int]:
    """``"256x6x6"`` -> ``(256, 6)``: channels and the side of the square pooled map."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"--input {text!r}: expected CxMxM, e.g. 256x6x6")
    c, h, w = (int(v) for v in m.groups())
    if h != w:
        raise ConfigError(f"--input {text!r}: RoI pooling gives square m x m maps, got {h}x{w}")
    if c < 1 or h < 1:
        raise ConfigError(f"--input {text!r}: channels and size must be at least 1")
    return c, h


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def format_table(info: dict) -> str:
    """The description as an aligned text table with totals."""
    rows = [("layer", "output", "pathways", "params", "MACs/RoI")]
    rows += [(r["name"], _shape(r["output_shape"]), str(r["pathways"]), f"{r['params']:,}",
              f"{r['macs']:,}") for r in info["layers"]]
    rows.append(("total", "", "", f"{info['params']:,}", f"{info['macs_per_roi']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [f"NoC {info['spec']} on {_shape(info['input_shape'])} RoIs"]
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("  ".join("-" * w for w in widths))
        cells = [cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells))
    lines.append(f"{_human(info['params'])} parameters, {_human(info['macs_per_roi'])} multiply-adds per RoI; "
                 f"features for SVMs: {info['feature_dim']}-d; classifier: {info['num_outputs']} outputs")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from nocdet.noc.head import describe_noc

    in_channels, roi_size = parse_input_shape(args.input)
    info = describe_noc(" ".join(args.spec), in_channels, roi_size, num_classes=args.classes,
                        box_regression=args.box_regression, stage_stride=args.stage_stride)
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0
