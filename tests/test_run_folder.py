"""The run folder of ``nocdet train``: a new run never mixes its files with another run's."""
import subprocess
import sys

import pytest

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
    with pytest.raises(ConfigError, match="cannot write the run folder /proc/nocdet-run"):
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
    from nocdet.e2e.config import load_e2e_experiment

    with pytest.raises(ConfigError, match="another config.*detector: '<absent>' in the run"):
        check_resume_config(run, load_e2e_experiment("configs/e2e/scene_digits/table8_conv_noc.yaml"))
