"""``nocdet report RUN_DIR... [--out report.html] [--name NAME ...]``: one self-contained HTML
page for a training run, or several runs side by side."""
from __future__ import annotations

import argparse
import sys
import warnings

from nocdet.errors import ConfigError

NAME = "report"
HELP = ("write a self-contained HTML report of one or more run directories: config, metrics, "
        "per-class AP, PR curves, error diagnosis, training curves and sample detections")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directory with run.json and metrics.json (several: compared side by side)")
    parser.add_argument("--out", default="report.html", metavar="HTML",
                        help="the page to write (default: report.html)")
    parser.add_argument("--name", action="append", metavar="NAME",
                        help="label of a run in the report, once per RUN_DIR in the same order "
                             "(default: the name in its run.json)")


def run(args: argparse.Namespace) -> int:
    from nocdet.io import output_file
    from nocdet.viz.report import write_report

    if args.name is not None and len(args.name) != len(args.runs):
        raise ConfigError(f"--name given {len(args.name)} times for {len(args.runs)} run directories; "
                          "give one per run or none")
    output_file(args.out)
    # Readers report repairs and missing result files as warnings: show them as one line each.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            path = write_report(args.runs, args.out, args.name)
        finally:
            for w in caught:
                print(f"nocdet report: warning: {w.message}", file=sys.stderr)
    print(f"report written to {path}")
    return 0
