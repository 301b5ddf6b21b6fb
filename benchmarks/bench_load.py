"""Load benchmark: evaluation, RoI feature caching and ``nocdet detect`` at realistic sizes.

Three stages, each in its own process so that each reports its own peak memory
(``VmHWM`` on Linux, else ``ru_maxrss``; with the RSS after imports and inputs as a baseline):

* ``voc`` / ``coco``: VOC07 and COCO evaluation of D = 100,000 synthetic detections on 5,000
  synthetic images (20 classes, 1-5 objects each; half the detections are jittered ground
  truth, half random boxes);
* ``cache``: RoI feature caching of N = 1,000 scene-digits images with a random-weight
  ``small-zf`` (width 0.5: 32 channels, 6 x 6 RoIs; about 1 GB of cache for 1,000 images), two pyramid scales (240, 320) and 200
  random proposal boxes per image (so Selective Search does not dominate); reports the time per
  image, the peak RSS and the cache size on disk: features are streamed image by image, so the
  peak RSS stays far below the cache size;
* ``detect``: ``nocdet detect`` with a tiny random-weight model (quarter-width small-zf, one
  scale of 160 px, Selective Search on hsv at 160 px, at most 100 boxes) over N mixed images (JPEG, PNG,
  grayscale, RGBA, 16-bit, palette, BMP, WebP) of which 2% (at least 3) are unreadable (empty,
  truncated, not an image); it must finish, report exactly those files and exit 1;
* ``bigjpeg`` / ``strip``: ``nocdet detect`` (the same model) on one 20000 x 20000 JPEG (over PIL's
  decompression-bomb limit by its stored size; libjpeg decodes it at 1/8) and on one 20000 x 200
  PNG of noise (its pyramid is shrunk to 4 x the largest scale); each must finish with its memory
  growing by less than ``LARGE_BOUND_MB`` over the baseline (after detecting on one small image
  in the same process; the full JPEG would be 1.1 GB as RGB).
  Before the bound, the strip took 7 min and 4.3 GB with a demo model.

Usage::

    python benchmarks/bench_load.py                   # full size (several minutes on 2 cores)
    python benchmarks/bench_load.py --quick           # smoke run: 40 images, 500 / 10,000 for eval
    python benchmarks/bench_load.py --images 200 --eval-images 1000 --detections 20000 --only cache detect

Prints a summary table; exits 1 if a stage crashed or ``detect`` did not report the broken files.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

STAGES = ("voc", "coco", "cache", "detect", "bigjpeg", "strip")
LARGE = {"bigjpeg": ("huge.jpg", 20000, 20000), "strip": ("strip.png", 20000, 200)}
LARGE_BOUND_MB = 300
NUM_CLASSES = 20
BROKEN_EVERY = 50  # 2% of the detect images are unreadable (at least 3 in a small run)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this program alone
    (``ru_maxrss`` would also count the launching process's memory, kept across fork + exec);
    elsewhere ``ru_maxrss``."""
    with contextlib.suppress(OSError, StopIteration), open("/proc/self/status") as f:
        return int(next(x for x in f if x.startswith("VmHWM:")).split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    with contextlib.suppress(OSError), open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    return float("nan")


# ------------------------------------------------------------------------------ evaluation

def synthetic_eval(num_images: int, num_detections: int, seed: int = 0):
    """Ground truth and detections: half jittered ground truth (true and false positives), half random."""
    from nocdet.data.sample import DetectionDataset, Detections, Sample

    rng = np.random.default_rng(seed)
    samples, detections = [], []
    per_image = np.full(num_images, num_detections // num_images)
    per_image[: num_detections % num_images] += 1
    for i in range(num_images):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 400, (n, 2))
        gt = np.hstack([xy, xy + rng.uniform(20, 100, (n, 2))]).astype(np.float32)
        labels = rng.integers(1, NUM_CLASSES + 1, n)
        samples.append(Sample(f"{i:06d}", Path(f"{i:06d}.jpg"), 500, 500, gt, labels, rng.random(n) < 0.05))
        d = int(per_image[i])
        pick = rng.integers(0, n, d)
        boxes = gt[pick] + rng.normal(0, 8, (d, 4))
        random = rng.random(d) < 0.5
        corner = rng.uniform(0, 400, (int(random.sum()), 2))
        boxes[random] = np.hstack([corner, corner + rng.uniform(10, 100, corner.shape)])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        det_labels = np.where(random, rng.integers(1, NUM_CLASSES + 1, d), labels[pick])
        detections.append(Detections(samples[-1].image_id, boxes.clip(0, 500).astype(np.float32),
                                     rng.random(d).astype(np.float32), det_labels.astype(np.int64)))
    classes = [f"class{k}" for k in range(1, NUM_CLASSES + 1)]
    return DetectionDataset(classes, samples, "synthetic"), detections


def stage_eval(kind: str, args: argparse.Namespace) -> dict:
    from nocdet.evaluation.coco import evaluate_coco
    from nocdet.evaluation.voc import evaluate_voc

    dataset, detections = synthetic_eval(args.eval_images, args.detections)
    baseline = current_rss_mb()
    t0 = time.perf_counter()
    if kind == "voc":
        result = evaluate_voc(dataset, detections, "voc07")
        score = f"mAP {result.mAP:.3f}"
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            result = evaluate_coco(dataset, detections)
        score = f"AP {result['AP']:.3f}"
    seconds = time.perf_counter() - t0
    return {"stage": kind, "seconds": seconds, "baseline_mb": baseline,
            "what": f"{sum(len(d.scores) for d in detections):,} detections on {len(dataset):,} images ({score})"}


# ------------------------------------------------------------------------------ RoI feature cache

def stage_cache(args: argparse.Namespace) -> dict:
    import torch

    from nocdet.data.voc import read_voc
    from nocdet.features.registry import build_backbone
    from nocdet.features.roi_cache import ExtractionSettings, build_cache, open_cache

    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    dataset = read_voc(Path(args.work) / "scene-digits", "trainval")
    rng = np.random.default_rng(0)
    proposals = {}
    for sample in dataset.samples:
        corner = rng.uniform(0, 1, (args.proposals, 2)) * [sample.width - 16, sample.height - 16]
        size = np.exp(rng.uniform(np.log(16), np.log(min(sample.width, sample.height)), (args.proposals, 2)))
        boxes = np.hstack([corner, corner + size])
        proposals[sample.image_id] = boxes.clip(0, [sample.width, sample.height] * 2).astype(np.float32)
    backbone = build_backbone("small-zf", None, width=0.5).freeze().eval()
    baseline = current_rss_mb()
    t0 = time.perf_counter()
    folder = build_cache(Path(args.work) / "roi-cache", dataset, proposals, backbone, "small-zf",
                         ExtractionSettings(scales=[240, 320], include_gt=True), progress=False)
    seconds = time.perf_counter() - t0
    cache = open_cache(folder)
    return {"stage": "cache", "seconds": seconds, "baseline_mb": baseline,
            "per_image_ms": 1000 * seconds / len(dataset), "cache_mb": cache.size_bytes() / 2 ** 20,
            "what": f"{len(dataset):,} images, {cache.num_regions:,} regions of {cache.num_pathways} x "
                    f"{'x'.join(map(str, cache.feature_shape))} fp16"}


# ------------------------------------------------------------------------------ detect

def tiny_model(path: Path) -> None:
    """A model.pt with random weights (as ``nocdet train`` writes it) for a fast detector."""
    from nocdet.experiment import load_experiment
    from nocdet.training.checkpoint import save_checkpoint
    from nocdet.frozen_detector import build_frozen_backbone, build_head

    cfg = load_experiment(None, [
        "backbone.name=small-zf", "backbone.options={width: 0.25, fc_dim: 32}", "proposals.min_size=8",
        "proposals.max_boxes=100", "proposals.color_spaces=[hsv]", "proposals.ks=[100]", "proposals.max_side=160",
        "pyramid.scales=[160]", "noc.spec=f32-fn+1", "svm.enabled=false", "bbox.enabled=false",
        "test.score=softmax"])
    backbone = build_frozen_backbone(cfg)
    classes = [str(d) for d in range(10)]
    head = build_head(cfg, backbone, len(classes))
    save_checkpoint(path, {"format": "nocdet-frozen-detector", "version": 1, "config": asdict(cfg),
                           "classes": classes, "similarity_groups": [], "head": head.state_dict(),
                           "backbone_state": backbone.state_dict(), "svms": None, "bbox": None})


def mixed_images(source: Path, out: Path, count: int) -> list[str]:
    """``count`` files made from the scene-digits JPEGs in many formats; every BROKEN_EVERY-th is
    unreadable. Returns the names of the unreadable ones."""
    from PIL import Image

    out.mkdir(parents=True)
    jpegs = sorted(source.glob("*.jpg"))
    every = max(2, min(BROKEN_EVERY, count // 3))
    broken = []
    for i in range(count):
        jpeg = jpegs[i % len(jpegs)]
        if i % every == every - 1:
            kind = (i // every) % 3
            name = f"{i:05d}_broken.{['jpg', 'png', 'webp'][kind]}"
            data = [b"", jpeg.read_bytes()[: len(jpeg.read_bytes()) // 3], b"not an image\n"][kind]
            (out / name).write_bytes(data)
            broken.append(name)
            continue
        image = Image.open(jpeg)
        kind = i % 8
        if kind == 0:
            (out / f"{i:05d}.jpg").write_bytes(jpeg.read_bytes())
        elif kind == 1:
            image.save(out / f"{i:05d}.png")
        elif kind == 2:
            image.convert("L").save(out / f"{i:05d}_gray.png")
        elif kind == 3:
            image.convert("RGBA").save(out / f"{i:05d}_rgba.png")
        elif kind == 4:
            wide = (np.asarray(image.convert("L"), np.uint16) * 257).astype(np.uint16)
            Image.fromarray(wide).save(out / f"{i:05d}_16bit.png")
        elif kind == 5:
            image.convert("P").save(out / f"{i:05d}_palette.png")
        elif kind == 6:
            image.save(out / f"{i:05d}.bmp")
        else:
            image.resize((image.width // 2 + 1, image.height // 2 + 1)).save(out / f"{i:05d}_small.webp")
    return broken


def stage_detect(args: argparse.Namespace) -> dict:
    import nocdet.cli as cli

    work = Path(args.work)
    out = work / "detect-out"
    files = len(list((work / "mixed").iterdir()))
    argv = ["detect", "--checkpoint", str(work / "model.pt"), str(work / "mixed"), "--out", str(out), "--no-progress"]
    baseline = current_rss_mb()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = cli.main(argv)
    seconds = time.perf_counter() - t0
    failed = sorted(Path(f["file"]).name for f in json.loads((out / "failed.json").read_text()))
    expected = json.loads((work / "broken.json").read_text())
    last = printed.getvalue().strip().splitlines()
    return {"stage": "detect", "seconds": seconds, "baseline_mb": baseline, "per_image_ms": 1000 * seconds / files,
            "ok": code == 1 and failed == sorted(expected),
            "what": f"{files:,} files, exit {code}, {len(failed)} reported unreadable "
                    f"(expected {len(expected)}): '{next((x for x in last if x.startswith('could not')), '')}'"}


def stage_large(kind: str, args: argparse.Namespace) -> dict:
    """``nocdet detect`` on one large image: time and memory growth (see the module doc)."""
    import nocdet.cli as cli
    from PIL import Image

    work = Path(args.work)
    name, width, height = LARGE[kind]
    out = work / f"{kind}-out"
    small = next((work / "scene-digits" / "JPEGImages").iterdir())
    with contextlib.redirect_stdout(io.StringIO()):  # the baseline: detect's imports and one small image
        cli.main(["detect", "--checkpoint", str(work / "model.pt"), str(small), "--out", str(work / "warm-up"),
                  "--no-progress"])
    baseline = current_rss_mb()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["detect", "--checkpoint", str(work / "model.pt"), str(work / name), "--out", str(out),
                         "--no-progress", "--keep-size"])
    seconds = time.perf_counter() - t0
    drawn = Image.open(next(out.glob("*.png"))).size if code == 0 else ("-", "-")
    return {"stage": kind, "seconds": seconds, "baseline_mb": baseline, "ok": code == 0,
            "what": f"{width} x {height} {name.split('.')[1].upper()}, exit {code}, decoded at {drawn[0]} x {drawn[1]}"}


def write_large_images(work: Path) -> None:
    """The images of the ``bigjpeg`` and ``strip`` stages (the JPEG written in grayscale: 0.4 GB here)."""
    from PIL import Image, ImageDraw

    name, width, height = LARGE["bigjpeg"]
    big = Image.new("L", (width, height), 160)
    draw = ImageDraw.Draw(big)
    for k in range(40):
        x, y = (k * 7919) % (width - 2000), (k * 104729) % (height - 2000)
        draw.rectangle([x, y, x + 500 + 37 * k, y + 400 + 29 * k], fill=(k * 53) % 256)
    big.save(work / name, quality=80)
    del big, draw
    name, width, height = LARGE["strip"]
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(noise).save(work / name)


# ------------------------------------------------------------------------------ driver

def run_stage(args: argparse.Namespace) -> None:
    result = stage_eval(args.stage, args) if args.stage in ("voc", "coco") else \
        stage_cache(args) if args.stage == "cache" else stage_large(args.stage, args) if args.stage in LARGE else \
        stage_detect(args)
    result["peak_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def prepare(args: argparse.Namespace, stages: list[str]) -> None:
    from nocdet.data.scene_digits import generate_scene_digits

    work = Path(args.work)
    if {"cache", "detect", *LARGE} & set(stages):
        t0 = time.perf_counter()
        generate_scene_digits(work / "scene-digits", num_train=args.images, num_test=1, seed=0, progress=False)
        print(f"prepared {args.images} scene-digits images in {time.perf_counter() - t0:.1f} s", flush=True)
    if "detect" in stages:
        broken = mixed_images(work / "scene-digits" / "JPEGImages", work / "mixed", args.images)
        (work / "broken.json").write_text(json.dumps(broken))
    if {"detect", *LARGE} & set(stages):
        tiny_model(work / "model.pt")
    if set(LARGE) & set(stages):
        write_large_images(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 images, 500 / 10,000 for evaluation")
    parser.add_argument("--images", type=int, help="images for cache and detect (default 1,000)")
    parser.add_argument("--eval-images", type=int, help="images for evaluation (default 5,000)")
    parser.add_argument("--detections", type=int, help="detections for evaluation (default 100,000)")
    parser.add_argument("--proposals", type=int, default=200, help="random proposals per image for cache")
    parser.add_argument("--only", nargs="+", choices=STAGES, help="run only these stages")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        run_stage(args)
        return 0
    args.images = args.images or (40 if args.quick else 1000)
    args.eval_images = args.eval_images or (500 if args.quick else 5000)
    args.detections = args.detections or (10_000 if args.quick else 100_000)
    stages = list(args.only or STAGES)
    work = args.keep or Path(tempfile.mkdtemp(prefix="nocdet-bench-load-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    print(f"bench_load: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"work folder {work}", flush=True)
    results, ok = [], True
    try:
        prepare(args, stages)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                            os.environ.get("PYTHONPATH", "")])}
        for stage in stages:
            command = [sys.executable, __file__, "--stage", stage, "--work", str(work), "--images", str(args.images),
                       "--eval-images", str(args.eval_images), "--detections", str(args.detections),
                       "--proposals", str(args.proposals)]
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"stage {stage} CRASHED (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                ok = False
                continue
            results.append(json.loads(lines[-1][len("RESULT "):]))
            ok &= results[-1].get("ok", True)
            print(f"  {stage}: done in {results[-1]['seconds']:.1f} s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'stage':<7} {'seconds':>8} {'ms/img':>7} {'peak RSS MB':>11} {'baseline MB':>11} {'cache MB':>9}  what")
    for r in results:
        per_image = f"{r['per_image_ms']:.0f}" if "per_image_ms" in r else "-"
        cache = f"{r['cache_mb']:.0f}" if "cache_mb" in r else "-"
        print(f"{r['stage']:<7} {r['seconds']:>8.2f} {per_image:>7} {r['peak_mb']:>11.0f} {r['baseline_mb']:>11.0f} "
              f"{cache:>9}  {r['what']}")
    for r in results:
        if r["stage"] == "cache":
            growth = r["peak_mb"] - r["baseline_mb"]
            print(f"cache: memory grew by {growth:.0f} MB during extraction for {r['cache_mb']:.0f} MB of cache on disk "
                  f"({growth / r['cache_mb']:.2f} x; streamed: the growth must not scale with the number of images)")
        if r["stage"] == "detect":
            print(f"detect: {'PASS' if r['ok'] else 'FAIL'}: finished and reported exactly the unreadable files")
    large = [r for r in results if r["stage"] in LARGE]
    if large:
        growth = {r["stage"]: r["peak_mb"] - r["baseline_mb"] for r in large}
        passed = len(large) == len([s for s in stages if s in LARGE]) and all(
            r["ok"] and growth[r["stage"]] < LARGE_BOUND_MB for r in large)
        ok &= passed
        print(f"large images: {'PASS' if passed else 'FAIL'}: detect's memory grew by "
              + ", ".join(f"{growth[r['stage']]:.0f} MB in {r['seconds']:.1f} s ({r['what'].split(',')[0]})"
                          for r in large) + f" (bound {LARGE_BOUND_MB} MB each)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
