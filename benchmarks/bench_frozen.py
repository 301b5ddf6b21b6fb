"""Speed and memory of the frozen-feature detector (paper Sec. 3) on generated scene-digits data.

Measures, in one run on this machine:

1. test time per image on the CPU, split into the stages of ``FrozenNoCDetector.detect``
   (Selective Search proposals, pyramid features, scale selection + RoI pooling, NoC forward
   with scoring and box regression, post-processing), for the demo config
   (``configs/demo.yaml``: maxout NoC, 3 scales, 300 HSV boxes) and the base config's 3fc NoC
   (``configs/scene_digits/base.yaml``: 4 scales, 500 HSV+Lab boxes), interleaved image by image;
2. one NoC training epoch on the RoI feature cache against one epoch that recomputes the
   features (image load, pyramid backbone, pooling) of the same sampled RoIs, same NoC, for the
   config's NoC and Table 1's lighter shapes (SVM on RoI, 2fc, 3fc); target: the cache is >= 10x
   faster (the NoC's own SGD step, paid by both, bounds the ratio). The one-off Selective Search
   and cache build are timed too;
3. peak memory of the cache build and of one training epoch, each in its own process, at N/2
   and N training images: the process's own (anonymous) memory must not grow with the data;
4. pipelined detection over a split (``detect_dataset``, what ``nocdet detect`` on a folder and
   ``evaluate --checkpoint`` run; :mod:`nocdet.batch_detection`) against the one-image path, in
   images/s over 200 scene-digits images (demo config: its ImageNet backbone, a randomly
   initialised NoC, so the detections are meaningless but the work is real), chunks of 50
   images run by every path in turn; target: >= 1.4x the faster one-image path (1 or all torch
   threads), with detections equal bit for bit to the one-image path at 1 thread. Printed beside
   it: the bound (CPU work per image summed over the stages / the CPUs), other splits of workers
   and lane threads, and what batching several images into one NoC forward would gain.

The networks of parts 1-3 are each config's backbone and NoC, randomly initialised (``--weights
PATH`` loads backbone weights): weights do not change the cost of a forward. Random scores pass
the score threshold for every box, so the post-processing time is an upper bound (NMS sees R x K
boxes). Run ``python benchmarks/bench_frozen.py [--quick] [--images N] [--train-images N]
[--batch-images N] [--parts 1 2 3 4]``; entry point for other scripts: :func:`main`. See
benchmarks/README.md for the output.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nocdet.batch_detection import pipeline_split, pipelined
from nocdet.data.images import load_image, unit_tensor
from nocdet.data.sample import DetectionDataset, Detections
from nocdet.experiment import ExperimentConfig, load_experiment, load_split
from nocdet.features.backbones import Backbone
from nocdet.features.roi_cache import CacheShard, ExtractionSettings, RoIFeatureCache, image_tensor, \
    open_cache, pool_at_scales, pool_regions, pyramid_features
from nocdet.noc.head import NoCHead
from nocdet.postprocess import detect_from_scores
from nocdet.proposals.selective_search import selective_search
from nocdet.training.bbox_regression import BoxRegressor
from nocdet.frozen_detector import FrozenNoCDetector, RegionScorer, build_detector, build_frozen_backbone, \
    build_head
from nocdet.training.frozen_pipeline import extract, pathways, proposals_for
from nocdet.training.roi_sampler import RoISampler, SamplingConfig, gather_inputs
from nocdet.training.svm import LinearSVMs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_model, verdict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"demo": ROOT / "configs" / "demo.yaml", "base": ROOT / "configs" / "scene_digits" / "base.yaml"}
STAGES = ("proposals", "pyramid features", "pooling", "NoC forward", "post-processing")
SPEEDUP_TARGET = 10.0  # cached epoch vs recomputing epoch
EPOCH_NOCS = ("fn+1", "f512-fn+1", "f512-f512-fn+1")  # Table 1's SVM-on-RoI, 2fc and 3fc shapes, beside the config's
MEMORY_GROWTH_TARGET = 1.10  # peak own memory at 2x the images / at 1x
PIPELINE_TARGET = 1.4  # pipelined detection over a split / the faster one-image path, images/s
PIPELINE_CHUNK = 50  # images of a chunk; every path runs each chunk in turn
BATCHING_WORTH = 0.05  # share of an image's CPU work that batching images into one NoC forward must save


# ------------------------------------------------------------------------------ set-up

def experiment_config(name: str, data_root: Path, cache_dir: Path, weights: str | None) -> ExperimentConfig:
    """Config ``name`` ("demo" or "base") pointed at the generated data and a scratch cache."""
    return load_experiment(CONFIGS[name], [f"data.root={data_root}", f"cache_dir={cache_dir}",
                                           f"backbone.weights={json.dumps(weights)}"])


def frozen_backbone(cfg: ExperimentConfig) -> Backbone:
    """The config's frozen backbone, seeded so that every process builds the same random weights."""
    torch.manual_seed(cfg.seed)
    return build_frozen_backbone(cfg)


def train_split(cfg: ExperimentConfig, images: int) -> DetectionDataset:
    """The first ``images`` images of the train split."""
    dataset = load_split(cfg.data, cfg.data.train[0])
    if len(dataset) < images:
        raise ValueError(f"the train split has {len(dataset)} images, {images} asked for")
    return DetectionDataset(dataset.classes, dataset.samples[:images], f"{dataset.name}-{images}",
                            dataset.similarity_groups)


# ------------------------------------------------------------------------------ 1. test time

class StagedDetector:
    """``FrozenNoCDetector.detect`` of a config, with random weights, its calls timed by stage.

    Same calls in the same order as ``detect``, with ``pool_regions`` timed as its two halves
    (:func:`pyramid_features`, :func:`pool_at_scales`). SVMs and the box regressor are random stand-ins of the
    trained ones' shapes, present when the config enables them.
    """

    def __init__(self, cfg: ExperimentConfig, num_classes: int):
        self.config = cfg
        self.backbone = frozen_backbone(cfg)
        self.head = build_head(cfg, self.backbone, num_classes).eval()
        self.settings = ExtractionSettings(scales=list(cfg.pyramid.scales), max_size=cfg.pyramid.max_size,
                                           pool_mode=cfg.pyramid.pool, include_gt=False, flip=False,
                                           target_area=cfg.pyramid.target_area)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.svms = LinearSVMs(torch.randn(num_classes, self.head.feature_dim, generator=generator) * 0.01,
                               torch.zeros(num_classes), 1.0) if cfg.test.score == "svm" else None
        pooled_dim = self.backbone.out_channels * self.backbone.roi_size ** 2
        self.regressor = BoxRegressor(torch.randn(num_classes, pooled_dim, 4, generator=generator) * 1e-3,
                                      torch.zeros(num_classes, 4), torch.zeros(num_classes, 4),
                                      torch.eye(4).repeat(num_classes, 1, 1), 1.0) if cfg.bbox.enabled else None
        self.scorer = RegionScorer(self.head, cfg.test.score, self.svms, self.regressor)  # what detect() runs

    def proposals(self, array: np.ndarray) -> np.ndarray:
        p = self.config.proposals
        return selective_search(array, min_size=p.min_size, max_boxes=p.max_boxes, max_side=p.max_side,
                                ks=p.ks, sigma=p.sigma, color_spaces=p.color_spaces)

    def input_tensor(self, array: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float() / 255.0
        return self.backbone.normalize(x)

    @torch.inference_mode()
    def detect(self, array: np.ndarray, image_id: str = "image") -> tuple[Detections, dict[str, float]]:
        """Detections of one ``H x W x 3`` image and the seconds spent in each of :data:`STAGES`."""
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[stage] = now - clock
            clock = now

        height, width = array.shape[:2]
        boxes = self.proposals(array)
        lap("proposals")
        if len(boxes) == 0:
            return Detections(image_id, np.zeros((0, 4)), np.zeros(0), np.zeros(0)), {s: 0.0 for s in STAGES}
        x = self.input_tensor(array)
        feats, factors = pyramid_features(self.backbone, x, self.settings)
        lap("pyramid features")
        rois = torch.from_numpy(boxes)
        pooled, _, best = pool_at_scales(feats, factors, rois, self.settings, self.backbone.roi_size,
                                         self.backbone.stride)
        lap("pooling")
        single = pooled[torch.arange(len(best)), best] if pooled.shape[1] > 1 else pooled[:, 0]
        scores, region_boxes = self.scorer([pooled[:, 0], pooled[:, -1]], single, torch.from_numpy(boxes))
        lap("NoC forward")
        detections = detect_from_scores(image_id, region_boxes, scores, width, height, self.config.test)
        lap("post-processing")
        return detections, seconds


def describe(cfg: ExperimentConfig, head: NoCHead) -> str:
    p = cfg.proposals
    extras = [f"{cfg.test.score} scores"] + (["+bb"] if cfg.bbox.enabled else [])
    return (f"NoC {cfg.noc.spec}, scales {list(cfg.pyramid.scales)}, {p.max_boxes} SS boxes "
            f"({'+'.join(c.upper() for c in p.color_spaces)}, k {[int(k) for k in p.ks]}), {', '.join(extras)}, "
            f"{sum(q.numel() for q in head.parameters()) / 1e6:.2f} M NoC parameters")


def time_detection(detectors: dict[str, StagedDetector], warmup: np.ndarray,
                   arrays: list[np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Per config and stage, the seconds of each image; configs interleaved image by image."""
    for detector in detectors.values():  # warm-up, untimed
        detector.detect(warmup)
    times = {name: {stage: [] for stage in STAGES} for name in detectors}
    for i, array in enumerate(arrays):
        names = list(detectors) if i % 2 == 0 else list(detectors)[::-1]
        for name in names:
            _, seconds = detectors[name].detect(array, str(i))
            for stage in STAGES:
                times[name][stage].append(seconds[stage])
    return times


def print_stage_table(times: dict[str, list[float]]) -> float:
    """One row per stage (median, mean, share of the mean total); returns the median total."""
    totals = [sum(parts) for parts in zip(*times.values())]
    mean_total = statistics.mean(totals)
    print(f"  {'stage':<18}{'median ms':>11}{'mean ms':>10}{'of total':>10}")
    for stage, values in times.items():
        print(f"  {stage:<18}{statistics.median(values) * 1e3:>11.1f}{statistics.mean(values) * 1e3:>10.1f}"
              f"{statistics.mean(values) / mean_total:>10.1%}")
    print(f"  {'total':<18}{statistics.median(totals) * 1e3:>11.1f}{mean_total * 1e3:>10.1f}{1:>10.0%}")
    return statistics.median(totals)


# ------------------------------------------------------------------------------ 2. training epochs

@dataclass
class PlannedImage:
    """One image's share of a mini-batch: regions ``chosen`` (shard rows) and their labels."""

    shard: CacheShard
    index: int
    chosen: np.ndarray
    labels: np.ndarray


InputSource = Callable[[list[PlannedImage], np.random.Generator], list[Tensor]]


def plan_epoch(cache: RoIFeatureCache, sampling: SamplingConfig, seed: int) -> list[list[PlannedImage]]:
    """The mini-batches of one epoch: every image once, in the sampler's seeded order, its RoIs
    drawn by ``RoISampler.sample_image``; images without RoIs in the IoU bands are skipped."""
    sampler = RoISampler(cache, sampling, seed, "best")
    picked = []
    for position in sampler.order:
        shard, index = sampler.images[position]
        chosen, labels = sampler.sample_image(shard, index)
        if len(chosen):
            picked.append(PlannedImage(shard, index, chosen, labels))
    size = sampling.images_per_batch
    return [picked[i:i + size] for i in range(0, len(picked), size)]


def select_pathways(pooled: Tensor, best: Tensor, mode: str, rng: np.random.Generator) -> list[Tensor]:
    """``gather_inputs``' choice of pathways, on freshly pooled ``[R, P, C, m, m]`` features."""
    if mode == "pair":
        return [pooled[:, 0], pooled[:, -1]]
    if pooled.shape[1] == 1:
        return [pooled[:, 0]]
    slot = best if mode == "best" else torch.from_numpy(rng.integers(0, 2, len(best)))
    return [pooled[torch.arange(len(best)), slot]]


def cached_inputs(batch: list[PlannedImage], mode: str, rng: np.random.Generator) -> list[Tensor]:
    """A batch's NoC inputs read from the cache, as ``RoISampler.next`` reads them."""
    parts = [gather_inputs(item.shard, item.chosen, mode, rng) for item in batch]
    return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]


def recomputed_inputs(batch: list[PlannedImage], mode: str, rng: np.random.Generator, backbone: Backbone,
                      paths: dict[str, Path], settings: ExtractionSettings) -> list[Tensor]:
    """The same inputs computed as training without a cache must: load, pyramid, pool."""
    parts = []
    for item in batch:
        shard = item.shard
        x = image_tensor(paths[shard.image_ids[item.index]], backbone.mean, backbone.std, shard.flipped[item.index])
        pooled, _, best = pool_regions(backbone, x, torch.from_numpy(shard.boxes[item.chosen]), settings,
                                       backbone.roi_size)
        parts.append([t.clone() for t in select_pathways(pooled, best, mode, rng)])  # inference -> autograd
    return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]


def train_epochs(head: NoCHead, cfg: ExperimentConfig, plan: list[list[PlannedImage]],
                 sources: dict[str, InputSource]) -> dict[str, tuple[float, float]]:
    """One epoch of ``train_noc``'s SGD step per input source, each on its own copy of ``head``,
    interleaved batch by batch (so that load from other processes hits every source alike).

    Returns per source the epoch's seconds and the part of them spent getting the inputs.
    """
    s = cfg.solver
    runs = {}
    for name in sources:
        trial = copy.deepcopy(head).train()
        optimizer = torch.optim.SGD([p for p in trial.parameters() if p.requires_grad], lr=s.lr,
                                    momentum=s.momentum, weight_decay=s.weight_decay)
        runs[name] = (trial, optimizer, np.random.default_rng(cfg.seed))  # same slot draws ("random" pathways)
    seconds = {name: [0.0, 0.0] for name in sources}
    for i, batch in enumerate(plan):
        labels = torch.from_numpy(np.concatenate([item.labels for item in batch]))
        for name in (list(sources) if i % 2 == 0 else list(sources)[::-1]):
            trial, optimizer, rng = runs[name]
            start = time.perf_counter()
            inputs = sources[name](batch, rng)
            got = time.perf_counter()
            loss = F.cross_entropy(trial(inputs if len(inputs) == 2 else inputs[0]).logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seconds[name][0] += time.perf_counter() - start
            seconds[name][1] += got - start
    return {name: (total, inputs) for name, (total, inputs) in seconds.items()}


def epoch_sources(cfg: ExperimentConfig, head: NoCHead, backbone: Backbone, dataset: DetectionDataset
                  ) -> dict[str, InputSource]:
    """The two ways to get a batch's inputs: "cache" and "recompute"."""
    mode = pathways(head, cfg.noc.train_scale, True)
    settings = ExtractionSettings(scales=list(cfg.pyramid.scales), max_size=cfg.pyramid.max_size,
                                  pool_mode=cfg.pyramid.pool, target_area=cfg.pyramid.target_area)
    paths = {s.image_id: s.path for s in dataset.samples}
    return {"cache": lambda batch, rng: cached_inputs(batch, mode, rng),
            "recompute": lambda batch, rng: recomputed_inputs(batch, mode, rng, backbone, paths, settings)}


# ------------------------------------------------------------------------------ 3. memory (child processes)

def memory_status() -> dict[str, float]:
    """This process's VmHWM (peak RSS), RssAnon and RssFile from /proc/self/status, in MB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024
    return values


class AnonPeak:
    """Peak anonymous memory (the process's own, not mapped file pages), sampled every 5 ms."""

    def __init__(self):
        self.peak = memory_status()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, memory_status()["RssAnon"])

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory_status()["RssAnon"])


def child(task: str, spec: dict) -> dict:
    """Run in a fresh process: ``extract`` builds the cache of the first ``images`` train images,
    ``train`` runs one cached epoch on it; returns timings and memory in MB."""
    torch.set_num_threads(spec["threads"])
    cfg = experiment_config(spec["config"], Path(spec["data"]), Path(spec["cache"]), spec["weights"])
    dataset = train_split(cfg, spec["images"])
    backbone = frozen_backbone(cfg)
    result: dict = {"images": len(dataset)}
    if task == "extract":
        proposals_for(cfg, dataset, cfg.data.train[0], False)  # from the disk cache the parent filled
        before = memory_status()
        with AnonPeak() as anon:
            start = time.perf_counter()
            cache = extract(cfg, backbone, dataset, cfg.data.train[0], True, False)
            result["seconds"] = time.perf_counter() - start
        result.update(cache=str(cache.path), regions=cache.num_regions, cache_mb=cache.size_bytes() / 2 ** 20)
    else:
        cache = open_cache(spec["cache_folder"])
        head = build_head(cfg, backbone, dataset.num_classes)
        plan = plan_epoch(cache, cfg.sampling, cfg.seed)
        sources = {"cache": epoch_sources(cfg, head, backbone, dataset)["cache"]}
        before = memory_status()
        with AnonPeak() as anon:
            result["seconds"] = train_epochs(head, cfg, plan, sources)["cache"][0]
        result.update(regions=cache.num_regions, cache_mb=cache.size_bytes() / 2 ** 20)
    end = memory_status()
    result.update(baseline_mb=before["RssAnon"], anon_peak_mb=anon.peak, hwm_mb=end["VmHWM"],
                  file_mb=end["RssFile"])
    return result


def run_child(task: str, spec: dict) -> dict:
    """:func:`child` in a new interpreter (its memory is its own); raises if it fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, __file__, "--child", task, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {task!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ 4. pipelined detection

DetectSplit = Callable[[DetectionDataset], list[Detections]]


def pipeline_cases(detector: FrozenNoCDetector, cores: int, splits: bool) -> dict[str, tuple[int, DetectSplit]]:
    """The detection paths timed, each ``(torch threads, detect a data set)``: the one-image path at 1
    and at ``cores`` threads, ``detect_dataset``'s default pipeline, and with ``splits`` other
    splits of ``(workers, lanes)`` (no more workers + lanes than ``cores``; as many of each as ``cores``)."""
    def one_image(chunk: DetectionDataset) -> list[Detections]:
        return detector.detect_dataset(chunk, progress=False, workers=0)

    def split(workers: int, lanes: int) -> DetectSplit:
        def run(chunk: DetectionDataset) -> list[Detections]:
            items = [(s.image_id, s.path) for s in chunk.samples]
            return [r.detections for r in pipelined(detector, items, load_image, workers, lanes)]
        return run

    cases = {"one image, 1 thread": (1, one_image)}
    if cores > 1:
        cases[f"one image, {cores} threads"] = (cores, one_image)
    cases[f"pipelined, --threads {cores}"] = (  # detect_dataset's default split (at least one worker)
        cores, lambda c: detector.detect_dataset(c, progress=False, workers=max(1, pipeline_split(cores)[0])))
    for workers, lanes in dict.fromkeys([(max(1, cores // 2), max(1, cores - cores // 2)), (cores, cores)]
                                        if splits else []):
        cases[f"pipelined, {workers} worker(s) + {lanes} lane(s)"] = (cores, split(workers, lanes))
    return cases


def stage_cpu_ms(detector: FrozenNoCDetector, dataset: DetectionDataset) -> dict[str, float]:
    """Mean CPU milliseconds per image of each stage of the one-image path, at one thread
    (``time.thread_time``: the work itself, not the waits for other jobs on a shared machine)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    seconds = {"decode": 0.0, "Selective Search": 0.0, "features + NoC + NMS": 0.0}
    for sample in dataset.samples:
        start = time.thread_time()
        array = load_image(sample.path)
        decoded = time.thread_time()
        boxes = detector.proposals(array)
        proposed = time.thread_time()
        detector.detect_proposals(array, boxes, sample.image_id)
        seconds["decode"] += decoded - start
        seconds["Selective Search"] += proposed - decoded
        seconds["features + NoC + NMS"] += time.thread_time() - proposed
    return {stage: total / len(dataset) * 1e3 for stage, total in seconds.items()}


def same_detections(a: list[Detections], b: list[Detections]) -> tuple[bool, float, int]:
    """Whether two runs found the same detections bit for bit; the largest difference in boxes or
    scores among the images whose detections agree to float tolerance (same count, labels and
    order); the number of images whose detections do not (near-ties that NMS ordered otherwise)."""
    exact, gap, other = True, 0.0, 0
    for x, y in zip(a, b, strict=True):
        if x.image_id != y.image_id:
            raise RuntimeError(f"images out of order: {x.image_id} against {y.image_id}")
        if x.boxes.shape != y.boxes.shape or not np.array_equal(x.labels, y.labels) \
                or not np.allclose(x.boxes, y.boxes, atol=1e-3) or not np.allclose(x.scores, y.scores, atol=1e-5):
            exact, other = False, other + 1
            continue
        exact &= np.array_equal(x.boxes, y.boxes) and np.array_equal(x.scores, y.scores)
        if len(x.scores):
            gap = max(gap, float(np.abs(x.boxes - y.boxes).max()), float(np.abs(x.scores - y.scores).max()))
    return exact, gap, other


def noc_batching(detector: FrozenNoCDetector, dataset: DetectionDataset, rounds: int) -> dict[int, float]:
    """Milliseconds per image of the NoC (and scoring) over the pooled RoIs of 1, 2, 4 or 8 images
    in one forward, at one thread, the group sizes interleaved round by round: what batching
    images into the NoC would save."""
    torch.set_num_threads(1)
    inputs = []
    groups = (1, 2, 4, 8)
    with torch.inference_mode():
        for sample in (dataset.samples * 8)[:8]:  # eight images, repeated in a smaller data set
            array = load_image(sample.path)
            boxes = torch.from_numpy(detector.proposals(array))
            x = detector.backbone.normalize(unit_tensor(array))
            pooled, _, best = pool_regions(detector.backbone, x, boxes, detector.settings,
                                           detector.backbone.roi_size)
            inputs.append((pooled, pooled[torch.arange(len(best)), best], boxes))
        batches = {g: [[torch.cat(parts) for parts in zip(*inputs[i:i + g])] for i in range(0, 8, g)] for g in groups}
        runs: dict[int, list[float]] = {g: [] for g in groups}
        for index in range(rounds + 1):  # the first round warms up
            for g in groups if index % 2 == 0 else groups[::-1]:
                start = time.perf_counter()
                for pooled, single, boxes in batches[g]:
                    detector.scorer([pooled[:, 0], pooled[:, -1]], single, boxes)
                if index:
                    runs[g].append((time.perf_counter() - start) / 8 * 1e3)
    return {g: statistics.median(values) for g, values in runs.items()}


def part_pipelined(args: argparse.Namespace, scratch: Path) -> tuple[float, float]:
    """:func:`pipelined_child` in a ``python -c`` interpreter: a process whose main module is not
    this script, so that its Selective Search workers start as those of ``nocdet detect`` do
    (a worker of a process run as a script first imports that script: here torch and all)."""
    spec = {"batch_images": args.batch_images, "threads": args.threads, "weights": args.weights, "quick": args.quick,
            "scratch": str(scratch), "out": str(scratch / "pipelined.json")}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    code = f"import json, bench_frozen; bench_frozen.pipelined_child(json.loads({json.dumps(json.dumps(spec))}))"
    sys.stdout.flush()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    result = json.loads(Path(spec["out"]).read_text())
    return result["ratio"], result["bound"]


def pipelined_child(spec: dict) -> None:
    """Part 4: images/s of pipelined detection against the one-image path; writes the ratio and
    its bound to ``spec["out"]``."""
    from nocdet.data.scene_digits import generate_scene_digits

    args = argparse.Namespace(**spec)
    scratch, cores = Path(args.scratch), args.threads
    torch.set_num_threads(cores)
    data = generate_scene_digits(scratch / "pipeline-data", num_train=8, num_test=args.batch_images, seed=1,
                                 progress=False)
    weights = [f"backbone.weights={json.dumps(args.weights)}"] if args.weights else []  # else the demo's: ImageNet
    cfg = load_experiment(CONFIGS["demo"], [f"data.root={data}", f"cache_dir={scratch / 'cache'}", *weights])
    dataset = load_split(cfg.data, cfg.data.test)
    detector = build_detector(cfg, dataset.classes)  # the NoC randomly initialised (noc.init), as before training
    chunks = [DetectionDataset(dataset.classes, dataset.samples[i:i + PIPELINE_CHUNK], f"chunk{i}")
              for i in range(0, len(dataset), PIPELINE_CHUNK)]
    sizes = {(s.width, s.height) for s in dataset.samples}
    print(f"\n--- 4. pipelined detection over {len(dataset)} scene-digits images ({describe(cfg, detector.head)}; "
          f"backbone weights {cfg.backbone.weights}, NoC randomly initialised; {len(sizes)} distinct image sizes)")

    cases = pipeline_cases(detector, cores, splits=not args.quick)
    found: dict[str, list[Detections]] = {name: [] for name in cases}
    seconds = {name: 0.0 for name in cases}
    cpu_seconds = {name: 0.0 for name in cases}  # this process's and its finished workers' CPU time
    detector.detect(load_image(dataset.samples[0].path))  # warm-up, untimed
    for i, chunk in enumerate(chunks):
        for name in (list(cases) if i % 2 == 0 else list(cases)[::-1]):
            threads, run = cases[name]
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
            start, cpu_start = time.perf_counter(), os.times()
            found[name] += run(chunk)
            seconds[name] += time.perf_counter() - start
            cpu_seconds[name] += sum(os.times()[:4]) - sum(cpu_start[:4])
    torch.set_num_threads(cores)
    cpu = stage_cpu_ms(detector, DetectionDataset(dataset.classes, dataset.samples[:20], "stages"))
    rounds = 1 if args.quick else 10
    noc = noc_batching(detector, dataset, rounds)
    torch.set_num_threads(cores)
    cv2.setNumThreads(cores)

    truth = found["one image, 1 thread"]
    ms = {name: total / len(dataset) * 1e3 for name, total in seconds.items()}
    one_image = min(ms[name] for name in cases if name.startswith("one image"))
    default = f"pipelined, --threads {cores}"
    print(f"  {'path':<44}{'ms/image':>9}{'CPU ms/image':>13}{'images/s':>10}{'vs best one-image':>19}   "
          "detections vs one image, 1 thread")
    for name in cases:
        exact, gap, other = same_detections(found[name], truth)
        same = "identical" if exact else f"max difference {gap:.2g}" + (
            f"; {other} image(s) beyond float tolerance (near-ties NMS ordered otherwise)" if other else "")
        print(f"  {name:<44}{ms[name]:>9.1f}{cpu_seconds[name] / len(dataset) * 1e3:>13.1f}{1e3 / ms[name]:>10.2f}"
              f"{one_image / ms[name]:>18.2f}x   {same}")
        if name.startswith("pipelined") and not exact:
            raise RuntimeError(f"{name}: detections differ from the one-image path at one thread")
    work = sum(cpu.values())
    bound = one_image / (work / cores)
    print(f"  CPU work per image (one-image path, 1 thread, first {min(20, len(dataset))} images): "
          + " + ".join(f"{stage} {value:.1f}" for stage, value in cpu.items())
          + f" = {work:.1f} ms; / {cores} CPUs = {work / cores:.1f} ms per image")
    saved = noc[1] - min(noc.values())
    print(f"  NoC + scoring over the RoIs of 1 / 2 / 4 / 8 images in one forward (1 thread, median of "
          f"{rounds} rounds): " + " / ".join(f"{v:.1f}" for v in noc.values()) + f" ms per image: batching "
          f"would save at most {saved:.1f} of the {work:.1f} ms of CPU work per image ({saved / work:.1%}), "
          f"{'worth' if saved / work >= BATCHING_WORTH else 'not worth'} tying the lanes together "
          f"(>= {BATCHING_WORTH:.0%}); the pyramid levels of images of {len(sizes)} sizes cannot share a batch")
    ratio = one_image / ms[default]
    print(f"  pipelined / one-image detection: {ratio:.2f}x  {verdict(ratio >= PIPELINE_TARGET)} "
          f"(>= {PIPELINE_TARGET}x; bound {bound:.2f}x = the best one-image path's {one_image:.1f} ms / "
          f"{work / cores:.1f} ms, its CPU work over {cores} CPUs)")
    Path(args.out).write_text(json.dumps({"ratio": ratio, "bound": bound}))


# ------------------------------------------------------------------------------ main

def header(title: str, args: argparse.Namespace) -> None:
    print(f"== {title}{' (quick)' if args.quick else ''}: "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs usable, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average before {os.getloadavg()[0]:.1f}")
    print(f"weights: {args.weights or 'random, each config its own backbone and NoC (timings do not depend on them)'}")


def part_test_time(args: argparse.Namespace, data: Path, scratch: Path, test_ids: list[str]) -> dict[str, float]:
    print(f"\n--- 1. test time per image (CPU, {len(test_ids) - 1} scene-digits test images, after 1 warm-up)")
    cfgs = {name: experiment_config(name, data, scratch / "cache", args.weights) for name in CONFIGS}
    test_set = load_split(cfgs["demo"].data, cfgs["demo"].data.test)
    by_id = test_set.by_id()
    warmup, *arrays = [load_image(by_id[i].path) for i in test_ids]
    detectors = {name: StagedDetector(cfg, test_set.num_classes) for name, cfg in cfgs.items()}
    times = time_detection(detectors, warmup, arrays)
    h, w = np.mean([a.shape[:2] for a in arrays], axis=0)
    medians = {}
    for name, detector in detectors.items():
        print(f"\n{name} ({CONFIGS[name].relative_to(ROOT)}): {describe(detector.config, detector.head)}; "
              f"images {w:.0f}x{h:.0f} on average")
        medians[name] = print_stage_table(times[name])
    print("(image decoding excluded; 'pyramid features' includes the tensor conversion, resize and backbone)")
    return medians


def part_training(args: argparse.Namespace, data: Path, scratch: Path, rounds: int) -> dict:
    cfg = experiment_config(args.train_config, data, scratch / "cache", args.weights)
    dataset = train_split(cfg, args.train_images)
    half = max(2, args.train_images // 2)
    print(f"\n--- 2. one NoC training epoch: RoI feature cache vs recomputed features "
          f"({args.train_config} config, {len(dataset)} train images)")
    start = time.perf_counter()
    proposals_for(cfg, dataset, cfg.data.train[0], False)
    ss_seconds = time.perf_counter() - start
    spec_of_run = {"config": args.train_config, "data": str(data), "cache": str(scratch / "cache"),
                   "weights": args.weights, "threads": torch.get_num_threads()}
    extracted = {n: run_child("extract", {**spec_of_run, "images": n}) for n in (half, args.train_images)}
    full = extracted[args.train_images]
    print(f"one-off: Selective Search {ss_seconds:.1f} s ({cfg.proposals.workers} workers); "
          f"cache build {full['seconds']:.1f} s ({full['regions']} regions, {full['cache_mb']:.0f} MB on disk)")

    backbone = frozen_backbone(cfg)
    cache = open_cache(full["cache"])
    plan = plan_epoch(cache, cfg.sampling, cfg.seed)
    rois = sum(len(item.chosen) for batch in plan for item in batch)
    print(f"{len(plan)} mini-batches of {cfg.sampling.images_per_batch} images x {cfg.sampling.rois_per_image} RoIs "
          f"({rois} RoIs in all), the same for every NoC")
    print(f"  {'NoC':<28}{'pathways':>9}{'cache s':>9}{'recompute s':>13}{'inputs ms':>11}{'SGD step ms':>13}"
          f"{'speed-up':>10}   rounds cache / recompute (s)")
    ratios, input_ratios = {}, []
    for spec in dict.fromkeys([cfg.noc.spec, *EPOCH_NOCS]):  # the config's NoC first, no repeats
        ratios[spec], input_ratio = epoch_speedup(cfg, spec, backbone, cache, dataset, plan, rounds)
        input_ratios.append(input_ratio)
    print(f"  inputs of a batch: {min(input_ratios):.0f}-{max(input_ratios):.0f}x faster read from the cache than "
          "recomputed (image load + pyramid backbone + pooling); recomputed features match the cache")
    print("  speed-up = recompute epoch / cache epoch = (inputs recomputed + SGD step) / (inputs read + SGD step): "
          "the NoC's own step bounds it")
    for spec, ratio in ratios.items():
        print(f"  speed-up of the cache, {spec}: {ratio:.1f}x  {verdict(ratio >= SPEEDUP_TARGET)} "
              f"(>= {SPEEDUP_TARGET:.0f}x)")
    return {"spec": spec_of_run, "extracted": extracted, "ratios": ratios,
            "input_ratio": min(input_ratios)}


def epoch_speedup(cfg: ExperimentConfig, spec: str, backbone: Backbone, cache: RoIFeatureCache,
                  dataset: DetectionDataset, plan: list[list[PlannedImage]], rounds: int) -> tuple[float, float]:
    """Median epoch time of NoC ``spec`` on the cache vs recomputing, printed as a table row.

    Returns ``(epoch speed-up, batch-input speed-up)``. Raises if the recomputed inputs are not
    the cached ones (float16 tolerance).
    """
    cfg = copy.deepcopy(cfg)
    cfg.noc.spec = spec
    head = build_head(cfg, backbone, dataset.num_classes)
    sources = epoch_sources(cfg, head, backbone, dataset)
    rng = np.random.default_rng(0)
    cached, fresh = (sources[k](plan[0], copy.deepcopy(rng)) for k in ("cache", "recompute"))
    gap = max(float((a - b).abs().max()) for a, b in zip(cached, fresh))
    scale = max(float(a.abs().max()) for a in cached)
    if gap > 1e-2 * max(scale, 1.0):  # float16 cache against float32 features
        raise RuntimeError(f"recomputed features differ from the cached ones by {gap:.3g}: not the same RoIs")
    train_epochs(head, cfg, plan[:1], sources)  # warm-up: one batch of each
    seconds: dict[str, list[tuple[float, float]]] = {"cache": [], "recompute": []}
    for _ in range(rounds):
        for name, timed in train_epochs(head, cfg, plan, sources).items():
            seconds[name].append(timed)
    epoch = {name: statistics.median(t for t, _ in runs) for name, runs in seconds.items()}
    inputs = {name: statistics.median(i for _, i in runs) for name, runs in seconds.items()}
    step_ms = (epoch["cache"] - inputs["cache"]) / len(plan) * 1e3
    ratio = epoch["recompute"] / epoch["cache"]
    rounds_text = " / ".join(", ".join(f"{t:.2f}" for t, _ in seconds[name]) for name in ("cache", "recompute"))
    print(f"  {spec:<28}{pathways(head, cfg.noc.train_scale, True):>9}{epoch['cache']:>9.2f}"
          f"{epoch['recompute']:>13.2f}{inputs['recompute'] / len(plan) * 1e3:>11.1f}{step_ms:>13.1f}"
          f"{ratio:>9.1f}x   {rounds_text}")
    return ratio, inputs["recompute"] / inputs["cache"]


def part_memory(training: dict) -> dict[str, float]:
    print("\n--- 3. peak memory, each task in its own process (MB)")
    trained = {n: run_child("train", {**training["spec"], "images": n, "cache_folder": e["cache"]})
               for n, e in training["extracted"].items()}
    print(f"  {'task':<10}{'images':>7}{'regions':>9}{'cache':>8}{'seconds':>9}{'start':>8}{'peak own':>10}"
          f"{'peak RSS':>10}{'file pages':>12}")
    growth = {}
    for task, results in (("extract", training["extracted"]), ("train", trained)):
        for r in results.values():
            print(f"  {task:<10}{r['images']:>7}{r['regions']:>9}{r['cache_mb']:>8.0f}{r['seconds']:>9.1f}"
                  f"{r['baseline_mb']:>8.0f}{r['anon_peak_mb']:>10.0f}{r['hwm_mb']:>10.0f}{r['file_mb']:>12.0f}")
        small, large = results.values()
        growth[task] = large["anon_peak_mb"] / small["anon_peak_mb"]
        above = [r["anon_peak_mb"] - r["baseline_mb"] for r in (small, large)]
        print(f"  {task}: peak own memory x{growth[task]:.2f} (+{above[0]:.0f} / +{above[1]:.0f} MB above the start) "
              f"while the cache grows x{large['cache_mb'] / small['cache_mb']:.2f}  "
              f"{verdict(growth[task] <= MEMORY_GROWTH_TARGET)} (<= x{MEMORY_GROWTH_TARGET:.2f})")
    print("start / peak own: anonymous memory (RssAnon) before the task / its peak, sampled every 5 ms; "
          "peak RSS: VmHWM, which also counts the memory-mapped cache pages (page cache, reclaimable); "
          "file pages: RssFile at the end")
    return growth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 test images, 16 train images, 1 round, 8 images in part 4")
    parser.add_argument("--images", type=int, help="test images timed (default 20)")
    parser.add_argument("--train-images", type=int, help="train images of the epoch (default 80; memory at half too)")
    parser.add_argument("--train-config", choices=sorted(CONFIGS), default="demo", help="config of parts 2 and 3")
    parser.add_argument("--rounds", type=int, help="timed epochs of each kind (default 3)")
    parser.add_argument("--weights", help="backbone weights (a checkpoint path); default: random (part 4: the "
                                          "demo's ImageNet weights)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the CPUs this process may run on)")
    parser.add_argument("--batch-images", type=int, help="images of part 4, pipelined detection (default 200)")
    parser.add_argument("--parts", type=int, nargs="+", choices=[1, 2, 3, 4], default=[1, 2, 3, 4],
                        help="parts to run (default all; 3 runs 2 too)")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return 0
    args.images = args.images or (4 if args.quick else 20)
    args.train_images = args.train_images or (16 if args.quick else 80)
    args.batch_images = args.batch_images or (8 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.images < 1 or args.train_images < 4 or rounds < 1 or args.batch_images < 2:
        parser.error("--images must be >= 1, --train-images >= 4, --rounds >= 1 and --batch-images >= 2")
    parts = set(args.parts) | ({2} if 3 in args.parts else set())
    if args.weights:
        args.weights = str(Path(args.weights).resolve())

    torch.set_num_threads(args.threads)
    header("frozen-feature detector benchmark", args)
    from nocdet.data.scene_digits import generate_scene_digits

    with tempfile.TemporaryDirectory(prefix="bench-frozen-") as tmp:
        scratch = Path(tmp)
        # every 8th train-side image goes to val: enough train-side images for the train split
        data = generate_scene_digits(scratch / "data", num_train=math.ceil(args.train_images * 8 / 7) + 1,
                                     num_test=args.images + 1, seed=0, progress=False)
        test_ids = [s.image_id for s in load_split(experiment_config("demo", data, scratch, None).data, "test").samples]
        # the first test image is the warm-up image
        medians = part_test_time(args, data, scratch, test_ids) if 1 in parts else {}
        training = part_training(args, data, scratch, rounds) if 2 in parts else None
        growth = part_memory(training) if 3 in parts else {}
        pipeline = part_pipelined(args, scratch) if 4 in parts else None
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")

    print("\n--- summary")
    for name, seconds in medians.items():
        print(f"test time per image, {name} config: {seconds * 1e3:.0f} ms (median, CPU)")
    if training is not None:
        for spec, ratio in training["ratios"].items():
            print(f"NoC epoch on the cache vs recomputing, {spec}: {ratio:.1f}x faster  "
                  f"{verdict(ratio >= SPEEDUP_TARGET)} (>= {SPEEDUP_TARGET:.0f}x)")
        print(f"batch inputs alone: at least {training['input_ratio']:.0f}x faster")
    for task, g in growth.items():
        print(f"{task} own memory at 2x the images: x{g:.2f}  {verdict(g <= MEMORY_GROWTH_TARGET)} "
              f"(<= x{MEMORY_GROWTH_TARGET:.2f})")
    if pipeline is not None:
        ratio, bound = pipeline
        print(f"pipelined / one-image detection: {ratio:.2f}x  {verdict(ratio >= PIPELINE_TARGET)} "
              f"(>= {PIPELINE_TARGET}x; bound {bound:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
