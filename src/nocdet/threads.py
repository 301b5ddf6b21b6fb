"""CPU threads of the heavy commands (``--threads``), chosen so that a shared machine does not
make them collapse.

Measured (small-zf forward pass on a 480 x 640 image, a 2-core machine that other jobs kept at
a load of 3-7): 2 torch threads took 460-860 ms per image, 1 thread 155-200 ms, and 2 threads
with ``OMP_WAIT_POLICY=PASSIVE`` 180-250 ms. The collapse is OpenMP's spin-waiting: a thread
that finishes its share busy-waits for the others, burning the core a descheduled sibling
needs. Hence the defaults: passive waiting (set before torch is imported, unless the user set
``OMP_WAIT_POLICY``), and as many threads as the load average leaves CPUs free (at least 1).
"""
from __future__ import annotations

import argparse
import math
import os

THREADS_HELP = ("CPU threads for torch and OpenCV (default: the CPUs the 1-minute load average leaves "
                "free, at least 1; 1 is best on a busy machine)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--threads N`` option of a heavy command."""
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N", help=THREADS_HELP)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads() -> int:
    """The available CPUs minus the other load (1-minute load average, this process counted
    as one of it), at least 1."""
    cpus = available_cpus()
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return cpus
    return max(1, min(cpus, cpus - math.floor(max(load - 1.0, 0.0))))


def use_threads(threads: int | None) -> int:
    """Set this process's torch and OpenCV threads to ``threads`` (None: :func:`default_threads`);
    returns the number set. Call it before torch is first imported for passive OpenMP waiting."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    count = threads or default_threads()
    import cv2
    import torch

    torch.set_num_threads(count)
    cv2.setNumThreads(count)
    return count


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
