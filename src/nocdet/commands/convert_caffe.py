"""``nocdet convert-caffe MODEL.caffemodel --arch zf --out zf.pt``: a Caffe ZF model as nocdet weights.

Checks that the model is the py-faster-rcnn ZF geometry nocdet builds (refusing SPPnet's ZF and any
model whose geometry it cannot read), flips conv1's input channels from Caffe's BGR to RGB and
records the input convention in the file; see :mod:`nocdet.features.caffe_zf` and docs/zf_weights.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "convert-caffe"
HELP = "convert a Caffe ZF .caffemodel (py-faster-rcnn's ZF.v2) into a nocdet weights file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the .caffemodel file, e.g. ZF.v2.caffemodel")
    parser.add_argument("--arch", default="zf", choices=["zf"], help="the nocdet backbone to convert for (default zf)")
    parser.add_argument("--out", type=Path, required=True, help="the weights file to write, e.g. data/weights/zf.pt")


def run(args: argparse.Namespace) -> int:
    from nocdet.features.caffe_zf import convert_caffemodel

    conversion = convert_caffemodel(args.model, args.out, args.arch)
    print(f"{args.out}: {conversion.summary()}")
    if not conversion.record["fc67"]:
        print("note: the model has no fc6/fc7, so the fine-tuned ('finetune') NoC rows cannot start from it")
    return 0
