"""``nocdet train CONFIG``: train and evaluate one experiment; everything lands in the output folder."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

from nocdet.threads import add_threads_argument

NAME = "train"
HELP = "train and evaluate a detector from an experiment config (YAML)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment YAML (see configs/README.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set solver.iterations=500 (repeatable)")
    parser.add_argument("--output", type=Path, default=None, help="run folder (default runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run that the run folder holds")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="override the config's device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(parser)


def resolve_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    return overrides


def print_metrics(metrics: dict) -> None:
    coco = metrics["coco"]
    print(f"VOC07 mAP {metrics['voc07']['mAP']:.4f}   VOC (area) mAP {metrics['voc']['mAP']:.4f}   "
          f"COCO AP {coco['AP']:.4f} AP50 {coco['AP50']:.4f} AP75 {coco['AP75']:.4f}")
    for name, ap in metrics["voc07"]["per_class"].items():
        print(f"  {name:>14s}  {'-' if ap is None else f'{ap:.4f}'}")


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: object = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for a command line: the message only, no source path and line."""
    print(f"nocdet: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from nocdet.threads import use_threads

    use_threads(args.threads)
    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from nocdet.devices import require_device
    from nocdet.run_folder import check_resume_config, check_run_folder, lock_run_folder, prepare_run_folder
    from nocdet.experiment import load_experiment
    from nocdet.runs import load_data, run_experiment

    # end-to-end Faster R-CNN (Sec. 4; possibly one rank of torchrun) or frozen features (Sec. 3)
    cfg = load_experiment(args.config, resolve_overrides(args))
    out = args.output or Path("runs") / cfg.name
    require_device(cfg.device)  # before the folder is made: a refused run leaves nothing behind
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 owns (checks, locks) the folder
    if main:  # what can refuse the run reads only: the folder stays as it was
        check_run_folder(out, resume=args.resume, overwrite=args.overwrite)
        if args.resume:
            check_resume_config(out, cfg)
    data = load_data(cfg)  # classes and classifier size checked before any work, and before the folder
    with lock_run_folder(out) if main else contextlib.nullcontext():
        if main:
            prepare_run_folder(out, resume=args.resume, overwrite=args.overwrite)
        metrics = run_experiment(cfg, out, resume=args.resume, progress=not args.no_progress, data=data)
    return _report(args, out, metrics)


def _report(args: argparse.Namespace, out: Path, metrics: dict) -> int:
    """Print the outcome of a run; the exit status (130: stopped by a signal, checkpoint saved)."""
    if "interrupted" in metrics:
        given = "".join(f" --set {o}" for o in args.overrides)
        print(f"stopped by {metrics['interrupted']} at iteration {metrics['iteration']}; "
              f"checkpoint saved: continue with  nocdet train {args.config}{given} --output {out} --resume")
        return 130
    if not metrics:  # a torchrun rank other than 0: rank 0 tests and reports
        return 0
    print_metrics(metrics)
    print_timing(metrics.get("timing_seconds") or {})
    write_plots(out)
    print(f"run folder: {out}  (metrics.json, results/, model.pt, train/, plots/)")
    print(f"HTML report: nocdet report {out} --out {out / 'report.html'}")
    return 0


def print_timing(timing: dict) -> None:
    from nocdet.training.frozen_pipeline import timing_lines

    if timing:
        print("time by stage:\n" + "\n".join(timing_lines(timing)))


def write_plots(out: Path) -> None:
    """The report's pictures as PNG files in ``out/plots``; a failure is a warning, not a failed run."""
    from nocdet.errors import NocdetError
    from nocdet.viz.report import write_run_plots

    try:
        written = write_run_plots(out)
    except (NocdetError, OSError, ValueError) as err:
        warnings.warn(f"no plots written to {out / 'plots'}: {err}", stacklevel=2)
        return
    print(f"plots: {out / 'plots'} ({', '.join(p.name for p in written)})")
