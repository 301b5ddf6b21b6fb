"""The README's Python API example runs as written, on a tiny trained model.

The first ```python block after "## Python API" uses the paths ``make demo`` produces; the test
replaces exactly those (model, config, image) by a tiny model's and runs the block in a fresh
interpreter inside a temporary folder (where its ``model.onnx`` goes).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_model import make_data, train_tiny

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
DEMO_PATHS = {"model": "runs/demo/run/model.pt", "config": "runs/demo/run/config.yaml",
              "image": "data/scene-digits/JPEGImages/500001.jpg"}


def readme_example() -> str:
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_example_uses_the_demo_paths():
    code = readme_example()
    for path in DEMO_PATHS.values():
        assert f'"{path}"' in code, path


def test_readme_example_runs(tmp_path):
    root = tmp_path / "model"
    make_data(root, num_train=16, num_test=2)
    model = train_tiny(root, "run", ["bbox.enabled=true"])
    ours = {"model": model, "config": model.parent / "config.yaml",
            "image": root / "data" / "JPEGImages" / "500001.jpg"}
    code = readme_example()
    for key, path in DEMO_PATHS.items():
        code = code.replace(f'"{path}"', repr(str(ours[key])))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    digits = [str(d) for d in range(10)]
    detections = [line.split() for line in lines[:-2]]
    assert detections and all(d[0] in digits and 0.0 <= float(d[1]) <= 1.0 for d in detections)
    assert lines[-2] == f"{digits} c16-mo-c16-f32-f32-f11"
    assert re.fullmatch(r"\(\d+, 10\) \(\d+, 10, 4\)", lines[-1])
    assert (work / "model.onnx").is_file()
