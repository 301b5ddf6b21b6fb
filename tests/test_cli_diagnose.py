"""``nocdet diagnose`` end to end on tiny VOC and COCO fixtures with hand-counted answers: in a
subprocess (the real entry point), and in-process for the error cases (faster)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import nocdet.cli as cli
from nocdet.data.coco import coco_image_ids, write_coco_instances, write_coco_results
from nocdet.data.sample import Detections
from nocdet.data.voc import read_voc, write_voc_results
from fakes import write_voc

# The real entry point, with only this command registered.
DRIVER = ("import sys, nocdet.cli as cli; cli.COMMANDS = ['diagnose']; "
          "sys.exit(cli.main(sys.argv[1:]))")

CLASSES = ["apple", "pear", "plum"]
APPLE, PEAR, PLUM = 1, 2, 3


def nocdet(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, "diagnose", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def main(monkeypatch, capsys):
    """``nocdet diagnose ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMANDS", ["diagnose"])

    def run(*args):
        code = cli.main(["diagnose", *map(str, args)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """000001: apple (0,0,20,20), pear (40,0,60,20), plum (0,40,20,60).
    000002: apple (0,0,30,30) difficult, apple (50,50,70,70).
    N: apple 2, pear 1, plum 1. Apple and pear are similar (similarity_groups.json)."""
    objects = {
        "000001": [((0, 0, 20, 20), APPLE, False), ((40, 0, 60, 20), PEAR, False), ((0, 40, 20, 60), PLUM, False)],
        "000002": [((0, 0, 30, 30), APPLE, True), ((50, 50, 70, 70), APPLE, False)],
    }
    root = write_voc(tmp_path_factory.mktemp("voc") / "VOC2007", objects, CLASSES, size=(80, 80))
    (root / "similarity_groups.json").write_text(json.dumps([["apple", "pear"]]))
    return root


# Experiment "3fc": apple on apple -> Cor; apple on pear -> Sim; a third apple detection is cut
# (N_apple = 2); pear on plum -> Oth; plum on empty space -> BG.   Cor/Loc/Sim/Oth/BG = 1/0/1/1/1.
FIRST = [Detections("000001", [(0, 0, 20, 20), (40, 0, 60, 20), (0, 40, 20, 60)], [0.9, 0.8, 0.6],
                    [APPLE, APPLE, PEAR]),
         Detections("000002", [(50, 50, 70, 70), (60, 0, 75, 15)], [0.7, 0.5], [APPLE, PLUM])]
# Experiment "maxout": apple with IoU 0.3 -> Loc; apple on apple -> Cor; pear on pear -> Cor.
SECOND = [Detections("000001", [(0, 0, 20, 6), (40, 0, 60, 20)], [0.9, 0.8], [APPLE, PEAR]),
          Detections("000002", [(50, 50, 70, 70)], [0.8], [APPLE])]


def test_voc_two_experiments(voc, tmp_path):
    write_voc_results(tmp_path / "a", "test", FIRST, CLASSES)
    write_voc_results(tmp_path / "b", "test", SECOND, CLASSES)
    out = tmp_path / "out"
    p = nocdet("--voc-root", voc, "--split", "test", "--results", tmp_path / "a", "--results", tmp_path / "b",
               "--name", "3fc", "--name", "maxout", "--out", out)
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines() if line.strip()}
    assert rows["3fc"] == ["25.0%", "0.0%", "25.0%", "25.0%", "25.0%", "4", "4"]
    assert rows["maxout"] == ["66.7%", "33.3%", "0.0%", "0.0%", "0.0%", "3", "4"]
    report = json.loads((out / "diagnosis.json").read_text())
    first = report["experiments"]["3fc"]
    assert first["counts"] == {"Cor": 1, "Loc": 0, "Sim": 1, "Oth": 1, "BG": 1}
    assert first["per_class"]["apple"]["counts"]["Sim"] == 1 and first["per_class"]["apple"]["num_objects"] == 2
    assert first["similarity_groups"] == [["apple", "pear"]]
    # The false-positive trend at 8 x N takes every detection: the cut apple is now Cor.
    curve = first["fp_curve"]
    assert curve["factors"][-1] == 8 and curve["counts"]["Cor"][-1] == 2 and curve["false_positives"][-1] == 3
    for name in ("diagnosis_pies.png", "fp_curve_3fc.png", "fp_curve_maxout.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_similarity_file_overrides_the_dataset(voc, tmp_path, main):
    write_voc_results(tmp_path / "a", "test", FIRST, CLASSES)
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps([["pear", "plum"]]))  # apple-on-pear becomes Oth, pear-on-plum Sim
    code, _, err = main("--voc-root", voc, "--results", tmp_path / "a", "--similarity", groups,
                        "--out", tmp_path / "o")
    assert code == 0, err
    per_class = json.loads((tmp_path / "o" / "diagnosis.json").read_text())["experiments"]["a"]["per_class"]
    assert per_class["apple"]["counts"]["Oth"] == 1 and per_class["pear"]["counts"]["Sim"] == 1


def test_coco_input_gives_the_same_diagnosis(voc, tmp_path):
    dataset = read_voc(voc, "test")
    gt = tmp_path / "annotations" / "instances_test.json"
    write_coco_instances(gt, dataset)
    (tmp_path / "similarity_groups.json").write_text(json.dumps([["apple", "pear"]]))  # one folder up
    ids = coco_image_ids(dataset)
    write_coco_results(tmp_path / "first.json", FIRST, [1, 2, 3], ids)
    p = nocdet("--coco-gt", gt, "--coco-results", tmp_path / "first.json", "--out", tmp_path / "o")
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "o" / "diagnosis.json").read_text())["experiments"]["first"]
    assert report["counts"] == {"Cor": 1, "Loc": 0, "Sim": 1, "Oth": 1, "BG": 1}
    assert (tmp_path / "o" / "fp_curve_first.png").is_file()


def test_user_errors_exit_2(voc, tmp_path, main):
    write_voc_results(tmp_path / "a", "test", FIRST, CLASSES)
    out = ("--out", tmp_path / "o")
    code, _, err = main("--voc-root", voc, "--results", tmp_path / "a", "--name", "x", "--name", "y", *out)
    assert code == 2 and "2 --name for 1 result sets" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([["apple", "kiwi"]]))
    code, _, err = main("--voc-root", voc, "--results", tmp_path / "a", "--similarity", bad, *out)
    assert code == 2 and "bad.json" in err and "kiwi" in err
    code, _, err = main("--voc-root", voc, "--results", tmp_path / "missing", *out)
    assert code == 2 and "missing" in err
    code, _, err = main("--voc-root", voc, *out)
    assert code == 2 and "--results" in err
    code, _, err = main("--voc-root", voc, "--results", tmp_path / "a", "--coco-results", bad, *out)
    assert code == 2 and "not both" in err
    code, _, err = main("--voc-root", voc, "--results", tmp_path / "a", "--top-factor", "0", *out)
    assert code == 2 and "top_factor" in err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "comp4_det_test_apple.txt").write_text("000009 0.5 1 1 5 5\n")
    code, _, err = main("--voc-root", voc, "--results", tmp_path / "c", *out)
    assert code == 2 and "comp4_det_test_apple.txt" in err and "000009" in err
    assert not (tmp_path / "o" / "diagnosis.json").exists()
