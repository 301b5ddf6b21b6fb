"""The error diagnosis (Cor/Loc/Sim/Oth/BG, Hoiem et al.) on hand-made cases with known answers,
and against the devkit evaluation for the Cor/false-positive split."""
from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest

from nocdet.data.sample import DetectionDataset, Detections, Sample
from nocdet.data.voc import VOC_CLASSES
from nocdet.errors import ConfigError, DataError
from nocdet.evaluation.diagnosis import (
    CATEGORIES, ClassDetections, classify_detections, diagnose, false_positive_curve,
    format_diagnosis_table, load_similarity_groups,
)
from nocdet.evaluation.voc import evaluate_voc

# Classes a and b are similar; c is not similar to either.
CLASSES = ["a", "b", "c"]
GROUPS = [["a", "b"]]
GT_A, GT_B, GT_C = (0, 0, 20, 20), (40, 0, 60, 20), (0, 40, 20, 60)


def dataset(*samples: Sample, groups=GROUPS) -> DetectionDataset:
    return DetectionDataset(CLASSES, list(samples), "hand", groups)


def image(image_id: str, objects) -> Sample:
    """``objects``: (box, label, difficult) triples on a 100 x 100 image."""
    return Sample(image_id, f"{image_id}.jpg", 100, 100, [o[0] for o in objects],
                  [o[1] for o in objects], [o[2] for o in objects])


def dets(image_id: str, rows) -> Detections:
    """``rows``: (box, score, label)."""
    return Detections(image_id, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def counts(**given: int) -> dict[str, int]:
    return {c: given.get(c, 0) for c in CATEGORIES}


@pytest.fixture
def hand():
    """Image 1: one object each of a, b (similar to a) and c. Image 2: five more a objects, so
    N_a = 6 and the top six class-a detections are diagnosed."""
    one = image("1", [(GT_A, 1, False), (GT_B, 2, False), (GT_C, 3, False)])
    two = image("2", [((10 * i, 70, 10 * i + 8, 78), 1, False) for i in range(5)])
    detections = [
        dets("1", [(GT_A, 0.9, 1),              # exactly on a               -> Cor
                   (GT_A, 0.8, 1),              # the same again (duplicate) -> Loc
                   ((0, 0, 20, 6), 0.7, 1),     # IoU 120 / 400 = 0.3 with a -> Loc
                   (GT_B, 0.6, 1),              # on the similar b           -> Sim
                   (GT_C, 0.5, 1),              # on the dissimilar c        -> Oth
                   ((80, 80, 95, 95), 0.4, 1)]),  # nothing there            -> BG
        dets("2", [((0, 70, 8, 78), 0.3, 1)]),   # 7th: would be Cor, but N_a = 6 cuts it
    ]
    return dataset(one, two), detections


def test_each_category_on_hand_case(hand):
    ds, detections = hand
    d = diagnose(ds, detections)
    assert d.per_class["a"].counts == counts(Cor=1, Loc=2, Sim=1, Oth=1, BG=1)
    assert d.per_class["a"].num_objects == 6 and d.per_class["a"].num_detections == 6
    assert d.counts == counts(Cor=1, Loc=2, Sim=1, Oth=1, BG=1)
    assert d.overall == pytest.approx({"Cor": 1 / 6, "Loc": 2 / 6, "Sim": 1 / 6, "Oth": 1 / 6, "BG": 1 / 6})
    assert sum(d.overall.values()) == pytest.approx(1.0)
    # b and c have objects but no detections: nothing to diagnose, shares undefined.
    assert d.per_class["b"].num_detections == 0 and d.per_class["b"].fractions["Cor"] is None
    assert d.num_objects == 8 and d.num_detections == 6


def test_top_n_cut_and_top_factor(hand):
    ds, detections = hand
    ranked = classify_detections(ds, detections)
    assert [CATEGORIES[c] for c in ranked["a"].categories] == ["Cor", "Loc", "Loc", "Sim", "Oth", "BG"]
    # 7/6 x N_a = 7 detections: the seventh, on an object of image 2, is Cor.
    wider = diagnose(ds, detections, top_factor=7 / 6)
    assert wider.counts == counts(Cor=2, Loc=2, Sim=1, Oth=1, BG=1)
    # Half of N_a: ceil(3) = 3 detections.
    assert diagnose(ds, detections, top_factor=0.5).counts == counts(Cor=1, Loc=2)
    # A class with fewer detections than objects contributes all it has.
    assert diagnose(ds, detections, top_factor=10).per_class["a"].num_detections == 7


def test_iou_thresholds_are_inclusive():
    ds = dataset(image("1", [(GT_A, 1, False), (GT_B, 2, False), ((60, 60, 80, 80), 1, False),
                             ((60, 0, 80, 20), 1, False), ((80, 80, 95, 95), 1, False)]))
    detections = [dets("1", [((0, 0, 20, 10), 0.9, 1),    # IoU 200 / 400 = 0.5 exactly -> Cor
                             ((60, 60, 80, 62), 0.8, 1),  # IoU 40 / 400 = 0.1 exactly  -> Loc
                             ((40, 0, 60, 20), 0.7, 1),   # b exactly; 0 with the a objects
                             ((60, 0, 80, 1), 0.6, 1)])]  # IoU 20 / 400 = 0.05 < 0.1   -> BG
    assert [CATEGORIES[c] for c in classify_detections(ds, detections)["a"].categories] == \
        ["Cor", "Loc", "Sim", "BG"]


def test_precedence_loc_over_sim_over_oth():
    # An a object and an overlapping b; a b object and an overlapping c; a second a (N_a = 2).
    ds = dataset(image("1", [((0, 0, 20, 20), 1, False), ((0, 0, 20, 16), 2, False),
                             ((50, 50, 70, 70), 2, False), ((50, 50, 70, 68), 3, False),
                             ((80, 80, 95, 95), 1, False)]))
    detections = [dets("1", [((0, 0, 20, 4), 0.9, 1),      # a: IoU 0.2 (Loc), b: 80/320 = 0.25
                             ((50, 50, 70, 68), 0.8, 1)])]  # b: 0.9 (Sim), c: 1.0 (Oth)
    d = diagnose(ds, detections)
    assert d.per_class["a"].counts == counts(Loc=1, Sim=1)


def test_devkit_matching_makes_a_second_best_match_a_duplicate():
    # Two a objects; the second detection overlaps the already matched one most (IoU 360/440)
    # and the free one less (320/480 >= 0.5). The devkit (used here) calls it a duplicate,
    # Hoiem's matcher would take the free object.
    ds = dataset(image("1", [((0, 0, 20, 20), 1, False), ((6, 0, 26, 20), 1, False)]))
    detections = [dets("1", [((0, 0, 20, 20), 0.9, 1), ((2, 0, 22, 20), 0.8, 1)])]
    assert diagnose(ds, detections).counts == counts(Cor=1, Loc=1)


def test_difficult_objects():
    ds = dataset(image("1", [((0, 0, 20, 20), 1, True), ((50, 50, 70, 70), 1, False),
                             ((0, 50, 20, 70), 1, True)]))
    detections = [dets("1", [((0, 0, 20, 20), 0.9, 1),    # on the difficult a: Cor (Hoiem), ignored by the devkit
                             ((0, 0, 20, 20), 0.8, 1),    # again: a difficult object is never used up -> Cor
                             ((50, 50, 70, 70), 0.7, 1),  # the non-difficult a -> Cor
                             ((0, 50, 20, 56), 0.6, 1)])]  # IoU 0.3 with a difficult a -> Loc
    # N_a counts non-difficult objects only: 1, so only the top detection counts by default.
    top = diagnose(ds, detections)
    assert top.per_class["a"].num_objects == 1 and top.per_class["a"].counts == counts(Cor=1)
    assert top.per_class["a"].difficult == 1
    wide = diagnose(ds, detections, top_factor=4)
    assert wide.per_class["a"].counts == counts(Cor=3, Loc=1) and wide.per_class["a"].difficult == 2
    assert json.loads(json.dumps(wide.to_json()))["difficult"] == 2


def test_difficult_objects_count_for_sim_and_oth():
    ds = dataset(image("1", [((0, 0, 20, 20), 1, True), ((50, 50, 70, 70), 3, True),
                             ((80, 80, 90, 90), 2, False), ((80, 0, 90, 10), 2, False)]))
    detections = [dets("1", [((0, 0, 20, 20), 0.9, 2), ((50, 50, 70, 70), 0.8, 2)])]
    assert diagnose(ds, detections).per_class["b"].counts == counts(Sim=1, Oth=1)


def test_sequence_and_mapping_inputs_agree(hand):
    ds, detections = hand
    by_class = {"a": ClassDetections.from_devkit(
        ["1"] * 6 + ["2"],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
        # devkit coordinates: xmin = x1 + 1, ymin = y1 + 1
        [(1, 1, 20, 20), (1, 1, 20, 20), (1, 1, 20, 6), (41, 1, 60, 20), (1, 41, 20, 60),
         (81, 81, 95, 95), (1, 71, 8, 78)])}
    assert diagnose(ds, by_class).to_json() == diagnose(ds, detections).to_json()


def random_case(rng: random.Random, num_images: int = 6):
    samples, detections = [], []
    for i in range(num_images):
        objects = []
        for _ in range(rng.randint(0, 5)):
            x, y = rng.randint(0, 60), rng.randint(0, 60)
            objects.append(((x, y, x + rng.randint(4, 30), y + rng.randint(4, 30)), rng.randint(1, 3),
                            rng.random() < 0.2))
        samples.append(image(str(i), objects))
        rows = []
        for _ in range(rng.randint(0, 12)):
            if objects and rng.random() < 0.6:  # near an object
                (x1, y1, x2, y2), _, _ = rng.choice(objects)
                box = tuple(v + rng.randint(-4, 4) for v in (x1, y1, x2, y2))
                box = (box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))
            else:
                x, y = rng.randint(0, 80), rng.randint(0, 80)
                box = (x, y, x + rng.randint(2, 20), y + rng.randint(2, 20))
            rows.append((box, rng.choice([0.1, 0.2, 0.3, 0.5, 0.7, 0.9]), rng.randint(1, 3)))  # ties
        detections.append(dets(str(i), rows))
    return dataset(*samples), detections


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("top_factor", [1.0, 2.5])
def test_cor_and_false_positives_match_the_devkit(seed, top_factor):
    """Among each class's top detections: Cor = devkit TP + devkit-ignored (matched to a
    difficult object), and Loc + Sim + Oth + BG = devkit FP."""
    ds, detections = random_case(random.Random(seed))
    d = diagnose(ds, detections, top_factor=top_factor)
    evaluation = evaluate_voc(ds, detections, "voc07")
    for name, e in evaluation.class_evals.items():
        n = d.per_class[name].num_detections
        assert n == min(e.num_detections, int(np.ceil(top_factor * e.npos - 1e-9)))
        tp, fp = e.tp[:n], e.fp[:n]
        c = d.per_class[name].counts
        assert c["Cor"] - d.per_class[name].difficult == int(tp.sum())
        assert d.per_class[name].difficult == int(((tp == 0) & (fp == 0)).sum())
        assert c["Loc"] + c["Sim"] + c["Oth"] + c["BG"] == int(fp.sum())
    if d.num_detections:
        assert sum(d.overall.values()) == pytest.approx(1.0, abs=1e-12)


def test_false_positive_curve_by_hand(hand):
    ds, detections = hand
    curve = false_positive_curve(ds, detections, factors=(0.125, 0.5, 1, 2))
    # N_a = 6: 1, 3, 6 and all 7 detections (b and c have none).
    assert curve["detections"] == [1, 3, 6, 7] and curve["num_objects"] == 8
    assert curve["false_positives"] == [0, 2, 5, 5]
    assert curve["Loc"] == [None, 1.0, pytest.approx(0.4), pytest.approx(0.4)]
    for kind in ("Sim", "Oth", "BG"):
        assert curve[kind] == [None, 0.0, pytest.approx(0.2), pytest.approx(0.2)]
    assert curve["counts"]["Cor"] == [1, 1, 1, 2]


def test_similarity_groups_from_file_dataset_and_voc(tmp_path, hand):
    ds, detections = hand
    # Groups from a file: with a and c similar instead, the detection on c becomes Sim and the
    # one on b Oth.
    path = tmp_path / "groups.json"
    path.write_text(json.dumps([["a", "c"]]))
    assert load_similarity_groups(path, CLASSES) == [["a", "c"]]
    assert diagnose(ds, detections, path).counts == counts(Cor=1, Loc=2, Sim=1, Oth=1, BG=1)
    ranked = classify_detections(ds, detections, path)["a"].categories
    assert [CATEGORIES[c] for c in ranked][3:5] == ["Oth", "Sim"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([["a", "zebra"]]))
    with pytest.raises(DataError, match="bad.json.*zebra"):
        diagnose(ds, detections, bad)
    # No groups anywhere: a warning, and every confusion is Oth.
    bare = DetectionDataset(CLASSES, ds.samples, "bare", [])
    with pytest.warns(UserWarning, match="no similarity groups"):
        assert diagnose(bare, detections).counts == counts(Cor=1, Loc=2, Oth=2, BG=1)
    # VOC classes get VOC's groups: a cat on a dog is Sim, a cat on a car Oth.
    cat, dog, car = (VOC_CLASSES.index(n) + 1 for n in ("cat", "dog", "car"))
    voc = DetectionDataset(list(VOC_CLASSES), [image("1", [(GT_A, cat, False), (GT_B, dog, False),
                                                           (GT_C, car, False), ((70, 70, 90, 90), cat, False),
                                                           ((70, 0, 90, 20), cat, False)])], "voc-like")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no similarity groups" warning
        d = diagnose(voc, [dets("1", [(GT_A, 0.9, cat), (GT_B, 0.8, cat), (GT_C, 0.7, cat)])])
    assert d.per_class["cat"].counts == counts(Cor=1, Sim=1, Oth=1)


def test_bad_input_is_an_error(hand):
    ds, detections = hand
    with pytest.raises(DataError, match="'9'"):
        diagnose(ds, [dets("9", [(GT_A, 0.5, 1)])])
    with pytest.raises(DataError, match="label 4"):
        diagnose(ds, [dets("1", [(GT_A, 0.5, 4)])])
    with pytest.raises(DataError, match="non-finite"):
        diagnose(ds, [dets("1", [(GT_A, float("nan"), 1)])])
    with pytest.raises(DataError, match="unknown class"):
        diagnose(ds, {"zebra": ClassDetections([], [], np.zeros((0, 4)))})
    with pytest.raises(ConfigError, match="top_factor"):
        diagnose(ds, detections, top_factor=0)
    with pytest.raises(ConfigError):
        false_positive_curve(ds, detections, factors=(1, -2))


def test_table_and_json(hand):
    ds, detections = hand
    d = diagnose(ds, detections)
    table = format_diagnosis_table({"3fc": d, "empty": diagnose(ds, [])})
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()}
    assert rows["3fc"] == ["16.7%", "33.3%", "16.7%", "16.7%", "16.7%", "6", "8"]
    assert rows["empty"] == ["-"] * 5 + ["0", "8"]
    data = json.loads(json.dumps(d.to_json()))
    assert data["counts"] == counts(Cor=1, Loc=2, Sim=1, Oth=1, BG=1)
    assert data["per_class"]["a"]["num_objects"] == 6 and data["similarity_groups"] == GROUPS
