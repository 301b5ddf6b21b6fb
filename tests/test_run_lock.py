"""The run-folder lock: one process at a time in a run folder (``nocdet train`` of either setting,
``nocdet sweep``); a second exits 2 naming the holder, and a dead holder's lock is stale."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from nocdet.errors import ConfigError
from nocdet.run_folder import LOCK_FILE, lock_run_folder
from tiny_model import make_data, tiny_overrides

HOLD = """import sys, time
from nocdet.run_folder import lock_run_folder
with lock_run_folder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold(folder) -> subprocess.Popen:
    """A process holding the lock of ``folder`` (returns once it holds it)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def stop(holder: subprocess.Popen) -> None:
    holder.kill()
    holder.wait()
    holder.stdout.close()


def listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    make_data(root, num_train=4, num_test=2)
    return root


def nocdet(*args):
    return subprocess.run([sys.executable, "-m", "nocdet", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    holder = hold(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=rf"run is in use by process {holder.pid} on host "
                                              rf"{socket.gethostname()} \(.*since .*\): wait for it"):
            with lock_run_folder(tmp_path / "run"):
                pass
        record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert record["pid"] == holder.pid  # the refused process left the holder's record alone
    finally:
        stop(holder)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_exit_2_on_a_locked_folder_and_change_nothing(tiny, tmp_path, command):
    run = tmp_path / "run"
    holder = hold(run)
    try:
        before = listing(run)
        sets = [x for o in tiny_overrides(tiny) for x in ("--set", o)]
        extra = ["--noc", "f32-fn+1"] if command == "sweep" else []
        done = nocdet(command, "configs/demo.yaml", *sets, *extra, "--output", run, "--no-progress")
        assert done.returncode == 2, done.stderr
        assert f"in use by process {holder.pid}" in done.stderr and "Traceback" not in done.stderr
        assert listing(run) == before
    finally:
        stop(holder)


def test_a_dead_holders_lock_is_stale_and_taken_over(tmp_path):
    holder = hold(tmp_path)
    stop(holder)  # kill -9: no clean-up runs, the lock file stays behind
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    with lock_run_folder(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_the_lock_is_released_on_an_exception_and_on_ctrl_c(tmp_path):
    with pytest.raises(RuntimeError), lock_run_folder(tmp_path / "a"):
        raise RuntimeError("training failed")
    assert not (tmp_path / "a" / LOCK_FILE).exists()
    stop(hold(tmp_path / "a"))  # another process can take it now

    holder = hold(tmp_path / "b")
    holder.send_signal(signal.SIGINT)
    holder.wait(timeout=30)
    holder.stdout.close()
    assert not (tmp_path / "b" / LOCK_FILE).exists()  # removed by the interrupted holder itself
    with lock_run_folder(tmp_path / "b"):
        pass


def test_a_file_system_without_locks_warns_and_runs(tmp_path, monkeypatch):
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="does not support locks"), lock_run_folder(tmp_path) as folder:
        assert folder == tmp_path


@pytest.mark.slow
def test_two_trainings_on_one_folder_one_refused(tiny, tmp_path):
    """The issue's case: two ``nocdet train`` at once on one --output; before the lock both ran
    and ``log.jsonl`` held every iteration twice."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "nocdet", "train", "configs/demo.yaml", "--output", str(run), "--no-progress",
            *[x for o in tiny_overrides(tiny) for x in ("--set", o)]]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run / LOCK_FILE).exists() and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "in use by process" in second.stderr or "already holds a run" in second.stderr
    iterations = [json.loads(line)["iteration"] for line in (run / "train" / "log.jsonl").read_text().splitlines()
                  if "loss" in json.loads(line)]
    assert len(iterations) == len(set(iterations)) > 0
