"""Fixtures shared by several test files (plain helpers live in fakes.py)."""
from __future__ import annotations

import os
import subprocess

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (the test fails if that fails)."""
    if not os.path.exists(CHROMIUM):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            done = subprocess.run(["apt-get", "install", "-y", "chromium"], env=env,
                                  capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.fail(f"chromium is missing and 'apt-get install -y chromium' could not run: {err}")
        if done.returncode != 0 or not os.path.exists(CHROMIUM):
            pytest.fail("chromium is missing and 'apt-get install -y chromium' failed (run it as "
                        f"root):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return CHROMIUM
