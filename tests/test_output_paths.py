"""Every command's output path is checked before any work, by one helper (nocdet.io): a file where
a folder is wanted, a folder where a file is wanted, a file above the path, a read-only location:
exit 2 with the option and the path named, nothing written."""
from pathlib import Path

import pytest

import nocdet.cli as cli
from nocdet.errors import ConfigError
from nocdet.io import output_file, output_folder
from test_detect_folder import tiny_model
from tiny_model import make_data, tiny_overrides

READ_ONLY = Path("/sys/nocdet-test")  # no process may create entries at sysfs' top level, root included


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    make_data(root, num_train=4, num_test=2)
    tiny_model(root / "model.pt")
    (root / "afile").write_text("not a folder")
    return root


def commands(root: Path, out: Path) -> dict[str, list[str]]:
    """Each command with its output option set to ``out`` (all other arguments valid)."""
    model, data = str(root / "model.pt"), str(root / "data")
    sets = [x for o in tiny_overrides(root) for x in ("--set", o)]
    return {
        "detect": ["detect", str(root / "data" / "JPEGImages"), "--checkpoint", model, "--out", str(out)],
        "train": ["train", "configs/demo.yaml", *sets, "--output", str(out)],
        "sweep": ["sweep", "configs/demo.yaml", *sets, "--noc", "f32-fn+1", "--output", str(out)],
        "evaluate --checkpoint": ["evaluate", "--checkpoint", model, "--voc-root", data, "--out", str(out)],
        "diagnose": ["diagnose", "--voc-root", data, "--results", str(root), "--out", str(out)],
    }


def file_commands(root: Path, out: Path) -> dict[str, list[str]]:
    """The commands whose output is one file."""
    return {
        "evaluate --results": ["evaluate", "--metric", "voc07", "--results", str(root), "--voc-root",
                               str(root / "data"), "--out", str(out)],
        "report": ["report", str(root), "--out", str(out)],
        "export": ["export", "--checkpoint", str(root / "model.pt"), "--out", str(out)],
    }


def refused(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only"])
def test_folder_outputs(inputs, capsys, case):
    out = {"a file": inputs / "afile", "under a file": inputs / "afile" / "sub", "read-only": READ_ONLY}[case]
    expected = {"a file": f"{out} is a file; give a folder",
                "under a file": f"{out}: {inputs / 'afile'} is a file, not a folder",
                "read-only": f"{out}: cannot write there"}[case]
    for name, argv in commands(inputs, out).items():
        err = refused(argv, capsys)
        assert expected in err, (name, err)
    assert (inputs / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("case", ["a folder", "under a file", "read-only"])
def test_file_outputs(inputs, capsys, case):
    out = {"a folder": inputs / "data", "under a file": inputs / "afile" / "x.json",
           "read-only": READ_ONLY / "x.json"}[case]
    expected = {"a folder": f"--out {out} is a folder; give a file name",
                "under a file": f"--out {out}: {inputs / 'afile'} is a file, not a folder",
                "read-only": f"--out {out}: cannot write there"}[case]
    for name, argv in file_commands(inputs, out).items():
        err = refused(argv, capsys)
        assert expected in err, (name, err)


def test_the_helpers_accept_and_create(tmp_path):
    assert output_folder(tmp_path / "a" / "b").is_dir()
    assert output_file(tmp_path / "c" / "x.json") == tmp_path / "c" / "x.json"
    assert (tmp_path / "c").is_dir() and not (tmp_path / "c" / "x.json").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c"]  # the write probes are gone
    (tmp_path / "keep.json").write_text("old")
    output_file(tmp_path / "keep.json")  # an existing file stays until the command replaces it
    assert (tmp_path / "keep.json").read_text() == "old"
    (tmp_path / "x.onnx").mkdir()
    with pytest.raises(ConfigError, match=r"^--model \S+x\.onnx is a folder; give a file name$"):
        output_file(tmp_path / "x.onnx", "--model")


def test_export_replaces_only_onnx_files(inputs, capsys):
    model = inputs / "model.pt"
    before = model.read_bytes()
    for out in (model, inputs / "afile"):
        err = refused(["export", "--checkpoint", str(model), "--out", str(out)], capsys)
        assert f"--out {out} exists and is not an .onnx file" in err
    assert model.read_bytes() == before and (inputs / "afile").read_text() == "not a folder"
