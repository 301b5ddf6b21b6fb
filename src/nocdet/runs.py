"""Experiments of either setting behind one entry point: ``nocdet train`` and ``nocdet sweep`` load
a config file, tell the setting from it and run it into a run folder, without caring which."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

from nocdet.devices import require_device
from nocdet.e2e.config import E2EExperimentConfig, is_e2e_config, load_e2e_experiment
from nocdet.experiment import ExperimentConfig, ExperimentData, load_experiment, load_experiment_data

AnyConfig = Union[ExperimentConfig, E2EExperimentConfig]


def load_any_experiment(path: str | Path, overrides: Sequence[str] = ()) -> AnyConfig:
    """The config of ``path``: end to end (a top-level ``detector`` key, paper Sec. 4) or frozen features."""
    if is_e2e_config(path):
        return load_e2e_experiment(path, overrides)
    return load_experiment(path, overrides)


def noc_key(cfg: AnyConfig) -> str:
    """The dotted key of the NoC string in this setting's config."""
    return "model.noc.spec" if isinstance(cfg, E2EExperimentConfig) else "noc.spec"


def load_data(cfg: AnyConfig) -> ExperimentData:
    """The experiment's splits, checked against each other and the NoC's classifier size
    (cheap: annotations only), so that a mismatch stops a run before any work."""
    return load_experiment_data(cfg.data, cfg.model.noc.spec if isinstance(cfg, E2EExperimentConfig) else cfg.noc.spec)


def run_experiment(cfg: AnyConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                   data: ExperimentData | None = None) -> dict:
    """Train, test and evaluate ``cfg`` into ``run_dir``; its metrics (``{}`` on a torchrun rank > 0,
    ``{"interrupted", "iteration"}`` when a signal stopped training). ``data``: from :func:`load_data`."""
    require_device(cfg.device)
    if isinstance(cfg, E2EExperimentConfig):
        from nocdet.e2e.pipeline import run_e2e_experiment

        return run_e2e_experiment(cfg, run_dir, resume=resume, progress=progress, data=data)
    from nocdet.training.frozen_pipeline import run_frozen_experiment

    return run_frozen_experiment(cfg, run_dir, resume=resume, progress=progress, data=data)
