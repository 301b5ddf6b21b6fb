"""benchmarks/paper_training_effect.py: its paired and unpaired verdicts on hand-computed cases, and
its --quick mode run twice, the second run resuming (every result skipped)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("paper_training_effect",
                                               ROOT / "benchmarks" / "paper_training_effect.py")
effect = importlib.util.module_from_spec(_spec)
sys.modules["paper_training_effect"] = effect
_spec.loader.exec_module(effect)


def test_paired_difference_uses_the_spread_of_the_per_seed_differences():
    # differences 1.0, 1.2, 0.8: mean 1.0, sd 0.2, SE 0.2 / sqrt(3) = 0.1155 -> resolved
    a, b = {0: 61.0, 1: 55.2, 2: 58.8}, {0: 60.0, 1: 54.0, 2: 58.0}
    c = effect.paired(a, b)
    assert c.diff == pytest.approx(1.0) and c.se == pytest.approx(0.2 / math.sqrt(3))
    assert c.verdict == "resolved"
    # the same numbers unpaired: the seeds' spread (sd ~3) swamps the 1-point difference
    u = effect.unpaired(list(a.values()), list(b.values()))
    assert u.diff == pytest.approx(1.0) and u.verdict == "unresolved"
    # only the seeds both sides have are paired; one seed: no SE
    one = effect.paired({0: 2.0, 5: 9.0}, {0: 1.0})
    assert one.diff == pytest.approx(1.0) and math.isinf(one.se) and one.verdict == "unresolved"
    # a resolved fall is resolved too
    assert effect.unpaired([50.0, 51.0, 52.0], [60.0, 62.0, 64.0]).verdict == "resolved"


def test_cells_read_the_re_evaluated_cap():
    results = {("r", "paper"): [{"seed": s, "cap": "class", "voc07_mAP": 60.0 + s,
                                 "other_cap": {"cap": "image", "voc07_mAP": 59.0 + s}} for s in range(2)]}
    assert effect.at_cap(results, "r", "paper", "class", "voc07_mAP") == {0: 60.0, 1: 61.0}
    assert effect.at_cap(results, "r", "paper", "image", "voc07_mAP") == {0: 59.0, 1: 60.0}
    assert effect.cell({0: 60.0, 1: 61.0}, {0: 59.0, 1: 60.0}, True) == "+1.0 (2SE 0.0, n=2) resolved"
    assert effect.cell({0: 60.0}, {}, False) == "not run"


def _stored(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "results").rglob("seed*.json")}


@pytest.mark.slow
def test_quick_study_resumes_and_its_cap_re_evaluation_reproduces_the_runs(tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--quick", "--out", str(out), "--seeds", "2", "--threads", "1",
              "--only", "table1_svm_on_roi", "table3_mo_c1"]
    assert effect.main(common) == 0
    first = _stored(out)
    assert sorted(first) == [f"results/{row}/{setting}/seed{s}.json" for row in ("table1_svm_on_roi", "table3_mo_c1")
                             for setting in ("default", "paper") for s in (0, 1)]
    table = (out / "paper_training_effect.md").read_text()
    assert "NOT a result" in table and "(n=2)" in table and "(`table3_mo_c1`, a 07+12 twin run on 07)" in table
    assert "Runs: 8" in table and "total CPU time" in table
    # SVM on RoI trains no NoC (dropout and jitter do nothing) and pools the same features from
    # either store, so only the cap differs between the settings: each run's model re-evaluated
    # at the other cap must give the other setting's own metrics, seed by seed
    for s in (0, 1):
        default, paper = (json.loads((out / f"results/table1_svm_on_roi/{x}/seed{s}.json").read_text())
                          for x in ("default", "paper"))
        assert (default["cap"], paper["cap"]) == ("image", "class")
        for metric in ("voc07_mAP", "AP"):
            assert paper["other_cap"][metric] == pytest.approx(default[metric], abs=1e-9)
            assert default["other_cap"][metric] == pytest.approx(paper[metric], abs=1e-9)
    capsys.readouterr()

    assert effect.main(common) == 0
    printed = capsys.readouterr().out
    assert printed.count("(finished)") == 8 and "run table" not in printed
    assert _stored(out) == first  # nothing rewritten
    assert (out / "paper_training_effect.md").read_text().split("Runs: ")[0] == table.split("Runs: ")[0]


def test_the_long_settings_train_4x_longer_and_paper_4x_is_compared_with_default_4x():
    from nocdet.experiment import load_experiment

    config = effect.CONFIGS / "table1_3fc.yaml"
    for name in ("default-4x", "paper-4x"):
        cfg = load_experiment(config, effect.SETTINGS[name].overrides)
        assert cfg.solver.iterations == 4000 and list(cfg.solver.lr_steps) == [2800, 3600]  # 0.7, 0.9 of 4000
    assert load_experiment(config, effect.SETTINGS["paper-4x"].overrides).noc.dropout == 0.5
    twin = next(t for t in effect.twins() if t.stem == "table1_3fc")
    results = {(twin.stem, s): [{"seed": k, "voc07_mAP": v + k, "AP": v + k, "cap": cap,
                                 "other_cap": {"voc07_mAP": v + k, "AP": v + k}, "started": "2026-12-03T20:00:00+00:00",
                                 "finished": "2026-12-03T20:05:00+00:00", "cpu_seconds": 300.0,
                                 "wall_seconds": 300.0} for k in range(3)]
               for s, v, cap in (("default", 50.0, "image"), ("paper", 45.0, "class"),
                                ("default-4x", 60.0, "image"), ("paper-4x", 58.0, "class"))}
    table = effect.report(results, [twin], ["default", "paper", "default-4x", "paper-4x"], quick=False)
    line = next(r for r in table.splitlines() if r.startswith("| Table 1 3fc"))
    # paper - default -5.0; default-4x - default +10.0; paper-4x - default-4x -2.0 (not -8.0 against default)
    assert [c.split(" (")[0] for c in line.split(" | ") if c.startswith(("+", "-"))] == ["-5.0", "+10.0", "-2.0"]
    assert "paper details, 4x iterations - default-4x" in table
