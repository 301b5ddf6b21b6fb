"""benchmarks/gpu_check.sh without a GPU: its syntax, its plan, its refusals and its bookkeeping.

The GPU itself is not needed: a machine without CUDA must get a clear refusal at once, and a
stand-in ``python`` (``PYTHON=...``) that claims a device lets the step loop, the report file and
the summary run here, with one step made to fail.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BUDGET_S = 8 * 60


def run_script(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_the_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_dry_run_lists_the_cuda_tests_and_the_gpu_benchmarks_within_eight_minutes(tmp_path):
    done = run_script("--dry-run", env={"OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert f"would write {tmp_path}/gpu_check.txt" in done.stdout
    steps = re.findall(r"^step: (.+) \(timeout (\d+) s\): (.+)$", done.stdout, re.MULTILINE)
    commands = [command for _, _, command in steps]
    assert len(steps) == 3
    assert commands[0].endswith("-m pytest -q -p no:cacheprovider -m cuda")
    assert commands[1].endswith("benchmarks/bench_noc.py --device cuda")
    assert commands[2].endswith("benchmarks/bench_e2e.py --device cuda")
    assert sum(int(limit) for _, limit, _ in steps) <= BUDGET_S
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_without_out_the_numbers_go_to_a_dated_file_in_benchmarks():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60, env=env)
    assert re.search(r"would write benchmarks/gpu_check-\d{4}-\d\d-\d\d-\d{4}\.txt$", done.stdout, re.MULTILINE)


def test_a_machine_without_cuda_is_told_so_at_once(tmp_path):
    # no device visible to torch (even on a GPU machine) and no nvidia-smi on PATH
    done = run_script(env={"OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin",
                           "PYTHON": sys.executable})
    assert done.returncode == 2
    assert "gpu_check: no CUDA device visible to torch (torch " in done.stderr and "nothing run" in done.stderr
    assert not (tmp_path / "gpu_check.txt").exists()


def test_a_missing_environment_and_a_bad_argument_are_refused(tmp_path):
    done = run_script(env={"PYTHON": str(tmp_path / "no-python")})
    assert done.returncode == 2 and "run 'make setup' first" in done.stderr
    done = run_script("--fast")
    assert done.returncode == 2 and "usage: bash benchmarks/gpu_check.sh [--dry-run]" in done.stderr


FAKE_PYTHON = """#!/bin/sh
case "$*" in
  *"-m pytest"*) echo "fake pytest: 9 passed"; exit 0 ;;
  *bench_noc.py*) echo "fake noc: mlp 123.4 GFLOP/s"; exit 3 ;;
  *bench_e2e.py*) echo "fake e2e: ours/torchvision 1.31x"; exit 0 ;;
  *) echo "fake torch 9.9, CUDA 99.9" ;;
esac
"""


def test_a_failed_step_is_reported_and_the_others_still_run(tmp_path):
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out"
    done = run_script(env={"OUT": str(out), "PYTHON": str(python)})
    assert done.returncode == 1, done.stderr
    report = (out / "gpu_check.txt").read_text()
    assert report.startswith("== gpu_check: ")
    assert "fake torch 9.9, CUDA 99.9" in report[:report.index("#####")]  # the header, before the steps
    for number in ("fake pytest: 9 passed", "fake noc: mlp 123.4 GFLOP/s", "fake e2e: ours/torchvision 1.31x"):
        assert number in report
    summary = report[report.index("##### summary"):].splitlines()
    assert summary[1].startswith("PASS  cuda tests (")
    assert summary[2].startswith("FAIL  NoC forward and pyramid pooling (bench_noc.py) (exit status 3, ")
    assert summary[3].startswith("PASS  end-to-end detector vs torchvision (bench_e2e.py) (")
    assert summary[4] == f"gpu_check: 2 of 3 steps passed; numbers in {out}/gpu_check.txt"
    assert done.stdout.endswith(summary[4] + "\n")  # what is printed is what is written


def test_ci_and_make_test_never_run_it():
    sources = [ROOT / "Makefile", *(ROOT / ".github").rglob("*.y*ml")]
    assert all("gpu_check" not in path.read_text() for path in sources)


@pytest.mark.slow  # collects in a fresh interpreter (torch import)
def test_the_cuda_marker_selects_the_cuda_tests():
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda",
                           "-p", "no:cacheprovider", "tests/test_cuda.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tests/test_cuda.py::test_training_on_cuda_runs_saves_the_cuda_state_and_resumes[bfloat16]" in done.stdout


@pytest.mark.slow  # four interpreters importing torch and the benchmark
def test_the_benchmarks_refuse_a_missing_cuda_device_with_a_clear_message():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device visible, even on a GPU machine
    for bench in ("bench_noc.py", "bench_e2e.py"):
        for device, message in (("cuda", "--device 'cuda': this machine has no CUDA device"),
                                ("gpu", "--device 'gpu' is not a device: use cpu, cuda or cuda:N")):
            done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / bench), "--quick", "--device", device],
                                  capture_output=True, text=True, timeout=120, env=env)
            assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert "==" not in done.stdout  # refused before the header: nothing measured
