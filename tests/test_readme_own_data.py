"""The README's "Train on your own data" example runs as written, in a fresh folder: its config
files and every command of its console block, on a tiny generated data set in the COCO and the
VOC layout. Only sizes change: fewer images, and a smaller schedule and pyramid for ``train``."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECTION = "\n## Train on your own data\n"
SMALL_DATA = "--train 16 --test 4 --image-size 160"
SMALL_TRAIN = ["proposals.max_boxes=40", "proposals.max_side=160", "pyramid.scales=[160]",
               "pyramid.flip=false", "solver.iterations=8", "solver.lr_steps=[6]", "solver.checkpoint_every=8",
               "solver.log_every=4", "proposals.workers=0"]


def readme_section() -> str:
    return (ROOT / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]


def config_files() -> dict[str, str]:
    """``{file name: text}`` of the section's YAML blocks (each starts with ``# <name>``)."""
    blocks = re.findall(r"```yaml\n(.*?)```", readme_section(), re.DOTALL)
    return {block.splitlines()[0].removeprefix("# ").strip(): block for block in blocks}


def commands() -> list[list[str]]:
    block = re.search(r"```console\n(.*?)```", readme_section(), re.DOTALL).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_example_has_both_configs_and_the_whole_path():
    assert set(config_files()) == {"my_coco.yaml", "my_voc.yaml"}
    steps = {c[1] for c in commands()}
    assert {"data", "train", "evaluate", "detect", "report"} <= steps


def test_the_example_runs(tmp_path):
    for name, text in config_files().items():
        (tmp_path / name).write_text(text.replace("_base_: configs/demo.yaml",
                                                  f"_base_: {ROOT / 'configs' / 'demo.yaml'}"))
    for argv in commands():
        assert argv[0] == "nocdet"
        line = " ".join(argv)
        if argv[1] == "data":
            argv = [a for a in argv if a not in ("--train", "--test") and not a.isdigit()] + SMALL_DATA.split()
        if argv[1] == "train":
            argv += [f"--set={o}" for o in SMALL_TRAIN] + ["--no-progress"]
        if argv[1] in ("evaluate", "detect") and "--checkpoint" in argv:
            argv.append("--no-progress")
        proc = subprocess.run([sys.executable, "-m", "nocdet", *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        assert "changed since" not in proc.stderr
        assert "UserWarning" not in proc.stderr, proc.stderr
    coco = tmp_path / "runs" / "my-coco"
    for path in ("metrics.json", "model.pt", "diagnosis.json", "results/coco_results.json", "eval/metrics.json",
                 "detect/detections.json", "report.html"):
        assert (coco / path).is_file(), path
    gt = json.loads((tmp_path / "mydata" / "annotations" / "instances_test.json").read_text())
    ids = {c["name"]: c["id"] for c in gt["categories"]}
    detections = json.loads((coco / "detect" / "detections.json").read_text())
    assert all(d["category_id"] == ids[d["category"]] for d in detections)
    assert "only VOC" not in (coco / "report.html").read_text()
    assert (tmp_path / "runs" / "my-voc" / "metrics.json").is_file()
