"""The run folder of ``nocdet train``: a new run never mixes its files with another run's."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nocdet.errors import ConfigError
from nocdet.run_folder import prepare_run_folder


def old_run(path):
    (path / "train").mkdir(parents=True)
    (path / "config.yaml").write_text("old: run\n")
    (path / "train" / "log.jsonl").write_text('{"iteration": 1}\n')
    (path / "notes.txt").write_text("mine")
    return path


def test_new_and_empty_folders_are_used(tmp_path):
    assert prepare_run_folder(tmp_path / "new" / "run").is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_run_folder(tmp_path / "empty") == tmp_path / "empty"


def test_a_run_folder_needs_resume_or_overwrite(tmp_path):
    run = old_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run: continue it with --resume, or replace it with "
                                          "--overwrite"):
        prepare_run_folder(run)
    assert (run / "config.yaml").read_text() == "old: run\n"
    assert prepare_run_folder(run, resume=True) == run and (run / "train" / "log.jsonl").exists()
    prepare_run_folder(run, overwrite=True)
    assert not (run / "config.yaml").exists() and not (run / "train").exists()
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_what_cannot_take_a_run_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_run_folder(tmp_path / "file")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("x")
    with pytest.raises(ConfigError, match="not empty and holds no nocdet run"):
        prepare_run_folder(tmp_path / "photos", overwrite=True)
    with pytest.raises(ConfigError, match="--output /proc/nocdet-run: cannot write there"):
        prepare_run_folder("/proc/nocdet-run")
    with pytest.raises(ConfigError, match="give one"):
        prepare_run_folder(tmp_path / "x", resume=True, overwrite=True)


def test_train_refuses_an_existing_run_before_touching_it(tmp_path):
    run = old_run(tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "nocdet", "train", "configs/demo.yaml", "--output", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "already holds a run" in done.stderr and "Traceback" not in done.stderr
    assert (run / "config.yaml").read_text() == "old: run\n"


def test_resume_refuses_another_config_naming_the_keys(tmp_path):
    from nocdet.config import dump_yaml
    from nocdet.experiment import load_experiment
    from nocdet.run_folder import check_resume_config

    run = tmp_path / "run"
    run.mkdir()
    made = load_experiment("configs/demo.yaml", ["solver.iterations=1000"])
    (run / "config.yaml").write_text(dump_yaml(made))
    check_resume_config(run, made)  # the same config: fine
    check_resume_config(run, load_experiment("configs/demo.yaml", ["solver.iterations=1000", "device=cuda"]))
    with pytest.raises(ConfigError, match=r"another config \(solver.iterations: 1000 in the run, 2000 now"):
        check_resume_config(run, load_experiment("configs/demo.yaml"))  # the YAML's 2000: not the run's
    with pytest.raises(ConfigError, match="is a frozen-feature run but the config trains an end-to-end run"):
        check_resume_config(run, load_experiment("configs/e2e/scene_digits/table8_conv_noc.yaml"))


def test_resume_accepts_a_run_made_before_the_one_schema(tmp_path):
    """A run folder's config.yaml written by the old schema (an end-to-end one in the old layout,
    a frozen one without the fields added since) still resumes with the same config; where a
    default changed since, the refusal names it and the old value given with --set resumes."""
    import json

    from nocdet.experiment import load_experiment
    from nocdet.run_folder import check_resume_config

    before = json.loads(Path("tests/fixtures/config_values_before_one_schema.json").read_text())
    # changed since: the demo trains in bf16 (solver.amp: auto; the old run was fp32), and the
    # SVM tolerance of every frozen config is 1e-3 (was 1e-4; benchmarks/RESULTS.md)
    changed = {"configs/e2e/scene_digits/table8_conv_noc.yaml": {},
               "configs/scene_digits/table6_noc.yaml": {"svm.tol": ("0.0001", "0.001")},
               "configs/demo.yaml": {"solver.amp": ("'none'", "'auto'"), "svm.tol": ("0.0001", "0.001")}}
    for path, fields in changed.items():
        run = tmp_path / Path(path).stem
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump(before[path]))
        if fields:
            with pytest.raises(ConfigError) as refused:
                check_resume_config(run, load_experiment(path))
            for key, (then, now) in fields.items():
                assert f"{key}: {then} in the run, {now} now" in str(refused.value)
        old = [f"{key}={then.strip(chr(39))}" for key, (then, _) in fields.items()]
        check_resume_config(run, load_experiment(path, old))
        with pytest.raises(ConfigError, match="seed: 0 in the run, 1 now"):
            check_resume_config(run, load_experiment(path, [*old, "seed=1"]))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tiny_model import make_data

    root = tmp_path_factory.mktemp("resume")
    make_data(root, num_train=4, num_test=2)
    return root


def a_run(folder: Path, cfg) -> Path:
    """A run folder as training leaves it: config.yaml and a checkpoint."""
    from nocdet.config import dump_yaml

    (folder / "train").mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_yaml(cfg))
    (folder / "train" / "checkpoint.pt").write_bytes(b"weights")
    return folder


def listing(folder: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(folder)), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


E2E = "configs/e2e/scene_digits/table8_conv_noc.yaml"


@pytest.mark.parametrize("case", ["frozen config on an e2e run", "e2e config on a frozen run", "changed noc.spec",
                                  "no config.yaml"])
def test_resume_with_a_checkpoint_that_does_not_fit_changes_nothing(tiny_data, tmp_path, case):
    """``train --resume`` refuses, before writing anything, a config whose model the run folder's
    checkpoint does not fit, naming what differs (before: a load_state_dict traceback, and the
    folder's config.yaml already overwritten)."""
    from nocdet.experiment import load_experiment
    from tiny_model import tiny_overrides

    frozen = tiny_overrides(tiny_data)
    e2e = [f"data.root={tiny_data / 'data'}", "data.val=null"]
    config, sets, made_with = {
        "frozen config on an e2e run": ("configs/demo.yaml", frozen, load_experiment(E2E, e2e)),
        "e2e config on a frozen run": (E2E, e2e, load_experiment("configs/demo.yaml", frozen)),
        "changed noc.spec": ("configs/demo.yaml", [*frozen, "noc.spec=c16-f32-fn+1"],
                             load_experiment("configs/demo.yaml", frozen)),
        "no config.yaml": ("configs/demo.yaml", frozen, load_experiment("configs/demo.yaml", frozen)),
    }[case]
    run = a_run(tmp_path / "run", made_with)
    if case == "no config.yaml":
        (run / "config.yaml").unlink()
    before = listing(run)
    done = subprocess.run([sys.executable, "-m", "nocdet", "train", config, *[x for s in sets for x in ("--set", s)],
                           "--output", str(run), "--resume", "--no-progress"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert str(run) in done.stderr
    assert {"frozen config on an e2e run": "is an end-to-end run but the config trains a frozen-feature run",
            "e2e config on a frozen run": "is a frozen-feature run but the config trains an end-to-end run",
            "changed noc.spec": "noc.spec: 'c16-mo-c16-f32-f32-fn+1' in the run, 'c16-f32-fn+1' now",
            "no config.yaml": "has no config.yaml"}[case] in done.stderr
    assert listing(run) == before
