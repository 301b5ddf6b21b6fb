"""Where the tensors go: a config's or a command's ``device``, checked before any work starts."""
from __future__ import annotations

import re

from nocdet.errors import ConfigError

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device_name(device: str, key: str = "device") -> None:
    """Refuse a device string that is neither ``cpu`` nor ``cuda`` / ``cuda:N`` (e.g. ``gpu``)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"{key} {device!r} is not a device: use cpu, cuda or cuda:N")


def require_device(device: str, key: str = "device") -> None:
    """Refuse a CUDA device this machine does not have, saying what it has."""
    check_device_name(device, key)
    if device == "cpu":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise ConfigError(f"{key} {device!r}: this machine has {have} (torch {torch.__version__}); "
                          f"use cpu{' or cuda:0..' + str(count - 1) if count else ''}")


#: /proc/cpuinfo flags of CPUs that compute in bfloat16 natively (AVX512-BF16, AMX); without them
#: oneDNN emulates bf16 and autocast is slower than fp32 (2.3x with AVX-512, 19x with AVX2 only,
#: benchmarks/RESULTS.md, "bfloat16 NoC training")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def has_native_bf16(device: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA device that torch says supports it,
    or a CPU whose ``cpuinfo`` flags name one of :data:`NATIVE_BF16_FLAGS` (False where unreadable)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)
