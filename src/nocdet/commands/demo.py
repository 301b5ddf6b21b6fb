"""``nocdet demo``: the whole system on the embedded data, from nothing to a report.

Makes scene-digits, pre-trains the small backbone on the train split (our stand-in for ImageNet
pre-training), trains the demo NoC on frozen pyramid features, evaluates it (VOC07, VOC, COCO),
runs the error diagnosis of the paper's Fig. 3 and writes the HTML report. Steps whose output
already exists are reused, so a second run is quick.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NAME = "demo"
HELP = "make scene-digits, pre-train, train a NoC, evaluate, diagnose and write a report"

REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"
#: Pre-training of the demo (`nocdet pretrain` defaults but the number of epochs).
DEMO_PRETRAIN = {"epochs": 8}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--config", type=Path, default=REPO_CONFIGS / "demo.yaml", help="experiment config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--train", type=int, default=800, help="train-side images to generate")
    parser.add_argument("--test", type=int, default=200, help="test images to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the NoC trains and the features are computed (default: cpu)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from nocdet.data.scene_digits import generate_scene_digits
    from nocdet.data.voc import read_voc
    from nocdet.errors import ConfigError
    from nocdet.experiment import load_experiment
    from nocdet.training.frozen_pipeline import run_frozen_experiment
    from nocdet.training.pretrain import pretrain
    from nocdet.viz.report import write_report

    if not args.config.exists():
        raise ConfigError(f"demo config {args.config} not found (run from the repository, or pass --config)")
    progress = not args.no_progress
    out = args.out.resolve()
    start = time.perf_counter()
    data = out / "scene-digits"
    if not (data / "dataset.json").exists():
        print(f"[1/5] making scene-digits in {data}")
        generate_scene_digits(data, num_train=args.train, num_test=args.test, seed=args.seed, progress=progress)
    else:
        print(f"[1/5] scene-digits found in {data}")

    cfg = load_experiment(args.config, [f"data.root={data}", f"cache_dir={out / 'cache'}", f"seed={args.seed}",
                                        f"device={args.device}", *args.overrides])
    weights = out / "pretrain" / f"{cfg.backbone.name}.pt"
    if not weights.exists():
        print(f"[2/5] pre-training {cfg.backbone.name} on the train split (stands in for ImageNet)")
        result = pretrain(cfg.backbone.name, cfg.backbone.options, read_voc(data, "train"), weights,
                          seed=args.seed, progress=progress, **DEMO_PRETRAIN)
        print(f"      held-out crop accuracy {result.accuracy:.3f} in {result.seconds:.0f} s")
    else:
        print(f"[2/5] pre-trained weights found: {weights}")
    cfg = load_experiment(args.config, [f"data.root={data}", f"cache_dir={out / 'cache'}", f"seed={args.seed}",
                                        f"device={args.device}", f"backbone.weights={weights}", *args.overrides])

    run_dir = out / "run"
    print(f"[3/5] proposals, RoI features and NoC {cfg.noc.spec} -> {run_dir}")
    metrics = run_frozen_experiment(cfg, run_dir, progress=progress)
    coco = metrics["coco"]
    print(f"      VOC07 mAP {metrics['voc07']['mAP']:.4f}  VOC mAP {metrics['voc']['mAP']:.4f}  "
          f"COCO AP {coco['AP']:.4f} AP50 {coco['AP50']:.4f} AP75 {coco['AP75']:.4f}")

    print("[4/5] error diagnosis (Cor / Loc / Sim / Oth / BG of the top-ranked detections)")
    overall = json.loads((run_dir / "diagnosis.json").read_text()).get("overall") or {}
    print("      " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in overall.items()))

    print("[5/5] report")
    report = write_report([run_dir], out / "report.html")
    print(f"done in {time.perf_counter() - start:.0f} s. Report: {report}")
    return 0
