"""The VOC metric against hand-computed cases and a literal transcription of the devkit."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from nocdet.data.sample import DetectionDataset, Detections, Sample
from nocdet.errors import ConfigError, DataError
from nocdet.evaluation.voc import VOC07_RECALL_THRESHOLDS, evaluate_class, evaluate_voc, voc_ap


# --------------------------------------------------------------------------- voc_ap by hand
def test_voc_ap_hand_curve():
    # npos = 5; ranked detections TP, TP, FP, TP, TP:
    # recall    = .2, .4, .4,  .6,  .8
    # precision = 1,  1,  2/3, 3/4, 4/5
    # 11-point: t = 0, .1, .2, .3, .4 -> max precision 1 (5 points);
    #           t = .5, .6, .7, .8     -> max(3/4, 4/5) = .8 (4 points; recall 0.6 and 0.8 reach
    #           t = 0.6 and 0.8 exactly); t = .9, 1 -> 0.  AP = (5 + 4 * .8) / 11 = 8.2 / 11.
    # area: envelope 1, 1, .8, .8, .8 over recall steps of .2 each, then 0 from .8 to 1:
    #       .2 * (1 + 1 + .8 + .8) = .72
    rec = np.array([0.2, 0.4, 0.4, 0.6, 0.8])
    prec = np.array([1.0, 1.0, 2 / 3, 3 / 4, 4 / 5])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(8.2 / 11, abs=1e-12)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.72, abs=1e-12)


def test_voc_ap_empty_curve_is_zero():
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), False) == 0.0


def test_voc07_thresholds_follow_matlab_colon():
    # MATLAB builds 0:0.1:1 from both ends: 0.6 is 1 - 0.4 and 0.7 is 1 - 0.3 (np.arange gives
    # 0.6000000000000001 and 0.7000000000000001, which a recall of exactly 3/5 or 7/10 misses).
    assert VOC07_RECALL_THRESHOLDS[6] == 3 / 5 and VOC07_RECALL_THRESHOLDS[7] == 7 / 10
    assert len(VOC07_RECALL_THRESHOLDS) == 11 and VOC07_RECALL_THRESHOLDS[-1] == 1.0
    # npos = 10, seven TPs and nothing else: recall 0.1 .. 0.7, precision 1 -> t = 0 .. 0.7 count.
    rec = np.arange(1, 8) / 10
    assert voc_ap(rec, np.ones(7), True) == pytest.approx(8 / 11, abs=1e-12)
    # npos = 5, three TPs: recall reaches 3/5 -> t = 0 .. 0.6 count.
    assert voc_ap(np.arange(1, 4) / 5, np.ones(3), True) == pytest.approx(7 / 11, abs=1e-12)


# --------------------------------------------------------------------------- evaluate_class by hand
def _gt(**images):
    """gt mapping from image -> list of (box, difficult)."""
    return {
        name: (np.array([b for b, _ in objs], np.float64).reshape(-1, 4), np.array([d for _, d in objs], bool))
        for name, objs in images.items()
    }


def test_difficult_match_is_ignored():
    gt = _gt(a=[([1, 1, 10, 10], True), ([21, 21, 30, 30], False)])
    e = evaluate_class(gt, ["a", "a"], [0.9, 0.8], [[1, 1, 10, 10], [21, 21, 30, 30]])
    assert e.npos == 1
    assert e.tp.tolist() == [0, 1] and e.fp.tolist() == [0, 0]
    # recall 0, 1; precision 0 (no TP/FP yet), 1 -> both APs 1.
    assert e.ap == pytest.approx(1.0)
    assert evaluate_class(gt, ["a", "a"], [0.9, 0.8], [[1, 1, 10, 10], [21, 21, 30, 30]],
                          use_07_metric=False).ap == pytest.approx(1.0)


def test_duplicate_detection_is_false_positive():
    gt = _gt(a=[([1, 1, 10, 10], False)])
    e = evaluate_class(gt, ["a", "a"], [0.7, 0.9], [[1, 1, 10, 10], [2, 1, 10, 10]])
    # rank order: the 0.9 detection first (IoU 0.9) is the TP, the 0.7 one the duplicate.
    assert e.order.tolist() == [1, 0]
    assert e.tp.tolist() == [1, 0] and e.fp.tolist() == [0, 1]
    assert e.recall.tolist() == [1.0, 1.0] and e.precision.tolist() == [1.0, 0.5]


def test_iou_exactly_half_with_plus_one_widths():
    # GT 1..10 x 1..10 covers 100 pixels; the detection 1..10 x 1..5 covers 50 of them, and the
    # union is 100: IoU = 0.5 exactly (without +1 it would be 36/81 < 0.5).
    gt = _gt(a=[([1, 1, 10, 10], False)])
    det = [[1, 1, 10, 5]]
    assert evaluate_class(gt, ["a"], [1.0], det).tp.tolist() == [1]
    strict = evaluate_class(gt, ["a"], [1.0], det, strict_threshold=True)
    assert strict.tp.tolist() == [0] and strict.fp.tolist() == [1] and strict.ap == 0.0


def test_best_overlap_already_matched_gives_false_positive():
    # A = 1..10, B = 3..12 (x). The second detection equals A: IoU(A) = 1, IoU(B) = 80/120 >= 0.5,
    # but the devkit takes the best overlap (A, already detected): FP, not a TP on B.
    gt = _gt(a=[([1, 1, 10, 10], False), ([3, 1, 12, 10], False)])
    e = evaluate_class(gt, ["a", "a"], [0.9, 0.8], [[1, 1, 10, 10], [1, 1, 10, 10]])
    assert e.tp.tolist() == [1, 0] and e.fp.tolist() == [0, 1]
    assert e.npos == 2 and e.recall[-1] == 0.5


def test_equal_overlap_goes_to_first_gt_and_equal_scores_keep_input_order():
    # The detection 2..11 overlaps A (1..10) and B (3..12) equally (90/110): the first, A, wins.
    gt = _gt(a=[([1, 1, 10, 10], False), ([3, 1, 12, 10], False)])
    e = evaluate_class(gt, ["a", "a"], [0.5, 0.5], [[2, 1, 11, 10], [3, 1, 12, 10]])
    assert e.order.tolist() == [0, 1]
    assert e.tp.tolist() == [1, 1]  # the second detection then takes B
    e = evaluate_class(gt, ["a", "a"], [0.5, 0.5], [[2, 1, 11, 10], [2, 1, 11, 10]])
    assert e.tp.tolist() == [1, 0] and e.fp.tolist() == [0, 1]  # both go to A


def test_detection_on_image_without_objects_and_no_overlap():
    gt = _gt(a=[([1, 1, 10, 10], False)], b=[])
    e = evaluate_class(gt, ["b", "a", "a"], [0.9, 0.8, 0.7],
                       [[1, 1, 10, 10], [50, 50, 60, 60], [1, 1, 10, 10]])
    assert e.fp.tolist() == [1, 1, 0] and e.tp.tolist() == [0, 0, 1]
    # recall 0, 0, 1; precision 0, 0, 1/3 -> 11-point AP 1/3, area AP 1/3.
    assert e.ap == pytest.approx(1 / 3)


def test_no_detections_and_empty_class():
    gt = _gt(a=[([1, 1, 10, 10], False)])
    e = evaluate_class(gt, [], [], np.zeros((0, 4)))
    assert e.ap == 0.0 and e.num_detections == 0
    only_difficult = _gt(a=[([1, 1, 10, 10], True)], b=[])
    e = evaluate_class(only_difficult, ["a", "b"], [0.5, 0.4], [[1, 1, 10, 10], [1, 1, 5, 5]])
    assert e.ap is None and e.npos == 0
    assert not any(math.isnan(x) for x in e.precision.tolist() + e.recall.tolist())


def test_unknown_image_and_nan_score_are_errors():
    gt = _gt(a=[([1, 1, 10, 10], False)])
    with pytest.raises(DataError, match="zzz"):
        evaluate_class(gt, ["zzz"], [0.5], [[1, 1, 5, 5]])
    with pytest.raises(DataError, match="NaN"):
        evaluate_class(gt, ["a"], [float("nan")], [[1, 1, 5, 5]])


# --------------------------------------------------------------------------- the devkit, literally
def matlab_colon(a: float, d: float, b: float) -> list[float]:
    """MATLAB's a:d:b (MathWorks' colonop.m): first half a + k*d, second half b - k*d."""
    n = round((b - a) / d)
    v = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        v[k] = a + k * d
        v[n - k] = b - k * d
    if n % 2 == 0:
        v[n // 2] = (a + b) / 2
    return v


def devkit_voc_eval(gt, ids, confidence, BB, use07, strict=False):
    """VOCevaldet.m (+ VOCap.m), statement by statement, with scalar arithmetic."""
    npos = 0
    det = {}
    for i, (boxes, diff) in gt.items():
        det[i] = [False] * len(diff)
        npos += sum(1 for x in diff if not x)
    nd = len(confidence)
    si = sorted(range(nd), key=lambda k: -confidence[k])  # stable, as MATLAB's sort
    tp = [0.0] * nd
    fp = [0.0] * nd
    for d in range(nd):
        i = ids[si[d]]
        bb = [float(x) for x in BB[si[d]]]
        ovmax = -math.inf
        jmax = -1
        for j, bbgt in enumerate(gt[i][0].tolist()):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax = ov
                    jmax = j
        if (ovmax > 0.5) if strict else (ovmax >= 0.5):
            if not gt[i][1][jmax]:
                if not det[i][jmax]:
                    tp[d] = 1.0
                    det[i][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    ctp, cfp, t, f = [], [], 0.0, 0.0
    for d in range(nd):
        t += tp[d]
        f += fp[d]
        ctp.append(t)
        cfp.append(f)
    rec = [x / npos for x in ctp]
    prec = [x / (y + x) if x + y > 0 else math.nan for x, y in zip(ctp, cfp)]
    if use07:
        ap = 0.0
        for thr in matlab_colon(0, 0.1, 1):
            ps = [p for p, r in zip(prec, rec) if r >= thr and not math.isnan(p)]  # max skips NaN
            ap = ap + (max(ps) if ps else 0.0) / 11
    else:
        mrec = [0.0] + rec + [1.0]
        mpre = [0.0] + prec + [0.0]
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = mpre[k + 1] if math.isnan(mpre[k]) else max(mpre[k], mpre[k + 1])
        ap = 0.0
        for k in range(1, len(mrec)):
            if mrec[k] != mrec[k - 1]:
                ap += (mrec[k] - mrec[k - 1]) * mpre[k]
    return ap, tp, fp


def _random_case(rng: random.Random):
    gt, ids, scores, boxes = {}, [], [], []
    frac = rng.random() < 0.3  # some cases with non-integer coordinates
    for n in range(rng.randint(1, 6)):
        objs = []
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5])):
            x1, y1 = rng.randint(1, 40), rng.randint(1, 40)
            x2, y2 = x1 + rng.randint(0, 25), y1 + rng.randint(0, 25)
            objs.append(([x1, y1, x2, y2], rng.random() < 0.2))
        gt[f"im{n}"] = objs
        for _ in range(rng.randint(0, 8)):
            if objs and rng.random() < 0.7:  # near an object
                b = list(rng.choice(objs)[0])
                b = [c + rng.randint(-4, 4) for c in b]
            else:
                x1, y1 = rng.randint(-5, 50), rng.randint(-5, 50)
                b = [x1, y1, x1 + rng.randint(-2, 25), y1 + rng.randint(-2, 25)]
            if frac:
                b = [c + rng.randint(0, 9) / 10 for c in b]
            ids.append(f"im{n}")
            scores.append(round(rng.random(), 1))  # many ties
            boxes.append(b)
    return _gt(**gt), ids, scores, boxes


@pytest.mark.parametrize("use07", [True, False])
@pytest.mark.parametrize("strict", [False, True])
def test_random_cases_match_devkit_transcription(use07, strict):
    rng = random.Random(1234 + 2 * use07 + strict)
    checked = 0
    for _ in range(300):
        gt, ids, scores, boxes = _random_case(rng)
        npos = sum(int((~d).sum()) for _, d in gt.values())
        e = evaluate_class(gt, ids, scores, np.array(boxes, np.float64).reshape(-1, 4),
                           use_07_metric=use07, strict_threshold=strict)
        if npos == 0:
            assert e.ap is None
            continue
        ap, tp, fp = devkit_voc_eval(gt, ids, scores, boxes, use07, strict)
        assert e.tp.tolist() == tp and e.fp.tolist() == fp
        assert e.ap == ap  # to the last digit
        checked += 1
    assert checked > 200


# --------------------------------------------------------------------------- evaluate_voc
def _dataset():
    # internal coordinates: devkit (1, 1, 10, 10) is internal (0, 0, 10, 10)
    samples = [
        Sample("a", "a.jpg", 50, 50, [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [False, False]),
        Sample("b", "b.jpg", 50, 50, [[0, 0, 10, 10]], [1], [False]),
        Sample("c", "c.jpg", 50, 50, [[5, 5, 9, 9]], [3], [True]),
        Sample("d", "d.jpg", 50, 50),
    ]
    return DetectionDataset(["cat", "dog", "owl"], samples, name="toy")


def test_evaluate_voc_converts_coordinates_and_skips_empty_class():
    ds = _dataset()
    dets = [
        # devkit (1, 1, 10, 5) against (1, 1, 10, 10): IoU 0.5 exactly -> TP
        Detections("a", [[0, 0, 10, 5], [20, 20, 30, 30]], [0.9, 0.8], [1, 2]),
        Detections("d", [[0, 0, 10, 10]], [0.95], [1]),  # image without objects: FP
        Detections("c", [[5, 5, 9, 9]], [0.5], [3]),     # difficult only: class skipped
    ]
    ev = evaluate_voc(ds, dets, "voc07")
    assert ev.class_evals["cat"].tp.tolist() == [0, 1] and ev.class_evals["cat"].fp.tolist() == [1, 0]
    # cat: npos 2; recall 0, .5; precision 0, .5 -> 11-point: t = 0 .. .5 -> .5 (6 points) = 3/11
    assert ev.per_class["cat"] == pytest.approx(3 / 11)
    assert ev.per_class["dog"] == pytest.approx(1.0)
    assert ev.per_class["owl"] is None and ev.skipped_classes == ["owl"]
    assert ev.mAP == pytest.approx((3 / 11 + 1.0) / 2)
    # area: cat recall .5 at precision .5 -> .25
    assert evaluate_voc(ds, dets, "voc").per_class["cat"] == pytest.approx(0.25)
    strict = evaluate_voc(ds, dets, "voc07", strict_threshold=True)
    assert strict.per_class["cat"] == 0.0
    js = ev.to_json()
    assert js["skipped_classes"] == ["owl"] and js["per_class"]["owl"] is None and js["metric"] == "voc07"
    table = ev.format_table()
    assert "owl" in table and "left out of the mean" in table and f"{ev.mAP:.4f}" in table


def test_evaluate_voc_errors():
    ds = _dataset()
    with pytest.raises(DataError, match="nowhere"):
        evaluate_voc(ds, [Detections("nowhere", [[0, 0, 1, 1]], [1.0], [1])])
    with pytest.raises(DataError, match="label 4"):
        evaluate_voc(ds, [Detections("a", [[0, 0, 1, 1]], [1.0], [4])])
    with pytest.raises(ConfigError, match="voc2012"):
        evaluate_voc(ds, [], "voc2012")


def test_evaluate_voc_without_detections():
    ev = evaluate_voc(_dataset(), [], "voc")
    assert ev.per_class == {"cat": 0.0, "dog": 0.0, "owl": None} and ev.mAP == 0.0
