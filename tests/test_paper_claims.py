"""benchmarks/paper_claims.py: its rules (schedule, convergence, two-standard-error verdicts) on
hand-computed cases, and its --quick mode run in two chunks that resume."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("paper_claims", ROOT / "benchmarks" / "paper_claims.py")
claims = importlib.util.module_from_spec(_spec)
sys.modules["paper_claims"] = claims
_spec.loader.exec_module(claims)


def test_iterations_are_epochs_times_training_rois_over_batch_rois():
    # scene-digits: 875 training images, 2 images x 64 RoIs a batch: 18 epochs = 18 x 875 x 64 / 128
    assert claims.iterations_for(18, 875, 2) == 7875
    # the 3.3x larger set gets proportionally more iterations
    assert claims.iterations_for(18, 2888, 2) == 25992
    # flipped copies double the images an epoch visits (VOC 07: 5,011 images with flips, 2 per batch)
    assert claims.iterations_for(1, 5011, 2, flipped=True) == 5011
    assert claims.iterations_for(1, 3, 2) == 2  # a partial last batch is an iteration
    with pytest.raises(ValueError):
        claims.iterations_for(0, 875, 2)


def test_schedule_steps_at_fixed_fractions_with_twenty_validation_points():
    sets = claims.schedule_overrides(1000, e2e=False)
    assert "solver.iterations=1000" in sets and "solver.lr_steps=[700, 900]" in sets
    assert "solver.val_every=50" in sets
    assert not any(s.startswith("solver.warmup") for s in sets)
    assert "solver.warmup_iterations=20" in claims.schedule_overrides(1000, e2e=True)


def test_convergence_rule_on_synthetic_curves():
    # a straight fall 2 - i/1000: the last quarter (i = 750..1000) falls 0.25 around a mean of 1.125
    line = [(i, 2 - i / 1000) for i in range(0, 1001, 50)]
    assert claims.relative_fall(line, 1000) == pytest.approx(0.25 / 1.125)
    # an exponential decay that has flattened: falls 1 + e^-(i/100) by ~0.08% of its mean
    flat = [(i, 1 + math.exp(-i / 100)) for i in range(0, 1001, 50)]
    assert 0 < claims.relative_fall(flat, 1000) < claims.DEFAULT_FLAT
    # a rise (overfitting) is a negative fall: flat by the rule
    rise = [(i, 1 + i / 1000) for i in range(0, 1001, 50)]
    assert claims.relative_fall(rise, 1000) == pytest.approx(-0.25 / 1.875)
    # fewer than 3 points in the last quarter: no verdict
    assert claims.relative_fall([(0, 2.0), (800, 1.0), (1000, 0.9)], 1000) is None


def test_verdicts_use_two_standard_errors():
    a, b = [60.0, 62.0, 64.0], [55.0, 56.0, 57.0]  # variances 4 and 1: SE = sqrt(4/3 + 1/3) = 1.291
    c = claims.compare(a, b)
    assert c.diff == pytest.approx(6.0) and c.se == pytest.approx(math.sqrt(5 / 3))
    assert c.verdict == "holds"
    assert claims.compare(b, a).verdict == "does not hold"
    close = [59.0, 60.0, 61.0]  # 2.0 apart, 2 SE = 2.58: unresolved either way
    assert claims.compare(a, close).verdict == "unresolved"
    assert claims.compare(close, a).verdict == "unresolved"
    assert claims.compare(close, a, "at_least").verdict == "holds"  # not resolved below
    assert claims.compare(b, a, "at_least").verdict == "does not hold"
    assert claims.compare([70.0], [50.0]).verdict == "unresolved"  # one seed: no SE
    assert claims.combine(["holds", "holds"]) == "holds"
    assert claims.combine(["holds", "unresolved"]) == "unresolved"
    assert claims.combine(["unresolved", "does not hold"]) == "does not hold"


def _result(row: str, seed: int, **metrics) -> dict:
    shares = {"Cor": 50.0, "Loc": 20.0, "Sim": 5.0, "Oth": 5.0, "BG": 20.0}
    shares.update(metrics.pop("shares", {}))
    return {"row": row, "seed": seed, "voc07_mAP": 0.0, "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "shares": shares,
            **metrics}


def test_claim_cells_combine_their_comparisons():
    results = {"zf07-svm_on_roi": [_result("zf07-svm_on_roi", s, voc07_mAP=v) for s, v in enumerate([50, 51, 52])],
               "zf07-2fc": [_result("zf07-2fc", s, voc07_mAP=v) for s, v in enumerate([55, 56, 57])],
               "zf07-3fc": [_result("zf07-3fc", s, voc07_mAP=v) for s, v in enumerate([60, 62, 64])],
               "zf07-4fc": [_result("zf07-4fc", s, voc07_mAP=v) for s, v in enumerate([59, 60, 61])]}
    text, verdict = claims.claim_cell(results, claims.CLAIMS[next(iter(claims.CLAIMS))][1])
    assert "4fc - SVM on RoI: +9.0" in text and "3fc - 2fc: +6.0" in text and "4fc - 3fc: -2.0" in text
    assert verdict == "unresolved"  # 4fc vs 3fc is within 2 SE
    # Fig. 3: the Loc share minus the recognition error, per run
    loc = {"zf0712-3fc": [_result("zf0712-3fc", 0, shares={"Loc": 30.0, "BG": 10.0})]}
    assert claims.values(loc, "zf0712-3fc", "Loc-rec") == [30.0 - (5.0 + 5.0 + 10.0)]
    text, verdict = claims.claim_cell({}, claims.CLAIMS[next(iter(claims.CLAIMS))][1])
    assert verdict == "unresolved" and "not run" in text


def _stored(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "results").rglob("seed*.json")}


@pytest.mark.slow
def test_quick_study_runs_in_chunks_and_resumes(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    common = ["--quick", "--data", str(data), "--out", str(out), "--seeds", "2", "--datasets", "scene-digits",
              "--threads", "1"]
    assert claims.main([*common, "--only", "zf07-svm_on_roi", "zf07-3fc"]) == 0
    first = _stored(out)
    assert sorted(first) == [f"results/scene-digits/{row}/seed{s}.json"
                             for row in ("zf07-3fc", "zf07-svm_on_roi") for s in (0, 1)]
    table = (out / "claims.md").read_text()
    assert "NOT a result" in table and "4fc - SVM on RoI: not run" in table
    assert (out / "val_loss_scene-digits.png").stat().st_size > 0
    capsys.readouterr()

    # an interrupted row: its result is gone, its run folder keeps the checkpoint -> resumed, not redone
    resumed = out / "results/scene-digits/zf07-3fc/seed1.json"
    resumed.unlink()
    assert claims.main([*common, "--only", "zf07-3fc", "zf07-4fc"]) == 0
    printed = capsys.readouterr().out
    assert "skip scene-digits zf07-3fc seed 0 (finished)" in printed
    assert "resume scene-digits zf07-3fc seed 1" in printed and json.loads(resumed.read_text())["resumed"]
    second = _stored(out)
    kept = {k: v for k, v in first.items() if "zf07-3fc/seed1" not in k}
    assert all(second[k] == v for k, v in kept.items())  # finished rows untouched
    assert "results/scene-digits/zf07-4fc/seed1.json" in second
    table = (out / "claims.md").read_text()
    assert "4fc - SVM on RoI: " in table and "4fc - SVM on RoI: not run" not in table
    assert "(n=2)" in table and "Total CPU time of the 6 runs" in table
    result = json.loads((out / "results/scene-digits/zf07-4fc/seed0.json").read_text())
    assert result["iterations"] == claims.iterations_for(2, result["train_images"], 2)
    assert result["val_curve"] and result["relative_fall"] is not None


def test_runs_without_detections_are_left_out_of_the_shares():
    empty = _result("zf0712-3fc", 1, shares={k: None for k in ("Cor", "Loc", "Sim", "Oth", "BG")})
    results = {"zf0712-3fc": [_result("zf0712-3fc", 0, voc07_mAP=10.0), empty]}
    assert claims.values(results, "zf0712-3fc", "shares.Loc") == [20.0]
    assert claims.values(results, "zf0712-3fc", "Loc-rec") == [20.0 - 30.0]
    assert claims.values(results, "zf0712-3fc", "voc07_mAP") == [10.0, 0.0]
