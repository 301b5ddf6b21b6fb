"""The paper's training details on the scene-digits twins, before and after (issue 13), with seeds.

For each twin row of Tables 1-3 on the small training set (875 train / 125 val / 300 test images
of ``data/scene-digits``) and each *setting*, seeds 0..N-1 train and evaluate one run
(``nocdet.runs.run_experiment``):

- ``default``, "nocdet default": the twin config as it is (the ``pooled`` cache, one of the two
  cached levels per training region, the maxout twin on its cached pair, no dropout, 100
  detections per image);
- ``paper``, "paper details": ``paper_claims.PAPER_DETAILS``, the paper's training details
  (configs/README.md, "Training details"): the ``maps`` cache with SPPnet's uniformly random
  pyramid level per training region (a random adjacent pair for the maxout NoC), dropout 0.5
  after the hidden fc layers, 100 detections per class per image; SVM scoring as the twins have it;
- opt-in (``--settings``), one training detail at a time on the default: ``dropout`` (dropout 0.5
  only) and ``jitter`` (the ``maps`` cache and ``train_scale: all`` only);
- opt-in, the schedule: ``default-4x`` and ``paper-4x``, the two settings trained 4x longer (4,000
  iterations, steps at the same fractions), to tell a detail that costs accuracy from one that
  only needs more updates (dropout halves each update's signal).

Each opt-in setting is tabulated against its baseline (``dropout``, ``jitter``, ``default-4x``:
``default``; ``paper-4x``: ``default-4x``).

The row ``table3_mo_c1`` (maxout after conv1) is a "07+12" twin; here it runs on the small set:
its data are overridden to ``base.yaml``'s. Every run uses the backbone ``--backbone`` (small-zf
pre-trained by ``benchmarks/imagenet_features.py``) and keeps its caches under ``OUT/cache``.

The detection cap without retraining: after each run, the trained model (``model.pt``) is
evaluated again on the same cached test features with the other ``test.cap`` ("image" for a run
with "class" and the reverse), so the cap's effect is a paired difference on the same models, and
"training details alone" compares the paper runs re-evaluated at cap "image" with the default runs.

Numbers are mean +- std (n) over seeds. A difference is *resolved* when it exceeds two standard
errors: unpaired (two settings) SE = sqrt(s_A^2 / n_A + s_B^2 / n_B) (``paper_claims.compare``);
paired (two caps on the same models) SE = s_d / sqrt(n) of the per-seed differences d.

Resumable: each finished (row, setting, seed) is ``OUT/results/<row>/<setting>/seed<k>.json``,
skipped when its resolved config has the same digest; a run stopped by a signal resumes from its
checkpoint. Runs go seed by seed (every row's seed 0, then seed 1, ...), so a stop leaves every
row with the same number of seeds, give or take one. The table is ``OUT/paper_training_effect.md``.

Usage: ``python benchmarks/paper_training_effect.py [--out runs/paper-training] [--seeds 3]
[--only table1_2fc ...] [--settings default paper dropout jitter] [--no-run] [--quick]``.
``--quick``: 24 generated images, 60 proposals, two scales, 8 iterations, an untrained backbone: a
smoke test of the machinery, its numbers are NOT results.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_claims import (PAPER_DETAILS, QUICK_FROZEN, Comparison, compare, cpu_seconds, digest,  # noqa: E402
                          fmt, open_run_folder, schedule_overrides, stored_result)

if TYPE_CHECKING:
    from nocdet.experiment import ExperimentData

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "scene_digits"
#: the twin rows measured (config stems of configs/scene_digits, rows of frozen_ablation.py)
ROW_STEMS = ("table1_svm_on_roi", "table1_2fc", "table1_3fc", "table1_4fc", "table2_2conv3fc_07", "table3_mo_c1")
LONG_ITERATIONS = 4000  # the 4x settings' schedule (the twins train 1,000 iterations)


@dataclass(frozen=True)
class Setting:
    """A column: its label, its overrides on the twin config, and the setting it is compared with."""

    label: str
    overrides: list[str]
    baseline: str = "default"


SETTINGS: dict[str, Setting] = {
    "default": Setting("nocdet default", []),
    "paper": Setting("paper details", PAPER_DETAILS),
    "dropout": Setting("dropout 0.5 only", ["noc.dropout=0.5"]),
    "jitter": Setting("all-level jitter only", ["pyramid.cache=maps", "noc.train_scale=all"]),
    "default-4x": Setting("nocdet default, 4x iterations", schedule_overrides(LONG_ITERATIONS, e2e=False)),
    "paper-4x": Setting("paper details, 4x iterations",
                        [*PAPER_DETAILS, *schedule_overrides(LONG_ITERATIONS, e2e=False)], baseline="default-4x"),
}
DEFAULT_BACKBONE = "runs/imagenet-features/pretrain/small-zf.pt"
QUICK_ITERATIONS = 8
QUICK_IMAGES = (16, 8)  # train-side (every 8th is val), test
QUICK_SCALES = ["pyramid.scales=[224,320]"]  # after QUICK_FROZEN's one scale: two, the maxout row's pair
METRICS = {"voc07_mAP": "VOC07 mAP", "AP": "COCO AP"}


@dataclass(frozen=True)
class Twin:
    """A row: its config stem, table, label and NoC string (from ``frozen_ablation.ROWS``)."""

    stem: str
    table: str
    label: str
    spec: str
    moved: bool  # a "07+12" twin run on the small set


def twins() -> list[Twin]:
    from frozen_ablation import ROWS

    by_stem = {r.config: r for r in ROWS}
    return [Twin(s, by_stem[s].table, by_stem[s].label, by_stem[s].spec, by_stem[s].train_set != "07")
            for s in ROW_STEMS]


# ------------------------------------------------------------------------------------- runs

def quick_data(out: Path) -> Path:
    """The ``--quick`` data set (generated once under ``out``)."""
    from nocdet.data.scene_digits import generate_scene_digits

    root = out / "data" / "scene-digits-quick"
    if not (root / "dataset.json").is_file():
        generate_scene_digits(root, num_train=QUICK_IMAGES[0], num_test=QUICK_IMAGES[1], seed=0, progress=False,
                              workers=1)
    return root


def overrides(twin: Twin, setting: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides of one run: base's data (the moved maxout row's included), the
    backbone, the cache folder, the seed and the setting's details."""
    from nocdet.experiment import load_experiment

    base = load_experiment(CONFIGS / "base.yaml").data
    root = quick_data(args.out) if args.quick else base.root
    sets = [f"data.root={root}", f"data.val={base.val}", f"data.test={base.test}", f"seed={seed}",
            f"backbone.weights={args.backbone}", f"cache_dir={args.out / 'cache'}", *SETTINGS[setting].overrides]
    if args.quick:
        sets += [*QUICK_FROZEN, *QUICK_SCALES, "proposals.workers=1"]
        if load_experiment(CONFIGS / f"{twin.stem}.yaml").solver.iterations:
            sets += schedule_overrides(QUICK_ITERATIONS, e2e=False)
    return sets


def evaluate_at_cap(config: Path, sets: list[str], run_dir: Path, cap: str, data: ExperimentData) -> dict:
    """The VOC07 and COCO metrics of the run's trained model (``model.pt``: NoC, SVMs) detecting on
    the same cached test features with ``test.cap`` set to ``cap``."""
    from nocdet.detector import load
    from nocdet.experiment import load_experiment
    from nocdet.training.frozen_pipeline import detect_on_cache, evaluate_all, extract

    cfg = load_experiment(config, [*sets, f"test.cap={cap}"])
    model = load(run_dir / "model.pt")
    cache = extract(cfg, model.backbone, data.test, cfg.data.test, False, False)
    detections = detect_on_cache(cfg, model.head, cache, data.test, model.svms, model.regressor, False)
    metrics = evaluate_all(data.test, detections)
    return {"cap": cap, "voc07_mAP": 100 * metrics["voc07"]["mAP"], "AP": 100 * metrics["coco"]["AP"]}


def run_one(twin: Twin, setting: str, seed: int, args: argparse.Namespace) -> dict | None:
    """Train, test and re-evaluate one (row, setting, seed) unless its result is stored for the
    same config; returns the result (None: stopped by a signal, the checkpoint is kept)."""
    from nocdet.experiment import load_experiment
    from nocdet.io import atomic_write_json
    from nocdet.runs import load_data, run_experiment

    config, sets = CONFIGS / f"{twin.stem}.yaml", overrides(twin, setting, seed, args)
    cfg = load_experiment(config, sets)
    key = digest(cfg)
    name = f"{twin.stem} / {setting} / seed {seed}"
    result_file = args.out / "results" / twin.stem / setting / f"seed{seed}.json"
    stored = stored_result(result_file, key, name)
    if stored is not None:
        return stored
    run_dir = args.out / "runs" / twin.stem / setting / f"seed{seed}"
    resume = open_run_folder(run_dir, key)
    print(f"{'resume' if resume else 'run'} {name}: {cfg.solver.iterations} iterations", flush=True)
    started, cpu, wall = datetime.now(timezone.utc), cpu_seconds(), time.perf_counter()
    data = load_data(cfg)
    metrics = run_experiment(cfg, run_dir, resume=resume, progress=False, data=data)
    if "interrupted" in metrics:
        return None
    t = time.perf_counter()
    other = evaluate_at_cap(config, sets, run_dir, "image" if cfg.test.cap == "class" else "class", data)
    run = json.loads((run_dir / "run.json").read_text())
    result = {"row": twin.stem, "setting": setting, "seed": seed, "config_digest": key, "quick": args.quick,
              "cap": cfg.test.cap, "iterations": cfg.solver.iterations,
              "voc07_mAP": 100 * metrics["voc07"]["mAP"], "AP": 100 * metrics["coco"]["AP"],
              "AP50": 100 * metrics["coco"]["AP50"], "AP75": 100 * metrics["coco"]["AP75"], "other_cap": other,
              "final_train_loss": run["final_train_loss"], "final_val_loss": run["final_val_loss"],
              "timing_seconds": {**metrics["timing_seconds"], "other_cap": round(time.perf_counter() - t, 2)},
              "cpu_seconds": round(cpu_seconds() - cpu, 1), "wall_seconds": round(time.perf_counter() - wall, 1),
              "started": started.isoformat(timespec="seconds"),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed": resume}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result_file, result)
    print(f"  VOC07 mAP {result['voc07_mAP']:.1f} (cap {other['cap']}: {other['voc07_mAP']:.1f}), COCO AP "
          f"{result['AP']:.1f} (cap {other['cap']}: {other['AP']:.1f}), {result['cpu_seconds']:.0f} CPU s, "
          f"{result['wall_seconds']:.0f} s", flush=True)
    return result


# ------------------------------------------------------------------------------------ tables

Results = dict[tuple[str, str], list[dict]]  # (row, setting) -> its results, by seed


def at_cap(results: Results, row: str, setting: str, cap: str, metric: str) -> dict[int, float]:
    """seed -> ``metric`` of a (row, setting)'s models detecting with ``cap`` (as trained or re-evaluated)."""
    out = {}
    for r in results.get((row, setting), []):
        out[r["seed"]] = r[metric] if r["cap"] == cap else r["other_cap"][metric]
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> Comparison:
    """``a - b`` over the seeds both have, SE of the mean of the per-seed differences."""
    d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    diff = statistics.fmean(d)
    if len(d) < 2:
        return Comparison(diff, math.inf, "unresolved")
    se = statistics.stdev(d) / math.sqrt(len(d))
    return Comparison(diff, se, "resolved" if abs(diff) > 2 * se else "unresolved")


def unpaired(a: list[float], b: list[float]) -> Comparison:
    """``a - b`` with :func:`paper_claims.compare`'s two-standard-error rule."""
    c = compare(a, b)
    return Comparison(c.diff, c.se, "unresolved" if c.verdict == "unresolved" else "resolved")


def cell(a: dict[int, float], b: dict[int, float], pair: bool) -> str:
    if not a or not b or (pair and not set(a) & set(b)):
        return "not run"
    c = paired(a, b) if pair else unpaired(list(a.values()), list(b.values()))
    n = len(set(a) & set(b)) if pair else f"{len(a)}/{len(b)}"
    se = "SE n/a" if math.isinf(c.se) else f"2SE {2 * c.se:.1f}"
    return f"{c.diff:+.1f} ({se}, n={n}) {c.verdict}"


def report(results: Results, rows: list[Twin], settings: list[str], quick: bool) -> str:
    from harness import machine_line

    lines = ["**QUICK MODE: tiny data, 8 iterations, an untrained backbone. A smoke test, NOT a result.**", ""] \
        if quick else []
    extra = [s for s in settings if s not in ("default", "paper")]

    def trained(row: str, setting: str, metric: str) -> dict[int, float]:
        return {r["seed"]: r[metric] for r in results.get((row, setting), [])}

    def baseline(setting: str, row: str, metric: str) -> dict[int, float]:
        return trained(row, SETTINGS[setting].baseline, metric)

    for metric, title in METRICS.items():
        header = ["row", "NoC", "default (cap image)", "paper details (cap class)", "paper - default",
                  *[h for s in extra for h in (SETTINGS[s].label, f"{SETTINGS[s].label} - {SETTINGS[s].baseline}")]]
        lines += [f"## {title} (%): nocdet default vs paper details", "", "| " + " | ".join(header) + " |",
                  "| --- | --- | ---: | ---: | --- |" + " ---: | --- |" * len(extra)]
        for t in rows:
            default, paper = trained(t.stem, "default", metric), trained(t.stem, "paper", metric)
            row = f"Table {t.table} {t.label} (`{t.stem}`{', a 07+12 twin run on 07' if t.moved else ''})"
            lines.append(f"| {row} | `{t.spec}` | {fmt(list(default.values()))} | {fmt(list(paper.values()))} | "
                         f"{cell(paper, default, False)} |"
                         + "".join(f" {fmt(list(trained(t.stem, s, metric).values()))} | "
                                   f"{cell(trained(t.stem, s, metric), baseline(s, t.stem, metric), False)} |"
                                   for s in extra))
        lines += ["", f"### {title}: the detection cap and the training details apart (re-evaluated models)", "",
                  "| row | paper models at cap image | cap: class - image, paper models (paired) | "
                  "cap: class - image, default models (paired) | training details alone: paper - default, "
                  "both at cap image |", "| --- | ---: | --- | --- | --- |"]
        for t in rows:
            p_img, p_cls = (at_cap(results, t.stem, "paper", c, metric) for c in ("image", "class"))
            d_img, d_cls = (at_cap(results, t.stem, "default", c, metric) for c in ("image", "class"))
            lines.append(f"| Table {t.table} {t.label} | {fmt(list(p_img.values()))} | {cell(p_cls, p_img, True)} | "
                         f"{cell(d_cls, d_img, True)} | {cell(p_img, d_img, False)} |")
        lines.append("")
    everything = [r for rs in results.values() for r in rs]
    if everything:
        lines += [f"Runs: {len(everything)}, {min(r['started'] for r in everything)} to "
                  f"{max(r['finished'] for r in everything)} (UTC); total CPU time "
                  f"{sum(r['cpu_seconds'] for r in everything) / 3600:.2f} h, run wall time "
                  f"{sum(r['wall_seconds'] for r in everything) / 3600:.2f} h (user + system of each run: "
                  "features, NoC, SVMs, test and the re-evaluation at the other cap; a resumed run counts its "
                  "last segment only). Resolved: |difference| > 2 SE.", "", machine_line(), ""]
    return "\n".join(lines)


def collect(out: Path, rows: list[Twin], settings: list[str], seeds: int, quick: bool) -> Results:
    found: Results = {}
    for t in rows:
        for s in settings:
            for path in sorted((out / "results" / t.stem / s).glob("seed*.json")):
                r = json.loads(path.read_text())
                if r["seed"] < seeds and r["quick"] == quick:
                    found.setdefault((t.stem, s), []).append(r)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/paper-training"), help="results, runs, caches, table")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row and setting (default 3)")
    parser.add_argument("--only", nargs="+", choices=ROW_STEMS, metavar="STEM", help="rows to run (config stems)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["default", "paper"])
    parser.add_argument("--backbone", help=f"the small-zf weights (default {DEFAULT_BACKBONE}; --quick: random)")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the finished results")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny data, 8 iterations; NOT a result")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the free CPUs)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    args.backbone = args.backbone or ("random" if args.quick else DEFAULT_BACKBONE)
    if args.backbone != "random" and not Path(args.backbone).is_file():
        parser.error(f"--backbone {args.backbone}: no such file (pre-train it: benchmarks/imagenet_features.py)")
    from nocdet.threads import use_threads

    use_threads(args.threads)
    rows = [t for t in twins() if not args.only or t.stem in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_run:
        for seed in range(args.seeds):
            for twin in rows:
                for setting in args.settings:
                    if run_one(twin, setting, seed, args) is None:
                        print("stopped by a signal; rerun the same command to resume", flush=True)
                        return 130
    text = report(collect(args.out, rows, args.settings, args.seeds, args.quick), rows, args.settings, args.quick)
    (args.out / "paper_training_effect.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
