"""Training details of the frozen-feature setting that the paper took from SPPnet (issue 13):
dropout after the hidden fc layers, a random scale of the whole pyramid per training region, a
random adjacent pair for maxout NoCs, the detection cap per class, and SVMs / +bb without flips.
Each is a config value; the paper configs choose the paper's side, the others keep nocdet's."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import nocdet.training.frozen_pipeline as frozen_pipeline
import nocdet.training.post_hoc as post_hoc
from nocdet.config import load_config
from nocdet.errors import ConfigError, SpecError
from nocdet.experiment import ExperimentConfig, load_experiment
from nocdet.features.map_store import MapFeatures
from nocdet.features.roi_cache import open_cache
from nocdet.frozen_detector import build_head
from nocdet.noc.head import NoCHead
from nocdet.noc.spec import parse_noc
from nocdet.postprocess import PostprocessConfig, detect_from_scores
from nocdet.training.bbox_regression import BoxRegressionConfig
from nocdet.training.roi_sampler import Pathways, RoISampler, SamplingConfig, gather_inputs, pathways_for
from nocdet.training.svm import SVMConfig
from test_map_store import extract, make_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = sorted((CONFIGS / "paper").glob("*.yaml"))
NOT_PAPER = [CONFIGS / "demo.yaml", *sorted((CONFIGS / "scene_digits").glob("*.yaml"))]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A three-level pyramid (scales 32, 48, 64) of three images with flips, in both stores."""
    tmp = tmp_path_factory.mktemp("caches")
    dataset, proposals = make_dataset(tmp)
    return open_cache(extract(tmp, dataset, proposals, "pooled")), open_cache(extract(tmp, dataset, proposals, "maps"))


def pooled_at(shard, index: np.ndarray, levels: list[int]) -> torch.Tensor:
    """Regions ``index`` pooled at the fixed pyramid levels ``levels``: ``[R, len(levels), C, m, m]``."""
    f = shard.features
    fixed = np.tile(np.asarray(levels, np.int64), (len(index), 1))
    view = MapFeatures(f.maps, f.index, shard.boxes[index], shard.image[index], fixed)
    return torch.from_numpy(view[np.arange(len(index))].astype(np.float32))


def level_of(x: torch.Tensor, candidates: torch.Tensor) -> list[int]:
    """For each row of ``x`` [R, ...], the one candidate [R, L, ...] it equals (-1 if none or several)."""
    out = []
    for row, options in zip(x, candidates):
        hits = [k for k, c in enumerate(options) if torch.equal(row, c)]
        out.append(hits[0] if len(hits) == 1 else -1)
    return out


# ---------------------------------------------------------------- 1. dropout after hidden fc layers

@pytest.mark.parametrize("text,expected", [
    ("f4096-f4096-f21", (0, 1)),
    ("f4096-d0.3-f4096-f21", (2,)),  # the explicit token keeps its rate; the second fc gets the NoC's
    ("c256-c256-f4096-mo-f4096-f21", (2, 4)),
    ("f4096-mo-d0.5-f4096-f21", (3,)),  # a d after mo still follows the first fc
    ("c256-mo-c256-f4096-f4096-f21", (3, 4)),
    ("f21", ()),
    ("res5a,5b,5c, fc81", ()),
])
def test_implicit_dropout_sits_after_each_hidden_fc_without_its_own(text, expected):
    assert parse_noc(text).implicit_dropout() == expected


def dropouts(head: NoCHead) -> list[float]:
    return [m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)]


def test_noc_dropout_drops_hidden_fc_outputs_in_training_only():
    torch.manual_seed(0)
    plain = NoCHead("f64-f64-f3", in_channels=4, roi_size=2)
    torch.manual_seed(0)
    dropped = NoCHead("f64-f64-f3", in_channels=4, roi_size=2, dropout=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # checkpoints interchange
    assert dropouts(plain) == [] and dropouts(dropped) == [0.5, 0.5]
    x = torch.rand(32, 4, 2, 2)
    # test time: the same network
    assert torch.equal(plain.eval()(x).logits, dropped.eval()(x).logits)
    # training: each hidden fc's output is 0 (dropped) or twice the undropped value, about half dropped
    dropped.train()
    fc7 = dropped.blocks[1]
    h = torch.rand(32, 64)
    out = fc7(h)
    reference = torch.relu(fc7[0](h))
    assert (out[reference == 0] == 0).all()
    active = reference > 0
    kept = out[active] != 0
    assert torch.allclose(out[active][kept], 2 * reference[active][kept])
    assert 0.4 < 1 - kept.float().mean().item() < 0.6


def test_explicit_dropout_token_is_not_doubled():
    head = NoCHead("f8-d0.3-f8-f3", in_channels=4, roi_size=2, dropout=0.5)
    assert dropouts(head) == [0.3, 0.5]
    assert dropouts(NoCHead("f8-d0.3-f8-f3", in_channels=4, roi_size=2)) == [0.3]
    with pytest.raises(SpecError, match="dropout"):
        NoCHead("f8-f3", in_channels=4, roi_size=2, dropout=1.0)


def test_config_dropout_reaches_the_built_noc():
    backbone = SimpleNamespace(out_channels=4, roi_size=2, stage=None)
    cfg = load_config(ExperimentConfig, None, ["noc.spec=c4-mo-c4-f8-f8-f3", "noc.dropout=0.5"])
    assert dropouts(build_head(cfg, backbone, num_classes=2)) == [0.5, 0.5]
    with pytest.raises(ConfigError, match="noc.dropout"):
        load_config(ExperimentConfig, None, ["noc.dropout=1.5"])


# ---------------------------------------------------------------- 2-3. scale jitter and the maxout pair

def test_pathways_by_train_scale():
    assert [pathways_for(False, s, True) for s in ("all", "random", "best")] == \
        [Pathways.ALL, Pathways.RANDOM, Pathways.BEST]
    assert [pathways_for(True, s, True) for s in ("all", "random", "best")] == \
        [Pathways.RANDOM_PAIR, Pathways.PAIR, Pathways.PAIR]
    for scale in ("all", "random", "best"):
        assert pathways_for(False, scale, False) is Pathways.BEST and pathways_for(True, scale, False) is Pathways.PAIR
    assert [p.at_test for p in Pathways] == [Pathways.PAIR, Pathways.BEST, Pathways.BEST, Pathways.BEST, Pathways.PAIR]
    # the frozen pipeline's call: a maxout NoC trains on a random adjacent pair
    maxout = NoCHead("mo-f8-f3", in_channels=4, roi_size=2)
    assert frozen_pipeline.pathways(maxout, "all", training=True) is Pathways.RANDOM_PAIR


def test_all_levels_needs_the_maps_store():
    with pytest.raises(ConfigError, match="pyramid.cache: maps"):
        load_config(ExperimentConfig, None, ["noc.train_scale=all"]).check()
    load_config(ExperimentConfig, None, ["noc.train_scale=all", "pyramid.cache=maps"]).check()


def test_pooled_store_refuses_any_level(caches):
    pooled, _ = caches
    with pytest.raises(ConfigError, match="pyramid.cache: maps"):
        RoISampler(pooled, SamplingConfig(), seed=0, pathways="all")
    with pytest.raises(ConfigError, match="pyramid.cache: maps"):
        gather_inputs(pooled.shards[0], np.arange(4), "random_pair", np.random.default_rng(0))


def test_training_scale_is_uniform_over_every_level(caches):
    """SPPnet's rule: each region at a uniformly random level of all three, not only the cached two."""
    _, maps = caches
    shard = maps.shards[0]
    index = np.arange(len(shard.boxes))
    candidates = pooled_at(shard, index, [0, 1, 2])
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(6):
        (x,) = gather_inputs(shard, index, Pathways.ALL, rng)
        seen.append(level_of(x, candidates))
    seen = np.array(seen)
    distinct = np.array([len({tuple(c.flatten().tolist()) for c in row}) == 3 for row in candidates])
    levels = seen[:, distinct]
    assert (levels >= 0).all()
    counts = np.bincount(levels.ravel(), minlength=3) / levels.size
    assert np.all(np.abs(counts - 1 / 3) < 0.05), counts
    outside = levels != shard.levels[distinct][None, :, 0]
    outside &= levels != shard.levels[distinct][None, :, 1]
    assert outside.mean() > 0.25  # a third of the draws lie outside the cached pair


def test_maxout_training_pair_is_a_random_adjacent_pair(caches):
    _, maps = caches
    shard = maps.shards[0]
    index = np.arange(len(shard.boxes))
    pairs = [[0, 1], [1, 2]]
    candidates = [pooled_at(shard, index, p) for p in pairs]
    first, second = gather_inputs(shard, index, Pathways.RANDOM_PAIR, np.random.default_rng(0))
    drawn = []
    for i in range(len(index)):
        hits = [k for k, c in enumerate(candidates) if torch.equal(first[i], c[i, 0]) and torch.equal(second[i], c[i, 1])]
        assert hits, f"region {i} is not pooled at an adjacent pair"
        drawn.append(hits)
    unique = [h[0] for h in drawn if len(h) == 1]
    assert 0.35 < np.mean(unique) < 0.65  # both pairs, about equally often
    cached = {tuple(p) for p in shard.levels.tolist()}
    assert cached == {(0, 1), (1, 2)}
    differs = [pairs[h[0]] != shard.levels[i].tolist() for i, h in enumerate(drawn) if len(h) == 1]
    assert 0.3 < np.mean(differs) < 0.7  # the test-time pair is not what training sees


def test_jittered_sampler_is_reproducible_and_resumable(caches):
    _, maps = caches
    config = SamplingConfig(rois_per_image=16, bg_iou_lo=0.0)
    a = RoISampler(maps, config, seed=3, pathways="random_pair")
    b = RoISampler(maps, config, seed=3, pathways="random_pair")
    for _ in range(2):
        a.next()
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        x, y = a.next(), b.next()
        assert all(torch.equal(p, q) for p, q in zip(x.inputs, y.inputs)) and torch.equal(x.labels, y.labels)


# ---------------------------------------------------------------- 4. the detection cap

def test_cap_per_class_keeps_the_best_of_every_class():
    """Six disjoint boxes: class 1 scores 0.9, 0.8, 0.7 and class 2 0.3, 0.2, 0.1 (one box each)."""
    boxes = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 8, 8.0] for i in range(6)])
    scores = torch.full((6, 2), -9.0)
    scores[:3, 0] = torch.tensor([0.9, 0.8, 0.7])
    scores[3:, 1] = torch.tensor([0.3, 0.2, 0.1])
    per_image = detect_from_scores("x", boxes, scores, 100, 100,
                                   PostprocessConfig(max_detections=2, score_threshold=-1.5))
    assert per_image.labels.tolist() == [1, 1] and per_image.scores.tolist() == pytest.approx([0.9, 0.8])
    per_class = detect_from_scores("x", boxes, scores, 100, 100,
                                   PostprocessConfig(max_detections=2, cap="class", score_threshold=-1.5))
    assert per_class.labels.tolist() == [1, 1, 2, 2]
    assert per_class.scores.tolist() == pytest.approx([0.9, 0.8, 0.3, 0.2])
    assert per_class.boxes.tolist() == boxes[[0, 1, 3, 4]].tolist()
    with pytest.raises(ConfigError, match="test.cap"):
        load_config(ExperimentConfig, None, ["test.cap=set"])


# ---------------------------------------------------------------- 5. SVMs and +bb without flips

@pytest.mark.parametrize("use_flipped", [True, False])
def test_post_hoc_stages_read_flipped_copies_only_when_asked(caches, monkeypatch, use_flipped):
    pooled, _ = caches
    seen = {}

    def capture(name):
        def train(records, num_classes, config, progress, *names):
            seen[name] = [r.image_id for r in records()]
        return train

    monkeypatch.setattr(post_hoc, "train_svms", capture("svm"))
    monkeypatch.setattr(post_hoc, "train_box_regressor", capture("bbox"))
    head = NoCHead("f8-f3", in_channels=4, roi_size=3)
    post_hoc.fit_svms(head, pooled, 2, "best", SVMConfig(use_flipped=use_flipped), False)
    post_hoc.fit_box_regressor(pooled, 2, BoxRegressionConfig(use_flipped=use_flipped), False)
    plain = ["0", "1", "2"]
    expected = sorted(plain + [f"{i}/flip" for i in plain]) if use_flipped else plain
    assert sorted(seen["svm"]) == sorted(seen["bbox"]) == expected


# ---------------------------------------------------------------- the configs

@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_rows_train_as_sppnet(path):
    cfg = load_experiment(path)
    assert (cfg.noc.dropout, cfg.noc.train_scale, cfg.pyramid.cache) == (0.5, "all", "maps")
    assert cfg.pyramid.flip and not cfg.svm.use_flipped and not cfg.bbox.use_flipped
    assert (cfg.test.cap, cfg.test.max_detections) == ("class", 100)


def test_e2e_vgg16_3fc_drops_out_as_faster_rcnn():
    assert load_experiment(CONFIGS / "e2e" / "paper" / "table8_vgg16_3fc.yaml").noc.dropout == 0.5
    from nocdet.e2e.model import build_e2e_model
    from test_e2e_model import tiny_config

    model = build_e2e_model(tiny_config("naive", "fc16, fc16, fcn+1", noc={"dropout": 0.5}), 3)
    assert dropouts(model) == [0.5, 0.5]


@pytest.mark.parametrize("path", NOT_PAPER, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_other_configs_keep_nocdets_defaults(path):
    cfg = load_experiment(path)
    assert cfg.noc.dropout == 0.0 and cfg.noc.train_scale == "random" and cfg.test.cap == "image"
    assert cfg.svm.use_flipped and cfg.bbox.use_flipped


# ---------------------------------------------------------------- all of it, end to end

@pytest.mark.slow
def test_paper_training_options_run_end_to_end(tmp_path):
    """A maxout NoC with SPPnet's options (maps store, a random pair of all levels, dropout, flips for the
    NoC only, a per-class cap) trains, validates, fits SVMs and +bb, and tests."""
    from nocdet.data.scene_digits import generate_scene_digits
    from nocdet.training.frozen_pipeline import run_frozen_experiment
    from test_frozen_pipeline import tiny_config

    data = generate_scene_digits(tmp_path / "data", num_train=40, num_test=6, seed=3, progress=False)
    cfg = tiny_config(data, tmp_path / "cache", [
        "pyramid.scales=[120, 160, 240]", "pyramid.flip=true", "pyramid.cache=maps", "noc.train_scale=all",
        "noc.dropout=0.5", "svm.use_flipped=false", "bbox.use_flipped=false", "test.cap=class"])
    metrics = run_frozen_experiment(cfg, tmp_path / "run", progress=False)
    assert 0.0 <= metrics["voc07"]["mAP"] <= 1.0
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert model["config"]["noc"]["dropout"] == 0.5 and model["svms"] is not None and model["bbox"] is not None
