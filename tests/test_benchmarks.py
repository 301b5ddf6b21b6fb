"""Every benchmark's --quick mode runs to its end and prints its ratio lines (a broken
benchmark cannot land unnoticed). Slow: each is a subprocess of tens of seconds or more."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Per benchmark: lines its quick run must print (regular expressions, one match each).
EXPECTED = {
    "bench_noc.py": [r"pool 1 scale / mlp forward: [\d.]+%  (PASS|MISS)",
                     r"pool 2 scales / maxout forward: [\d.]+%  (PASS|MISS)",
                     r"maxout / conv time: [\d.]+x  (PASS|MISS)",
                     r"conv channels_last / default \(NCHW\) time: [\d.]+x  (PASS|MISS)"],
    "bench_e2e.py": [r"ours / torchvision infer speed: [\d.]+  (PASS|MISS)",
                     r"ours / torchvision train speed: [\d.]+  (PASS|MISS)"],
    "bench_frozen.py": [r"speed-up of the cache, .+: [\d.]+x  (PASS|MISS)",
                        r"own memory at 2x the images: x[\d.]+  (PASS|MISS)",
                        r"pipelined / one-image detection: [\d.]+x  (PASS|MISS)"],
    "bench_layout.py": [r"efficientnet-lite0 infer +channels_last .+x .+  (PASS|MISS)",
                        r"demo NoC train +NCHW .+x .+  (PASS|MISS)",
                        r"small-resnet frozen BN, BN train +folded .+x .+  (PASS|MISS)"],
    "bench_load.py": [r"detect: PASS: finished and reported exactly the unreadable files",
                      r"large images: PASS: detect's memory grew by"],
}


def test_every_benchmark_is_covered():
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py")) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("bench", sorted(EXPECTED))
def test_quick_mode_runs(bench, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / bench), "--quick"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{bench} --quick exited {result.returncode}:\n{result.stderr[-3000:]}"
    for pattern in EXPECTED[bench]:
        assert re.search(pattern, result.stdout), f"{bench} printed no line matching {pattern!r}"
