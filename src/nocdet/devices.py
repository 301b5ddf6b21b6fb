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
