"""solver.amp: mixed-precision training of the NoC (frozen setting) and the end-to-end detector;
bfloat16 works on the CPU, float16 needs CUDA (refused when the config loads), auto picks bfloat16
where the device computes in it natively."""
from __future__ import annotations

import pytest
import torch

from nocdet.errors import ConfigError
from nocdet.experiment import load_experiment
from nocdet.features.roi_cache import ExtractionSettings, build_cache, open_cache
from nocdet.noc.head import NoCHead
from nocdet.training.noc_trainer import SolverConfig, train_noc
from nocdet.training.roi_sampler import Pathways, SamplingConfig
from nocdet.devices import has_native_bf16
from nocdet.training import solver_config
from nocdet.training.solver_config import autocast_dtype
from fakes import FixedTrunk
from test_roi_cache_training import make_dataset

FROZEN = "configs/scene_digits/table1_3fc.yaml"
E2E = "configs/e2e/scene_digits/table8_conv_noc.yaml"


def _train(tmp_path, cache, amp: str) -> tuple[NoCHead, list[torch.dtype]]:
    torch.manual_seed(0)
    head = NoCHead("f16-f3", in_channels=4, roi_size=3)
    seen: list[torch.dtype] = []
    head.cls_score.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    solver = SolverConfig(iterations=4, lr=0.01, lr_steps=[3], val_every=2, val_batches=1, amp=amp)
    train_noc(head, cache, tmp_path / amp, sampling=SamplingConfig(rois_per_image=8, bg_iou_lo=0.0),
              solver=solver, pathways=Pathways.RANDOM, seed=1, val_cache=cache, progress=False)
    return head, seen


def test_bfloat16_noc_training_autocasts_the_forward_and_keeps_fp32_weights(tmp_path):
    dataset, proposals = make_dataset(tmp_path)
    cache = open_cache(build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny",
                                   ExtractionSettings(scales=[32, 48]), progress=False))
    plain, plain_seen = _train(tmp_path, cache, "none")
    mixed, mixed_seen = _train(tmp_path, cache, "bfloat16")
    assert set(plain_seen) == {torch.float32}
    # 4 training forwards in bf16; the validation forwards (2 points x 1 batch) stay fp32
    assert mixed_seen.count(torch.bfloat16) == 4 and mixed_seen.count(torch.float32) == 2
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    a, b = plain.cls_score.weight, mixed.cls_score.weight
    assert not torch.equal(a, b)  # the forward ran in bf16 ...
    torch.testing.assert_close(b, a, rtol=0.05, atol=0.01)  # ... to bf16's precision


def test_amp_values_by_device():
    assert autocast_dtype("none", "cpu") is None
    assert autocast_dtype("bfloat16", "cpu") is torch.bfloat16
    assert autocast_dtype("float16", "cuda:1") is torch.float16
    with pytest.raises(ConfigError, match="float16 needs a CUDA device.*bfloat16"):
        autocast_dtype("float16", "cpu")


@pytest.mark.parametrize("path", [FROZEN, E2E])
def test_both_settings_take_bfloat16_on_the_cpu_and_refuse_float16_at_load(path):
    assert load_experiment(path, ["solver.amp=bfloat16"]).solver.amp == "bfloat16"
    with pytest.raises(ConfigError, match="solver.amp=float16 needs a CUDA device"):
        load_experiment(path, ["solver.amp=float16"])


@pytest.mark.parametrize("flags, native", [("fpu sse2 avx2 avx512f avx512bw", False),
                                           ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu avx2 amx_bf16 amx_tile", True), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert has_native_bf16("cpu", str(cpuinfo)) is native
    assert has_native_bf16("cpu", str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_amp_is_bfloat16_only_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(solver_config, "has_native_bf16", lambda device: native)
    assert autocast_dtype("auto", "cpu") is expected
