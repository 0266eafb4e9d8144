"""`convlens summary` through the real entry point: formats, defaults, and bad input as one line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from convlens.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # the console wraps long messages


def test_json_alexnet_conv1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "alexnet", "--input", "3x227x227", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert list(doc)[:4] == ["model", "input", "output", "layers"] and "totals" in doc
    assert doc["model"] == "alexnet" and doc["input"] == [3, 227, 227]
    conv1 = doc["layers"][0]
    assert conv1["output_shape"] == [96, 55, 55] and conv1["neurons"] == 290_400
    assert conv1["params"] == 34_944 and conv1["params_unshared"] == 105_705_600
    assert conv1["rf"] == {"size": [11, 11], "jump": [4, 4], "start": [5, 5]}
    assert doc["totals"]["params"] == sum(layer["params"] for layer in doc["layers"])


def test_torchvision_model_csv_and_num_classes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "summary",
        "torchvision:resnet18",
        "-i",
        "3x64x64",
        "--num-classes",
        "10",
        "-f",
        "csv",
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["name"] == "conv1" and rows[0]["output_shape"] == "64x32x32"
    assert rows[-1]["name"] == "fc" and rows[-1]["output_shape"] == "10"
    assert rows[-1]["params"] == str(512 * 10 + 10)


def test_table_with_paper_defaults_and_in_channels(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "lenet5")
    assert code == 0
    assert "lenet5" in out and "total" in out and "61,706" in out  # the modern reading, 1 channel
    code, out, _ = run(capsys, "summary", "resnet20", "-i", "1x28x28", "-f", "json")
    assert code == 0 and json.loads(out)["input"] == [1, 28, 28]


def test_output_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    code, out, err = run(capsys, "summary", "resnet20", "-f", "json", "--output", str(target))
    assert code == 0 and out == "" and "wrote" in err
    assert json.loads(target.read_text())["totals"]["params"] == 269_722


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "resnet21"], "resnet20"),  # among the close names
        (["summary", "resnet20", "--input", "32x32"], "CxHxW"),
        (["summary", "resnet20", "--input", "3x0x32"], "positive"),
        (["summary", "resnet20", "--input", "threexfour"], "CxHxW"),
        (["summary", "alexnet", "--input", "3x64x64"], "too small"),
        (["summary", "vgg16", "--input", "3x16x16"], "features."),
    ],
)
def test_bad_input_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert message in err and "Traceback" not in err


def test_too_small_names_the_layer(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "summary", "alexnet", "--input", "3x64x64")
    assert code == 1
    assert "layer 'features." in err and "MaxPool2d" in err


def test_console_script_help() -> None:
    exe = Path(sys.executable).parent / "convlens"
    result = subprocess.run(
        [str(exe), "summary", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "--input" in result.stdout and "--format" in result.stdout
