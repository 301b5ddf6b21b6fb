"""``kill -9`` at random moments never corrupts the latest checkpoint, and resuming is exact.

Real processes are killed with SIGKILL. To keep the test fast, one helper process (the
"zygote") imports torch and nocdet once and then forks a fresh child per attempt; the child
runs NoC training (``train_noc``) or the ``nocdet pretrain`` command with ``--resume`` and is
SIGKILLed a seeded random delay after its first checkpoint write of that attempt (so the kill lands
in the training, however long start-up takes on the machine). After every kill the checkpoint must
load and must not go backwards; the resumed run must end with the weights of an uninterrupted run.

The atomic writer itself is hit inside its write window by a writer that does nothing but
rewrite a large file: the file is always one of the two complete versions, and the temporary
files of killed writers are removed by the next writer (never more than one is left).
"""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nocdet.data.sample import DetectionDataset, Sample
from nocdet.features.roi_cache import ExtractionSettings, build_cache
from nocdet.training.checkpoint import load_checkpoint
from fakes import FixedTrunk, write_voc

ITERATIONS = 120
NOC = "f256-f256-f3"  # ~0.8 MB of weights + momentum: each checkpoint is a real write

ZYGOTE = r'''
import json, os, sys
import torch
torch.set_num_threads(1)
import nocdet.cli as cli
from nocdet.features.roi_cache import open_cache
from nocdet.noc.head import NoCHead
from nocdet.training.noc_trainer import SolverConfig, train_noc
from nocdet.training.roi_sampler import SamplingConfig
cli.build_parser()  # import every command before forking

def train(job):
    cache = open_cache(job["cache"])
    torch.manual_seed(0)
    head = NoCHead(job["noc"], in_channels=cache.feature_shape[0], roi_size=cache.feature_shape[1])
    solver = SolverConfig(iterations=job["iterations"], lr=0.01, lr_steps=[job["iterations"] // 2],
                          checkpoint_every=1, val_every=10 ** 9, log_every=1)
    train_noc(head, cache, job["out"], sampling=SamplingConfig(rois_per_image=8, bg_iou_lo=0.0), solver=solver,
              pathways="random", seed=1, resume=job["resume"], progress=False)
    torch.save(head.state_dict(), os.path.join(job["out"], "final.pt"))
    return 0

print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        code = train(job) if job["kind"] == "train" else cli.main(job["argv"])
        os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
'''

WRITER = r'''
import sys
from nocdet.io import atomic_write_bytes
payloads = [open(p, "rb").read() for p in sys.argv[2:]]
for k in range(10 ** 9):
    atomic_write_bytes(sys.argv[1], payloads[k % len(payloads)])
    if k == 0:
        print("wrote", flush=True)
'''


class Zygote:
    """The helper process: ``run(job, kill_after, watch)`` forks a child for ``job`` and SIGKILLs it
    ``kill_after`` seconds after it first rewrote ``watch`` (None: let it finish); returns the
    child's wait status. ``first_write`` and ``seconds`` time the last run from its start."""

    def __init__(self, tmp_path: Path):
        script = tmp_path / "zygote.py"
        script.write_text(ZYGOTE)
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert self.proc.stdout.readline().strip() == "ready"
        self.first_write = self.seconds = 0.0

    def run(self, job: dict, kill_after: float | None = None, watch: Path | None = None) -> int:
        before = _stamp(watch)
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        if watch is not None:
            while _stamp(watch) == before and _alive(pid) and time.perf_counter() - t0 < 120:
                time.sleep(0.002)
            self.first_write = time.perf_counter() - t0
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished first
                pass
        status = int(self.proc.stdout.readline())
        self.seconds = time.perf_counter() - t0
        return status

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def _stamp(path: Path | None) -> int | None:
    """The file's modification time in ns (None when absent): changes with every atomic rewrite."""
    try:
        return path.stat().st_mtime_ns if path is not None else None
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def small_cache(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    samples, proposals = [], {}
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(i), path, 64, 48, np.array([[4, 4, 20, 24], [30, 10, 60, 40]], np.float32),
                              [1, 2], [False, False]))
        proposals[str(i)] = (rng.uniform(0, 30, (20, 4)) + [0, 0, 8, 8]).clip(max=[64, 48, 64, 48]).astype(np.float32)
        proposals[str(i)][:, 2:] = np.maximum(proposals[str(i)][:, 2:], proposals[str(i)][:, :2] + 4)
    return build_cache(tmp_path / "cache", DetectionDataset(["a", "b"], samples, "toy"), proposals, FixedTrunk(8),
                       "tiny", ExtractionSettings(scales=[32, 48]), progress=False)


def temporaries(folder: Path) -> list[str]:
    """Temporary files left in ``folder`` (none when a kill came before the folder was made)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) if folder.exists() else []


def kill_and_resume(zygote: Zygote, job: dict, checkpoint: Path, progress_key: str, kills: int, seed: int,
                    max_delay: float) -> tuple[list[int], int]:
    """SIGKILL ``kills`` attempts, each a random time up to ``max_delay`` after the attempt's first
    checkpoint write; check the checkpoint after each; then finish.

    Returns the checkpoint's progress (``progress_key``) seen after each attempt and how many
    attempts the SIGKILL stopped."""
    rng = random.Random(seed)
    seen, killed = [], 0
    for attempt in range(kills):
        status = zygote.run({**job, "resume": True} if job["kind"] == "train" else job,
                            kill_after=rng.uniform(0.0, max_delay), watch=checkpoint)
        killed += os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if checkpoint.exists():
            state = load_checkpoint(checkpoint)  # never torn: always loads
            seen.append(int(state[progress_key]))
            assert seen == sorted(seen), f"attempt {attempt}: progress went backwards: {seen}"
        else:
            seen.append(0)
        # the killed writer may have left its own temporary file; older ones are swept
        assert len(temporaries(checkpoint.parent)) <= 1 + (len(seen) < 2 or seen[-1] == seen[-2]), \
            temporaries(checkpoint.parent)
        if status == 0:
            break
    assert zygote.run({**job, "resume": True} if job["kind"] == "train" else job) == 0
    return seen, killed


@pytest.mark.slow
def test_noc_training_survives_repeated_sigkill(tmp_path, zygote):
    cache = small_cache(tmp_path)
    job = {"kind": "train", "cache": str(cache), "noc": NOC, "iterations": ITERATIONS}
    straight_out = tmp_path / "straight"
    assert zygote.run({**job, "out": str(straight_out), "resume": False}, watch=straight_out / "checkpoint.pt") == 0
    iteration_seconds = (zygote.seconds - zygote.first_write) / ITERATIONS

    out = tmp_path / "killed"  # each attempt runs up to ~15 iterations: six kills stay inside the 120
    seen, killed = kill_and_resume(zygote, {**job, "out": str(out)}, out / "checkpoint.pt", "iteration", kills=6,
                                   seed=11, max_delay=15 * iteration_seconds)
    assert killed >= 3 and any(0 < i < ITERATIONS for i in seen), f"the kills missed the training: {seen}"
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == ITERATIONS
    straight = torch.load(straight_out / "final.pt")
    resumed = torch.load(out / "final.pt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
    assert temporaries(out) == []  # the finishing run swept the killed writers' files


def _shapes(root: Path) -> None:
    """A tiny VOC set: white squares ("block") and outlines ("frame") on dark noise."""
    rng = np.random.default_rng(3)
    images, objects = {}, {}
    for image_id in (f"{i:04d}" for i in range(12)):
        image = rng.integers(0, 60, (64, 64, 3)).astype(np.uint8)
        objects[image_id] = []
        for label, x in ((1, 4), (2, 36)):
            side, y = int(rng.integers(14, 22)), int(rng.integers(2, 40))
            image[y:y + side, x:x + side] = 230
            if label == 2:
                image[y + 4:y + side - 4, x + 4:x + side - 4] = 20
            objects[image_id].append(((x, y, x + side, y + side), label, False))
        images[image_id] = image
    write_voc(root, objects, ["block", "frame"], size=(64, 64), split="train", ext="png",
              image=lambda image_id, *_: images[image_id])


@pytest.mark.slow
def test_pretrain_command_survives_repeated_sigkill(tmp_path, zygote):
    _shapes(tmp_path / "voc")

    def job(out: Path) -> dict:
        return {"kind": "cli", "argv": ["pretrain", "--voc-root", str(tmp_path / "voc"), "--option", "width=0.25",
                                        "--option", "fc_dim=32", "--epochs", "6", "--crop-size", "32",
                                        "--batch-size", "16", "--threads", "1", "--no-progress", "--resume",
                                        "--out", str(out)]}

    assert zygote.run(job(tmp_path / "straight.pt"), watch=tmp_path / "straight.pt") == 0
    epoch_seconds = (zygote.seconds - zygote.first_write) / 5  # the first write ends epoch 1 of 6
    out = tmp_path / "killed" / "weights.pt"
    seen, killed = kill_and_resume(zygote, job(out), out, "epoch", kills=4, seed=5, max_delay=0.8 * epoch_seconds)
    assert killed >= 2, seen
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(out)
    assert b["epoch"] == 6 and a["history"] == b["history"]
    for key in a["backbone"]:
        assert torch.equal(a["backbone"][key], b["backbone"][key]), key
    assert torch.equal(a["fc"]["weight"], b["fc"]["weight"])
    assert temporaries(out.parent) == []


def _payload(path: Path, version: int, mb: int = 24) -> Path:
    buffer = io.BytesIO()
    torch.save({"version": version, "data": torch.full((mb * 2 ** 18,), float(version))}, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def test_atomic_writer_killed_mid_write_keeps_a_complete_file(tmp_path):
    payloads = [_payload(tmp_path / "a.bin", 1), _payload(tmp_path / "b.bin", 2)]
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    target = tmp_path / "out" / "checkpoint.pt"
    rng = random.Random(7)
    stale_seen = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(target), *map(str, payloads)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "wrote"  # its first write is done: older temporaries are swept
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(target, weights_only=True)
        assert state["version"] in (1, 2)
        assert torch.equal(state["data"], torch.full_like(state["data"], float(state["version"])))
        left = temporaries(target.parent)
        assert len(left) <= 1, left
        stale_seen += len(left)
    # the writer spends nearly all its time writing: some kills must land inside a write
    assert stale_seen >= 1
    # a later writer of any file in the folder sweeps the dead writers' temporary files
    from nocdet.io import atomic_write_text

    subprocess.run([sys.executable, "-c", "import sys; from nocdet.io import atomic_write_text; "
                    "atomic_write_text(sys.argv[1], 'x')", str(target.parent / "other.txt")], check=True)
    assert temporaries(target.parent) == []
    atomic_write_text(target.parent / "mine.txt", "y")  # a live writer's file is never swept: none left here
    assert sorted(p.name for p in target.parent.iterdir()) == ["checkpoint.pt", "mine.txt", "other.txt"]


def test_live_writers_temporary_files_are_kept(tmp_path):
    from nocdet.io import is_orphan, owner_tag, remove_orphans

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = owner_tag().split("-")[0]
    live = tmp_path / f".ckpt.pt.{owner_tag()}.abcd1234.tmp"
    orphan = tmp_path / f".ckpt.pt.{host}-{dead.pid}.abcd1234.tmp"
    other_host = tmp_path / f".ckpt.pt.{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead.pid}.abcd1234.tmp"
    unrelated = tmp_path / "notes.tmp"
    orphan_dir = tmp_path / f"shard-00000-of-00001.{host}-{dead.pid}.xyz_0009.tmp"
    for path in (live, orphan, other_host, unrelated):
        path.write_text("x")
    orphan_dir.mkdir()
    (orphan_dir / "features.npy").write_text("x")
    assert is_orphan(orphan.name) and is_orphan(orphan_dir.name) and not is_orphan(live.name)
    remove_orphans(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, other_host, unrelated))
