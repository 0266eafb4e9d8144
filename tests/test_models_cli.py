"""`convlens models` through the real entry point: listing, describing, and bad input.

Oracles: the published parameter counts, and the registry's own list of names.
"""

from __future__ import annotations

import json

import pytest

from convlens import models
from convlens.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["models", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    for name, count in [("lenet5", "61,706"), ("resnet20", "269,722"), ("vgg16", "138,357,544")]:
        line = next(row for row in out.splitlines() if f" {name} " in row)
        assert count in line
    assert "He et al. 2016" in out and "3x227x227" in out


def test_models_json_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == models.names()
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet50"]["parameters"] == 25_557_032
    assert by_name["resnet50"]["input"] == "3x224x224"


def test_models_family_and_counts_for_other_classes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--family", "lenet", "--num-classes", "2", "--format", "json")
    assert code == 0
    # 61,706 - 84 * 8 - 8: the output layer shrinks from 10 to 2 units
    assert json.loads(out) == [
        {"name": "lenet5", "family": "lenet", "paper": "LeCun et al. 1998", "input": "1x28x28",
         "num_classes": 2, "parameters": 61_706 - 84 * 8 - 8}
    ]  # fmt: skip


def test_describe_one_model_with_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "alexnet", "-o", "lrn=true", "-o", "two_towers=yes", "--format", "json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["parameters"] == 60_965_224  # the paper's network, two towers
    assert data["options"]["lrn"] is True and data["options"]["small_input"] is False
    code, out, _ = run(capsys, "resnet20")
    assert code == 0 and "269,722" in out and "shortcut" in out
    code, out, _ = run(capsys, "torchvision:resnet18", "--format", "json")
    assert code == 0 and json.loads(out)["parameters"] == 11_689_512


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resnt20"], "Did you mean: resnet20"),
        (["torchvision:resnt18"], "resnet18"),
        (["lenet5", "-o", "pol=avg"], "Did you mean: pool"),
        (["lenet5", "-o", "padding=two"], "takes an integer"),
        (["lenet5", "-o", "pool"], "KEY=VALUE"),
        (["lenet5", "-o", "pool=min"], "pool must be"),
        (["--family", "vgx"], "Did you mean: vgg"),
        (["-o", "pool=avg"], "needs a model NAME"),
        (["--format", "xml"], "table or json"),
    ],
)
def test_bad_input_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 1
    assert message in " ".join(err.split())  # Rich wraps long lines
    assert "Traceback" not in out + err


def test_bad_number_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--num-classes", "0")
    assert code == 2 and "Traceback" not in out + err


def test_bool_option_message(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "resnet18", "-o", "small_input=maybe")
    assert code == 1 and "takes true or false" in err
