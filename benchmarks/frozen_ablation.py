"""The scene-digits ablation that mirrors the paper's Tables 1, 2 and 3 (frozen features, Sec. 3).

Every row is one config of ``configs/scene_digits/`` trained and evaluated by ``nocdet train``;
rows whose resolved configs are equal (besides their name) share one run. Finished runs
(``metrics.json`` present) are reused, so the script can be stopped and started again. The tables
are written to ``<out>/ablation.md`` with the VOC07 mAP on the test split next to the paper's
number where our copy of the paper prints it (``docs/reference.md`` §9).

Before running: the data and the pre-trained backbone the configs point to::

    nocdet data make scene-digits --out data/scene-digits
    nocdet data make scene-digits --out data/scene-digits-large --train 3300
    nocdet pretrain --voc-root data/scene-digits-large --split train --epochs 8 \\
        --option width=1.0 --option stride=8 --option fc_dim=512 --option norm=bn \\
        --out runs/pretrain/small-zf.pt

Usage: ``python benchmarks/frozen_ablation.py [--out runs/ablation] [--only STEM ...] [--no-run]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nocdet.config import to_dict
from nocdet.experiment import load_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "scene_digits"


@dataclass(frozen=True)
class Row:
    table: str
    label: str
    spec: str
    train_set: str  # "07" (the small training set) or "07+12" (the 3.3x larger one)
    config: str  # file stem in configs/scene_digits
    paper: str = ""  # the paper's VOC07 mAP for this row, where printed


ROWS = [
    Row("1", "SVM on RoI", "f11", "07", "table1_svm_on_roi"),
    Row("1", "2fc", "f512-f11", "07", "table1_2fc"),
    Row("1", "3fc", "f512-f512-f11", "07", "table1_3fc"),
    Row("1", "4fc", "f512-f512-f512-f11", "07", "table1_4fc", "SVM on RoI + 7.8"),
    Row("2", "3fc", "f512-f512-f11", "07", "table2_3fc_07"),
    Row("2", "1conv3fc", "c64-f512-f512-f11", "07", "table2_1conv3fc_07"),
    Row("2", "2conv3fc", "c64-c64-f512-f512-f11", "07", "table2_2conv3fc_07"),
    Row("2", "3conv3fc", "c64-c64-c64-f512-f512-f11", "07", "table2_3conv3fc_07"),
    Row("2", "3fc", "f512-f512-f11", "07+12", "table2_3fc_0712", "56.5"),
    Row("2", "1conv3fc", "c64-f512-f512-f11", "07+12", "table2_1conv3fc_0712"),
    Row("2", "2conv3fc", "c64-c64-f512-f512-f11", "07+12", "table2_2conv3fc_0712", "58.9"),
    Row("2", "3conv3fc", "c64-c64-c64-f512-f512-f11", "07+12", "table2_3conv3fc_0712"),
    Row("3", "2conv3fc (no maxout)", "c64-c64-f512-f512-f11", "07+12", "table3_2conv3fc", "58.9"),
    Row("3", "maxout on the RoI features", "mo-c64-c64-f512-f512-f11", "07+12", "table3_mo_roi"),
    Row("3", "maxout after conv1", "c64-mo-c64-f512-f512-f11", "07+12", "table3_mo_c1"),
    Row("3", "maxout after fc1", "c64-c64-f512-mo-f512-f11", "07+12", "table3_mo_f1"),
    Row("3", "maxout on the scores", "c64-c64-f512-f512-f11-mo", "07+12", "table3_mo_cls"),
]


def config_key(stem: str) -> str:
    """A digest of the resolved config without its name: equal keys mean the same experiment."""
    data = to_dict(load_experiment(CONFIGS / f"{stem}.yaml"))
    data.pop("name", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def run_row(stem: str, run_dir: Path, log: Path) -> dict:
    """Train and evaluate one config into ``run_dir`` unless it already finished there."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    if run_dir.exists():  # a run killed half-way: start it again from scratch
        shutil.rmtree(run_dir)
    start = time.time()
    with log.open("a") as out:
        out.write(f"\n== {stem}\n")
        out.flush()
        subprocess.run([sys.executable, "-m", "nocdet", "train", str(CONFIGS / f"{stem}.yaml"),
                        "--output", str(run_dir), "--no-progress"], stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    print(f"{stem}: {time.time() - start:.0f} s", flush=True)
    return json.loads(metrics.read_text())


def table(rows: list[tuple[Row, dict, dict]]) -> list[str]:
    lines = ["| NoC | string | training set | VOC07 mAP (%) | COCO AP (%) | params | NoC train s | paper (%) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for row, metrics, info in rows:
        lines.append(f"| {row.label} | `{row.spec}` | {row.train_set} | {100 * metrics['voc07']['mAP']:.1f} | "
                     f"{100 * metrics['coco']['AP']:.1f} | {info.get('params', 0):,} | "
                     f"{info.get('train_seconds', 0):.0f} | {row.paper or '-'} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--only", nargs="*", help="config stems to run (default: all rows)")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the rows that finished")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [r for r in ROWS if not args.only or r.config in args.only]
    folder_of: dict[str, Path] = {}
    run_dirs = {row: folder_of.setdefault(config_key(row.config), args.out / row.config) for row in wanted}
    finished: dict[Path, dict] = {}
    # the small training set's rows first (one cheaper cache), then the large set's, 1 and 3 conv last
    for row in sorted(wanted, key=lambda r: (r.train_set != "07", r.label in ("1conv3fc", "3conv3fc"))):
        run_dir = run_dirs[row]
        if run_dir not in finished and (not args.no_run or (run_dir / "metrics.json").is_file()):
            finished[run_dir] = run_row(run_dir.name, run_dir, args.out / "train.log")
    results = []
    for row in wanted:
        if run_dirs[row] in finished:
            metrics = finished[run_dirs[row]]
            info = json.loads((run_dirs[row] / "run.json").read_text())
            results.append((row, metrics, info))
            print(f"Table {row.table} {row.label:28s} {row.train_set:5s} VOC07 mAP "
                  f"{100 * metrics['voc07']['mAP']:.1f}", flush=True)
    lines = []
    for number in ("1", "2", "3"):
        rows = [r for r in results if r[0].table == number]
        if rows:
            lines += [f"### Table {number}", "", *table(rows), ""]
    (args.out / "ablation.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
