"""The self-contained HTML report of one training run, or of several side by side.

A run directory (written by the training pipeline) holds ``run.json``, ``config.yaml``,
``log.jsonl`` (or ``train/log.jsonl``), ``metrics.json``, the devkit result files
``results/comp4_det_<split>_<class>.txt`` and optionally ``diagnosis.json``. The report shows
the configuration, the metrics, per-class AP, precision-recall curves, the error diagnosis
(paper Fig. 3; computed when ``diagnosis.json`` is absent), training curves and drawn
detections on the best and worst test images.

Everything is embedded (pictures as base64 ``data:`` URIs, CSS inline), so the page is one file
that opens offline. A few lines of inline script record, on window load, how many pictures
decoded (``<body data-images-loaded="8/8">``) and the page's width (``data-page-width``, which
must not exceed the window's, ``data-view-width``: wide tables scroll in their box); the test opens the page in headless Chromium and
checks it. Sections that need the test set's ground truth (curves, diagnosis, pictures) say so
when the data set named in ``run.json`` cannot be read, instead of failing the whole report.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from nocdet.data.images import load_image_bounded
from nocdet.data.sample import DetectionDataset, Detections, Sample
from nocdet.data.coco import read_coco
from nocdet.data.voc import VOCClassResults, read_voc, read_voc_results
from nocdet.errors import DataError, NocdetError
from nocdet.evaluation.diagnosis import ClassDetections, ClassDiagnosis, Diagnosis, diagnose
from nocdet.evaluation.thresholds import ThresholdCurve, confusion_matrix, threshold_curve
from nocdet.evaluation.voc import VOCEval, evaluate_class, ground_truth_by_class
from nocdet.io import atomic_write_text
from nocdet.viz import plots
from nocdet.viz.draw import class_colours, draw_detections

SAMPLE_THRESHOLD = 0.5  # score cut for drawn boxes and for ranking images
SAMPLE_IMAGES = 6  # best and worst pictures per run
PICTURE_SIDE = 640  # longer side of a drawn picture before drawing
_MATCH_IOU = 0.5


# ----------------------------------------------------------------------------- run folders

@dataclass
class Run:
    """One run directory as read for the report. ``dataset`` is None (with ``data_note`` saying
    why) when the test set cannot be read; ``results`` are the devkit detections per class."""

    path: Path
    name: str
    info: dict
    config: str | None
    log: list[dict]
    metrics: dict
    dataset: DetectionDataset | None = None
    data_note: str | None = None
    results: dict[str, VOCClassResults] = field(default_factory=dict)
    diagnosis: Diagnosis | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read JSON: {err}", path=path) from err


def read_log(path: Path) -> list[dict]:
    """The records of ``log.jsonl`` (one JSON object a line; blank lines skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read training log: {err}", path=path) from err
    records = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not JSON: {err.msg}", path=path, record=f"line {line_no}") from err
        if not isinstance(record, dict) or not isinstance(record.get("iteration"), (int, float)):
            raise DataError("expected an object with a numeric 'iteration'", path=path,
                            record=f"line {line_no}")
        records.append(record)
    return records


def detections_from_voc_results(results: dict[str, VOCClassResults], classes: Sequence[str],
                                image_ids: Sequence[str]) -> list[Detections]:
    """Per-image :class:`Detections` (internal coordinates, ``x1 = xmin - 1, y1 = ymin - 1``)
    from devkit result files read by :func:`read_voc_results`, one entry per ``image_ids``."""
    rows: dict[str, tuple[list, list, list]] = {i: ([], [], []) for i in image_ids}
    for label, name in enumerate(classes, start=1):
        r = results.get(name)
        if r is None:
            continue
        boxes = np.asarray(r.boxes, np.float64).reshape(-1, 4).copy()
        boxes[:, :2] -= 1
        for image_id, score, box in zip(r.image_ids, r.scores.tolist(), boxes):
            if image_id not in rows:
                raise DataError(f"detection of class {name!r} on unknown image {image_id!r}")
            rows[image_id][0].append(box)
            rows[image_id][1].append(score)
            rows[image_id][2].append(label)
    return [Detections(i, np.array(b).reshape(-1, 4), s, lab) for i, (b, s, lab) in rows.items()]


def read_run(run_dir: str | Path, name: str | None = None) -> Run:
    """Read a run directory; ``run.json`` and ``metrics.json`` are required, the rest optional."""
    path = Path(run_dir)
    if not (path / "run.json").is_file():
        raise DataError("not a run directory: no run.json in it", path=path)
    info = _read_json(path / "run.json")
    if not isinstance(info, dict):
        raise DataError("expected a JSON object", path=path / "run.json")
    if not (path / "metrics.json").is_file():
        raise DataError("no metrics.json: evaluate the run before reporting on it", path=path)
    metrics = _read_json(path / "metrics.json")
    if not isinstance(metrics, dict):
        raise DataError("expected a JSON object of metric groups", path=path / "metrics.json")
    config = (path / "config.yaml").read_text(encoding="utf-8") if (path / "config.yaml").is_file() else None
    log_path = next((p for p in (path / "log.jsonl", path / "train" / "log.jsonl") if p.is_file()), None)
    log = read_log(log_path) if log_path else []
    run = Run(path, name or str(info.get("name") or path.name), info, config, log, metrics)
    data = info.get("data") or {}
    if (path / "diagnosis.json").is_file():
        run.diagnosis = _diagnosis_from_json(_read_json(path / "diagnosis.json"), path / "diagnosis.json")
    try:
        run.dataset = _read_test_set(data)
    except (KeyError, NocdetError) as err:
        run.data_note = f"the test set of {path / 'run.json'} cannot be read ({err})"
        return run
    known = {s.image_id for s in run.dataset.samples}
    run.results = read_voc_results(path / "results", data.get("test_split", "test"),
                                   run.dataset.classes, known_ids=known)
    return run


def _read_test_set(data: dict) -> DetectionDataset:
    """The test set that ``run.json``'s ``data`` record names: a VOC split or a COCO file."""
    if data.get("format") == "coco":
        return read_coco(data["root"], data["images"])
    if data.get("format") == "voc":
        return read_voc(data["root"], data.get("test_split", "test"))
    raise DataError(f"unknown data format {data.get('format')!r}")


def _diagnosis_from_json(obj: Any, path: Path) -> Diagnosis:
    """A Diagnosis from ``Diagnosis.to_json()``, or from ``nocdet diagnose``'s file when it holds
    a single experiment."""
    if isinstance(obj, dict) and isinstance(obj.get("experiments"), dict):
        if len(obj["experiments"]) != 1:
            raise DataError(f"holds {len(obj['experiments'])} experiments; a run's diagnosis.json "
                            "must describe that run alone", path=path)
        obj = next(iter(obj["experiments"].values()))
    try:
        per_class = {name: ClassDiagnosis(dict(d["counts"]), int(d["num_objects"]),
                                          int(d.get("difficult", 0)))
                     for name, d in obj["per_class"].items()}
        return Diagnosis(per_class, float(obj.get("top_factor", 1.0)), obj.get("similarity_groups", []))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"not a diagnosis written by nocdet.evaluation.diagnosis ({err!r})",
                        path=path) from err


def voc07_eval(run: Run) -> VOCEval:
    """The VOC07 evaluation of the run's result files (devkit coordinates, as read)."""
    gt = ground_truth_by_class(run.dataset)
    evals = {}
    for name in run.dataset.classes:
        r = run.results[name]
        evals[name] = evaluate_class(gt[name], r.image_ids, r.scores, r.boxes, use_07_metric=True)
    return VOCEval("voc07", evals)


@dataclass
class ThresholdAnalysis:
    """Pooled precision/recall/F1 against the score threshold, and the confusion matrix at the
    threshold of the best F1 (:data:`SAMPLE_THRESHOLD` when nothing was detected)."""

    curve: ThresholdCurve
    threshold: float
    confusion: np.ndarray


def threshold_analysis(run: Run) -> ThresholdAnalysis:
    """:class:`ThresholdAnalysis` of a run whose test set was read."""
    evaluation = voc07_eval(run)
    curve = threshold_curve(evaluation.class_evals, {name: r.scores for name, r in run.results.items()})
    threshold = float(curve.thresholds[curve.best]) if len(curve.thresholds) else SAMPLE_THRESHOLD
    image_ids = [s.image_id for s in run.dataset.samples]
    detections = detections_from_voc_results(run.results, run.dataset.classes, image_ids)
    return ThresholdAnalysis(curve, threshold, confusion_matrix(run.dataset, detections, threshold))


def write_run_plots(run_dir: str | Path, folder: str | Path | None = None) -> list[Path]:
    """The report's pictures of one run as PNG files in ``folder`` (default ``RUN/plots``):
    ``training.png``, ``ap.png``, ``pr_curves.png``, ``error_pies.png``, ``fp_curve.png``,
    ``threshold.png`` and ``confusion.png``, each where the run has what it needs (the last
    five need the test set's ground truth). Returns the files written."""
    run = read_run(run_dir)
    out = Path(folder) if folder is not None else run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if run.log:
        written.append(plots.plot_training_curves({run.name: run.log}, out / "training.png"))
    per_class = (run.metrics.get("voc07") or {}).get("per_class")
    if per_class:
        written.append(plots.plot_ap_bars(per_class, out / "ap.png"))
    if run.dataset is not None:
        written.append(plots.plot_pr_curves(voc07_eval(run), out / "pr_curves.png"))
        analysis = threshold_analysis(run)
        written.append(plots.plot_threshold_curve(analysis.curve, out / "threshold.png"))
        written.append(plots.plot_confusion(analysis.confusion, run.dataset.classes, out / "confusion.png",
                                            analysis.threshold))
    diagnosis = _diagnosis_of(run)
    if diagnosis is not None:
        written.append(plots.plot_diagnosis_pies({run.name: diagnosis}, out / "error_pies.png"))
    stored = _read_json(run.path / "diagnosis.json") if (run.path / "diagnosis.json").is_file() else {}
    if isinstance(stored, dict) and isinstance(stored.get("fp_curve"), dict):
        written.append(plots.plot_fp_curve(stored["fp_curve"], out / "fp_curve.png"))
    return written


# ------------------------------------------------------------------------- image selection

@dataclass
class ImageScore:
    """Detections of one image at ``score >= SAMPLE_THRESHOLD`` against its ground truth."""

    image_id: str
    tp: int
    fp: int
    fn: int

    @property
    def errors(self) -> int:
        return self.fp + self.fn

    @property
    def f_score(self) -> float:
        """``2 TP / (2 TP + FP + FN)``; 1 for an image with nothing to find and nothing found."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0


def score_image(sample: Sample, dets: Detections, threshold: float = SAMPLE_THRESHOLD) -> ImageScore:
    """Count TP, FP and missed objects by the devkit's rule at one score cut: in order of
    decreasing score a detection goes to the most overlapping object of its class; IoU >= 0.5
    with an unmatched object is a TP, with a difficult one neither, else an FP."""
    keep = np.flatnonzero(dets.scores >= threshold)
    keep = keep[np.argsort(-dets.scores[keep], kind="stable")]
    matched = np.zeros(len(sample.labels), bool)
    tp = fp = 0
    if len(keep) and len(sample.labels):
        iou = box_iou(torch.from_numpy(dets.boxes[keep].astype(np.float64)),
                      torch.from_numpy(sample.boxes.astype(np.float64))).numpy()
    for row, k in enumerate(keep.tolist()):
        same = np.flatnonzero(sample.labels == dets.labels[k])
        if len(same) == 0:
            fp += 1
            continue
        j = same[int(np.argmax(iou[row, same]))]
        if iou[row, j] < _MATCH_IOU:
            fp += 1
        elif not sample.difficult[j]:
            fp += int(matched[j])
            tp += int(not matched[j])
            matched[j] = True
    fn = int((~matched & ~sample.difficult).sum())
    return ImageScore(sample.image_id, tp, fp, fn)


def pick_examples(scores: Sequence[ImageScore], count: int) -> tuple[list[ImageScore], list[ImageScore]]:
    """Up to ``count`` best images (highest F-score, then most TPs) and ``count`` worst (most
    errors, then lowest F-score); no image is shown twice, and a small test set is split in
    halves (the best get the odd one)."""
    best = sorted(scores, key=lambda s: (-s.f_score, -s.tp, s.errors))[:min(count, (len(scores) + 1) // 2)]
    chosen = {s.image_id for s in best}
    rest = [s for s in scores if s.image_id not in chosen]
    worst = sorted(rest, key=lambda s: (-s.errors, s.f_score))[:count]
    return best, worst


# ------------------------------------------------------------------------------- pictures

def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png_uri(path: Path) -> str:
    return _data_uri(path.read_bytes(), "image/png")


def _picture_uri(run: Run, sample: Sample, dets: Detections) -> str:
    """The drawn detections of one image, as a JPEG data URI (longer side at most PICTURE_SIDE)."""
    image, scale = load_image_bounded(sample.path, PICTURE_SIDE)
    scaled = Detections(dets.image_id, dets.boxes * scale, dets.scores, dets.labels)
    gt = Sample(sample.image_id, sample.path, image.shape[1], image.shape[0], sample.boxes * scale,
                sample.labels, sample.difficult)
    picture = draw_detections(image, scaled, run.dataset.classes, gt, SAMPLE_THRESHOLD)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=88)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def loss_points(run: Run, key: str) -> list[tuple[int, float]]:
    """``(iteration, value)`` of ``key`` in a run's log (:func:`nocdet.viz.plots.loss_points`)."""
    return plots.loss_points(run.log, key)


# ------------------------------------------------------------------------------------ HTML

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;
     background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}
h2{font-size:20px;margin:36px 0 4px;border-bottom:2px solid #e3e6ea;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}
p.what{color:#555;margin:2px 0 12px;font-style:italic}
p.note{color:#8a5a00;background:#fff7e6;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #dde1e6;padding:4px 10px;text-align:right}th{background:#f0f2f5}
td:first-child,th:first-child,td.text,th.text{text-align:left}td.best{font-weight:700;background:#eef8ee}
td.noc{white-space:nowrap;text-align:left;font-family:ui-monospace,monospace;font-size:13px}
td.nowrap{white-space:nowrap}th[title]:not([title=""]){text-decoration:underline dotted;cursor:help}
div.scroll{overflow-x:auto;max-width:100%}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:13px;margin:4px 0 8px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-1px}
@media (max-width:700px){main{padding:12px}th,td{padding:3px 6px}}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
pre{background:#f4f5f7;padding:10px;border-radius:4px;overflow:auto;font-size:13px}
img.plot{max-width:100%;border:1px solid #e3e6ea;border-radius:4px;margin:6px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(340px,100%),1fr));gap:12px}
h1,h2,h3,p,summary,figcaption{overflow-wrap:anywhere}
figure{margin:0}figure img{width:100%;height:340px;object-fit:contain;background:#eceef1;border-radius:4px}
figcaption{font-size:13px;color:#444}
"""

_LOAD_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = loaded + "/" + images.length;
  document.body.dataset.pageWidth = document.documentElement.scrollWidth;
  document.body.dataset.viewWidth = document.documentElement.clientWidth;
});
</script>"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _percent(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) or math.isnan(value) else f"{100 * value:.1f}"


def _section(title: str, what: str, body: str) -> str:
    return f'<section><h2>{_e(title)}</h2><p class="what">{_e(what)}</p>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{_e(alt)}">'


def _table(header: list[str], rows: list[list[Any]], bold: set[tuple[int, int]] = frozenset()) -> str:
    """A table: first column text, the others fractions shown as percentages; ``bold`` holds
    the (row, column) cells to highlight."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = [f"<td>{_e(row[0])}</td>"]
        for c, value in enumerate(row[1:], start=1):
            cls = ' class="best"' if (i, c) in bold else ""
            cells.append(f"<td{cls}>{_percent(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return _scroll(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _scroll(table: str) -> str:
    """A wide table scrolls sideways inside its box instead of widening the page."""
    return f'<div class="scroll">{table}</div>'


def _best_cells(rows: list[list[Any]], groups: list[list[tuple[int, int]]]) -> set[tuple[int, int]]:
    """The cells holding the highest number of each group of (row, column) cells (all of them
    on a tie), in groups whose numbers are not all equal."""
    bold = set()
    for cells in groups:
        values = [rows[i][c] for i, c in cells if isinstance(rows[i][c], (int, float))]
        if len(set(values)) > 1:
            bold |= {(i, c) for i, c in cells if rows[i][c] == max(values)}
    return bold


def _metric(run: Run, group: str, key: str) -> Any:
    value = (run.metrics.get(group) or {}).get(key)
    return value if isinstance(value, (int, float)) else None


def readable_time(stamp: Any) -> str:
    """``2024-05-01T12:00:00+00:00`` -> ``2024-05-01 12:00 UTC`` (no zone: as written); other
    values as they are."""
    try:
        when = datetime.datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    zone = "" if when.tzinfo is None else " UTC" if when.utcoffset() == datetime.timedelta(0) \
        else when.strftime(" %z")
    return when.strftime("%Y-%m-%d %H:%M") + zone


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    minutes = round(seconds / 60)
    return f"{seconds:.0f} s" if seconds < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _runs_section(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        data = run.info.get("data") or {}
        timing = run.metrics.get("timing_seconds") or {}
        features = sum(v for k, v in timing.items() if k in ("proposals", "features", "features_and_proposals")
                       and isinstance(v, (int, float)))
        params = run.info.get("params")
        params = f"{params / 1e6:.2f} M" if isinstance(params, (int, float)) else "–"
        cells = [(run.name, "text"), (run.info.get("noc", "–"), "noc"),
                 (f"{data.get('format', '?')}:{data.get('root', '?')} ({data.get('test_split', 'test')})", "text"),
                 (params, ""), (_duration(run.info.get("train_seconds")), ""),
                 (_duration(features) if timing else "–", ""),
                 (readable_time(run.info.get("created", "–")), "text nowrap"), (str(run.path), "text")]
        rows.append("<tr>" + "".join(f'<td class="{cls}">{_e(c)}</td>' if cls else f"<td>{_e(c)}</td>"
                                     for c, cls in cells) + "</tr>")
    head = "".join(f'<th class="{cls}" title="{_e(tip)}">{_e(h)}</th>' for h, cls, tip in (
        ("run", "text", ""), ("NoC", "text", "the NoC string (docs/reference.md)"),
        ("test data", "text", ""),
        ("NoC parameters", "", "parameters of the trained network: the NoC head in the frozen setting "
                               "(the frozen backbone is not counted); the whole detector end to end"),
        ("training time", "", "SGD training alone: proposals and feature extraction are not included"),
        ("proposals + features", "", "Selective Search and RoI feature extraction (frozen setting)"),
        ("created", "text", ""), ("folder", "text", "")))
    table = _scroll(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    configs = "".join(f"<details><summary>config of {_e(r.name)}</summary><pre>{_e(r.config)}</pre></details>"
                      if r.config is not None else _note(f"{r.name}: no config.yaml") for r in runs)
    return _section("Runs", "What was trained: the NoC string, the test data, model size and time. "
                    "Parameters count the trained network (with frozen features: the NoC head, not the "
                    "backbone); training time is SGD alone, proposals and feature extraction are given "
                    "apart. Click a config to see the resolved settings.", table + configs)


def _metrics_section(runs: Sequence[Run]) -> str:
    header = ["run", "VOC07 mAP", "VOC mAP (area)", "COCO AP", "AP50", "AP75", "APs", "APm", "APl"]
    rows = [[r.name, _metric(r, "voc07", "mAP"), _metric(r, "voc", "mAP")]
            + [_metric(r, "coco", k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] for r in runs]
    columns = [[(i, c) for i in range(len(rows))] for c in range(1, len(header))]
    return _section("Accuracy", "Mean average precision on the test set in percent: VOC2007 11-point, "
                    "VOC2010+ area under the curve, and COCO AP over IoU 0.5:0.95.",
                    _table(header, rows, _best_cells(rows, columns)))


def _per_class_section(runs: Sequence[Run], tmp: Path) -> str:
    groups = (("voc07", "VOC07"), ("voc", "VOC"), ("coco", "COCO"))
    tables = {g: [(r.metrics.get(g) or {}).get("per_class") or {} for r in runs] for g, _ in groups}
    classes = list(dict.fromkeys(name for per_run in tables.values() for t in per_run for name in t))
    n = len(runs)
    header = ["class"] + [f"{label} {r.name}" if n > 1 else f"{label} AP" for _, label in groups for r in runs]
    rows = [[name] + [t.get(name) for g, _ in groups for t in tables[g]] for name in classes]
    # per class and metric, the runs side by side: columns 1 + g * n .. 1 + g * n + n - 1
    compared = [[(i, 1 + g * n + k) for k in range(n)] for i in range(len(rows)) for g in range(len(groups))]
    body = _table(header, rows, _best_cells(rows, compared))
    voc07 = {r.name: t for r, t in zip(runs, tables["voc07"])}
    if any(voc07.values()):
        if n > 1:
            plots.plot_ap_comparison(voc07, tmp / "ap.png")
        else:
            plots.plot_ap_bars(voc07[runs[0].name], tmp / "ap.png")
        body = _img(_png_uri(tmp / "ap.png"), "average precision per class") + body
    return _section("Per-class AP", "Average precision of each class in percent (– : no test object "
                    "of that class); bold marks the best run.", body)


def _per_run(runs: Sequence[Run], render: Callable[[int, Run], str]) -> str:
    """``render(k, run)`` of every run whose test set could be read, a note for the others."""
    return "".join(render(k, run) if run.dataset is not None else _note(f"{run.name}: {run.data_note}")
                   for k, run in enumerate(runs))


def _pr_section(runs: Sequence[Run], tmp: Path) -> str:
    def render(k: int, run: Run) -> str:
        evaluation = voc07_eval(run)
        recorded = _metric(run, "voc07", "mAP")
        stale = ""
        if recorded is not None and evaluation.mAP is not None and abs(evaluation.mAP - recorded) > 1e-6:
            stale = _note(f"{run.name}: the result files give VOC07 mAP {100 * evaluation.mAP:.2f}, "
                          f"metrics.json says {100 * recorded:.2f}; the files may be newer than the metrics")
        plots.plot_pr_curves(evaluation, tmp / f"pr{k}.png")
        return stale + f"<h3>{_e(run.name)}</h3>" + _img(_png_uri(tmp / f"pr{k}.png"), f"PR curves of {run.name}")

    return _section("Precision-recall curves", "Precision against recall for each class, detections "
                    "ranked by score (VOC devkit matching at IoU 0.5).", _per_run(runs, render))


def _diagnosis_of(run: Run) -> Diagnosis | None:
    """The run's diagnosis: from ``diagnosis.json``, else computed from its result files (None
    without the test set); kept on the run."""
    if run.diagnosis is None and run.dataset is not None:
        by_class = {name: ClassDetections.from_devkit(r.image_ids, r.scores, r.boxes)
                    for name, r in run.results.items()}
        with warnings.catch_warnings():  # the report says so in the page
            warnings.filterwarnings("ignore", message=".*defines no similarity groups.*")
            run.diagnosis = diagnose(run.dataset, by_class)
    return run.diagnosis


def _threshold_section(runs: Sequence[Run], tmp: Path) -> str:
    def render(k: int, run: Run) -> str:
        analysis = threshold_analysis(run)
        plots.plot_threshold_curve(analysis.curve, tmp / f"threshold{k}.png")
        plots.plot_confusion(analysis.confusion, run.dataset.classes, tmp / f"confusion{k}.png", analysis.threshold)
        curve = analysis.curve
        best = (f"Best F1 {100 * curve.f1[curve.best]:.1f}% at score {analysis.threshold:.2f} (precision "
                f"{100 * curve.precision[curve.best]:.1f}%, recall {100 * curve.recall[curve.best]:.1f}%): "
                f"nocdet detect --threshold {analysis.threshold:.2f}" if len(curve.thresholds)
                else "no detections")
        return (f"<h3>{_e(run.name)}</h3><p>{_e(best)}</p>"
                + _img(_png_uri(tmp / f"threshold{k}.png"), f"precision, recall and F1 of {run.name}")
                + _img(_png_uri(tmp / f"confusion{k}.png"), f"confusion matrix of {run.name}"))

    return _section("Score threshold", "Precision, recall and F1 of all classes together when only "
                    "detections scoring at least the threshold are kept (what nocdet detect --threshold "
                    "does), and the confusion matrix at the threshold of the best F1: rows are the true "
                    "classes (background: a detection on no object or a duplicate), columns the detected "
                    "ones (missed: an object nothing found).", _per_run(runs, render))


def _diagnosis_section(runs: Sequence[Run], tmp: Path) -> str:
    diagnoses, notes = {}, []
    for run in runs:
        if _diagnosis_of(run) is None:
            notes.append(_note(f"{run.name}: no diagnosis.json and {run.data_note}"))
            continue
        diagnoses[run.name] = run.diagnosis
        if not run.diagnosis.similarity_groups:
            notes.append(_note(f"{run.name}: the data set defines no similar classes, so every "
                               "confusion with another class counts as Oth"))
    body = ""
    if diagnoses:
        plots.plot_diagnosis_pies(diagnoses, tmp / "pies.png")
        rows = [[name] + list(d.overall.values()) for name, d in diagnoses.items()]
        body = (_img(_png_uri(tmp / "pies.png"), "error diagnosis pies")
                + _table(["run", "Cor", "Loc", "Sim", "Oth", "BG"], rows))
    return _section("Error diagnosis", "Where the top-ranked detections go (paper Fig. 3): correct, "
                    "poor localisation, confusion with a similar or another class, or background.",
                    body + "".join(notes))


def _training_section(runs: Sequence[Run], tmp: Path) -> str:
    if any(r.log for r in runs):
        plots.plot_training_curves({r.name: r.log for r in runs}, tmp / "training.png")
        body = _img(_png_uri(tmp / "training.png"), "training curves")
    else:
        body = _note("no log.jsonl records")
    return _section("Training", "Training objective (the NoC's classification loss with frozen features; RPN "
                    "+ NoC losses end to end) on the training mini-batches (solid) and on the validation set "
                    "(dashed), the validation mean AP where it was computed, and the learning rate (log "
                    "scale), against iteration.", body)


def _colour_legend(classes: Sequence[str]) -> str:
    """The class colours of the drawn pictures, as swatches with the class names."""
    items = "".join(f'<span><span class="swatch" style="background:rgb{colour}"></span>{_e(name)}</span>'
                    for name, colour in zip(classes, class_colours(len(classes))))
    return f'<div class="legend">{items}<span><span class="swatch" style="background:rgb(150, 150, 150)">' \
           '</span>difficult (ground truth)</span></div>'


def _samples_section(runs: Sequence[Run], count: int) -> str:
    parts = []
    for run in runs:
        if run.dataset is None:
            parts.append(_note(f"{run.name}: {run.data_note}"))
            continue
        samples = run.dataset.by_id()
        image_ids = [s.image_id for s in run.dataset.samples]
        detections = {d.image_id: d
                      for d in detections_from_voc_results(run.results, run.dataset.classes, image_ids)}
        scores = [score_image(samples[i], detections[i]) for i in image_ids]
        best, worst = pick_examples(scores, count)
        parts.append(_colour_legend(run.dataset.classes))
        for title, chosen in (("best", best), ("worst", worst)):
            figures = []
            for s in chosen:
                uri = _picture_uri(run, samples[s.image_id], detections[s.image_id])
                caption = (f"{s.image_id}: {s.tp} correct, {s.fp} false, {s.fn} missed "
                           f"(F {s.f_score:.2f})")
                figures.append(f"<figure>{_img(uri, s.image_id, 'sample')}<figcaption>{_e(caption)}"
                               "</figcaption></figure>")
            prefix = f"{run.name}: " if len(runs) > 1 else ""
            parts.append(f"<h3>{_e(prefix + title)} images</h3><div class=\"grid\">{''.join(figures)}</div>")
    return _section("Sample detections", f"Detections scoring at least {SAMPLE_THRESHOLD} (solid box, "
                    "filled tag with class and score) and ground truth (dashed box, white tag with the class; "
                    "grey = difficult) on the test images with the highest F-score and with the most errors.",
                    "".join(parts))


def write_report(run_dirs: Sequence[str | Path], out: str | Path, names: Sequence[str] | None = None,
                 *, sample_images: int = SAMPLE_IMAGES) -> Path:
    """Write the HTML report of ``run_dirs`` (one run, or several compared) to ``out``.

    ``names`` label the runs (default: each ``run.json`` name); a repeated name gets a suffix.
    """
    if not run_dirs:
        raise NocdetError("no run directory given")
    if names is not None and len(names) != len(run_dirs):
        raise NocdetError(f"{len(names)} names for {len(run_dirs)} runs")
    runs: list[Run] = []
    for k, run_dir in enumerate(run_dirs):
        run = read_run(run_dir, None if names is None else names[k])
        taken = {r.name for r in runs}
        base, n = run.name, 2
        while run.name in taken:
            run.name, n = f"{base} ({n})", n + 1
        runs.append(run)
    with tempfile.TemporaryDirectory(prefix="nocdet-report-") as folder:  # plots write PNG files
        tmp = Path(folder)
        body = "".join([_runs_section(runs), _metrics_section(runs), _per_class_section(runs, tmp),
                        _pr_section(runs, tmp), _threshold_section(runs, tmp), _diagnosis_section(runs, tmp),
                        _training_section(runs, tmp),
                        _samples_section(runs, sample_images)])
    title = "nocdet report: " + " vs ".join(r.name for r in runs)
    created = datetime.datetime.now().isoformat(timespec="seconds")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=\"what\">Written {created} by nocdet from "
            f"{_e(', '.join(str(r.path) for r in runs))}.</p>{body}</main>{_LOAD_CHECK}</body></html>\n")
    out = Path(out)
    atomic_write_text(out, page)
    return out
