"""`convlens explain`, through the real entry point; the numbers checked against the notes and torch."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convlens.anatomy.explain import Volume, explain_conv, explain_pool
from convlens.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # the console wraps long messages


def test_conv_alexnet_as_in_the_notes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "explain", "conv", "--input", "227x227x3", "--kernel", "11", "--stride", "4",
        "--pad", "0", "--filters", "96",
    )  # fmt: skip
    assert code == 0
    assert "(W - K + 2P) / S + 1" in out
    assert "(227 - 11 + 2x0) / 4 + 1 = 216 / 4 + 1 = 55" in out
    assert "55 x 55 x 96 = 290,400" in out
    assert "11 x 11 x 3 = 363, plus 1 bias = 364" in out
    assert "96 x 364 = 34,944" in out
    assert "290,400 x 364 = 105,705,600" in out
    # the oracle: torch's own layer
    conv = nn.Conv2d(3, 96, 11, stride=4)
    assert sum(p.numel() for p in conv.parameters()) == 34_944
    assert conv(torch.zeros(1, 3, 227, 227)).shape == (1, 96, 55, 55)


def test_conv_that_does_not_tile_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "explain", "conv", "-i", "224x224x3", "-k", "11", "-s", "4", "-n", "96"
    )
    assert code == 0 and "Traceback" not in err
    assert "213 / 4 + 1 = 54.25" in out and "do not tile" in out
    assert "floor(213 / 4) + 1 = 54" in out
    assert "1 image pixel (223) is never seen" in out
    assert (
        F.conv2d(torch.zeros(1, 3, 224, 224), torch.zeros(96, 3, 11, 11), stride=4).shape[-1] == 54
    )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40), st.integers(1, 40), st.integers(1, 7), st.integers(1, 5), st.integers(0, 3)
)
def test_output_size_and_unseen_border_match_torch(w: int, h: int, k: int, s: int, p: int) -> None:
    """The printed size equals torch's; the unseen image pixels are exactly those no window reads."""
    if min(w, h) + 2 * p < k:
        return
    text = "\n".join(explain_conv(Volume(w, h, 1), k, s, p, 1))
    y = F.conv2d(torch.zeros(1, 1, h, w), torch.zeros(1, 1, k, k), stride=s, padding=p)
    assert f"output volume: {y.shape[-1]}x{y.shape[-2]}x1" in text
    # brute force: which input columns does some window read?
    x = torch.zeros(1, 1, h, w, requires_grad=True)
    F.conv2d(x, torch.ones(1, 1, k, k), stride=s, padding=p).sum().backward()
    assert x.grad is not None
    unseen_cols = int((x.grad[0, 0].sum(0) == 0).sum())
    if k < s and y.shape[-1] > 1:
        assert "the windows leave gaps" in text
    elif unseen_cols:
        assert re.search(rf"{unseen_cols} image (column|pixel)s? \(", text), text
    else:
        assert "image column" not in text and "image pixel" not in text


def test_show_one_computes_a_neuron_and_agrees_with_torch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys, "explain", "conv", "--input", "9x9x2", "--kernel", "3", "--stride", "2",
        "--pad", "1", "--filters", "4", "--show-one", "--at", "2,3", "--filter", "1",
    )  # fmt: skip
    assert code == 0
    assert "filter 1, output row 2, column 3" in out
    assert "rows 3..5 and columns 5..7" in out
    assert "18 products in all" in out
    assert "the same" in out and "DIFFERENT" not in out
    value = float(re.search(r"conv2d gives (-?[\d.]+)", out).group(1))  # type: ignore[union-attr]
    by_hand = float(re.search(r"= (-?[\d.]+)\ntorch", out).group(1))  # type: ignore[union-attr]
    assert value == by_hand


def test_pool_fc_stack(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "explain", "pool", "--input", "55x55x96", "--kernel", "3", "--stride", "2"
    )
    assert code == 0 and "output volume: 27x27x96" in out and "Parameters: 0" in out
    assert F.max_pool2d(torch.zeros(1, 96, 55, 55), 3, 2).shape == (1, 96, 27, 27)

    code, out, _ = run(capsys, "explain", "fc", "--input", "7x7x512", "--units", "4096")
    assert code == 0 and "4,096 x 25,089 = 102,764,544" in out
    assert sum(p.numel() for p in nn.Linear(7 * 7 * 512, 4096).parameters()) == 102_764_544

    code, out, _ = run(capsys, "explain", "stack", "--kernel", "3", "--depth", "3")
    assert code == 0
    assert "sees 7x7" in out and "27C^2" in out and "49C^2" in out and "3 ReLUs against 1" in out
    c = 64
    stack = sum(nn.Conv2d(c, c, 3, bias=False).weight.numel() for _ in range(3))
    assert f"{stack:,} against {nn.Conv2d(c, c, 7, bias=False).weight.numel():,}" in out


def test_pool_text_matches_torch_for_avg() -> None:
    text = "\n".join(explain_pool(Volume(7, 5, 3), 2, 2, 1, "avg"))
    y = F.avg_pool2d(torch.zeros(1, 3, 5, 7), 2, 2, 1)
    assert f"output volume: {y.shape[-1]}x{y.shape[-2]}x3" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "conv", "-i", "227x227", "-k", "3", "-n", "2"], "WxHxD"),
        (["explain", "conv", "-i", "axbxc", "-k", "3", "-n", "2"], "WxHxD"),
        (["explain", "conv", "-i", "5x5x3", "-k", "7", "-n", "2"], "does not fit"),
        (["explain", "conv", "-i", "5x5x3", "-k", "3", "-n", "2", "-s", "0"], "--stride"),
        (["explain", "conv", "-i", "5x5x3", "-k", "3", "-n", "2", "-p", "-1"], "--pad"),
        (
            ["explain", "conv", "-i", "5x5x3", "-k", "3", "-n", "2", "--show-one", "--at", "9,9"],
            "outside",
        ),
        (["explain", "pool", "-i", "5x5x3", "--kind", "median"], "max' or 'avg"),
    ],
)
def test_bad_input_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert message in err and "Traceback" not in err


def test_channels_first_input_is_recognised(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "explain", "conv", "-i", "3x227x227", "-k", "11", "-s", "4", "-n", "96"
    )
    assert code == 0 and "depth x height x width" in out and "290,400" in out


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["explain", "--help"],
        ["explain", "conv", "--help"],
        ["explain", "stack", "--help"],
    ):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "Usage" in out
