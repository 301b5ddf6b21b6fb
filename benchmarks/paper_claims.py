"""The paper's claims, measured (issue 14): Tables 1-3, Table 4's init rows, Fig. 3 and Table 8 on
frozen / trained ImageNet EfficientNet-Lite features, on scene-digits and scene-glyphs, with seeds,
scaled schedules and a convergence check; writes a claims table with a verdict per data set.

One command, resumable: every finished (data set, row, seed) is a JSON file under
``OUT/results/``; a rerun skips those (unless the row's resolved config changed, e.g. another
``--epochs``), resumes a run stopped by a signal from its checkpoint, and tabulates what exists.

Features. The ZF role: EfficientNet-Lite0 (ImageNet, frozen, stage 6, stride 16, 112 channels);
the VGG role: Lite2 (120 channels): ``configs/scene_digits/imagenet_lite0.yaml`` / ``_lite2.yaml``
and ``configs/scene_glyphs/imagenet_lite0.yaml`` (Lite2 there by ``backbone.name``). Every frozen
row trains as the paper's rows do (configs/README.md, "Training details"): dropout 0.5 after the
hidden fcs, SPPnet's all-level scale jitter and the random maxout pair (``train_scale: all`` on
the ``maps`` cache), 100 detections per class per image, post-hoc SVM scores. NoC strings follow
the twin rule f4096 -> f512, f21 -> f<classes+1>; conv layers are c64, the NoC measured on Lite0
before (benchmarks/RESULTS.md; the paper matches conv5's width for identity-initialised
fine-tuning, which Lite cannot have, see Table 4). Table 8: ``configs/e2e/scene_digits/lite0/``
(the Lite0 trunk trained end to end), with ``solver.clip_grad_norm`` (the fc rows diverged
without it at lr 0.01, RESULTS.md).

Schedule. An *epoch* is one pass of the RoI sampler over the cached training images (x 2 with
flipped copies): each visit samples ``rois_per_image`` regions, so an epoch sees ``training RoIs =
training images x rois_per_image`` sampled regions (fewer only for an image with fewer regions in
the IoU bands) and ``iterations = ceil(epochs x training RoIs / RoIs per batch) = ceil(epochs x
training images / images_per_batch)``. Every frozen row gets the same ``--epochs`` (so the 3.3x
"07+12" set gets 3.3x the iterations), Table 8 rows ``--e2e-epochs``; lr steps (x0.1) at 70% and
90%, 20 validation points. Convergence: a line is fitted to the validation losses of the last
quarter of training; the run has *flattened* when the line's fall over that quarter is below
``--flat`` (2%) of the quarter's mean loss (a rise counts as flat: more epochs would not lower
it). The table reports it per row; ``OUT/val_loss_<data set>.png`` shows the curves.

Seeds: ``--seeds N`` runs seeds 0..N-1 (the NoC's initialisation, RoI sampling and image order;
data and features are shared). Numbers are mean +- std (n); a difference A - B is *resolved* when
it exceeds two standard errors, SE = sqrt(s_A^2 / n_A + s_B^2 / n_B) (fewer than 2 seeds: never).

CPU cost, estimated from a ``--quick`` run (one thread, the project's shared 2-core VM: NoC
iterations of 0.035-0.046 s for the MLPs, 0.024-0.065 s conv, 0.07-0.125 s maxout; proposals
0.76 s and one-scale Lite0 features 0.1 s an image; SVMs ~0.1 s a training image) scaled to the
default epochs (7,875 iterations on "07", 25,992 on "07+12", 5,250 for Table 8) and data, with
Table 8's 1.05-3.4 s per iteration measured in benchmarks/RESULTS.md: about 140 CPU hours for both
data sets and 3 seeds: frozen rows ~23 h a data set (maxout rows on "07+12" the bulk), Table 8 rows
~45 h a data set. ``--only`` and ``--datasets`` run it in chunks.

Usage: ``python benchmarks/paper_claims.py [--data data/claims] [--out runs/claims] [--seeds 3]
[--only 'zf07-*' ...] [--datasets scene-digits] [--quick]``. ``--quick``: tiny data, a few
iterations, one feature scale: a smoke test of the machinery, its numbers are NOT results.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
STEP_FRACTIONS = (0.7, 0.9)
VAL_POINTS = 20
DEFAULT_EPOCHS = 18  # the paper's NoC schedule on VOC 07 with flips: 90k x 2 images / 10,022 images
DEFAULT_E2E_EPOCHS = 12  # Faster R-CNN's "1x" schedule: 90k x 16 images / 118k COCO images
DEFAULT_FLAT = 0.02
#: the paper's training details (configs/README.md, "Training details"), on for every frozen row
PAPER_DETAILS = ["pyramid.cache=maps", "noc.train_scale=all", "noc.dropout=0.5", "test.cap=class",
                 "svm.enabled=true", "test.score=svm"]
E2E_DETAILS = ["solver.clip_grad_norm=10.0"]
QUICK_FROZEN = ["pyramid.scales=[320]", "proposals.max_boxes=60", "solver.val_batches=2"]
QUICK_E2E = ["solver.val_images=4", "solver.workers=0", "rpn.post_nms_top_n_test=50"]


# ----------------------------------------------------------------------------------- the rules

def iterations_for(epochs: float, train_images: int, images_per_batch: int, flipped: bool = False) -> int:
    """SGD iterations of ``epochs`` passes over the training images (x 2 with flips), see the module docstring."""
    if epochs <= 0 or train_images < 1 or images_per_batch < 1:
        raise ValueError(f"epochs {epochs}, images {train_images}, images per batch {images_per_batch}")
    return math.ceil(epochs * train_images * (2 if flipped else 1) / images_per_batch)


def schedule_overrides(iterations: int, e2e: bool) -> list[str]:
    """The step schedule at :data:`STEP_FRACTIONS`, validation at :data:`VAL_POINTS` points, checkpoints."""
    steps = sorted({max(1, round(f * iterations)) for f in STEP_FRACTIONS})
    every = max(1, iterations // VAL_POINTS)
    sets = [f"solver.iterations={iterations}", f"solver.lr_steps={steps}", f"solver.val_every={every}",
            f"solver.log_every={every}", f"solver.checkpoint_every={max(1, iterations // 10)}"]
    return sets + ([f"solver.warmup_iterations={min(20, iterations // 4)}"] if e2e else [])


def relative_fall(curve: list[tuple[int, float]], iterations: int) -> float | None:
    """The fall of the val loss over the last quarter of training, relative to its mean there: a
    least-squares line through the points at iterations >= 0.75 x ``iterations``, its value at the
    quarter's start minus at its end, over the points' mean. None: fewer than 3 points there."""
    start = 0.75 * iterations
    points = [(i, v) for i, v in curve if i >= start]
    if len(points) < 3:
        return None
    xs, ys = [float(i) for i, _ in points], [v for _, v in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return -slope * (iterations - start) / my


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: the claim is ``a > b`` ("greater") or ``a >= b`` ("at_least")."""

    diff: float
    se: float
    verdict: str  # "holds", "does not hold" or "unresolved"


def compare(a: list[float], b: list[float], kind: str = "greater") -> Comparison:
    """The verdict on ``mean(a) > mean(b)`` (``at_least``: not resolved below). A difference within
    two standard errors is unresolved; with fewer than 2 values on a side the SE is unknown."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, math.inf, "unresolved")
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    if diff < -2 * se:
        return Comparison(diff, se, "does not hold")
    if kind == "at_least" or diff > 2 * se:
        return Comparison(diff, se, "holds")
    return Comparison(diff, se, "unresolved")


def combine(verdicts: list[str]) -> str:
    """A claim of several comparisons: does not hold if one does not, holds if all do, else unresolved."""
    if not verdicts:
        return "unresolved"
    if "does not hold" in verdicts:
        return "does not hold"
    return "holds" if all(v == "holds" for v in verdicts) else "unresolved"


# ------------------------------------------------------------------------------ data and rows

@dataclass(frozen=True)
class DataSet:
    name: str
    classes: int
    zf_config: Path
    vgg_config: Path
    vgg_sets: tuple[str, ...]  # overrides that turn vgg_config into the VGG role


DATASETS = {
    "scene-digits": DataSet("scene-digits", 10, CONFIGS / "scene_digits" / "imagenet_lite0.yaml",
                            CONFIGS / "scene_digits" / "imagenet_lite2.yaml", ()),
    "scene-glyphs": DataSet("scene-glyphs", 20, CONFIGS / "scene_glyphs" / "imagenet_lite0.yaml",
                            CONFIGS / "scene_glyphs" / "imagenet_lite0.yaml", ("backbone.name=efficientnet-lite2",)),
}


@dataclass(frozen=True)
class Row:
    """One experiment; ``spec`` with ``C`` for the classifier width (classes + 1)."""

    key: str
    label: str
    role: str  # "zf", "vgg" (frozen features) or "e2e"
    train_set: str  # "07" or "07+12"
    spec: str = ""
    e2e_config: str = ""  # file stem in configs/e2e/scene_digits/lite0

    def noc(self, classes: int) -> str:
        return "-".join(f"f{classes + 1}" if t == "fC" else t for t in self.spec.split("-"))


def _frozen(role: str, train: str, name: str, spec: str) -> Row:
    return Row(f"{role}{train.replace('+', '')}-{name}", name, role, train, spec)


MLP = {"svm_on_roi": "fC", "2fc": "f512-fC", "3fc": "f512-f512-fC", "4fc": "f512-f512-f512-fC"}
CONV = {"1conv3fc": "c64-f512-f512-fC", "2conv3fc": "c64-c64-f512-f512-fC", "3conv3fc": "c64-c64-c64-f512-f512-fC"}
MAXOUT = {"mo_roi": "mo-c64-c64-f512-f512-fC", "mo_c1": "c64-mo-c64-f512-f512-fC",
          "mo_f1": "c64-c64-f512-mo-f512-fC", "mo_cls": "c64-c64-f512-f512-fC-mo"}
ROWS = [*[_frozen("zf", "07", n, s) for n, s in {**MLP, **CONV}.items()],
        *[_frozen("zf", "07+12", n, s) for n, s in {"3fc": MLP["3fc"], **CONV, **MAXOUT}.items()],
        _frozen("vgg", "07+12", "3fc", MLP["3fc"]), _frozen("vgg", "07+12", "mo_c1", MAXOUT["mo_c1"]),
        *[Row(f"e2e-{n}", n, "e2e", "07", e2e_config=f"table8_{n}")
          for n in ("naive_1fc", "atrous_1fc", "atrous_3fc", "conv_noc")]]
ROW_BY_KEY = {r.key: r for r in ROWS}


def data_roots(data: Path, dataset: str, quick: bool) -> tuple[Path, Path]:
    """The small ("07") and large ("07+12") data of a data set under ``data``."""
    stem = f"{dataset}-quick" if quick else dataset
    return data / stem, data / f"{stem}-large"


def make_data(data: Path, dataset: str, quick: bool) -> None:
    """Generate the small set (1000 train-side + 300 test images, seed 0; every 8th is val) and the
    3.3x larger training set (same seed, so its first images are the small set's), when missing."""
    from nocdet.data.scene_digits import generate_scene_digits
    from nocdet.data.scene_glyphs import generate_scene_glyphs

    generate = generate_scene_glyphs if dataset == "scene-glyphs" else generate_scene_digits
    small, large = data_roots(data, dataset, quick)
    sizes = ((16, 8), (40, 1)) if quick else ((1000, 300), (3300, 1))
    for root, (train, test) in zip((small, large), sizes):
        if not (root / "dataset.json").is_file():
            print(f"making {root} ({train} train-side, {test} test images)", flush=True)
            generate(root, num_train=train, num_test=test, seed=0, progress=False, workers=1)


def row_overrides(row: Row, ds: DataSet, data: Path, quick: bool, cache: Path, seed: int) -> tuple[Path, list[str]]:
    """The config file and ``--set`` overrides of a row (without its schedule)."""
    small, large = data_roots(data, ds.name, quick)
    sets = [f"seed={seed}", f"data.root={small}"]
    if row.role == "e2e":
        return (CONFIGS / "e2e" / "scene_digits" / "lite0" / f"{row.e2e_config}.yaml",
                sets + E2E_DETAILS + (QUICK_E2E if quick else []))
    if row.train_set == "07+12":
        sets = [f"seed={seed}", f"data.root={large}", f"data.val={small}:val", f"data.test={small}:test"]
    config = ds.zf_config if row.role == "zf" else ds.vgg_config
    sets += [*(ds.vgg_sets if row.role == "vgg" else ()), f"cache_dir={cache}", f"noc.spec={row.noc(ds.classes)}",
             *PAPER_DETAILS, *(QUICK_FROZEN if quick else [])]
    if row.label == "svm_on_roi":
        sets.append("solver.iterations=0")
    return config, sets


def digest(cfg) -> str:
    from nocdet.config import to_dict

    data = to_dict(cfg)
    data.pop("name", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads) and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    log = run_dir / "train" / "log.jsonl"
    if not log.is_file():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [(r["iteration"], r["val_loss"]) for r in records if r.get("val_loss") is not None]


def stored_result(result_file: Path, key: str, name: str) -> dict | None:
    """The stored result of a run whose resolved config has digest ``key``; None (and a line
    saying why) when there is none or its config changed."""
    if not result_file.is_file():
        return None
    stored = json.loads(result_file.read_text())
    if stored["config_digest"] == key:
        print(f"skip {name} (finished)", flush=True)
        return stored
    print(f"{name}: the config changed since its result; running it again", flush=True)
    return None


def open_run_folder(run_dir: Path, key: str) -> bool:
    """Prepare ``run_dir`` for a run of the config with digest ``key``: True when it holds a
    checkpoint of that config to resume, else it is emptied for a fresh run."""
    from nocdet.experiment import load_experiment
    from nocdet.run_folder import prepare_run_folder

    saved = run_dir / "config.yaml"
    resume = (run_dir / "train" / "checkpoint.pt").is_file() and saved.is_file() and \
        digest(load_experiment(saved)) == key
    prepare_run_folder(run_dir, resume=resume, overwrite=not resume)
    return resume


def run_row(row: Row, ds: DataSet, seed: int, args: argparse.Namespace) -> dict | None:
    """Train and evaluate one (data set, row, seed) unless its result is stored for the same config;
    returns the result (None: stopped by a signal, the run folder keeps its checkpoint)."""
    from nocdet.experiment import load_experiment
    from nocdet.runs import load_data, run_experiment

    config, sets = row_overrides(row, ds, args.data, args.quick, args.out / "cache" / ds.name, seed)
    base = load_experiment(config, sets)
    data = load_data(base)
    e2e = base.setting == "e2e"
    epochs = args.e2e_epochs if e2e else args.epochs
    flipped = base.solver.flip if e2e else base.pyramid.flip
    per_batch = base.solver.images_per_batch if e2e else base.sampling.images_per_batch
    iterations = 0 if base.solver.iterations == 0 else \
        iterations_for(epochs, len(data.train.samples), per_batch, flipped)
    cfg = load_experiment(config, sets + (schedule_overrides(iterations, e2e) if iterations else []))
    key = digest(cfg)
    result_file = args.out / "results" / ds.name / row.key / f"seed{seed}.json"
    stored = stored_result(result_file, key, f"{ds.name} {row.key} seed {seed}")
    if stored is not None:
        return stored
    run_dir = args.out / "runs" / ds.name / row.key / f"seed{seed}"
    resume = open_run_folder(run_dir, key)
    print(f"{'resume' if resume else 'run'} {ds.name} {row.key} seed {seed}: {iterations} iterations "
          f"({epochs} epochs of {len(data.train.samples)} images)", flush=True)
    cpu, wall = cpu_seconds(), time.perf_counter()
    metrics = run_experiment(cfg, run_dir, resume=resume, progress=False, data=data)
    if "interrupted" in metrics:
        return None
    curve = val_curve(run_dir)
    diagnosis = json.loads((run_dir / "diagnosis.json").read_text())["overall"]
    result = {"dataset": ds.name, "row": row.key, "seed": seed, "config_digest": key, "iterations": iterations,
              "epochs": epochs if iterations else 0, "train_images": len(data.train.samples), "quick": args.quick,
              "voc07_mAP": 100 * metrics["voc07"]["mAP"], "AP": 100 * metrics["coco"]["AP"],
              "AP50": 100 * metrics["coco"]["AP50"], "AP75": 100 * metrics["coco"]["AP75"],
              "shares": {k: (100 * v if v is not None else None) for k, v in diagnosis.items()},
              "val_curve": curve, "relative_fall": relative_fall(curve, iterations) if iterations else None,
              "cpu_seconds": round(cpu_seconds() - cpu, 1), "wall_seconds": round(time.perf_counter() - wall, 1),
              "resumed": resume}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    from nocdet.io import atomic_write_json

    atomic_write_json(result_file, result)
    print(f"  {row.key} seed {seed}: VOC07 mAP {result['voc07_mAP']:.1f}, COCO AP {result['AP']:.1f}, "
          f"{result['cpu_seconds']:.0f} CPU s", flush=True)
    return result


# -------------------------------------------------------------------------------------- tables

def values(results: dict[str, list[dict]], key: str, metric: str) -> list[float]:
    """A metric of a row over its seeds; ``shares.Loc``-style paths and ``Loc-rec`` (Loc share
    minus the recognition error Sim + Oth + BG) are understood. A run without top-ranked detections
    has no shares and is left out of the share metrics."""
    out = []
    for r in results.get(key, []):
        if (metric == "Loc-rec" or metric.startswith("shares.")) and r["shares"]["Loc"] is None:
            continue
        if metric == "Loc-rec":
            s = r["shares"]
            out.append(s["Loc"] - (s["Sim"] + s["Oth"] + s["BG"]))
        elif metric.startswith("shares."):
            out.append(r["shares"][metric.split(".", 1)[1]])
        elif metric == "AP75-AP50":
            out.append(r["AP75"] - r["AP50"])
        else:
            out.append(r[metric])
    return out


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.1f} (n=1)"
    return f"{statistics.fmean(xs):.1f} +- {statistics.stdev(xs):.1f} (n={len(xs)})"


#: claim -> (paper's numbers, [(row a, row b, metric, kind, what)]): each comparison claims a > b
CLAIMS = {
    "1. A deeper MLP NoC beats a shallower one and the SVM on RoI (Table 1)":
        ("2fc < 3fc < 4fc; 4fc = SVM on RoI + 7.8 (VOC07 mAP, ZF, 07)",
         [("zf07-4fc", "zf07-svm_on_roi", "voc07_mAP", "greater", "4fc - SVM on RoI"),
          ("zf07-3fc", "zf07-2fc", "voc07_mAP", "greater", "3fc - 2fc"),
          ("zf07-4fc", "zf07-3fc", "voc07_mAP", "greater", "4fc - 3fc")]),
    "2. Conv layers overfit the small training set and win on the large one (Table 2)":
        ("07: 1conv ~ 3fc, more conv layers drop; 07+12: 3fc 56.5 -> 2conv3fc 58.9 (+2.4)",
         [("zf07-3fc", "zf07-3conv3fc", "voc07_mAP", "greater", "07: 3fc - 3conv3fc"),
          ("zf0712-2conv3fc", "zf0712-3fc", "voc07_mAP", "greater", "07+12: 2conv3fc - 3fc")]),
    "3. Maxout over two scales helps, best after the first conv (Table 3)":
        ("every maxout variant above 2conv3fc 58.9, by up to +1.8 (07+12); c1 the best reading",
         [("zf0712-mo_c1", "zf0712-2conv3fc", "voc07_mAP", "greater", "mo after conv1 - 2conv3fc"),
          *[("zf0712-mo_c1", f"zf0712-{v}", "voc07_mAP", "at_least", f"mo after conv1 - {v}")
            for v in ("mo_roi", "mo_f1", "mo_cls")]]),
    "4. The conv NoC's gain is mostly fewer localisation errors (Fig. 3)":
        ("Loc 28.1% (3fc) -> 22.6% (maxout 2conv3fc) ZF; 24.8% -> 20.1% VGG-16",
         [(f"{role}0712-3fc", f"{role}0712-mo_c1", metric, "greater", what)
          for role in ("zf", "vgg") for metric, what in
          (("shares.Loc", f"{role}: Loc share 3fc - maxout"),
           ("Loc-rec", f"{role}: Loc fall - recognition-error fall"))]),
    "5. Table 8: naive < a-trous 1fc < a-trous 3fc <= conv NoC, the conv NoC's gain at AP75":
        ("COCO AP 16.9 < 21.3 < 26.3 < 27.2 (ResNet-101); AP75 25.9 -> 27.6 (+1.7), AP50 48.1 -> 48.4",
         [("e2e-atrous_1fc", "e2e-naive_1fc", "AP", "greater", "a-trous 1fc - naive"),
          ("e2e-atrous_3fc", "e2e-atrous_1fc", "AP", "greater", "a-trous 3fc - a-trous 1fc"),
          ("e2e-conv_noc", "e2e-atrous_3fc", "AP", "at_least", "conv NoC - a-trous 3fc"),
          ("e2e-conv_noc", "e2e-atrous_3fc", "AP75-AP50", "greater", "(AP75 - AP50) conv NoC - a-trous 3fc")]),
}


def claim_cell(results: dict[str, list[dict]], comparisons: list) -> tuple[str, str]:
    parts, verdicts = [], []
    for a, b, metric, kind, what in comparisons:
        xa, xb = values(results, a, metric), values(results, b, metric)
        if not xa or not xb:
            parts.append(f"{what}: not run")
            verdicts.append("unresolved")
            continue
        c = compare(xa, xb, kind)
        n = min(len(xa), len(xb))
        se = "SE n/a" if math.isinf(c.se) else f"2SE {2 * c.se:.1f}"
        parts.append(f"{what}: {c.diff:+.1f} ({se}, n={n}) {c.verdict}")
        verdicts.append(c.verdict)
    return "; ".join(parts), combine(verdicts)


def finetune_reason(ds: DataSet) -> str:
    """Why Table 4's fine-tuned rows do not apply: the config check's own words."""
    from nocdet.errors import ConfigError
    from nocdet.experiment import load_experiment

    try:
        load_experiment(ds.zf_config, ["noc.init=finetune"])
    except ConfigError as err:
        return f"not applicable: {err}"
    return "applicable (not run by this script)"


def report(all_results: dict[str, dict[str, list[dict]]], args: argparse.Namespace) -> str:
    names = list(all_results)
    lines = []
    if args.quick:
        lines += ["**QUICK MODE: tiny data, a few iterations, one scale. A smoke test, NOT a result.**", ""]
    header = "| claim | paper | " + " | ".join(f"{n}: measured | {n}: verdict" for n in names) + " |"
    lines += ["## Claims", "", header, "| --- | --- |" + " --- | --- |" * len(names)]
    for claim, (paper, comparisons) in CLAIMS.items():
        cells = [claim_cell(all_results[n], comparisons) for n in names]
        lines.append(f"| {claim} | {paper} | " + " | ".join(f"{m} | **{v}**" for m, v in cells) + " |")
    lines += ["", "Comparisons claim A > B (\"at least\" ones: A not resolved below B); resolved when |A - B| > 2 SE.", ""]
    for n in names:
        results = all_results[n]
        lines += [f"## {n}: every row (mean +- std over seeds)", "",
                  "| row | NoC / config | training set | iterations (epochs) | VOC07 mAP | COCO AP | AP50 | AP75 | "
                  "Loc % | Sim+Oth+BG % | val-loss fall, last quarter | flat | CPU h |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
        for row in ROWS:
            rs = results.get(row.key, [])
            if not rs:
                continue
            falls = [r["relative_fall"] for r in rs if r["relative_fall"] is not None]
            flat = f"{sum(f < args.flat for f in falls)}/{len(rs)}" if falls else "n/a"
            rec = [r["shares"]["Sim"] + r["shares"]["Oth"] + r["shares"]["BG"] for r in rs if r["shares"]["Loc"] is not None]
            what = row.e2e_config or f"`{row.noc(DATASETS[n].classes)}`"
            lines.append(f"| {row.key} | {what} | {row.train_set} | {rs[0]['iterations']} ({rs[0]['epochs']}) | "
                         f"{fmt(values(results, row.key, 'voc07_mAP'))} | {fmt(values(results, row.key, 'AP'))} | "
                         f"{fmt(values(results, row.key, 'AP50'))} | {fmt(values(results, row.key, 'AP75'))} | "
                         f"{fmt(values(results, row.key, 'shares.Loc'))} | {fmt(rec)} | "
                         f"{fmt([100 * f for f in falls])}{' %' if falls else ''} | {flat} | "
                         f"{sum(r['cpu_seconds'] for r in rs) / 3600:.2f} |")
        lines += ["", f"Table 4 (fine-tuned NoC init) on Lite features: {finetune_reason(DATASETS[n])}", ""]
    total = sum(r["cpu_seconds"] for res in all_results.values() for rs in res.values() for r in rs)
    runs = sum(len(rs) for res in all_results.values() for rs in res.values())
    lines += [f"Total CPU time of the {runs} runs: {total / 3600:.2f} h (user + system, data generation excluded; "
              "a resumed run counts its last segment only). Flat: runs whose val-loss fall over the last "
              f"quarter is below {100 * args.flat:.0f}%."]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, list[dict]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for ax, e2e in zip(axes, (False, True)):
        for row in ROWS:
            if (row.role == "e2e") != e2e:
                continue
            for k, r in enumerate(results.get(row.key, [])):
                if r["val_curve"]:
                    its, losses = zip(*r["val_curve"])
                    per_epoch = r["iterations"] / r["epochs"]
                    ax.plot([i / per_epoch for i in its], losses, lw=1, alpha=0.8,
                            label=row.key if k == 0 else None, color=f"C{ROWS.index(row) % 10}")
        ax.set(xlabel="epoch", ylabel="validation loss", title="Table 8 rows (end to end)" if e2e else "frozen rows")
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/claims"), help="data sets, made here when missing")
    parser.add_argument("--out", type=Path, default=Path("runs/claims"), help="results, runs, caches, claims.md")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row (default 3)")
    parser.add_argument("--only", nargs="+", metavar="PATTERN", help="row keys to run (globs, e.g. 'zf07-*')")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="epochs of every frozen row")
    parser.add_argument("--e2e-epochs", type=float, default=DEFAULT_E2E_EPOCHS, help="epochs of every Table 8 row")
    parser.add_argument("--flat", type=float, default=DEFAULT_FLAT, help="convergence threshold (default 0.02)")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the finished results")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny data, few iterations; NOT a result")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the free CPUs)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.quick and args.epochs == DEFAULT_EPOCHS:
        args.epochs, args.e2e_epochs = 2, 1
    rows = [r for r in ROWS if not args.only or any(fnmatch.fnmatchcase(r.key, p) for p in args.only)]
    if not rows:
        parser.error(f"--only {args.only} matches no row; rows: {', '.join(ROW_BY_KEY)}")
    from nocdet.threads import use_threads

    use_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    all_results: dict[str, dict[str, list[dict]]] = {}
    for name in args.datasets:
        ds = DATASETS[name]
        if not args.no_run:
            make_data(args.data, name, args.quick)
            for row in rows:
                for seed in range(args.seeds):
                    if run_row(row, ds, seed, args) is None:
                        print("stopped by a signal; rerun the same command to resume", flush=True)
                        return 130
        found: dict[str, list[dict]] = {}
        for path in sorted((args.out / "results" / name).glob("*/seed*.json")):
            result = json.loads(path.read_text())
            if result["row"] in ROW_BY_KEY and result["seed"] < args.seeds and result["quick"] == args.quick:
                found.setdefault(result["row"], []).append(result)
        all_results[name] = found
        plot_curves(found, args.out / f"val_loss_{name}.png")
    text = report(all_results, args)
    (args.out / "claims.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
