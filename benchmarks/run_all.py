"""Run every ``benchmarks/bench_*.py`` in turn and print their output (``make bench``).

Usage: ``python benchmarks/run_all.py [--quick] [--only NAME ...]``. ``--quick`` is passed on
to each benchmark (a smoke run). Each benchmark runs in its own process with the same Python,
so one's threads and memory do not disturb the next. Exit status: 0 when every benchmark ran
to its end (a missed speed target is printed, not an error), else 1.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. noc for bench_noc.py)")
    args = parser.parse_args(argv)

    benches = sorted(HERE.glob("bench_*.py"))
    if args.only:
        benches = [b for b in benches if b.stem.removeprefix("bench_") in args.only]
    if not benches:
        print("no benchmark to run", file=sys.stderr)
        return 1
    env = dict(os.environ)
    src = str(HERE.parent / "src")  # works from a checkout without `pip install -e`
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    env.setdefault("PYTHONUNBUFFERED", "1")

    failed = []
    for bench in benches:
        print(f"\n##### {bench.name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(bench), *(["--quick"] if args.quick else [])], env=env)
        print(f"##### {bench.name}: exit {code}, {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(bench.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nall {len(benches)} benchmark(s) ran")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
