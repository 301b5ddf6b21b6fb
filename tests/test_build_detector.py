"""``nocdet.build_detector(config)``: an untrained detector of a config, with the predict API."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nocdet
from nocdet.data.scene_digits import generate_scene_digits
from nocdet.errors import ConfigError
from nocdet.features.registry import build_backbone

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "small-zf.pt"
    torch.manual_seed(1)
    torch.save(build_backbone("small-zf", None, width=0.5).state_dict(), path)
    return path


def config(weights, **sections) -> dict:
    base = {"backbone": {"name": "small-zf", "weights": str(weights), "options": {"width": 0.5}},
            "noc": {"spec": "c16-mo-c16-f32-fn+1", "cls_std": 0.01, "fc_std": 0.01},
            "pyramid": {"scales": [96, 160], "target_area": 2304.0},
            "proposals": {"min_size": 8, "max_boxes": 30, "color_spaces": ["hsv"], "workers": 0}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return base


def test_fresh_head_on_the_configured_weights_predicts(weights):
    detector = nocdet.build_detector(config(weights), CLASSES)
    saved = torch.load(weights)
    for name, tensor in detector.backbone.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])
    assert detector.classes == CLASSES and detector.head.num_outputs == 4
    assert detector.head.spec.has_maxout and detector.svms is None and detector.regressor is None
    cls = detector.head.cls_score
    assert torch.all(cls.bias == 0) and cls.weight.std().item() == pytest.approx(0.01, rel=0.2)  # noc.cls_std
    image = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    prediction = detector.predict(image)[0]
    assert len(prediction.scores) > 0 and set(prediction.names) <= set(CLASSES)
    # an untrained classifier is nearly uniform over the 3 classes + background
    assert np.all(np.abs(prediction.scores - 0.25) < 0.05)


def test_weights_must_exist_unless_random_is_allowed(weights, tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ConfigError, match="nowhere.pt does not exist"):
        nocdet.build_detector(config(missing), CLASSES)
    random = config(weights, backbone={"weights": None})
    with pytest.raises(ConfigError, match="allow_random=True"):
        nocdet.build_detector(random, CLASSES)
    assert nocdet.build_detector(random, CLASSES, allow_random=True).backbone.weights_source == "random"


def test_classes_from_the_config_data_yaml_and_svm_scoring(weights, tmp_path):
    data = generate_scene_digits(tmp_path / "data", num_train=2, num_test=1, seed=0, progress=False)
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(f"""
data: {{root: "{data}"}}
backbone: {{name: small-zf, weights: "{weights}", options: {{width: 0.5}}}}
noc: {{spec: f32-fn+1}}
svm: {{enabled: true}}
test: {{score: svm, score_threshold: -1.5}}
""")
    with pytest.warns(UserWarning, match="scores with softmax"):
        detector = nocdet.build_detector(yaml_path)
    assert detector.classes == [str(d) for d in range(10)] and detector.head.num_outputs == 11
    assert detector.config.test.score == "softmax" and detector.config.test.score_threshold == 0.05
