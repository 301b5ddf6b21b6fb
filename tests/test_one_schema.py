"""One config schema for both settings (issue 17): every file under configs/ gives the values it
gave before the two config roots were merged (a fixture written by the old code), the old
end-to-end layout still loads (files with a note, checkpoints silently), a field of one setting is
refused in the other, and both settings are checked by the same rules."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from nocdet.config import dump_yaml, to_dict
from nocdet.e2e.detector import E2EDetector
from nocdet.e2e.model import build_e2e_model
from nocdet.errors import ConfigError
from nocdet.experiment import config_from_dict, load_experiment, translate_legacy

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((ROOT / "tests" / "fixtures" / "config_values_before_one_schema.json").read_text())
TWIN = "configs/e2e/scene_digits/table8_conv_noc.yaml"
FROZEN = "configs/scene_digits/table6_noc.yaml"


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "options" and key != "files":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_fixture_covers_every_experiment_of_both_settings():
    settings = {"e2e" if "detector" in values else "frozen" for values in BEFORE.values()}
    assert settings == {"e2e", "frozen"} and len(BEFORE) > 100


#: fields a setting gained after the one schema, with the default every config keeps ...
ADDED_SINCE = {"frozen": {"solver.amp": "none"}, "e2e": {}}
#: ... but these, set on purpose (the demo: bf16 where native, benchmarks/RESULTS.md)
SET_SINCE = {"configs/demo.yaml": {"solver.amp": "auto"}}
#: defaults changed since, for every config of the setting: field -> (before, now) (svm.tol:
#: benchmarks/RESULTS.md, "SVM tolerance")
CHANGED_SINCE = {"frozen": {"svm.tol": (1e-4, 1e-3)}, "e2e": {}}


@pytest.mark.parametrize("path", sorted(BEFORE))
def test_every_config_keeps_its_effective_values(path):
    old = flat(translate_legacy(BEFORE[path]))
    new = flat(to_dict(load_experiment(ROOT / path)))
    # new keys: the other setting's fields, which are None, and the fields added since, at their defaults
    added = {**ADDED_SINCE[new["setting"]], **SET_SINCE.get(path, {})}
    assert {k: v for k, v in new.items() if k not in old} == {k: added.get(k) for k in new if k not in old}
    changed = CHANGED_SINCE[new["setting"]]
    assert {k: old[k] for k in changed} == {k: before for k, (before, _) in changed.items()}
    assert {k: new.get(k, "absent") for k in old} == {**old, **{k: now for k, (_, now) in changed.items()}}


def old_form_file(tmp_path: Path, path: str) -> Path:
    """The config of ``path`` written out in the old end-to-end layout (detector + model)."""
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(BEFORE[path]), encoding="utf-8")
    return old


def test_an_old_layout_file_loads_with_a_one_line_note(tmp_path):
    old = old_form_file(tmp_path, TWIN)
    with pytest.warns(FutureWarning, match="old end-to-end layout") as notes:
        cfg = load_experiment(old, ["model.noc.spec=res5a,5b, fcn+1"])  # old-style override too
    assert len(notes) == 1 and "\n" not in str(notes[0].message)
    assert cfg == load_experiment(ROOT / TWIN) and cfg.setting == "e2e"
    with pytest.raises(ConfigError, match="the end-to-end setting is 'faster-rcnn'"):
        load_experiment(old, ["detector=fast-rcnn"])


def test_an_old_layout_e2e_checkpoint_loads(tmp_path):
    cfg = load_experiment(ROOT / TWIN)
    classes = [str(d) for d in range(10)]
    model = build_e2e_model(cfg, len(classes), classes=classes, pretrained=False).eval()
    state = {"config": BEFORE[TWIN], "classes": classes, "model": model.state_dict()}
    assert "model" in state["config"] and "detector" in state["config"]
    detector = E2EDetector.from_state(state)
    assert detector.config == cfg
    image = torch.rand(3, 96, 128)
    with torch.no_grad():
        expected = model([image])[0]
    found = detector.model([image])[0]
    assert torch.equal(found["boxes"], expected["boxes"]) and torch.equal(found["scores"], expected["scores"])


@pytest.mark.parametrize("path, override, owner", [
    (FROZEN, "backbone.variant=c4", "e2e"),
    (FROZEN, "rpn={nms_iou: 0.5}", "e2e"),
    (FROZEN, "solver.warmup_iterations=10", "e2e"),
    (FROZEN, "noc.stage_stride=1", "e2e"),
    (TWIN, "pyramid={scales: [480]}", "frozen"),
    (TWIN, "sampling.images_per_batch=2", "frozen"),
    (TWIN, "test.score=svm", "frozen"),
    (TWIN, "noc.train_scale=best", "frozen"),
    (TWIN, "cache_dir=x", "frozen"),
])
def test_a_field_of_one_setting_is_refused_in_the_other(path, override, owner):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key} \\({owner} only\\)"):
        load_experiment(ROOT / path, [override])


def test_a_field_of_its_own_setting_cannot_be_null():
    with pytest.raises(ConfigError, match="sampling.images_per_batch: null"):
        load_experiment(ROOT / FROZEN, ["sampling.images_per_batch=null"])
    with pytest.raises(ConfigError, match="rpn: null"):
        load_experiment(ROOT / TWIN, ["rpn=null"])


@pytest.mark.parametrize("override, message", [
    ("solver.lr=-1", "solver.lr must be > 0"),
    ("sampling.fg_fraction=3", "sampling.fg_fraction must be <= 1"),
    ("sampling.bg_iou_lo=0.6", "background band"),
    ("test.nms_iou=0", "test.nms_iou must be > 0"),
    ("test.max_detections=0", "test.max_detections must be >= 1"),
    ("solver.lr_steps=[5, 3]", "lr_steps must increase strictly"),
])
def test_both_settings_refuse_the_same_bad_values(override, message):
    for path in (FROZEN, TWIN):
        with pytest.raises(ConfigError, match=message):
            load_experiment(ROOT / path, [override])


@pytest.mark.parametrize("path", [FROZEN, TWIN])
def test_a_saved_config_reloads_as_itself(path, tmp_path):
    cfg = load_experiment(ROOT / path)
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg  # model.pt's "config"
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")  # the run folder's config.yaml
    assert load_experiment(tmp_path / "config.yaml") == cfg


def test_each_setting_gets_its_own_defaults():
    frozen, e2e = config_from_dict({}), config_from_dict({"setting": "e2e"})
    assert (frozen.sampling.bg_iou_lo, frozen.sampling.rois_per_image, frozen.solver.lr) == (0.1, 64, 0.01)
    assert (e2e.sampling.bg_iou_lo, e2e.sampling.rois_per_image, e2e.solver.lr) == (0.0, 512, 0.003)
    assert (e2e.solver.iterations, e2e.solver.val_every, e2e.backbone.variant) == (320000, 0, "c4")
    assert frozen.rpn is None and frozen.backbone.variant is None and e2e.pyramid is None
    assert e2e.sampling.images_per_batch is None and e2e.solver.images_per_batch == 8
    with pytest.raises(ConfigError, match="setting: 'both' is not one of"):
        config_from_dict({"setting": "both"})
