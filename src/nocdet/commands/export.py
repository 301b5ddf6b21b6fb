"""``nocdet export --checkpoint model.pt --format onnx --out model.onnx [--opset N]``.

One ONNX graph from image and proposals to per-class scores and boxes (see :mod:`nocdet.export`
for its inputs, outputs and what stays outside: Selective Search, NMS).
"""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "export a trained model.pt as one ONNX graph: image + proposals -> per-class scores and boxes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nocdet.export_opsets import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    parser.add_argument("--checkpoint", type=Path, required=True, help="model.pt of a nocdet train run")
    parser.add_argument("--format", default="onnx", help="export format (only 'onnx')")
    parser.add_argument("--out", type=Path, required=True, help="output file, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {MIN_OPSET} (the antialiased resize) to {MAX_OPSET} (default {DEFAULT_OPSET})")


def run(args: argparse.Namespace) -> int:
    from nocdet.errors import ConfigError
    from nocdet.export import export_onnx, onnx_metadata, onnx_session
    from nocdet.io import output_file

    output_file(args.out)
    if args.out.exists() and (args.out.suffix != ".onnx" or args.out.resolve() == args.checkpoint.resolve()):
        raise ConfigError(f"--out {args.out} exists and is not an .onnx file: export replaces only .onnx files "
                          "(remove it or give another name)")
    path = export_onnx(args.checkpoint, args.out, opset=args.opset, format=args.format)
    meta = onnx_metadata(onnx_session(path))
    print(f"{path}: inputs image [3, H, W] float32 RGB in [0, 1], proposals [R, 4] float32 (x1, y1, x2, y2); "
          f"outputs scores [R, {len(meta['classes'])}] ({meta['score']}), boxes [R, {len(meta['classes'])}, 4]; "
          f"NoC {meta['noc']}")
    return 0
