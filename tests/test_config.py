"""The config loader: inheritance, overrides, unknown keys with suggestions, type checks."""
from dataclasses import dataclass, field

import pytest

from nocdet.config import apply_overrides, dump_yaml, from_dict, load_config, load_yaml
from nocdet.errors import ConfigError


@dataclass
class Train:
    lr: float = 0.001
    steps: list[int] = field(default_factory=lambda: [10, 20])
    flip: bool = True


@dataclass
class Exp:
    name: str = "x"
    seed: int = 0
    weights: str | None = None
    train: Train = field(default_factory=Train)


def test_inheritance_and_override(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ntrain:\n  lr: 0.01\n  steps: [1, 2]\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nseed: 3\ntrain:\n  flip: false\n")
    cfg = load_config(Exp, tmp_path / "child.yaml", ["train.lr=1e-3", "name=run"])
    assert cfg.name == "run" and cfg.seed == 3
    assert cfg.train.lr == 0.001 and cfg.train.steps == [1, 2] and cfg.train.flip is False


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'.*did you mean 'train\.lr'"):
        from_dict(Exp, {"train": {"lrr": 0.1}})


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match=r"seed: expected an integer, got 'three'"):
        from_dict(Exp, {"seed": "three"})
    with pytest.raises(ConfigError, match=r"train\.flip: expected true or false"):
        from_dict(Exp, {"train": {"flip": 1}})
    with pytest.raises(ConfigError, match=r"train\.steps\[1\]: expected an integer"):
        from_dict(Exp, {"train": {"steps": [1, "b"]}})


def test_optional_and_roundtrip():
    cfg = from_dict(Exp, {"weights": None})
    assert cfg.weights is None
    again = from_dict(Exp, __import__("yaml").safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_cycle_and_bad_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")


def test_override_syntax():
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["novalue"])
