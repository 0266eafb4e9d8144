"""The inspect convention: normalised float (N, C, H, W) in, checked at the boundary; no global
side effects (matplotlib backend, torch's global generator)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from convlens import load_run, models
from convlens.anatomy import effective_receptive_field
from convlens.cli.main import main
from convlens.errors import InputError, InputTypeError
from convlens.inspect import (
    activation_maximization,
    activations,
    grad_cam,
    guided_backprop,
    guided_grad_cam,
    saliency,
)

METHODS: dict[str, Callable[[nn.Module, torch.Tensor], object]] = {
    "activations": activations,
    "saliency": saliency,
    "guided_backprop": guided_backprop,
    "grad_cam": grad_cam,
    "guided_grad_cam": guided_grad_cam,
}


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("lenet5", in_channels=1).eval()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_image_method_checks_its_input(method: str, lenet: nn.Module) -> None:
    call = METHODS[method]
    x = torch.randn(2, 1, 28, 28)
    call(lenet, x)  # the convention: normalised float (N, C, H, W)
    with pytest.raises(InputError, match=r"unsqueeze\(0\)"):
        call(lenet, x[0])
    with pytest.raises(InputError, match="normalize"):
        call(lenet, (x * 50 + 128).clamp(0, 255).to(torch.uint8))
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        call(lenet, bad)
    with pytest.raises(InputTypeError, match=r"torch.Tensor \(N, C, H, W\)"):
        call(lenet, x.numpy())


def test_seeded_methods_leave_the_global_generator_alone(lenet: nn.Module) -> None:
    state = torch.get_rng_state()
    activation_maximization(lenet, "conv2", [0, 1], size=28, steps=2, seed=3)
    activation_maximization(lenet, "conv2", [0], size=28, steps=2, simple=True)
    effective_receptive_field(lenet, "conv2", (1, 28, 28), n=2, weights="random")
    assert torch.equal(state, torch.get_rng_state())


def test_importing_and_drawing_leave_the_matplotlib_backend_alone() -> None:
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import numpy as np\n"
        "from convlens.render import common, layers, attribution, report, report_sections\n"
        "from convlens.cli import main\n"
        "common.figure_png(common.image_grid([np.zeros((1, 4, 4), np.uint8)]))\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "import matplotlib.pyplot as plt; assert not plt.get_fignums()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_methods_and_the_api_share_one_default_layer(trained_run: Path, tmp_path: Path) -> None:
    """LeNet-5's C5 is 1x1: top patches, ERF and actmax default to C3 (conv2), as Grad-CAM does."""
    for method, extra, written in [
        ("top-patches", ["--count", "2", "--k", "2"], "top_patches_conv2.png"),
        ("erf", ["--count", "2"], "erf_conv2.png"),
        ("actmax", ["--channels", "0-1", "--steps", "2"], "actmax_conv2_channel.png"),
    ]:
        out = tmp_path / method
        assert main(["visualize", str(trained_run), method, *extra, "--out", str(out)]) == 0
        assert (out / written).is_file(), sorted(p.name for p in out.iterdir())
    run = load_run(trained_run)
    x = run.normalize(run.load_data("test").images[:2])
    assert models.default_layer(run.model, tuple(x.shape[1:])) == "conv2"
    torch.testing.assert_close(grad_cam(run.model, x), grad_cam(run.model, x, layer="conv2"))
