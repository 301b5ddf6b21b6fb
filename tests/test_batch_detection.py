"""Pipelined detection over many images (nocdet.batch_detection): the detections of the one-image
path, in input order, failures per image, and the worker processes gone however the run ends."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import nocdet.cli as cli
from nocdet.batch_detection import detect_images, pipeline_split, pipelined
from nocdet.data.sample import Detections
from nocdet.data.scene_digits import generate_scene_digits
from nocdet.data.voc import read_voc
from nocdet.detector import load
from nocdet.errors import ConfigError, DataError, NocdetError
from nocdet.experiment import load_experiment
from nocdet.frozen_detector import FrozenNoCDetector, build_frozen_backbone, build_head
from nocdet.proposals.selective_search import selective_search
from nocdet.training.checkpoint import save_checkpoint
from test_detect_folder import mixed_folder, tiny_model

SRC = Path(__file__).resolve().parents[1] / "src"
OPTIONS = {"min_size": 4, "max_boxes": 12, "max_side": None, "ks": [100], "sigma": 0.8, "color_spaces": ["hsv"]}
DIGITS = [str(d) for d in range(10)]


def random_images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (int(rng.integers(30, 60)), int(rng.integers(30, 60)), 3), dtype=np.uint8)
            for _ in range(count)]


class FakeDetector:
    """Selective Search boxes as detections (score 1, label 1), after a pause that makes even
    images finish after the odd ones behind them; image "3" fails. Records each call's thread and
    torch thread count."""

    def __init__(self, pause: float = 0.15):
        self.pause = pause
        self.calls: list[tuple[str, int, int]] = []

    def proposal_options(self) -> dict:
        return dict(OPTIONS)

    def detect_proposals(self, image: np.ndarray, boxes: np.ndarray, image_id: str = "image") -> Detections:
        self.calls.append((image_id, threading.get_ident(), torch.get_num_threads()))
        time.sleep(self.pause if int(image_id) % 2 == 0 else 0.0)
        if image_id == "3":
            raise ValueError("image 3 is cursed")
        return Detections(image_id, boxes, np.ones(len(boxes)), np.ones(len(boxes), dtype=np.int64))

    def detect(self, image: np.ndarray, image_id: str = "image") -> Detections:
        return self.detect_proposals(image, selective_search(image, **OPTIONS), image_id)


def load_or_fail(source: np.ndarray | None) -> np.ndarray:
    if source is None:
        raise DataError("cannot read image: gone", path="missing.png")
    return source


def random_model(path: Path, classes: list[str]) -> Path:
    """A model.pt with random weights: a quarter-width small-zf, one scale, Selective Search proposals."""
    cfg = load_experiment(None, [
        "backbone.name=small-zf", "backbone.options={width: 0.25, fc_dim: 32}", "proposals.min_size=6",
        "proposals.max_boxes=20", "proposals.color_spaces=[hsv]", "proposals.ks=[100]", "proposals.max_side=160",
        "pyramid.scales=[96, 128]", "pyramid.max_size=200", "noc.spec=f32-fn+1", "svm.enabled=false",
        "bbox.enabled=false", "test.score=softmax", "test.score_threshold=0.0"])
    torch.manual_seed(0)
    backbone = build_frozen_backbone(cfg)
    head = build_head(cfg, backbone, len(classes))
    save_checkpoint(path, {"format": "nocdet-frozen-detector", "version": 1, "config": asdict(cfg),
                           "classes": classes, "similarity_groups": [], "head": head.state_dict(),
                           "backbone_state": backbone.state_dict(), "svms": None, "bbox": None})
    return path


def assert_same(found: list[Detections], expected: list[Detections]) -> None:
    """Bit for bit: same images in the same order, same boxes, scores and labels."""
    assert [d.image_id for d in found] == [d.image_id for d in expected]
    for a, b in zip(found, expected):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    return generate_scene_digits(root / "data", num_train=8, num_test=7, seed=5, progress=False)


@pytest.fixture()
def threads():
    """Restores this process's torch threads after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_split_gives_a_lane_per_thread_and_half_as_many_workers():
    assert pipeline_split(1) == (0, 1)  # one CPU: no pipeline
    assert pipeline_split(2) == (1, 2)
    assert pipeline_split(8) == (4, 8)
    assert pipeline_split(2, workers=3) == (3, 2)
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        pipeline_split(2, workers=-1)


@pytest.mark.parametrize(("torch_threads", "workers"), [(2, None), (1, 1)])
def test_pipelined_dataset_equals_the_one_image_path_bit_for_bit(digits, tmp_path, monkeypatch, threads,
                                                                  torch_threads, workers):
    detector = load(random_model(tmp_path / "model.pt", DIGITS))
    dataset = read_voc(digits, "test", DIGITS)
    torch.set_num_threads(1)  # the one-image path at one torch thread: the truth (module doc)
    expected = detector.detect_dataset(dataset, progress=False, workers=0)
    assert sum(len(d.scores) for d in expected) > 0

    def not_here(*args, **kwargs):
        raise AssertionError("the pipeline runs Selective Search in its workers, not detect in this process")

    monkeypatch.setattr(FrozenNoCDetector, "detect", not_here)
    monkeypatch.setattr(FrozenNoCDetector, "proposals", not_here)
    torch.set_num_threads(torch_threads)
    assert_same(detector.detect_dataset(dataset, progress=False, workers=workers), expected)
    assert torch.get_num_threads() == torch_threads  # restored after the lanes' single thread
    assert multiprocessing.active_children() == []


def test_results_keep_input_order_and_failures_stay_per_image(threads):
    images = random_images(8)
    sources: list[np.ndarray | None] = list(images)
    sources[5] = None  # cannot be loaded
    torch.set_num_threads(3)
    detector = FakeDetector()
    results = list(pipelined(detector, [(str(i), s) for i, s in enumerate(sources)], load_or_fail, workers=2))

    assert [r.image_id for r in results] == [str(i) for i in range(8)]
    assert [r.stage for r in results] == [None, None, None, "detect", None, "load", None, None]
    assert isinstance(results[3].error, ValueError) and "cursed" in str(results[3].error)
    assert isinstance(results[5].error, DataError) and results[5].image is None
    for i in (0, 1, 2, 4, 6, 7):  # the boxes the workers found are Selective Search's here
        assert np.array_equal(results[i].detections.boxes, selective_search(images[i], **OPTIONS))
        assert results[i].image is images[i]
    assert len({thread for _, thread, _ in detector.calls}) > 1  # several images at a time
    assert {count for _, _, count in detector.calls} == {1}  # one torch thread per lane
    assert torch.get_num_threads() == 3
    assert multiprocessing.active_children() == []


def test_one_at_a_time_reports_the_same_failures(threads):
    sources: list[np.ndarray | None] = list(random_images(6))
    sources[1] = None
    items = [(str(i), s) for i, s in enumerate(sources)]
    one = list(detect_images(FakeDetector(pause=0), items, load_or_fail, workers=0))
    torch.set_num_threads(1)  # the default at one thread: no pipeline
    assert list(detect_images(FakeDetector(pause=0), items, load_or_fail))[2].detections is not None
    piped = list(detect_images(FakeDetector(pause=0), items, load_or_fail, workers=1))
    for a, b in zip(one, piped, strict=True):
        assert (a.image_id, a.stage, type(a.error), str(a.error)) == (b.image_id, b.stage, type(b.error), str(b.error))
        if a.detections is not None:
            assert_same([b.detections], [a.detections])


def test_closing_early_shuts_the_workers_down(threads):
    torch.set_num_threads(2)
    results = pipelined(FakeDetector(pause=0.05), [(str(i), a) for i, a in enumerate(random_images(30))],
                        load_or_fail, workers=2)
    with closing(results):
        for result in results:
            if result.image_id == "2":
                break
    assert multiprocessing.active_children() == []
    assert torch.get_num_threads() == 2


def test_workers_for_a_detector_without_selective_search_are_an_error():
    class OwnProposals:
        def detect(self, image, image_id="image"):
            return Detections(image_id, np.zeros((0, 4)), np.zeros(0), np.zeros(0))

    items = [(str(i), a) for i, a in enumerate(random_images(3))]
    with pytest.raises(ConfigError, match="does not use"):
        detect_images(OwnProposals(), items, load_or_fail, workers=2)
    assert [r.error for r in detect_images(OwnProposals(), items, load_or_fail)] == [None] * 3


CTRL_C_SCRIPT = textwrap.dedent("""
    import multiprocessing, sys, time
    import numpy as np
    from nocdet.batch_detection import pipelined
    from nocdet.data.sample import Detections

    class Slow:
        def proposal_options(self):
            return {"min_size": 4, "max_boxes": 12, "max_side": None, "ks": [100], "sigma": 0.8,
                    "color_spaces": ["hsv"]}
        def detect_proposals(self, image, boxes, image_id):
            time.sleep(0.3)
            return Detections(image_id, boxes, np.ones(len(boxes)), np.ones(len(boxes), dtype=np.int64))

    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(200)]
    try:
        for k, result in enumerate(pipelined(Slow(), [(str(i), a) for i, a in enumerate(images)], lambda a: a,
                                             workers=2, lanes=2)):
            if k == 0:
                print("workers", *[p.pid for p in multiprocessing.active_children()], flush=True)
    except KeyboardInterrupt:
        print("interrupted; children left:", len(multiprocessing.active_children()), flush=True)
        sys.exit(130)
""")


@pytest.mark.slow
def test_ctrl_c_stops_the_run_and_its_workers(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline().split()
        assert first and first[0] == "workers", proc.stderr.read()
        workers = [int(pid) for pid in first[1:]]
        assert len(workers) == 2
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "children left: 0" in out
    assert "Traceback" not in err  # the workers ignore Ctrl-C: no traceback from each of them
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_detect_folder_pipelined_writes_what_one_at_a_time_writes(tmp_path, monkeypatch, capsys):
    model = tiny_model(tmp_path / "model.pt")
    good, bad = mixed_folder(tmp_path / "images")
    monkeypatch.setattr(cli, "COMMANDS", ["detect"])
    outputs = {}
    # the default split of 2 threads (1 worker, 2 lanes), and one image at a time at one torch thread
    for name, options in {"pipelined": ["--threads", "2"], "one": ["--threads", "1", "--workers", "0"]}.items():
        out = tmp_path / name
        code = cli.main(["detect", "--checkpoint", str(model), str(tmp_path / "images"), "--out", str(out),
                         "--no-progress", *options])
        printed = capsys.readouterr().out
        assert code == 1
        outputs[name] = (printed.replace(str(out), "OUT"), {p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs["pipelined"] == outputs["one"]  # the same PNGs, JSON files, report of the bad files
    assert len(json.loads(outputs["one"][1]["failed.json"])) == len(bad)
    assert sum(name.endswith(".png") for name in outputs["one"][1]) == len(good)


@pytest.mark.slow
def test_evaluate_checkpoint_pipelined_equals_one_at_a_time(digits, tmp_path, monkeypatch, capsys):
    model = random_model(tmp_path / "model.pt", DIGITS)
    monkeypatch.setattr(cli, "COMMANDS", ["evaluate"])
    written = {}
    for workers in ("0", "1"):
        out = tmp_path / f"eval{workers}"
        assert cli.main(["evaluate", "--checkpoint", str(model), "--voc-root", str(digits), "--split", "test",
                         "--out", str(out), "--no-progress", "--threads", "1", "--workers", workers]) == 0
        written[workers] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    capsys.readouterr()
    assert written["1"] == written["0"] and len(written["0"]) > 2

    image = next(p for p in sorted((digits / "JPEGImages").iterdir()) if p.stem in
                 {s.image_id for s in read_voc(digits, "test", DIGITS).samples})
    broken = tmp_path / "broken"
    (broken / "JPEGImages").mkdir(parents=True)
    for item in digits.iterdir():  # the same data, one test image truncated
        if item.name != "JPEGImages":
            (broken / item.name).symlink_to(item)
    for picture in (digits / "JPEGImages").iterdir():
        (broken / "JPEGImages" / picture.name).symlink_to(picture)
    (broken / "JPEGImages" / image.name).unlink()
    (broken / "JPEGImages" / image.name).write_bytes(image.read_bytes()[:400])
    errors = []
    for workers in ("0", "1"):
        assert cli.main(["evaluate", "--checkpoint", str(model), "--voc-root", str(broken), "--split", "test",
                         "--no-progress", "--threads", "1", "--workers", workers]) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1] and image.name in errors[0]


def test_a_dead_worker_ends_the_run_with_an_error(threads):
    torch.set_num_threads(2)
    results = pipelined(FakeDetector(pause=0.1), [(str(i), a) for i, a in enumerate(random_images(40))],
                        load_or_fail, workers=2)
    with closing(results), pytest.raises(NocdetError, match="worker process died"):
        for result in results:
            if result.image_id == "1":
                os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
    assert multiprocessing.active_children() == []
