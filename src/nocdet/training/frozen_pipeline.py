"""The frozen-feature experiment of paper Sec. 3, end to end, from one config.

proposals (Selective Search, cached, or a file) -> RoI feature caches over the image pyramid
(train with ground truth and flips, val, test) -> NoC trained on the cache -> optional post-hoc
SVMs on the NoC's second-to-last layer and ridge box regression on the pooled features ->
detections on the test split -> VOC07 / VOC / COCO metrics, result files and the run folder that
``nocdet report``, ``nocdet evaluate`` and ``nocdet.load`` read.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from nocdet.config import dump_yaml
from nocdet.data.sample import DetectionDataset, Detections
from nocdet.errors import ConfigError
from nocdet.experiment import ExperimentConfig, ExperimentData, load_experiment_data, split_name, split_record
from nocdet.frozen_detector import FORMAT as FROZEN_FORMAT, RegionScorer, build_frozen_backbone, build_head
from nocdet.features.backbones import Backbone
from nocdet.features.roi_cache import ExtractionSettings, RoIFeatureCache, build_cache, open_cache, region_slice
from nocdet.io import atomic_write_json, atomic_write_text
from nocdet.noc.head import NoCHead
from nocdet.postprocess import detect_from_scores
from nocdet.training.checkpoint import save_checkpoint
from nocdet.training.noc_trainer import train_noc
from nocdet.training.bbox_regression import BoxRegressor
from nocdet.training.post_hoc import fit_box_regressor, fit_svms
from nocdet.training.svm import LinearSVMs
from nocdet.training.tracking import Best
from nocdet.training.roi_sampler import Pathways, gather_inputs, pathways_for


def proposals_for(cfg: ExperimentConfig, dataset: DetectionDataset, split: str, progress: bool) -> dict[str, np.ndarray]:
    if cfg.proposals.method == "file":
        from nocdet.proposals.files import load_proposals

        if split not in cfg.proposals.files:
            raise ConfigError(f"proposals.method is 'file' but proposals.files has no entry for split {split!r}")
        boxes = load_proposals(cfg.proposals.files[split], dataset)
        return {k: v[: cfg.proposals.max_boxes] for k, v in boxes.items()}
    from nocdet.proposals.selective_search import compute_proposals

    p = cfg.proposals
    settings = {"min_size": p.min_size, "max_boxes": p.max_boxes, "max_side": p.max_side,
                "color_spaces": p.color_spaces, "ks": p.ks, "sigma": p.sigma}
    return compute_proposals(dataset, Path(cfg.cache_dir) / "proposals", settings,
                             workers=cfg.proposals.workers, progress=progress)


def extract(cfg: ExperimentConfig, backbone: Backbone, dataset: DetectionDataset, split: str, training: bool,
            progress: bool, finished: Callable[[str, float], None] | None = None) -> RoIFeatureCache:
    """Proposals and the RoI feature cache of one split (train: with GT regions and flips), its
    entries named by ``dataset``'s image ids; ``finished("proposals" | "features", seconds)`` is
    told as each of the two is done."""
    t = time.perf_counter()
    proposals = proposals_for(cfg, dataset, split, progress)
    if finished is not None:
        finished("proposals", time.perf_counter() - t)
    t = time.perf_counter()
    settings = ExtractionSettings(scales=list(cfg.pyramid.scales), max_size=cfg.pyramid.max_size,
                                  pool_mode=cfg.pyramid.pool, include_gt=training,
                                  flip=training and cfg.pyramid.flip, target_area=cfg.pyramid.target_area,
                                  store=cfg.pyramid.cache)
    folder = build_cache(Path(cfg.cache_dir) / "roi_features", dataset, proposals, backbone,
                         f"{cfg.backbone.name}:{cfg.backbone.weights}", settings, progress=progress)
    cache = open_cache(folder, dataset, proposals)
    if finished is not None:
        finished("features", time.perf_counter() - t)
    return cache


def pathways(head: NoCHead, train_scale: str, training: bool) -> Pathways:
    """The NoC's input levels (:func:`~nocdet.training.roi_sampler.pathways_for`)."""
    return pathways_for(head.spec.has_maxout, train_scale, training)


@torch.inference_mode()
def detect_on_cache(cfg: ExperimentConfig, head: NoCHead, cache: RoIFeatureCache, dataset: DetectionDataset,
                    svms: LinearSVMs | None, regressor: BoxRegressor | None, progress: bool,
                    chunk: int = 1024) -> list[Detections]:
    """Detections of every cached (test) image: :class:`RegionScorer` on its cached regions
    (``chunk`` at a time), then NMS and top-k."""
    samples = dataset.by_id()
    mode = pathways(head, cfg.noc.train_scale, training=False)
    scorer = RegionScorer(head.eval(), cfg.test.score, svms, regressor)
    device = next(head.parameters()).device
    detections = []
    for shard, index in tqdm(cache.images(), total=sum(len(s.image_ids) for s in cache.shards),
                             desc="detect (test)", unit="img", disable=not progress):
        image_id = shard.image_ids[index]
        regions = region_slice(shard, index)
        rows = np.arange(regions.start, regions.stop)
        boxes = torch.from_numpy(np.asarray(shard.boxes[regions], dtype=np.float32))
        scores, refined = [torch.zeros(0, head.num_outputs - 1)], [torch.zeros(0, head.num_outputs - 1, 4)]
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            best = gather_inputs(shard, part, Pathways.BEST, None)[0].to(device)
            inputs = [x.to(device) for x in gather_inputs(shard, part, mode, None)] if mode is not Pathways.BEST \
                else [best]
            s, b = scorer(inputs, best, boxes[start:start + chunk].to(device))
            scores.append(s.cpu())
            refined.append(b.cpu())
        sample = samples[image_id]
        detections.append(detect_from_scores(image_id, torch.cat(refined), torch.cat(scores), sample.width,
                                             sample.height, cfg.test))
    return detections


def evaluate_all(dataset: DetectionDataset, detections: list[Detections]) -> dict:
    """VOC07 11-point, VOC area and COCO metrics of one set of detections."""
    from nocdet.evaluation.coco import evaluate_coco
    from nocdet.evaluation.voc import evaluate_voc

    metrics = {name: evaluate_voc(dataset, detections, metric=name).to_json() for name in ("voc07", "voc")}
    metrics["coco"] = evaluate_coco(dataset, detections)
    return metrics


def write_diagnosis(run_dir: Path, dataset: DetectionDataset, detections: list[Detections]) -> None:
    """The error diagnosis of Fig. 3 and the false-positive curve, as ``diagnosis.json``."""
    from nocdet.evaluation.diagnosis import diagnose, false_positive_curve

    diagnosis = diagnose(dataset, detections)
    atomic_write_json(run_dir / "diagnosis.json",
                      {**diagnosis.to_json(), "fp_curve": false_positive_curve(dataset, detections)})


def write_results(run_dir: Path, dataset: DetectionDataset, split: str, detections: list[Detections]) -> None:
    from nocdet.data.coco import coco_image_ids, write_coco_results
    from nocdet.data.voc import write_voc_results

    results = run_dir / "results"
    write_voc_results(results, split, detections, dataset.classes)
    category_ids = dataset.category_ids or list(range(1, dataset.num_classes + 1))
    write_coco_results(results / "coco_results.json", detections, category_ids, coco_image_ids(dataset))


def best_record(best: Best | None) -> dict | None:
    """``run.json``'s note of what ``train/best.pt`` holds (None: no validation, no file)."""
    return None if best is None else {"path": "train/best.pt", **asdict(best)}


STAGES = {"proposals": "proposals", "features": "RoI features", "train_noc": "NoC training",
          "train_svms": "SVMs", "train_bbox": "box regression", "train": "training", "test": "test"}
"""Display names of ``metrics.json``'s ``timing_seconds`` keys, in the order the stages run."""


StageDone = Callable[[str, float, str | None], None]
"""Told each stage of a frozen run as it finishes: its ``timing_seconds`` key (:data:`STAGES`), its
seconds and, for proposals and RoI features (once per split), the split: "train", "val" or "test"."""


def duration(seconds: float) -> str:
    """``12.3 s`` under a minute, else ``h:mm:ss``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{seconds:.1f} s" if seconds < 60 else f"{minutes // 60}:{minutes % 60:02d}:{rest:02d}"


def stage_line(stage: str, seconds: float, split: str | None = None) -> str:
    """``  NoC training       0:12:05``: a stage's display name (with its split) and its time."""
    name = STAGES.get(stage, stage) + (f" ({split})" if split else "")
    return f"  {name:<22s}{duration(seconds):>10s}"


def timing_lines(timing: dict[str, float]) -> list[str]:
    """One :func:`stage_line` per stage of ``timing_seconds`` and the total."""
    known = [k for k in STAGES if k in timing] + [k for k in timing if k not in STAGES]
    return [stage_line(k, timing[k]) for k in known] + [stage_line("total", sum(timing.values()))]


def run_frozen_experiment(cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False,
                          progress: bool = True, data: ExperimentData | None = None,
                          on_stage: StageDone | None = None) -> dict:
    """Train and evaluate one frozen-feature NoC; everything goes into ``run_dir``. Returns metrics.
    ``data``: the splits already read by :func:`load_experiment_data` (else read here);
    ``on_stage``: told each stage as it finishes (:data:`StageDone`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    torch.manual_seed(cfg.seed)
    timing: dict[str, float] = {}

    def finished(stage: str, seconds: float, split: str | None = None) -> None:
        timing[stage] = timing.get(stage, 0.0) + seconds
        if on_stage is not None:
            on_stage(stage, seconds, split)

    def of(split: str) -> Callable[[str, float], None]:
        return lambda stage, seconds: finished(stage, seconds, split)

    data = data or load_experiment_data(cfg.data, cfg.noc.spec)
    train_set, val_set, test_set = data.train, data.val, data.test
    backbone = build_frozen_backbone(cfg)
    train_cache = extract(cfg, backbone, train_set, "+".join(cfg.data.train), True, progress, of("train"))
    val_cache = extract(cfg, backbone, val_set, cfg.data.val, False, progress, of("val")) if val_set else None
    test_cache = extract(cfg, backbone, test_set, cfg.data.test, False, progress, of("test"))

    t = time.perf_counter()
    head = build_head(cfg, backbone, train_set.num_classes)
    result = train_noc(head, train_cache, run_dir / "train", sampling=cfg.sampling, solver=cfg.solver,
                       pathways=pathways(head, cfg.noc.train_scale, True), seed=cfg.seed, val_cache=val_cache,
                       resume=resume, progress=progress)
    finished("train_noc", time.perf_counter() - t)
    if result.interrupted:
        return {"interrupted": result.interrupted, "iteration": result.iterations}

    svms = regressor = None
    if cfg.svm.enabled:
        t = time.perf_counter()
        test_pathways = pathways(head, cfg.noc.train_scale, training=False)
        svms = fit_svms(head, train_cache, train_set.num_classes, test_pathways, cfg.svm, progress)
        finished("train_svms", time.perf_counter() - t)
    if cfg.bbox.enabled:
        t = time.perf_counter()
        regressor = fit_box_regressor(train_cache, train_set.num_classes, cfg.bbox, progress,
                                      train_set.classes)
        finished("train_bbox", time.perf_counter() - t)

    t = time.perf_counter()
    detections = detect_on_cache(cfg, head, test_cache, test_set, svms, regressor, progress)
    finished("test", time.perf_counter() - t)
    metrics = evaluate_all(test_set, detections)
    write_diagnosis(run_dir, test_set, detections)
    metrics["timing_seconds"] = {k: round(v, 2) for k, v in timing.items()}
    write_results(run_dir, test_set, split_name(cfg.data, cfg.data.test), detections)

    save_checkpoint(run_dir / "model.pt", {
        "format": FROZEN_FORMAT, "version": 1, "config": asdict(cfg), "classes": train_set.classes,
        "category_ids": train_set.category_ids, "similarity_groups": train_set.similarity_groups, "head": head.state_dict(),
        "backbone_state": backbone.state_dict(),
        "svms": svms.state_dict() if svms else None, "bbox": regressor.state_dict() if regressor else None})
    params = sum(p.numel() for p in head.parameters())
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_json(run_dir / "run.json", {
        "name": cfg.name, "noc": cfg.noc.spec, "params": params, "train_seconds": round(timing["train_noc"], 2),
        "data": split_record(cfg.data, cfg.data.test),
        "final_train_loss": result.train_loss, "final_val_loss": result.val_loss,
        "best_checkpoint": best_record(result.best),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return metrics
