"""`nocdet noc`: layer table, parameters and multiply-adds per RoI, checked against hand counts."""
import argparse
import json
import subprocess
import sys

import pytest

from nocdet.commands import noc as noc_command
from nocdet.errors import ConfigError, SpecError
from nocdet.noc.head import describe_noc

# f4096-f4096-f21 on 256x6x6 (ZF): 9216 = 256 * 6 * 6 inputs
MLP_PARAMS = 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 21 + 21
MLP_MACS = 9216 * 4096 + 4096 * 4096 + 4096 * 21
CONV_MACS = 256 * 256 * 9 * 36  # one c256 on a 6x6 map
CONV_PARAMS = 256 * 256 * 9 + 256

# res5a,5b,5c on 1024x14x14, res5a with stride 2 (torchvision strides in the 3x3 conv)
RES5A_MACS = 1024 * 512 * 196 + 512 * 512 * 9 * 49 + 512 * 2048 * 49 + 1024 * 2048 * 49
RES5B_MACS = 2048 * 512 * 49 + 512 * 512 * 9 * 49 + 512 * 2048 * 49
RES5A_PARAMS = 1024 * 512 + 512 * 512 * 9 + 512 * 2048 + 1024 * 2048 + 2 * (512 + 512 + 2048 + 2048)
RES5B_PARAMS = 2048 * 512 + 512 * 512 * 9 + 512 * 2048 + 2 * (512 + 512 + 2048)


def nocdet(*args):
    """The installed command, in a fresh interpreter (two calls only: each imports torch)."""
    return subprocess.run([sys.executable, "-m", "nocdet", "noc", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_stage_noc_comma_form_unquoted_with_classes():
    result = nocdet("res5a,5b,5c,", "fcn+1", "--input", "1024x14x14", "--classes", "80", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["spec"] == "res5a,5b,5c, fc81"
    assert info["params"] == RES5A_PARAMS + 2 * RES5B_PARAMS + 2048 * 81 + 81
    assert info["macs_per_roi"] == RES5A_MACS + 2 * RES5B_MACS + 2048 * 81
    assert info["layers"][0]["output_shape"] == [2048]


def test_cli_error_exit_code_and_caret():
    bad = nocdet("c256-x256-f21", "--input", "256x6x6")
    assert bad.returncode == 2
    assert "token 2 'x256' is not a layer" in bad.stderr and "       ^^^^" in bad.stderr


def run_in_process(*argv):
    parser = argparse.ArgumentParser()
    noc_command.add_arguments(parser)
    return noc_command.run(parser.parse_args(argv))


def test_json_maxout(capsys):
    assert run_in_process("c256-mo-c256-f4096-f4096-f21", "--input", "256x6x6", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 2 * CONV_PARAMS + MLP_PARAMS  # maxout shares the first conv
    assert info["macs_per_roi"] == 2 * CONV_MACS + CONV_MACS + MLP_MACS  # both pathways up to mo
    assert [x["name"] for x in info["layers"]] == ["c256", "mo", "c256", "f4096", "f4096", "f21"]
    assert [x["output_shape"] for x in info["layers"]] == [[256, 6, 6]] * 3 + [[4096], [4096], [21]]
    assert [x["params"] for x in info["layers"]] == [CONV_PARAMS, 0, CONV_PARAMS, 9216 * 4096 + 4096,
                                                     4096 * 4096 + 4096, 4096 * 21 + 21]
    assert [x["macs"] for x in info["layers"]] == [2 * CONV_MACS, 0, CONV_MACS, 9216 * 4096, 4096 * 4096,
                                                   4096 * 21]


def test_table(capsys):
    assert run_in_process("f4096-f4096-f21", "--input", "256x6x6") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "NoC f4096-f4096-f21 on 256x6x6 RoIs"
    assert lines[1].split() == ["layer", "output", "pathways", "params", "MACs/RoI"]
    assert lines[2].split() == ["f4096", "4096", "1", f"{9216 * 4096 + 4096:,}", f"{9216 * 4096:,}"]
    total = next(line for line in lines if line.startswith("total")).split()
    assert total == ["total", f"{MLP_PARAMS:,}", f"{MLP_MACS:,}"]


def test_json_box_regression(capsys):
    assert run_in_process("f4096-f4096-f21", "--input", "256x6x6", "--box-regression", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == MLP_PARAMS + 4096 * 84 + 84
    assert info["macs_per_roi"] == MLP_MACS + 4096 * 84
    assert info["layers"][-1]["name"] == "bbox_pred"


@pytest.mark.parametrize("argv, error, message", [
    (["f21", "--input", "256x6"], ConfigError, "expected CxMxM"),
    (["f21", "--input", "256x6x7"], ConfigError, "square"),
    (["fc4096, fc4096, fc81", "--input", "256x6x6", "--classes", "20"], SpecError,
     "write fc21 or fcn\\+1"),
    (["fcn+1", "--input", "256x6x6"], SpecError, "give the number of classes"),
])
def test_run_errors(argv, error, message):
    with pytest.raises(error, match=message):
        run_in_process(*argv)


@pytest.mark.parametrize("text, c, m, params, macs", [
    ("fc81", 2048, 7, 2048 * 49 * 81 + 81, 2048 * 49 * 81),
    ("c64k1-bn-d0.5-f21", 32, 6, 32 * 64 + 64 + 2 * 64 + 64 * 36 * 21 + 21, 32 * 64 * 36 + 64 * 36 * 21),
    ("c8-c8-f16-f5-mo", 4, 3, (4 * 8 * 9 + 8) + (8 * 8 * 9 + 8) + (72 * 16 + 16) + (16 * 5 + 5),
     2 * (4 * 8 * 9 * 9 + 8 * 8 * 9 * 9 + 72 * 16 + 16 * 5)),
    ("mo-f5", 4, 3, 36 * 5 + 5, 36 * 5),
])
def test_describe_noc_by_hand(text, c, m, params, macs):
    info = describe_noc(text, c, m)
    assert info["params"] == params and info["macs_per_roi"] == macs
    assert sum(x["params"] for x in info["layers"]) == params


def test_describe_inception_stage_counts_its_convolutions():
    info = describe_noc("inc4e,5a,5b-f81", 528, 14)
    stage = info["layers"][0]
    # inception4e on 14x14: 1x1 528->256, 528->160 then 3x3 160->320, 528->32 then 3x3 32->128,
    # pool then 1x1 528->128 (torchvision's "5x5" branch is a 3x3 conv)
    inc4e = 196 * (528 * 256 + 528 * 160 + 160 * 320 * 9 + 528 * 32 + 32 * 128 * 9 + 528 * 128)
    inc5a = 49 * (832 * 256 + 832 * 160 + 160 * 320 * 9 + 832 * 32 + 32 * 128 * 9 + 832 * 128)
    inc5b = 49 * (832 * 384 + 832 * 192 + 192 * 384 * 9 + 832 * 48 + 48 * 128 * 9 + 832 * 128)
    assert stage["macs"] == inc4e + inc5a + inc5b
    assert stage["output_shape"] == [1024]
