"""Experiments of either setting behind one entry point: ``nocdet train`` and ``nocdet sweep`` load
a config file (:func:`nocdet.experiment.load_experiment`; its ``setting``: frozen or e2e) and run it
into a run folder, without caring which."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nocdet.devices import require_device
from nocdet.experiment import ExperimentConfig, ExperimentData, load_experiment_data

if TYPE_CHECKING:
    from nocdet.training.frozen_pipeline import StageDone


def load_data(cfg: ExperimentConfig) -> ExperimentData:
    """The experiment's splits, checked against each other and the NoC's classifier size
    (cheap: annotations only), so that a mismatch stops a run before any work."""
    return load_experiment_data(cfg.data, cfg.noc.spec)


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                   data: ExperimentData | None = None, on_stage: StageDone | None = None) -> dict:
    """Train, test and evaluate ``cfg`` into ``run_dir``; its metrics (``{}`` on a torchrun rank > 0,
    ``{"interrupted", "iteration"}`` when a signal stopped training). ``data``: from :func:`load_data`;
    ``on_stage``: told each stage of a frozen run as it finishes (an end-to-end run tells none)."""
    require_device(cfg.device)
    if cfg.setting == "e2e":
        from nocdet.e2e.pipeline import run_e2e_experiment

        return run_e2e_experiment(cfg, run_dir, resume=resume, progress=progress, data=data)
    from nocdet.training.frozen_pipeline import run_frozen_experiment

    return run_frozen_experiment(cfg, run_dir, resume=resume, progress=progress, data=data, on_stage=on_stage)
