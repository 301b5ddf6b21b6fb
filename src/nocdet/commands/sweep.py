"""``nocdet sweep CONFIG --noc SPEC ...``: several NoC designs of one config, compared.

Every design is trained and evaluated with the same config and seed, in either setting: with
frozen features all designs share one RoI feature cache (it does not depend on the NoC), end to
end each design trains its own detector. A design-space study in the spirit of the paper's
Tables 1-3 (or 8) is one command. The sweep folder is locked while the sweep runs, and a design
whose folder already holds a run is refused before the first design trains. Writes ``sweep.md``
and ``sweep.csv`` (mAP per design with its parameters and training time, as the paper's tables)
and ``sweep_ap.png`` (per-class AP).
"""
from __future__ import annotations

import argparse
import json
import csv
import re
from pathlib import Path

from nocdet.threads import add_threads_argument

NAME = "sweep"
HELP = "train and evaluate several NoC designs of one config (either setting) and compare them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment YAML shared by every design")
    parser.add_argument("--noc", action="append", required=True, metavar="SPEC",
                        help="a NoC string, e.g. c256-mo-c256-f4096-f4096-f21 (repeat for each design)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value for every design (repeatable)")
    parser.add_argument("--output", type=Path, default=Path("runs/sweep"), help="sweep folder")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="override the config's device")
    parser.add_argument("--no-progress", action="store_true")
    add_threads_argument(parser)


def slug(spec: str) -> str:
    """A folder name for a NoC string."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", spec).strip("_")


def run(args: argparse.Namespace) -> int:
    from nocdet.threads import use_threads

    use_threads(args.threads)
    from nocdet.noc.spec import parse_noc
    from nocdet.run_folder import check_run_folder, lock_run_folder

    overrides = [*args.overrides, *([f"seed={args.seed}"] if args.seed is not None else []),
                 *([f"device={args.device}"] if args.device else [])]
    for spec in args.noc:
        parse_noc(spec)  # every string is checked before the first long run
    for spec in args.noc:  # and every design's folder: a sweep never mixes with an earlier one
        check_run_folder(args.output / slug(spec), remedy="give the sweep another --output, or delete it")
    with lock_run_folder(args.output):
        return _sweep(args, overrides)


def _sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train and evaluate every design into ``args.output/<slug>``, then write the tables."""
    from nocdet.run_folder import prepare_run_folder
    from nocdet.experiment import load_experiment
    from nocdet.runs import run_experiment
    from nocdet.viz.plots import plot_ap_comparison

    load_experiment(args.config, overrides)  # a bad config stops the sweep before any run
    rows, per_class = [], {}
    for spec in args.noc:
        cfg = load_experiment(args.config, [*overrides, f"noc.spec={spec}"])
        run_dir = prepare_run_folder(args.output / slug(spec))
        print(f"== {spec} -> {run_dir}")
        metrics = run_experiment(cfg, run_dir, progress=not args.no_progress)
        if "interrupted" in metrics:
            print(f"stopped by {metrics['interrupted']}; finished designs are in {args.output}")
            return 130
        info = json.loads((run_dir / "run.json").read_text())
        rows.append({"noc": spec, "voc07_mAP": metrics["voc07"]["mAP"], "voc_mAP": metrics["voc"]["mAP"],
                     "coco_AP": metrics["coco"]["AP"], "params": info["params"],
                     "train_seconds": info["train_seconds"]})
        per_class[spec] = metrics["voc07"]["per_class"]
    write_tables(rows, args.output)
    plot_ap_comparison(per_class, args.output / "sweep_ap.png", title="VOC07 AP per class and design")
    print((args.output / "sweep.md").read_text())
    return 0


def write_tables(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| NoC | VOC07 mAP (%) | VOC mAP (%) | COCO AP (%) | params | train s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| `{r['noc']}` | {100 * r['voc07_mAP']:.1f} | {100 * r['voc_mAP']:.1f} | {100 * r['coco_AP']:.1f} | "
              f"{r['params']:,} | {r['train_seconds']:.0f} |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
