"""One end-to-end experiment (paper Sec. 4): train a NoC Faster R-CNN, then test, evaluate and save it.

The run folder gets what a frozen-feature run gets (``config.yaml``, ``train/log.jsonl``,
``metrics.json``, ``run.json``, ``diagnosis.json``, ``results/``) and ``model.pt``, a detector
that :func:`nocdet.detector.load` rebuilds without the pre-trained weights file. Under ``torchrun``
every rank trains; rank 0 alone tests and writes the results.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from nocdet.config import dump_yaml
from nocdet.e2e.detector import FORMAT as E2E_FORMAT, E2EDetector
from nocdet.e2e.model import build_e2e_model
from nocdet.e2e.trainer import train_detector
from nocdet.experiment import ExperimentConfig, ExperimentData, load_experiment_data, split_name, split_record
from nocdet.io import atomic_write_json, atomic_write_text
from nocdet.training.checkpoint import save_checkpoint
from nocdet.training.frozen_pipeline import best_record, evaluate_all, write_diagnosis, write_results


def run_e2e_experiment(cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False,
                       progress: bool = True, data: ExperimentData | None = None) -> dict:
    """Train and evaluate one end-to-end experiment into ``run_dir``; returns its metrics.
    ``data``: the splits already read by :func:`load_experiment_data` (else read here)."""
    run_dir = Path(run_dir)
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    torch.manual_seed(cfg.seed)
    data = data or load_experiment_data(cfg.data, cfg.noc.spec)
    train_set, val_set, test_set = data.train, data.val, data.test
    model = build_e2e_model(cfg, train_set.num_classes, classes=train_set.classes)

    t = time.perf_counter()
    result = train_detector(model, train_set, run_dir, cfg.solver, val=val_set, resume=resume, device=cfg.device,
                            seed=cfg.seed, progress=progress and main,
                            extra_state={"config": asdict(cfg), "classes": train_set.classes})
    train_seconds = time.perf_counter() - t
    if result.interrupted:
        return {"interrupted": result.interrupted, "iteration": result.iterations}
    if not main:
        return {}

    t = time.perf_counter()
    detections = E2EDetector(model, cfg, cfg.device).detect_dataset(test_set, progress=progress)
    test_seconds = time.perf_counter() - t
    metrics = evaluate_all(test_set, detections)
    metrics["timing_seconds"] = {"train": round(train_seconds, 2), "test": round(test_seconds, 2)}
    write_diagnosis(run_dir, test_set, detections)
    write_results(run_dir, test_set, split_name(cfg.data, cfg.data.test), detections)
    save_checkpoint(run_dir / "model.pt", {
        "format": E2E_FORMAT, "version": 1, "config": asdict(cfg), "classes": train_set.classes,
        "category_ids": train_set.category_ids, "similarity_groups": train_set.similarity_groups, "model": model.state_dict()})
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_json(run_dir / "run.json", {
        "name": cfg.name, "setting": cfg.setting, "noc": cfg.noc.spec,
        "variant": cfg.backbone.variant, "iterations": result.iterations,
        "params": sum(p.numel() for p in model.parameters()), "train_seconds": round(train_seconds, 2),
        "data": split_record(cfg.data, cfg.data.test),
        "final_train_loss": (result.losses or {}).get("loss"), "final_val_loss": (result.val_losses or {}).get("loss"),
        "final_train_losses": result.losses, "final_val_losses": result.val_losses,
        "best_checkpoint": best_record(result.best),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return metrics
