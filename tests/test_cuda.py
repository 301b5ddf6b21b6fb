"""The GPU path: results on a CUDA device equal the CPU's (issue 15, target 5).

Every test here is marked ``cuda`` and skipped on a machine without a CUDA device, so CI and
``make test`` pass without one; ``benchmarks/gpu_check.sh`` runs them with ``pytest -m cuda``.
"""
from __future__ import annotations

import pytest
import torch
from test_e2e_trainer import TinyDetector, make_dataset, quick_solver

from nocdet.devices import require_device
from nocdet.e2e.trainer import train_detector
from nocdet.features.pyramid import pool_pyramid, pool_pyramid_pair, select_adjacent_pair, select_scale
from nocdet.noc.head import NoCHead
from nocdet.training.checkpoint import load_checkpoint, rng_state, set_rng_state

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 means fp32: no TF32 in matmuls or cuDNN convolutions while a test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_the_first_cuda_device_is_accepted():
    require_device("cuda")
    require_device("cuda:0")


def pyramid_inputs() -> tuple[list[torch.Tensor], torch.Tensor, list[float]]:
    """Three levels of a 200 x 150 image (stride 16) and boxes including one-pixel and border ones."""
    generator = torch.Generator().manual_seed(0)
    factors = [1.0, 1.5, 2.0]
    features = [torch.randn(1, 16, -(-round(150 * f) // 16), -(-round(200 * f) // 16), generator=generator)
                for f in factors]
    x1 = torch.rand(40, generator=generator) * 190
    y1 = torch.rand(40, generator=generator) * 140
    wh = torch.rand(40, 2, generator=generator) * 120 + 1
    boxes = torch.stack([x1, y1, (x1 + wh[:, 0]).clamp(max=199), (y1 + wh[:, 1]).clamp(max=149)], 1)
    special = torch.tensor([[0, 0, 199, 149], [0, 0, 0, 0], [199, 149, 199, 149], [10, 20, 11, 21.0]])
    return features, torch.cat([boxes, special]), factors


@pytest.mark.parametrize("mode", ["max", "align"])
def test_pyramid_pooling_on_cuda_equals_the_cpu(mode):
    features, boxes, factors = pyramid_inputs()
    levels = select_scale(boxes, factors)
    pairs = select_adjacent_pair(boxes, factors)
    cpu = pool_pyramid(features, [boxes], [levels], [factors], 1 / 16, 6, mode=mode)
    gpu = pool_pyramid([f.to(CUDA) for f in features], [boxes.to(CUDA)], [levels.to(CUDA)], [factors],
                       1 / 16, 6, mode=mode)
    cpu_pair = pool_pyramid_pair(features, [boxes], [pairs], [factors], 1 / 16, 6, mode=mode)
    gpu_pair = pool_pyramid_pair([f.to(CUDA) for f in features], [boxes.to(CUDA)], [pairs.to(CUDA)], [factors],
                                 1 / 16, 6, mode=mode)
    # max pooling picks map values, so it is exact; RoIAlign interpolates (float rounding)
    tolerance = {"rtol": 0, "atol": 0} if mode == "max" else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(gpu.cpu(), cpu, **tolerance)
    for g, c in zip(gpu_pair, cpu_pair):
        torch.testing.assert_close(g.cpu(), c, **tolerance)


def test_max_pooling_a_one_pixel_box_on_cuda_gives_its_cell():
    fmap = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(1, 2, 4, 5).to(CUDA)
    box = torch.tensor([[48, 32, 48, 32.0]], device=CUDA)  # at stride 16: cell (row 2, column 3)
    pooled = pool_pyramid([fmap], [box], [torch.zeros(1, dtype=torch.int64)], [[1.0]], 1 / 16, 2)
    assert pooled.shape == (1, 2, 2, 2)
    assert pooled.cpu().flatten().tolist() == [13.0] * 4 + [33.0] * 4  # 2 * 5 + 3 and 20 + 13


@pytest.mark.parametrize("spec", ["f64-f64-f5", "c16-c16-f64-f5", "c16-mo-c16-f64-f5"])
def test_noc_forward_on_cuda_equals_the_cpu(spec):
    torch.manual_seed(0)
    head = NoCHead(spec, 16, 6, box_regression=True).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(50, 16, 6, 6, generator=generator) for _ in range(2 if head.is_maxout else 1)]
    with torch.inference_mode():
        cpu = head(inputs if head.is_maxout else inputs[0])
        head.to(CUDA)
        gpu = head([x.to(CUDA) for x in inputs] if head.is_maxout else inputs[0].to(CUDA))
    for name, c, g in zip(cpu._fields, cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-4, atol=1e-5, msg=name)


def test_cuda_random_state_round_trips():
    state = rng_state(CUDA)
    assert "cuda" in state
    first = torch.rand(5, device=CUDA)
    set_rng_state(state, CUDA)
    assert torch.equal(torch.rand(5, device=CUDA), first)


@pytest.mark.parametrize("amp", ["none", "bfloat16"])
def test_training_on_cuda_runs_saves_the_cuda_state_and_resumes(tmp_path, amp):
    data = make_dataset(tmp_path / "images")
    solver = quick_solver(amp=amp)
    model = TinyDetector()
    first = train_detector(model, data, tmp_path / "run", solver, device="cuda", progress=False)
    assert first.iterations == solver.iterations
    assert all(torch.isfinite(torch.tensor(v)) for v in first.losses.values()), first.losses
    assert next(model.parameters()).device.type == "cuda"
    state = load_checkpoint(tmp_path / "run" / "train" / "checkpoint.pt")
    assert "cuda" in state["rng"][0]  # the CUDA random state is saved with the others
    longer = quick_solver(amp=amp, iterations=solver.iterations + 2)
    resumed = train_detector(TinyDetector(), data, tmp_path / "run", longer, device="cuda", resume=True,
                             progress=False)
    assert resumed.iterations == longer.iterations
