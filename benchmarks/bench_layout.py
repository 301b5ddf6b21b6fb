"""Memory layout and BatchNorm folding: is each default the faster one on this machine?

Measures, side by side in one run (interleaved rounds; the median over rounds is kept), each case
in its default memory layout and in the other one:

* every backbone of the registry (random weights, the frozen setting's trunk: EfficientNet-Lite to
  its stride-16 stage 6, ResNet-50 to res4, GoogLeNet to inc4d) on one image, inference; the
  default is channels_last (``Backbone.use_channels_last``);
* the end-to-end trunks (small-resnet, ResNet-50 c4, EfficientNet-Lite0 c4) in training, forward
  and backward, on one image;
* the NoC heads of the demo (``c64-mo-c64-f512-f512-f11`` on 112x7x7, Lite0's pooled map) and of
  the paper (``c256-c256-f4096-f4096-f21`` on 256x6x6): a training step of 128 RoIs and an
  inference forward over 600 RoIs; the NoC's default is ``NoCHead.use_channels_last``;

and the trunks with frozen BatchNorm (ResNet-50 c4 in inference and training, GoogLeNet c4 in
inference; ``--quick``: small-resnet with ``frozen_bn``) with each BatchNorm folded into its conv
(the default, ``Backbone.use_folded_batchnorm``) and as a separate module.

A case PASSes when its default layout is not slower than the other one. Outputs of the two layouts
are compared too (largest difference relative to the largest output). Run
``python benchmarks/bench_layout.py [--quick]``; ``--quick`` is a smoke run (a smaller image, two
backbones, fewer rounds) whose numbers are not the measurement.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from harness import machine_line, median, time_interleaved, verdict
from nocdet.features.registry import build_backbone
from nocdet.noc.head import NoCHead

#: name -> (registry name, options) of the frozen setting's trunks
BACKBONES = {
    "small-zf": ("small-zf", {}),
    "zf": ("zf", {}),
    "vgg16": ("vgg16", {}),
    "resnet50 c4": ("resnet50", {"upto": "res4"}),
    "googlenet c4": ("googlenet", {"upto": "inc4d"}),
    "efficientnet-lite0": ("efficientnet-lite0", {"upto": "eff6"}),
    "efficientnet-lite2": ("efficientnet-lite2", {"upto": "eff6"}),
}
TRAINED_TRUNKS = ("small-resnet", "resnet50 c4", "efficientnet-lite0")
QUICK_BACKBONES = ("small-zf", "efficientnet-lite0")
#: BatchNorm folding cases: name -> (registry name, options, modes)
FOLDED = {
    "resnet50 c4": ("resnet50", {"upto": "res4"}, ("infer", "train")),
    "googlenet c4": ("googlenet", {"upto": "inc4d"}, ("infer",)),
}
QUICK_FOLDED = {"small-resnet frozen BN": ("small-resnet", {"frozen_bn": True}, ("infer", "train"))}
#: name -> (spec, channels, roi size)
NOCS = {
    "demo NoC": ("c64-mo-c64-f512-f512-f11", 112, 7),
    "conv NoC": ("c256-c256-f4096-f4096-f21", 256, 6),
}


def _layouts(module: nn.Module, flip: Callable[[nn.Module], nn.Module]) -> tuple[nn.Module, nn.Module]:
    """``(default, other)``: the module as built and a copy switched to the other layout."""
    return module, flip(copy.deepcopy(module))


def backbone_cases(names: tuple[str, ...], size: tuple[int, int], train_names: tuple[str, ...],
                   generator: torch.Generator) -> tuple[dict[str, Callable[[], Tensor]], dict[str, str]]:
    """Timed closures ``"<case> default"`` / ``"<case> other"`` and, per case, its default's name."""
    image = torch.randn(1, 3, *size, generator=generator)
    cases: dict[str, Callable[[], Tensor]] = {}
    defaults: dict[str, str] = {}
    specs = {**BACKBONES, "small-resnet": ("small-resnet", {})}
    for name in dict.fromkeys(names + train_names):
        registry_name, options = specs[name]
        built = build_backbone(registry_name, "random", **options)
        default, other = _layouts(built, lambda b: b.use_channels_last(not b.channels_last))
        modes = (("infer",) if name in names else ()) + (("train",) if name in train_names else ())
        _add_cases(cases, defaults, name, modes, default, other, image, "channels_last" if built.channels_last
                   else "NCHW")
    return cases, defaults


def folding_cases(specs: dict[str, tuple[str, dict, tuple[str, ...]]], size: tuple[int, int],
                  generator: torch.Generator) -> tuple[dict[str, Callable[[], Tensor]], dict[str, str]]:
    """As :func:`backbone_cases`: each trunk with its frozen BatchNorms folded and separate."""
    image = torch.randn(1, 3, *size, generator=generator)
    cases: dict[str, Callable[[], Tensor]] = {}
    defaults: dict[str, str] = {}
    for name, (registry_name, options, modes) in specs.items():
        built = build_backbone(registry_name, "random", **options)
        default, other = _layouts(built, lambda b: b.use_folded_batchnorm(not b.folded_batchnorm))
        _add_cases(cases, defaults, f"{name}, BN", modes, default, other, image,
                   "folded" if built.folded_batchnorm else "separate")
    return cases, defaults


def _add_cases(cases: dict[str, Callable[[], Tensor]], defaults: dict[str, str], name: str, modes: tuple[str, ...],
               default: nn.Module, other: nn.Module, image: Tensor, label: str) -> None:
    for mode in modes:
        case = f"{name} {mode}"
        defaults[case] = label
        for side, net in (("default", default), ("other", other)):
            cases[f"{case} {side}"] = _infer(net.eval(), image) if mode == "infer" else _train(net.train(), image)


def noc_cases(generator: torch.Generator, train_rois: int, infer_rois: int
              ) -> tuple[dict[str, Callable[[], Tensor]], dict[str, str]]:
    """As :func:`backbone_cases`, for the NoC heads of :data:`NOCS`."""
    cases: dict[str, Callable[[], Tensor]] = {}
    defaults: dict[str, str] = {}
    for name, (spec, channels, size) in NOCS.items():
        torch.manual_seed(0)
        head = NoCHead(spec, channels, size)
        default, other = _layouts(head, lambda h: h.use_channels_last(not h.channels_last))
        for mode, rois in (("train", train_rois), ("infer", infer_rois)):
            x = [torch.randn(rois, channels, size, size, generator=generator) for _ in range(head.num_pathways)]
            inputs = x if head.is_maxout else x[0]
            case = f"{name} {mode}"
            defaults[case] = "channels_last" if head.channels_last else "NCHW"
            for side, net in (("default", default), ("other", other)):
                cases[f"{case} {side}"] = (_infer(net.eval(), inputs, logits=True) if mode == "infer"
                                           else _train(net.train(), inputs, logits=True))
    return cases, defaults


def _infer(net: nn.Module, inputs: object, logits: bool = False) -> Callable[[], Tensor]:
    def run() -> Tensor:
        with torch.inference_mode():
            out = net(inputs)
        return out.logits if logits else out
    return run


def _train(net: nn.Module, inputs: object, logits: bool = False) -> Callable[[], Tensor]:
    def run() -> Tensor:
        net.zero_grad(set_to_none=True)
        out = net(inputs)
        out = out.logits if logits else out
        out.square().mean().backward()
        return out.detach()
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 160x224 image, two backbones, 1+2 rounds")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the CPUs this process may run on)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    size = (160, 224) if args.quick else (375, 500)
    torch.set_num_threads(args.threads)
    print(f"== memory layout benchmark{' (quick)' if args.quick else ''}: "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(machine_line())
    print(f"image {size[0]}x{size[1]}; rounds: 1 warm-up + {repeats} timed")

    generator = torch.Generator().manual_seed(0)
    names = QUICK_BACKBONES if args.quick else tuple(BACKBONES)
    trained = ("efficientnet-lite0",) if args.quick else TRAINED_TRUNKS
    cases, defaults = backbone_cases(names, size, trained, generator)
    for more, more_defaults in (noc_cases(generator, 128, 150 if args.quick else 600),
                                folding_cases(QUICK_FOLDED if args.quick else FOLDED, size, generator)):
        cases.update(more)
        defaults.update(more_defaults)
    outputs = {name: fn() for name, fn in cases.items()}
    seconds = {name: median(t) for name, t in time_interleaved(cases, 1, repeats, lambda: None).items()}
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")

    print(f"{'case':<30}{'default':>15}{'ms':>9}{'other ms':>10}{'default/other':>15}{'max rel diff':>14}")
    for case, label in defaults.items():
        mine, theirs = seconds[f"{case} default"], seconds[f"{case} other"]
        a, b = outputs[f"{case} default"], outputs[f"{case} other"]
        diff = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
        print(f"{case:<30}{label:>15}{mine * 1e3:>9.1f}{theirs * 1e3:>10.1f}{mine / theirs:>14.2f}x"
              f"{diff:>14.1e}  {verdict(mine <= theirs)} (the default is the faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
