"""Winograd F(m, 3): the transform matrices against NumPy's correlation, the convolution against
PyTorch's direct one in float64, and its use inside the occlusion engine."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convlens import models
from convlens.inspect.occlusion import occlusion_positions, winograd
from convlens.inspect.occlusion.incremental import IncrementalOcclusion
from convlens.inspect.occlusion.winograd import Winograd3x3, plan, tiling, winograd_matrices


@pytest.mark.parametrize("m", [2, 3, 4])
def test_matrices_correlate_exactly(m: int) -> None:
    AT, G, BT = winograd_matrices(m)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        y = AT @ ((G @ g) * (BT @ d))
        np.testing.assert_allclose(y, np.correlate(d, g, mode="valid"), rtol=0, atol=1e-12)
    # Exact rationals, no solver residues: those would become denormal floats in float32.
    assert np.all((BT == 0) | (np.abs(BT) > 1e-3))


def test_plan_weighs_multiplies_against_weight_traffic() -> None:
    """Mixed tiles for 14x14 maps at ~100 copies; one size where the extra weights cost more."""
    assert plan(14, 14, 104) == (tiling(14), tiling(14))
    assert plan(7, 7, 104) == (((0, 2, 4),), ((0, 2, 4),))  # 36 points' weights, not 121
    assert plan(7, 7, 1024) == (tiling(7), tiling(7))


def test_tiling_covers_exactly_with_fewest_tiles() -> None:
    assert tiling(14) == ((0, 2, 4), (8, 2, 3))  # 4+4+3+3: 22 transform points, not 4x(4+2) = 24
    assert tiling(7) == ((0, 1, 4), (4, 1, 3))
    assert tiling(9) == ((0, 3, 3),)
    assert tiling(56) == ((0, 14, 4),)
    for n in range(1, 40):
        runs = tiling(n)
        assert runs[0][0] == 0 and all(
            a[0] + a[1] * a[2] == b[0] for a, b in itertools.pairwise(runs)
        )
        end = runs[-1][0] + runs[-1][1] * runs[-1][2]
        assert end == n or (n in (1, 5) and end == n + 1)  # overhang only where unavoidable
        assert sum(r[1] for r in runs) == -(-n // 4) or n == 5


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, pad: int) -> torch.Tensor:
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=pad)


def _force_tiles(monkeypatch: pytest.MonkeyPatch, m: int) -> None:
    """Tiles of size m only (m = 0: mixed tiles everywhere), whatever `plan` would choose."""
    if m:
        monkeypatch.setattr(
            winograd, "plan", lambda h, w, batch: (((0, -(-h // m), m),), ((0, -(-w // m), m),))
        )
    else:
        monkeypatch.setattr(winograd, "plan", lambda h, w, batch: (tiling(h), tiling(w)))


@pytest.mark.parametrize("m", [0, 2, 3, 4])
@pytest.mark.parametrize(
    ("shape", "pad", "bias"),
    [((3, 8, 14, 14), 1, True), ((2, 5, 9, 11), 1, False), ((4, 6, 13, 10), 0, True),
     ((2, 3, 5, 7), 0, True)],
)  # fmt: skip
def test_convolution_matches_direct(
    m: int, shape: tuple[int, int, int, int], pad: int, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mixed tiles (m=0) and each tile size alone, with overhanging last tiles, with and without
    padding, output sizes 3 to 14."""
    _force_tiles(monkeypatch, m)
    torch.manual_seed(0)
    _, C, H, W = shape
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    w = torch.randn(7, C, 3, 3) / math.sqrt(9 * C)
    b = torch.randn(7) if bias else None
    ref = _reference(x, w, b, pad)
    out = Winograd3x3(w, b)(x, pad, pad, H + 2 * pad - 2, W + 2 * pad - 2)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    err = float((out.double() - ref).abs().max() / ref.abs().max())
    assert err < 2e-5, err


def test_difference_form_matches_direct_with_shared_workspace() -> None:
    """`y_ref + conv(x - x_ref)` equals `conv(x)`; layers share one workspace; 5x5 overhangs."""
    torch.manual_seed(1)
    work: dict[str, torch.Tensor] = {}
    for k, size in ((16, 7), (24, 5), (8, 7)):
        x_ref = torch.randn(1, 16, size, size).contiguous(memory_format=torch.channels_last)
        x = (x_ref + 0.01 * torch.randn(5, 16, size, size)).contiguous(
            memory_format=torch.channels_last
        )
        w, b = torch.randn(k, 16, 3, 3) / 12, torch.randn(k)
        y_ref = F.conv2d(x_ref, w, b, padding=1).contiguous(memory_format=torch.channels_last)
        out = Winograd3x3(w, b, work)(x, 1, 1, size, size, x_ref, y_ref)
        ref = _reference(x, w, b, 1)
        assert float((out.double() - ref).abs().max() / ref.abs().max()) < 2e-6


def test_engine_uses_winograd_and_agrees_with_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet-18's wide 3x3 layers go through Winograd; the logits match the direct engine."""
    calls = []
    original = Winograd3x3.__call__

    def spy(self: Winograd3x3, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(self.K)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Winograd3x3, "__call__", spy)
    torch.manual_seed(2)
    model = models.create("resnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 96, 96)
    rows = occlusion_positions(96, 16, 16)
    patches = np.stack(np.meshgrid(np.arange(6), np.arange(6), indexing="ij"), -1).reshape(-1, 2)
    outs = []
    for fast in (False, True):
        eng = IncrementalOcclusion(model, (3, 96, 96), rows, rows, winograd=fast)
        with torch.inference_mode():
            cache, _ = eng.clean_pass(x)
            outs.append(eng.run(cache, x, torch.zeros_like(x), patches))
    assert set(calls) == {256, 512}  # from 256 channels
    scale = float((outs[0] - model(x).detach()).abs().max())  # how much occlusion moves the logits
    assert float((outs[1] - outs[0]).abs().max()) < 1e-4 * scale
