"""Speed of the end-to-end Faster R-CNN with a NoC (paper Sec. 4), on random weights.

Measures, side by side in one run (cases interleaved round by round, the order reversed every
other round, medians kept):

1. **ours vs torchvision**: ``NoCFasterRCNN`` with the 3fc MLP NoC against torchvision's own
   ``FasterRCNN`` assembled from the same parts: the same trunk (a copy of our ``Backbone`` and of
   the RPN head, same weights), the same anchors and RPN settings, the same transform sizes, and
   ``TwoMLPHead`` + ``FastRCNNPredictor`` holding our NoC's fc weights. Each side runs in its own
   defaults: ours channels-last with frozen BatchNorm folded into the convs, torchvision's NCHW
   with separate BatchNorm modules, as its models run unless converted. torchvision only pools
   with ``MultiScaleRoIAlign``, so our side uses RoIAlign too (same output size, sampling ratio 2,
   ``aligned=False``). Both give the same detections (checked). Inference images/s and training
   iterations/s, ratio ours/torchvision (target >= 1.25, issue 15), for the scene-digits twin
   (``table8_atrous_3fc``, small-resnet a trous, 320 px) and ResNet-50 a trous at the same size.
2. **FLOP rate**: the whole detector's eval forward (FLOPs counted by ``FlopCounterMode``, time
   measured separately) against one dense fp32 ``torch.mm``: ResNet-50 C4 with the conv NoC
   ``res5a,5b,5c, fc81`` at 600 px (target >= 50%) and the scene-digits C4 twin.
3. **the scene-digits twins** (``configs/e2e/scene_digits/table8_*.yaml``): seconds per training
   iteration split by stage (transform, trunk, RPN, RoI sampling, RoI pooling, NoC, losses,
   backward, SGD step), seconds per detected image, and how many iterations fit in 15 minutes.

Training iterations use SGD with learning rate 0 (the full update is computed, the weights stay),
so every round sees the same proposals. Images are random noise with random boxes: timings do not
depend on values. Run ``python benchmarks/bench_e2e.py [--quick] [--rounds N] [--threads N]
[--device cuda] [--only compare flops twins] [--set KEY=VALUE ...]``; see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import count_flops, machine_line, median, synchronizer, time_interleaved, verdict  # noqa: E402

from nocdet.devices import has_native_bf16, require_device  # noqa: E402
from nocdet.e2e.model import NoCFasterRCNN, build_e2e_model  # noqa: E402
from nocdet.e2e.roi_heads import BOX_WEIGHTS  # noqa: E402
from nocdet.e2e.solver import build_optimizer  # noqa: E402
from nocdet.errors import ConfigError  # noqa: E402
from nocdet.experiment import ExperimentConfig, load_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TWIN_DIR = ROOT / "configs" / "e2e" / "scene_digits"
COMPARE_TWIN = TWIN_DIR / "table8_atrous_3fc.yaml"
C4_TWIN = TWIN_DIR / "table8_conv_noc.yaml"
PAPER_C4 = ROOT / "configs" / "e2e" / "paper" / "table8_resnet101_conv_noc.yaml"
SD_CLASSES, COCO_CLASSES = 10, 80
SD_IMAGE = (320, 240)  # W x H of a scene-digits image
COCO_IMAGE = (800, 600)  # a 4:3 COCO image; shorter side 600 as Faster R-CNN resizes it
RATIO_TARGET, RATE_TARGET = 1.25, 0.50
BUDGET_SECONDS = 15 * 60
STAGES = ("transform", "trunk", "RPN", "RoI sampling", "RoI pooling", "NoC", "losses", "backward", "SGD step")

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


# ----------------------------------------------------------------------------- inputs and timing

def synthetic_batch(n: int, size: tuple[int, int], num_classes: int, generator: torch.Generator,
                    device: torch.device) -> Batch:
    """``n`` noise images of ``size`` (W, H), each with 1-6 boxes of 16 px to half the image side."""
    width, height = size
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, height, width, generator=generator).to(device))
        k = int(torch.randint(1, 7, (1,), generator=generator))
        limit = torch.tensor([width, height], dtype=torch.float32)
        sides = 16 + torch.rand(k, 2, generator=generator) * (limit / 2 - 16)
        corner = torch.rand(k, 2, generator=generator) * (limit - sides)
        boxes = torch.cat([corner, corner + sides], dim=1)
        labels = torch.randint(1, num_classes + 1, (k,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def zero_lr_sgd(model: nn.Module, solver=None) -> torch.optim.Optimizer:
    """The trainer's optimizer (or plain SGD with momentum), learning rate 0: a full update whose
    result leaves the weights, hence the proposals of later rounds, unchanged."""
    if solver is not None:
        optimizer = build_optimizer(model, solver)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    return optimizer


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, seed: int,
               autocast_to: torch.dtype | None = None) -> None:
    """One training iteration: losses, backward, SGD step (RoI/anchor sampling seeded); the
    forward autocast to ``autocast_to`` as the trainer does for ``solver.amp`` (None: fp32)."""
    model.train()
    torch.manual_seed(seed)
    device = batch[0][0].device.type
    with torch.autocast(device, dtype=autocast_to, enabled=autocast_to is not None):
        losses = model(*batch)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


def detect(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    model.eval()
    with torch.inference_mode():
        return model(images)


def build_model(cfg: ExperimentConfig, num_classes: int, device: torch.device) -> NoCFasterRCNN:
    """The config's detector with random weights (``cfg.backbone.weights`` is not read)."""
    torch.manual_seed(0)
    return build_e2e_model(cfg, num_classes, pretrained=False).to(device)


# ----------------------------------------------------------------------------- 1. ours vs torchvision

def torchvision_twin(ours: NoCFasterRCNN) -> FasterRCNN:
    """torchvision's FasterRCNN with the parts and settings of ``ours`` (an fc-fc-cls NoC on
    RoIAlign): copies of the trunk and RPN head, TwoMLPHead + FastRCNNPredictor with the NoC's
    weights. Refuses a model it cannot mirror exactly."""
    cfg = ours.config
    noc, pooling = ours.roi_heads.noc, ours.roi_heads.pooling
    kinds = [layer.kind for layer in noc.spec.layers]
    if kinds != ["fc", "fc", "fc"]:
        raise ValueError(f"torchvision's TwoMLPHead mirrors an fc, fc, fcn+1 NoC, not {noc.spec}")
    if pooling.pool != "align" or pooling.aligned:
        raise ValueError("torchvision pools with RoIAlign (aligned=False): build ours with roi.pool=align")
    s, r, t = cfg.sampling, cfg.rpn, cfg.test
    if s.bg_iou_lo != 0.0 or s.bg_iou_hi != s.fg_iou:
        raise ValueError("torchvision's RoI sampling has background IoU [0, fg_iou): set bg_iou_lo=0, bg_iou_hi=fg_iou")
    fc6, fc7 = (m for block in noc.blocks for m in block.modules() if isinstance(m, nn.Linear))
    box_head = TwoMLPHead(fc6.in_features, fc6.out_features)
    predictor = FastRCNNPredictor(fc7.out_features, noc.num_outputs)
    with torch.no_grad():
        for dst, src in ((box_head.fc6, fc6), (box_head.fc7, fc7), (predictor.cls_score, noc.cls_score),
                         (predictor.bbox_pred, noc.bbox_pred)):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    backbone = ours.backbone
    # torchvision's models run NCHW with each BatchNorm a module of its own unless converted
    trunk = copy.deepcopy(backbone).use_channels_last(False).use_folded_batchnorm(False)
    model = FasterRCNN(
        trunk, min_size=tuple(cfg.transform.min_size), max_size=cfg.transform.max_size,
        image_mean=list(backbone.mean), image_std=list(backbone.std),
        rpn_anchor_generator=AnchorGenerator((tuple(r.anchor_sizes),), (tuple(r.aspect_ratios),)),
        rpn_head=copy.deepcopy(ours.rpn.head),
        rpn_pre_nms_top_n_train=r.pre_nms_top_n_train, rpn_pre_nms_top_n_test=r.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=r.post_nms_top_n_train, rpn_post_nms_top_n_test=r.post_nms_top_n_test,
        rpn_nms_thresh=r.nms_iou, rpn_fg_iou_thresh=r.fg_iou, rpn_bg_iou_thresh=r.bg_iou,
        rpn_batch_size_per_image=r.batch_size_per_image, rpn_positive_fraction=r.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(["0"], pooling.size, pooling.sampling_ratio),
        box_head=box_head, box_predictor=predictor,
        box_score_thresh=t.score_threshold, box_nms_thresh=t.nms_iou, box_detections_per_img=t.max_detections,
        box_fg_iou_thresh=s.fg_iou, box_bg_iou_thresh=s.bg_iou_hi,
        box_batch_size_per_image=s.rois_per_image, box_positive_fraction=s.fg_fraction,
        bbox_reg_weights=BOX_WEIGHTS)
    return model.to(next(ours.parameters()).device)


def detection_gap(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> tuple[float, float] | None:
    """Largest absolute difference of boxes (pixels) and of scores; None when labels or counts differ."""
    gaps = {"boxes": 0.0, "scores": 0.0}
    for x, y in zip(a, b, strict=True):
        if x["labels"].shape != y["labels"].shape or not torch.equal(x["labels"], y["labels"]):
            return None
        for key in gaps:
            if x[key].numel():
                gaps[key] = max(gaps[key], float((x[key] - y[key]).abs().max()))
    return gaps["boxes"], gaps["scores"]


def same_detections(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> str:
    """"yes" when labels and counts agree, boxes to 0.1 px and scores to 1e-3 (float rounding
    of two memory layouts, through a random-weight ResNet-50), else "no", with the gaps."""
    gap = detection_gap(a, b)
    if gap is None:
        return "no (labels or counts differ)"
    same = gap[0] < 0.1 and gap[1] < 1e-3
    return f"{'yes' if same else 'no'} (max |diff| boxes {gap[0]:.1e} px, scores {gap[1]:.1e})"


def compare_pairs(quick: bool, device: torch.device) -> list[tuple[str, NoCFasterRCNN, FasterRCNN, Batch]]:
    """(name, ours, torchvision, batch of 2 images) for the scene-digits twin and ResNet-50."""
    align = ["roi.pool=align", "roi.sampling_ratio=2", "roi.aligned=false"]
    generator = torch.Generator().manual_seed(1)
    pairs = []
    sd = load_experiment(COMPARE_TWIN, align)
    r50_size = 224 if quick else 320
    r50 = load_experiment(COMPARE_TWIN, align + ["backbone.name=resnet50",
                                                 # the twin's options without small-resnet's width
                                                 "backbone.options={frozen_stages: 1, frozen_bn: true}",
                                                 "noc.spec=fc1024, fc1024, fcn+1",
                                                 f"transform.min_size=[{r50_size}]"])
    for name, cfg in ((f"scene-digits small-resnet a trous, fc512-fc512, {sd.transform.min_size[0]} px", sd),
                      (f"ResNet-50 a trous, fc1024-fc1024, {r50_size} px", r50)):
        ours = build_model(cfg, SD_CLASSES, device)
        pairs.append((name, ours, torchvision_twin(ours), synthetic_batch(2, SD_IMAGE, SD_CLASSES, generator, device)))
    return pairs


def run_compare(args: argparse.Namespace, device: torch.device, warmup: int, rounds: int) -> None:
    print("\n== 1. ours vs torchvision FasterRCNN (same trunk, RPN, sizes; TwoMLPHead + FastRCNNPredictor; "
          "RoIAlign 7x7 on both sides)")
    sync = synchronizer(device)
    bf16 = has_native_bf16(str(device))
    for name, ours, tv, batch in compare_pairs(args.quick, device):
        same = same_detections(detect(ours, batch[0]), detect(tv, batch[0]))
        models = {"ours": ours, "torchvision": tv}
        cases: dict[str, Callable[[], object]] = {}
        for side, model in models.items():
            seeds = iter(range(10**6))  # the n-th iteration of either side samples alike
            cases[f"{side} infer"] = lambda model=model: detect(model, batch[0])
            cases[f"{side} train"] = lambda model=model, optimizer=zero_lr_sgd(model), seeds=seeds: train_step(
                model, optimizer, batch, next(seeds))
        if bf16:  # the solver.amp lever: only where the CPU computes in bf16 natively
            cases["ours bf16 train"] = lambda optimizer=zero_lr_sgd(ours), seeds=iter(range(10**6)): train_step(
                ours, optimizer, batch, next(seeds), torch.bfloat16)
        per_round = time_interleaved(cases, warmup, rounds, sync)
        times = {k: median(v) for k, v in per_round.items()}
        print(f"\n{name}: batch of {len(batch[0])} images {batch[0][0].shape[2]}x{batch[0][0].shape[1]}; "
              f"same detections: {same}")
        print(f"{'':<14}{'infer img/s':>13}{'train it/s':>12}")
        for side in models:
            print(f"{side:<14}{len(batch[0]) / times[f'{side} infer']:>13.2f}{1 / times[f'{side} train']:>12.3f}")
        for what in ("infer", "train"):
            ratio = times[f"torchvision {what}"] / times[f"ours {what}"]
            rounds_ratios = [t / o for t, o in zip(per_round[f"torchvision {what}"], per_round[f"ours {what}"])]
            print(f"ours / torchvision {what} speed: {ratio:.3f}  {verdict(ratio >= RATIO_TARGET)} (>= {RATIO_TARGET}; "
                  f"rounds {min(rounds_ratios):.3f}-{max(rounds_ratios):.3f})")
        if bf16:
            ratio = times["torchvision train"] / times["ours bf16 train"]
            print(f"ours with solver.amp=bfloat16 / torchvision (fp32) train speed: {ratio:.3f}  "
                  f"{verdict(ratio >= RATIO_TARGET)} (>= {RATIO_TARGET}; its accuracy: benchmarks/RESULTS.md)")


# ----------------------------------------------------------------------------- 2. FLOP rate

def flop_models(quick: bool, device: torch.device) -> list[tuple[str, NoCFasterRCNN, list[Tensor], bool]]:
    """(name, model, images, has the target) for ResNet-50 C4 and the scene-digits C4 twin."""
    generator = torch.Generator().manual_seed(2)
    size = 320 if quick else 600
    rois = 100 if quick else 300
    r50 = load_experiment(PAPER_C4, ["backbone.name=resnet50", f"transform.min_size=[{size}]",
                                     f"rpn.post_nms_top_n_test={rois}"])
    width, height = COCO_IMAGE
    r50_images = synthetic_batch(1, (round(width * size / height), size), COCO_CLASSES, generator, device)[0]
    sd = load_experiment(C4_TWIN)
    sd_images = synthetic_batch(1, SD_IMAGE, SD_CLASSES, generator, device)[0]
    return [(f"ResNet-50 C4, res5a,5b,5c NoC, {size} px, {rois} RoIs", build_model(r50, COCO_CLASSES, device),
             r50_images, True),
            (f"scene-digits C4, res5a,5b NoC, {sd.transform.min_size[0]} px, "
             f"{sd.rpn.post_nms_top_n_test} RoIs", build_model(sd, SD_CLASSES, device), sd_images, False)]


def run_flops(args: argparse.Namespace, device: torch.device, warmup: int, rounds: int) -> None:
    mm_size = 2048 if args.quick else 4096
    print(f"\n== 2. whole-detector forward FLOP rate (eval, fp32, batch of 1) vs mm {mm_size}")
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(mm_size, mm_size, generator=generator).to(device)
    b = torch.randn(mm_size, mm_size, generator=generator).to(device)
    cases: dict[str, Callable[[], object]] = {"mm": lambda: torch.mm(a, b)}
    flops = {"mm": 2 * mm_size ** 3}
    regions: dict[str, int] = {}
    targets: dict[str, bool] = {}
    with torch.inference_mode():
        for name, model, images, has_target in flop_models(args.quick, device):
            model.eval()
            hook = model.roi_heads.noc.register_forward_hook(
                lambda _m, inputs, _o, name=name: regions.__setitem__(name, inputs[0].shape[0]))
            flops[name] = count_flops(lambda model=model, images=images: model(images))
            hook.remove()
            cases[name] = lambda model=model, images=images: model(images)
            targets[name] = has_target
        times = {k: median(v) for k, v in time_interleaved(cases, warmup, rounds, synchronizer(device)).items()}
    peak = flops["mm"] / times["mm"]
    print(f"{'case':<60}{'GFLOP':>9}{'median s':>10}{'GFLOP/s':>9}{'of mm':>7}")
    for name, seconds in times.items():
        rate = flops[name] / seconds
        mark = f"  {verdict(rate / peak >= RATE_TARGET)} (>= {RATE_TARGET:.0%})" if targets.get(name) else ""
        label = f"mm {mm_size}" if name == "mm" else f"{name} ({regions[name]} pooled)"
        print(f"{label:<60}{flops[name] / 1e9:>9.1f}{seconds:>10.3f}{rate / 1e9:>9.1f}{rate / peak:>7.0%}{mark}")


# ----------------------------------------------------------------------------- 3. the twins

def staged_iteration(model: NoCFasterRCNN, optimizer: torch.optim.Optimizer, batch: Batch, seed: int,
                     sync: Callable[[], None]) -> tuple[dict[str, float], dict[str, Tensor]]:
    """One training iteration of ``model`` run stage by stage (what ``model(images, targets)``
    and the trainer do, in their order), with each stage's seconds and the losses."""
    model.train()
    torch.manual_seed(seed)
    seconds: dict[str, float] = {}
    sync()
    last = time.perf_counter()

    def mark(stage: str) -> None:
        nonlocal last
        sync()
        now = time.perf_counter()
        seconds[stage] = now - last
        last = now

    image_list, targets = model.transform(*batch)
    mark("transform")
    features = model.backbone(image_list.tensors)
    mark("trunk")
    proposals, losses = model.rpn(image_list, {"0": features}, targets)
    mark("RPN")
    heads = model.roi_heads
    boxes, labels, regression = heads.sample(proposals, targets)
    mark("RoI sampling")
    pooled = heads.pooling(features, boxes)
    mark("RoI pooling")
    out = heads.noc(pooled)
    mark("NoC")
    losses["loss_classifier"], losses["loss_box_reg"] = fastrcnn_loss(out.logits, out.deltas, labels, regression)
    total = sum(losses.values())
    mark("losses")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    mark("backward")
    optimizer.step()
    mark("SGD step")
    return seconds, losses


def budget_iterations(budget: float, iteration: float, validation: float, val_every: int) -> int:
    """Most iterations ``i`` with ``i * iteration + v(i) * validation <= budget``, where ``v(i)``
    counts the trainer's validation points: every ``val_every`` iterations and at the end
    (``val_every`` 0: only at the end; ``validation`` 0: none)."""
    def cost(i: int) -> float:
        points = (math.ceil(i / val_every) if val_every else 1) if i and validation else 0
        return i * iteration + points * validation

    low, high = 0, int(budget / iteration) + 1
    while low < high:  # cost is increasing in i: the largest i within budget
        middle = (low + high + 1) // 2
        if cost(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def run_twins(args: argparse.Namespace, device: torch.device, warmup: int, rounds: int) -> None:
    paths = sorted(TWIN_DIR.glob("table8_*.yaml"))
    print(f"\n== 3. scene-digits twins: training iteration and detection time "
          f"({len(paths)} configs{', overrides ' + ' '.join(args.set) if args.set else ''})")
    generator = torch.Generator().manual_seed(4)
    sync = synchronizer(device)
    twins = {}
    for path in paths:
        cfg = load_experiment(path, args.set)
        model = build_model(cfg, SD_CLASSES, device)
        batch = synthetic_batch(cfg.solver.images_per_batch, SD_IMAGE, SD_CLASSES, generator, device)
        twins[path.stem.removeprefix("table8_")] = (cfg, model, zero_lr_sgd(model, cfg.solver), batch)
    stage_times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in STAGES} for name in twins}
    seeds = iter(range(10**6))
    cases: dict[str, Callable[[], object]] = {}
    for name, (cfg, model, optimizer, batch) in twins.items():
        def train(name=name, model=model, optimizer=optimizer, batch=batch) -> None:
            seconds, _ = staged_iteration(model, optimizer, batch, next(seeds), sync)
            for stage, value in seconds.items():
                stage_times[name][stage].append(value)
        cases[f"{name} train"] = train
        cases[f"{name} detect"] = lambda model=model, batch=batch: detect(model, batch[0])
    times = time_interleaved(cases, warmup, rounds, sync)
    threads = "GPU" if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)"
    print(f"batches of {SD_IMAGE[0]}x{SD_IMAGE[1]} noise images with 1-6 boxes; {threads}; "
          f"image loading not counted")

    header = "".join(f"{name:>14}" for name in twins)
    print(f"\nper training iteration, median ms by stage\n{'stage':<16}{header}")
    medians = {name: {s: median(v[-rounds:]) for s, v in stages.items()} for name, stages in stage_times.items()}
    for stage in STAGES:
        print(f"{stage:<16}" + "".join(f"{medians[name][stage] * 1e3:>14.1f}" for name in twins))
    print(f"{'total (median)':<16}" + "".join(f"{median(times[f'{name} train']) * 1e3:>14.1f}" for name in twins))

    print(f"\n{'config':<14}{'s/it':>7}{'detect s/img':>14}{'its in 15 min':>15}{'with val':>10}"
          f"{'config its':>12}{'train min':>11}{'val min':>9}")
    for name, (cfg, model, _, batch) in twins.items():
        solver = cfg.solver
        iteration = median(times[f"{name} train"])
        per_image = median(times[f"{name} detect"]) / len(batch[0])
        forward = sum(medians[name][s] for s in STAGES[:7]) / len(batch[0])  # val loss: a forward per image
        validation = solver.val_images * (forward + per_image)  # cfg's val split size is not known here
        points = math.ceil(solver.iterations / solver.val_every) if solver.val_every else 1
        print(f"{name:<14}{iteration:>7.2f}{per_image:>14.3f}{int(BUDGET_SECONDS / iteration):>15}"
              f"{budget_iterations(BUDGET_SECONDS, iteration, validation, solver.val_every):>10}"
              f"{solver.iterations:>12}{solver.iterations * iteration / 60:>11.1f}"
              f"{points * validation / 60:>9.1f}")
    print("its in 15 min: training alone; with val: also validating every val_every iterations on "
          "val_images images (validation loss + detection); config its: the config's schedule, with its "
          "estimated training and validation minutes")


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: smaller ResNet-50 sizes, fewer RoIs, mm 2048, 1+2 rounds")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the CPUs this process may run on)")
    parser.add_argument("--device", default="cpu", help="cpu (the targets' setting) or cuda")
    parser.add_argument("--only", nargs="+", choices=("compare", "flops", "twins"),
                        help="run only these parts (default: all three)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every twin config of part 3 (e.g. sampling.rois_per_image=64)")
    args = parser.parse_args(argv)
    try:  # a clear refusal, not a traceback, where the device is missing
        require_device(args.device, "--device")
    except ConfigError as err:
        parser.error(str(err))
    rounds = args.rounds or (2 if args.quick else 5)
    if rounds < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    print(f"== end-to-end benchmark{' (quick)' if args.quick else ''}: "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(machine_line())
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"rounds: {args.warmup} warm-up + {rounds} timed, interleaved; random weights")
    parts = {"compare": run_compare, "flops": run_flops, "twins": run_twins}
    for name, run in parts.items():
        if args.only is None or name in args.only:
            start = time.perf_counter()
            run(args, device, args.warmup, rounds)
            print(f"({name}: {time.perf_counter() - start:.0f} s)")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
