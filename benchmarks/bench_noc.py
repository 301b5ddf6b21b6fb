"""NoC forward speed against the machine's dense matmul rate, and the cost of pyramid pooling.

Measures, side by side in one run (interleaved rounds, so that load from other processes hits
every case alike; the median over rounds is kept):

* the FLOP rate of one dense fp32 ``torch.mm`` (4096 x 4096 by 4096 x 4096): the machine's peak;
* the inference forward (fp32, ``torch.inference_mode``) of three NoCs over R RoIs of 256x6x6
  (ZF's pooled conv5): the MLP ``f4096-f4096-f21``, the conv ``c256-c256-f4096-f4096-f21`` and
  the maxout ``c256-mo-c256-f4096-f4096-f21``, also with channels_last inputs and weights;
  target: each reaches >= 70% of the matmul rate;
* the maxout NoC's time over its non-maxout twin (the conv NoC); target <= 2.1x;
* scale selection plus RoI pooling of R boxes over 5 scales of a 500x375 image (shorter side
  480, 576, 688, 864, 1200, stride 16, 256 channels): one scale per box (``select_scale`` +
  ``pool_pyramid``) against the single-scale NoCs, two adjacent scales per box
  (``select_adjacent_pair`` + ``pool_pyramid_pair``) against the maxout NoC; target < 10%.
  A plain ``roi_pool`` call per level is timed beside them for reference.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add).
Run ``python benchmarks/bench_noc.py [--quick] [--device cuda]``; ``--quick`` is a smoke run
(fewer RoIs, a smaller matmul, fewer rounds) whose numbers are not the targets' measurement.
See benchmarks/README.md for the output.
"""
from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Callable

import torch
from torchvision.ops import roi_pool

from harness import count_flops, machine_line, median, synchronizer, time_interleaved, verdict
from nocdet.devices import require_device
from nocdet.errors import ConfigError
from nocdet.features.pyramid import (
    pool_pyramid,
    pool_pyramid_pair,
    pyramid_scale_factors,
    select_adjacent_pair,
    select_scale,
)
from nocdet.noc.head import NoCHead

SPECS = {
    "mlp": "f4096-f4096-f21",
    "conv": "c256-c256-f4096-f4096-f21",
    "maxout": "c256-mo-c256-f4096-f4096-f21",
}
SCALES = (480, 576, 688, 864, 1200)
IMAGE_W, IMAGE_H = 500, 375
CHANNELS, ROI_SIZE, STRIDE = 256, 6, 16
RATE_TARGET, MAXOUT_TARGET, POOL_TARGET = 0.70, 2.1, 0.10


def synthetic_proposals(n: int, generator: torch.Generator) -> torch.Tensor:
    """Boxes like Selective Search's: log-uniform sides from 20 px to the image size, inside it."""
    limit = torch.tensor([IMAGE_W, IMAGE_H], dtype=torch.float32)
    sides = 20 * torch.exp(torch.rand(n, 2, generator=generator) * torch.log(limit / 20))
    corner = torch.rand(n, 2, generator=generator) * (limit - sides)
    return torch.cat([corner, corner + sides], dim=1)


def build_cases(rois: int, mm_size: int, generator: torch.Generator,
                device: torch.device) -> dict[str, Callable[[], object]]:
    """Every timed case as a closure over its prepared inputs (made on the CPU, moved to device)."""
    a = torch.randn(mm_size, mm_size, generator=generator).to(device)
    b = torch.randn(mm_size, mm_size, generator=generator).to(device)
    cases: dict[str, Callable[[], object]] = {f"mm {mm_size}": lambda: torch.mm(a, b)}

    x1 = torch.randn(rois, CHANNELS, ROI_SIZE, ROI_SIZE, generator=generator).to(device)
    x2 = torch.randn(rois, CHANNELS, ROI_SIZE, ROI_SIZE, generator=generator).to(device)
    for name, spec in SPECS.items():
        torch.manual_seed(0)
        head = NoCHead(spec, CHANNELS, ROI_SIZE).eval().to(device)
        inputs = (x1, x2) if head.is_maxout else x1
        cases[name] = lambda head=head, inputs=inputs: head(inputs)
        if name != "mlp":
            cl = torch.channels_last
            head_cl = NoCHead(spec, CHANNELS, ROI_SIZE).eval().to(device, memory_format=cl)
            inputs_cl = tuple(x.contiguous(memory_format=cl) for x in inputs) if head.is_maxout \
                else inputs.contiguous(memory_format=cl)
            cases[f"{name} channels_last"] = lambda head=head_cl, inputs=inputs_cl: head(inputs)

    factors = pyramid_scale_factors(IMAGE_W, IMAGE_H, SCALES)
    features = [torch.randn(1, CHANNELS, -(-round(IMAGE_H * f) // STRIDE), -(-round(IMAGE_W * f) // STRIDE),
                            generator=generator).relu().to(device) for f in factors]
    boxes = synthetic_proposals(rois, generator).to(device)

    def pool_one_scale():
        levels = select_scale(boxes, factors)
        return pool_pyramid(features, [boxes], [levels], [factors], 1 / STRIDE, ROI_SIZE)

    def pool_two_scales():
        pairs = select_adjacent_pair(boxes, factors)
        return pool_pyramid_pair(features, [boxes], [pairs], [factors], 1 / STRIDE, ROI_SIZE)

    def pool_one_scale_plain():  # reference: one torchvision call per level, no chunks or threads
        levels = select_scale(boxes, factors)
        for level, (fmap, f) in enumerate(zip(features, factors)):
            chosen = boxes[levels == level] * f
            roi_pool(fmap, [chosen], ROI_SIZE, 1 / STRIDE)

    cases["pool 1 scale"] = pool_one_scale
    cases["pool 1 scale, plain"] = pool_one_scale_plain
    cases["pool 2 scales"] = pool_two_scales
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 250 RoIs, mm 2048, 1+2 rounds")
    parser.add_argument("--rois", type=int, help="RoIs per forward (default 2000)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (the targets' setting) or cuda")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the CPUs this process may run on)")
    args = parser.parse_args(argv)
    try:  # a clear refusal, not a traceback, where the device is missing
        require_device(args.device, "--device")
    except ConfigError as err:
        parser.error(str(err))
    rois = args.rois or (250 if args.quick else 2000)
    repeats = args.repeats or (2 if args.quick else 5)
    mm_size = 2048 if args.quick else 4096

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 means fp32: no TF32 in cuDNN convolutions (matmuls have none by default)
        torch.backends.cudnn.allow_tf32 = False
    print(f"== NoC benchmark{' (quick)' if args.quick else ''}: "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(machine_line())
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"RoIs: {rois} of {CHANNELS}x{ROI_SIZE}x{ROI_SIZE}; rounds: {args.warmup} warm-up + {repeats} timed")

    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        cases = build_cases(rois, mm_size, generator, device)
        flops = {name: count_flops(fn) for name, fn in cases.items() if not name.startswith("pool")}
        seconds = {name: median(t) for name, t in
                   time_interleaved(cases, args.warmup, repeats, synchronizer(device)).items()}
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    mm_name = f"mm {mm_size}"
    peak = flops[mm_name] / seconds[mm_name]
    print(f"\n{'case':<24}{'GFLOP':>9}{'median ms':>12}{'GFLOP/s':>10}{'of mm':>8}")
    for name, s in seconds.items():
        if name in flops:
            rate = flops[name] / s
            mark = "" if name == mm_name else f"  {verdict(rate / peak >= RATE_TARGET)} (>= {RATE_TARGET:.0%})"
            print(f"{name:<24}{flops[name] / 1e9:>9.1f}{s * 1e3:>12.1f}{rate / 1e9:>10.1f}{rate / peak:>8.0%}{mark}")
        else:
            print(f"{name:<24}{'':>9}{s * 1e3:>12.1f}")

    print()
    for suffix in ("", " channels_last"):
        ratio = seconds["maxout" + suffix] / seconds["conv" + suffix]
        print(f"maxout / conv time{suffix}: {ratio:.2f}x  {verdict(ratio <= MAXOUT_TARGET)} (<= {MAXOUT_TARGET}x)")
    for pool, noc in (("pool 1 scale", "mlp"), ("pool 1 scale", "conv"), ("pool 2 scales", "maxout")):
        ratio = seconds[pool] / seconds[noc]
        print(f"{pool} / {noc} forward: {ratio:.1%}  {verdict(ratio < POOL_TARGET)} (< {POOL_TARGET:.0%})")
    for name in ("conv", "maxout"):  # the detectors' default layout is NCHW
        ratio = seconds[f"{name} channels_last"] / seconds[name]
        print(f"{name} channels_last / default (NCHW) time: {ratio:.2f}x  "
              f"{verdict(ratio >= 1.0)} (default is the faster layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
