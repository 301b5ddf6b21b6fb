"""Distributed training under ``torchrun`` (2 CPU processes, gloo) equals one process with the same
global batch; a real torchvision Faster R-CNN trains under torchrun.

Exact equality needs losses that are a deterministic function of each image: TinyDetector (from
test_e2e_trainer) samples nothing at random, whereas torchvision's RPN/RoI samplers draw from each
process's own RNG, so the Faster R-CNN run is a smoke test only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from test_e2e_trainer import TESTS, TinyDetector, make_dataset, quick_solver, read_log
from nocdet.e2e.trainer import train_detector

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
import torch.distributed as dist
from test_e2e_trainer import TinyDetector, quick_solver, small_faster_rcnn
from nocdet.e2e.trainer import train_detector

torch.set_num_threads(1)
data = torch.load({data!r}, weights_only=False)
model = TinyDetector()
model.load_state_dict(torch.load({init!r}))
result = train_detector(model, data, {run!r}, quick_solver(**{solver!r}), val=data, seed=3, progress=False)
assert dist.is_initialized()  # joined once and kept: the second training reuses the group
torch.manual_seed(0)
smoke = train_detector(small_faster_rcnn(), data, {smoke_run!r}, quick_solver(iterations=2, images_per_batch=2),
                       seed=3, progress=False)
with open(f"rank{{os.environ['RANK']}}.json", "w") as f:  # a file per rank: printed lines can interleave
    json.dump({{"val": result.val_losses, "smoke": smoke.iterations, "losses": smoke.losses}}, f)
"""

SOLVER = dict(iterations=3, images_per_batch=4, lr=0.05, lr_steps=[2], flip=True, aspect_ratio_grouping=True,
              weight_decay=1e-3, checkpoint_every=2)


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    data = make_dataset(tmp_path / "images")
    torch.save(data, tmp_path / "data.pt")
    torch.manual_seed(0)
    init = TinyDetector().state_dict()
    torch.save(init, tmp_path / "init.pt")

    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), data=str(tmp_path / "data.pt"), init=str(tmp_path / "init.pt"),
                                    run=str(tmp_path / "ddp"), smoke_run=str(tmp_path / "smoke"), solver=SOLVER))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    outputs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)
               if (tmp_path / f"rank{r}.json").is_file()]
    assert len(outputs) == 2  # both ranks finished

    torch.set_num_threads(1)
    single = TinyDetector()
    single.load_state_dict(init)
    result = train_detector(single, data, tmp_path / "single", quick_solver(**SOLVER), val=data, seed=3,
                            progress=False)

    ddp = torch.load(tmp_path / "ddp/train/final.pt", weights_only=False)["model"]
    for name, value in single.state_dict().items():
        assert not torch.equal(value, init[name]), f"{name} did not train"
        assert torch.allclose(ddp[name], value, rtol=1e-5, atol=1e-6), name
    # logged losses are averaged over processes; validation is sharded and gathered
    ddp_log, single_log = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert [r["iteration"] for r in ddp_log] == [1, 2, 3]
    for a, b in zip(ddp_log, single_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for out in outputs:
        assert out["val"] == pytest.approx(result.val_losses, rel=1e-5)
    assert "val_voc07_mAP" in ddp_log[-1]
    # only rank 0 wrote: one log line per iteration, one checkpoint at 3
    assert torch.load(tmp_path / "ddp/train/checkpoint.pt", weights_only=False)["world_size"] == 2

    # the real torchvision Faster R-CNN ran 2 iterations under torchrun
    assert all(out["smoke"] == 2 for out in outputs)
    assert (tmp_path / "smoke/train/final.pt").exists()
    assert {"loss_classifier", "loss_objectness"} <= outputs[0]["losses"].keys()
