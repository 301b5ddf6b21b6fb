"""What every benchmark shares: the machine line, interleaved timing, FLOP counting, PASS/MISS.

The benchmarks import it as a sibling module (``sys.path`` holds ``benchmarks/`` when one is run as
a script; the others insert it).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_line() -> str:
    """CPU, usable CPUs, torch version and threads, and the load average before the run."""
    return (f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs usable, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load average before {os.getloadavg()[0]:.1f}")


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_interleaved(cases: dict[str, Callable[[], object]], warmup: int, rounds: int,
                     sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds of every timed round per case; each round runs every case once, in reverse order
    every other round, so that neither load drifts nor caches favour one side."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for index in range(warmup + rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            cases[name]()
            sync()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
