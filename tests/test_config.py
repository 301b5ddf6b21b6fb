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


@pytest.mark.parametrize("override,message", [
    ("solver.lr=-1", "solver.lr must be > 0, got -1.0"),
    ("solver.lr=.nan", "solver.lr must be > 0, got nan"),
    ("solver.iterations=0", "solver.iterations is 0 .no NoC training.: only the post-hoc SVMs"),
    ("solver.iterations=-5", "solver.iterations must be >= 0"),
    ("sampling.fg_fraction=3", "sampling.fg_fraction must be <= 1"),
    ("sampling.bg_iou_lo=0.6", r"background band \[bg_iou_lo, bg_iou_hi\) = \[0.6, 0.5\)"),
    ("solver.lr_steps=[700, 0]", r"solver.lr_steps must be > 0, got 0 in \[700, 0\]"),
])
def test_frozen_config_rejects_values_that_cannot_be_meant(override, message):
    from nocdet.experiment import load_experiment

    with pytest.raises(ConfigError, match=message):
        load_experiment("configs/demo.yaml", [override])


def test_both_settings_reject_a_negative_learning_rate():
    from nocdet.experiment import load_experiment

    for config in ("configs/demo.yaml", "configs/e2e/scene_digits/table8_conv_noc.yaml"):
        with pytest.raises(ConfigError, match="solver.lr must be > 0"):
            load_experiment(config, ["solver.lr=-1"])


def test_cli_reports_a_bad_value_without_a_traceback(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nocdet", "train", "configs/demo.yaml", "--set", "solver.lr=-1",
                           "--output", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "solver.lr must be > 0" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_split_names_and_records_follow_the_split_not_the_default_root(tmp_path):
    from pathlib import Path

    from nocdet.experiment import DataConfig, split_name, split_record

    voc = DataConfig(format="voc", root="data/default")
    assert split_name(voc, "test") == "test"
    assert split_record(voc, "test") == {"format": "voc", "root": str(Path("data/default").resolve()),
                                         "test_split": "test"}
    other = split_record(voc, f"{tmp_path}/seed1:test")  # a ROOT:SPLIT test set is read from ROOT
    assert other["root"] == str(tmp_path / "seed1") and other["test_split"] == "test"
    coco = DataConfig(format="coco")
    split = f"{tmp_path}/ann/instances_test.json:{tmp_path}/images"
    assert split_name(coco, split) == "test"  # never a path in a result file name
    assert split_record(coco, split)["images"] == str(tmp_path / "images")
    assert split_name(coco, f"{tmp_path}/mine.json:{tmp_path}/images") == "mine"


@pytest.mark.parametrize("base", ["5", "[tiny.yaml, null]", "{a: 1}", "''"])
def test_a_malformed_base_is_a_config_error(tmp_path, base):
    (tmp_path / "tiny.yaml").write_text("seed: 1\n")
    path = tmp_path / "exp.yaml"
    path.write_text(f"_base_: {base}\nseed: 2\n")
    with pytest.raises(ConfigError, match="_base_ must be a file name or a list of file names"):
        load_yaml(path)


def test_a_key_written_twice_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("solver:\n  iterations: 7\nseed: 1\nsolver:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"exp.yaml.*key 'solver' appears twice in one mapping \(first on line 1\)"
                       r"(.|\n)*line 4"):
        load_yaml(path)
    path.write_text("solver:\n  iterations: 7\n  lr: 0.1\n")
    assert load_yaml(path) == {"solver": {"iterations": 7, "lr": 0.1}}


def test_a_device_that_is_not_one_is_refused_at_load():
    from nocdet.experiment import load_experiment

    with pytest.raises(ConfigError, match="device 'gpu' is not a device: use cpu, cuda or cuda:N"):
        load_experiment("configs/demo.yaml", ["device=gpu"])
    with pytest.raises(ConfigError, match="device 'gpu' is not a device"):
        load_experiment("configs/e2e/scene_digits/table8_conv_noc.yaml", ["device=gpu"])


def test_a_missing_cuda_device_is_refused_before_any_work(tmp_path):
    import subprocess
    import sys

    import torch

    from nocdet.devices import require_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"device 'cuda:{count}': this machine has"):
        require_device(f"cuda:{count}")
    if count:
        pytest.skip("the rest needs a machine without CUDA")
    for command in (["train", "configs/demo.yaml", "--output", str(tmp_path / "run")],
                    ["detect", "--checkpoint", str(tmp_path / "missing.pt"), "x.jpg", "--out", str(tmp_path / "d")]):
        done = subprocess.run([sys.executable, "-m", "nocdet", *command, "--device", "cuda"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "no CUDA device" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
