"""A tiny trained frozen-feature model for the tests of what uses a ``model.pt`` (export, evaluate
--checkpoint, the README example): a small scene-digits set, a small-zf backbone saved as a
"pre-trained" weights file, and proposals from a file (jittered ground truth plus random boxes,
so that no Selective Search runs during training)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nocdet.data.scene_digits import generate_scene_digits
from nocdet.data.voc import read_voc
from nocdet.experiment import load_experiment
from nocdet.features.registry import build_backbone
from nocdet.proposals.files import save_proposals
from nocdet.training.frozen_pipeline import run_frozen_experiment

BACKBONE = ["backbone.name=small-zf", "backbone.options={width: 0.5}"]


def make_data(root: Path, num_train: int = 24, num_test: int = 3) -> Path:
    """Scene-digits images, a proposals file per split and a backbone weights file under ``root``."""
    data = generate_scene_digits(root / "data", num_train=num_train, num_test=num_test, seed=3, progress=False)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        proposals = {}
        for sample in read_voc(data, split).samples:
            w, h = sample.width, sample.height
            jitter = np.repeat(sample.boxes, 4, axis=0) + rng.normal(0, 3, (4 * len(sample.boxes), 4))
            x1, y1 = rng.uniform(0, w - 20, 24), rng.uniform(0, h - 20, 24)
            random = np.stack([x1, y1, x1 + rng.uniform(12, w / 2, 24), y1 + rng.uniform(12, h / 2, 24)], 1)
            boxes = np.concatenate([jitter, random])
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            keep = (boxes[:, 2] - boxes[:, 0] > 4) & (boxes[:, 3] - boxes[:, 1] > 4)
            proposals[sample.image_id] = boxes[keep].astype(np.float32)
        save_proposals(root / f"proposals_{split}.npz", proposals)
    torch.manual_seed(0)
    torch.save(build_backbone("small-zf", None, width=0.5).state_dict(), root / "backbone.pt")
    return data


def tiny_overrides(root: Path, extra: Sequence[str] = ()) -> list[str]:
    return [f"data.root={root / 'data'}", "data.val=null", f"cache_dir={root / 'cache'}", *BACKBONE,
            f"backbone.weights={root / 'backbone.pt'}", "proposals.method=file",
            f"proposals.files={{train: {root / 'proposals_train.npz'}, test: {root / 'proposals_test.npz'}}}",
            "proposals.min_size=8", "proposals.max_boxes=60", "proposals.workers=0", "proposals.color_spaces=[hsv]",
            "pyramid.scales=[160, 240]", "pyramid.flip=false", "pyramid.target_area=2304",
            "noc.spec=c16-mo-c16-f32-f32-fn+1", "solver.iterations=8", "solver.lr_steps=[6]",
            "solver.checkpoint_every=8", "solver.log_every=4", *extra]


def train_tiny(root: Path, run: str, extra: Sequence[str] = ()) -> Path:
    """Train one tiny model on the data of :func:`make_data`; returns its ``model.pt``."""
    cfg = load_experiment(None, tiny_overrides(root, extra))
    run_frozen_experiment(cfg, root / run, progress=False)
    return root / run / "model.pt"
