"""Receptive fields against brute force: the support of one unit's input gradient.

The oracle: make every weight positive (abs of its init), replace max pooling by average pooling of
the same geometry (a max routes its gradient to one pixel; an average to all of them), feed ones, and
back-propagate from one output unit. Every activation is then positive, so no ReLU blocks a path, and
the input pixels with a nonzero gradient are exactly the pixels the unit can see, clipped to the image.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convlens.anatomy.receptive_field import RF, clip_box, receptive_fields
from convlens.errors import ConvlensError
from convlens.models.hooks import truncated_forward


def _positive_average_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).double().eval()
    for name, module in list(m.named_modules()):
        if isinstance(module, nn.MaxPool2d):
            avg = nn.AvgPool2d(
                module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode
            )
            parent = m.get_submodule(name.rsplit(".", 1)[0]) if "." in name else m
            setattr(parent, name.rsplit(".", 1)[-1], avg)
    with torch.no_grad():
        for p in m.parameters():
            p.abs_().add_(1e-3)  # strictly positive: no weight is exactly zero
    return m


def gradient_supports(
    model: nn.Module,
    input_size: tuple[int, int, int],
    layer: str,
    units: list[tuple[int, int]],
    *,
    dense: bool = True,
    prepared: nn.Module | None = None,
) -> list[tuple[int, int, int, int] | None]:
    """Bounding boxes (top, left, bottom, right) of the input pixels each unit (i, j) depends on.

    One forward and backward for all units: unit k's gradient lives in batch element k (eval mode,
    so the images do not interact).
    """
    m = prepared if prepared is not None else _positive_average_copy(model)
    x = torch.ones(len(units), *input_size, dtype=torch.float64, requires_grad=True)
    out = truncated_forward(m, layer, x)  # (U, C, H, W)
    sum(out[k, :, i, j].sum() for k, (i, j) in enumerate(units)).backward()  # type: ignore[union-attr]
    assert x.grad is not None
    boxes: list[tuple[int, int, int, int] | None] = []
    for k in range(len(units)):
        support = x.grad[k].abs().sum(0) > 0  # (H, W)
        rows = support.any(1).nonzero().flatten()
        cols = support.any(0).nonzero().flatten()
        if len(rows) == 0:  # a unit that sees only padding
            boxes.append(None)
            continue
        box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        if dense:  # the field is a full rectangle, not only its bounding box
            assert bool(support[box[0] : box[2], box[1] : box[3]].all())
        boxes.append(box)
    return boxes


def _units(h: int, w: int) -> list[tuple[int, int]]:
    """Corner, centre and far-corner units of an h x w map."""
    return sorted({(0, 0), (h // 2, w // 2), (h - 1, w - 1), (0, w - 1)})


def _check(model: nn.Module, input_size: tuple[int, int, int], layers: list[str]) -> None:
    rfs = receptive_fields(model, input_size)
    _, h, w = input_size
    with torch.no_grad():
        shapes = {
            n: truncated_forward(model.eval(), n, torch.zeros(1, *input_size)).shape for n in layers
        }
    prepared = _positive_average_copy(model)
    for layer in layers:
        oh, ow = shapes[layer][-2:]
        units = _units(oh, ow)
        expected = [rfs[layer].clipped_box(i, j, (h, w)) for i, j in units]
        found = gradient_supports(model, input_size, layer, units, prepared=prepared)
        assert found == expected, layer


def test_stack_of_three_3x3_sees_7x7() -> None:
    net = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1) for _ in range(3)])
    rf = receptive_fields(net, (2, 16, 16))
    assert rf["0"] == RF(size=(3, 3), jump=(1, 1), start=(0.0, 0.0))
    assert rf["2"].size == (7, 7)
    assert rf["2"].box(5, 5) == (2, 2, 9, 9)
    _check(net, (2, 16, 16), ["0", "1", "2"])


def test_strided_padded_dilated_pooling_chain_alexnet_numbers() -> None:
    # AlexNet's first stages: conv 11/4, pool 3/2, conv 5 pad 2, pool 3/2 (sizes from the notes).
    net = nn.Sequential(
        nn.Conv2d(3, 4, 11, stride=4),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(4, 4, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )
    rf = receptive_fields(net, (3, 227, 227))
    assert rf["0"].size == (11, 11) and rf["0"].jump == (4, 4) and rf["0"].start == (5.0, 5.0)
    assert rf["2"].size == (19, 19) and rf["2"].jump == (8, 8)
    assert rf["3"].size == (51, 51) and rf["3"].start == (9.0, 9.0)  # 19 + 4 * 8; centre 9
    assert rf["5"].size == (67, 67) and rf["5"].jump == (16, 16)
    _check(net, (3, 67, 67), ["0", "2", "3", "5"])


def test_resnet18_branches_match_gradient_support() -> None:
    model = torchvision.models.resnet18(weights=None)
    _check(model, (3, 64, 64), ["maxpool", "layer1.0", "layer1", "layer2.0.conv1", "layer2.0"])


@pytest.mark.slow
def test_googlenet_inception_concat_matches_gradient_support() -> None:
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    _check(model, (3, 96, 96), ["maxpool2", "inception3a", "inception3b"])


def test_cifar_resnet_option_a_shortcut_slicing_and_pad() -> None:
    import convlens.models as models

    model = models.create("resnet20")
    rf = receptive_fields(model, (3, 32, 32))
    assert rf["layer1"].size == (15, 15)  # 1 + 2 * (1 + 6) convolutions of 3x3
    assert rf["layer2.0.shortcut"].size == (15, 15) and rf["layer2.0.shortcut"].jump == (2, 2)
    _check(model, (3, 32, 32), ["layer1.0", "layer2.0", "layer2.1"])


class _Functional(nn.Module):
    """Inception-like branches written with functional ops: F.relu, +, torch.cat, F.avg_pool2d, slicing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 5, padding=2)
        self.c = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.d = nn.Conv2d(12, 4, 3, stride=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = torch.cat([self.a(x), self.b(x), F.avg_pool2d(x, 3, 1, 1)], dim=1)
        y = y + torch.sigmoid(y)  # elementwise on one path
        y = F.relu(self.d(y[:, :, 1:, 1:]))  # crop one row and column, then a valid conv
        return self.head(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def test_functional_ops_are_followed() -> None:
    net = _Functional()
    rf = receptive_fields(net, (2, 33, 33))
    # stem: 3/2 at -1..1; b: 5x5 at jump 2 adds 2*2 each side -> -5..5; crop 1 shifts by 2 px;
    # d: 3/2 at jump 2 -> lo = -5 + 2, hi = 5 + 2 + 2 * 2.
    assert rf["d"] == RF(size=(15, 15), jump=(4, 4), start=(4.0, 4.0))
    assert rf["head"].size == (33, 33)  # after global pooling: the whole input
    _check(net, (2, 33, 33), ["stem", "d"])


def test_dilation() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 3, dilation=3, padding=3), nn.Conv2d(1, 1, 3, stride=2))
    rf = receptive_fields(net, (1, 20, 20))
    assert rf["0"].size == (7, 7) and rf["0"].start == (0.0, 0.0)
    assert rf["1"] == RF(size=(9, 9), jump=(2, 2), start=(1.0, 1.0))


class _Disagree(nn.Module):
    """Two paths whose unit (0, 0) windows have different centres: 3x3 pad 1 against 3x3 shifted."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + F.pad(self.b(x), (2, 0, 2, 0))  # same size, b shifted by 2


def test_paths_disagreeing_on_centre_warn_and_report_the_union() -> None:
    net = _Disagree()
    with pytest.warns(UserWarning, match="disagree on the centre"):
        rf = receptive_fields(net, (1, 12, 12))

    class Out(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    # a sees i-1..i+1, b (shifted) sees i-2..i: the union is i-2..i+1, 4 pixels, centre i - 0.5
    assert rf == {"a": RF((3, 3), (1, 1), (0.0, 0.0)), "b": RF((3, 3), (1, 1), (1.0, 1.0))}
    wrapped = Out(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = receptive_fields(wrapped, (1, 12, 12))["inner"]
    assert whole == RF(size=(4, 4), jump=(1, 1), start=(-0.5, -0.5))
    # the union of two offset 3x3 squares is not a rectangle; its bounding box is the reported field
    assert gradient_supports(wrapped, (1, 12, 12), "inner", [(6, 6)], dense=False) == [
        whole.box(6, 6)
    ]


def test_standard_networks_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        receptive_fields(torchvision.models.resnet50(weights=None), (3, 224, 224))
        receptive_fields(torchvision.models.densenet121(weights=None), (3, 224, 224))


def test_published_resnet50_field() -> None:
    # Araujo et al. 2019 (distill.pub), table: ResNet-50 final conv features have r = 427, jump 32.
    rf = receptive_fields(torchvision.models.resnet50(weights=None), (3, 224, 224))
    assert rf["layer4"].size == (427, 427) and rf["layer4"].jump == (32, 32)
    assert rf["fc"] == RF(size=(224, 224), jump=(0, 0), start=(111.5, 111.5))


def test_box_and_clip() -> None:
    rf = RF(size=(11, 11), jump=(4, 4), start=(5.0, 5.0))
    assert rf.box(0, 0) == (0, 0, 11, 11)
    assert rf.box(54, 1) == (216, 4, 227, 15)
    padded = RF(size=(7, 7), jump=(2, 2), start=(0.0, 0.0))
    assert padded.box(0, 0) == (-3, -3, 4, 4)
    assert clip_box(padded.box(0, 0), (32, 32)) == (0, 0, 4, 4)
    assert padded.clipped_box(15, 0, (32, 32)) == (27, 0, 32, 4)


def test_input_too_small_names_the_layer() -> None:
    with pytest.raises(ConvlensError, match=r"too small.*'features\.\d+' \(MaxPool2d\)"):
        receptive_fields(torchvision.models.alexnet(weights=None), (3, 32, 32))


class _Gated(nn.Module):
    """conv -> squeeze-and-excitation (x * sigmoid(fc(mean over H, W))) -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        gate = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(y, 1)))  # (N, 4, 1, 1)
        return self.b(y * gate)


def test_global_gate_makes_units_see_everything_unless_asked_for_the_local_field() -> None:
    net = _Gated()
    with pytest.warns(UserWarning, match="global gate"):
        strict = receptive_fields(net, (2, 16, 16))
    assert strict["b"] == RF(size=(16, 16), jump=(0, 0), start=(7.5, 7.5))
    assert strict["b"].box(3, 9) == (0, 0, 16, 16)  # every unit: the whole image
    # the oracle: the input gradient of a corner unit reaches every pixel (through the gate)
    assert gradient_supports(net, (2, 16, 16), "b", [(0, 0), (8, 8)]) == [(0, 0, 16, 16)] * 2

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local = receptive_fields(net, (2, 16, 16), through_gates=False)
    assert local["b"] == RF(size=(5, 5), jump=(1, 1), start=(0.0, 0.0))


@st.composite
def _chains(draw: st.DrawFn) -> tuple[nn.Sequential, int]:
    """Random conv / max-pool chains with kernel >= stride (so every field is a full rectangle)."""
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(1, 5))
        s = draw(st.integers(1, k))
        if draw(st.booleans()):
            layers += [nn.Conv2d(1, 1, k, stride=s, padding=draw(st.integers(0, k))), nn.ReLU()]
        else:
            layers.append(nn.MaxPool2d(k, s, padding=draw(st.integers(0, k // 2))))
    return nn.Sequential(*layers), draw(st.integers(8, 40))


@settings(max_examples=30, deadline=None)
@given(_chains())
def test_random_chains_match_gradient_support(chain: tuple[nn.Sequential, int]) -> None:
    net, size = chain
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 1, size, size))
    except RuntimeError:
        return  # the input collapses somewhere in this chain
    if out.shape[-1] < 1:
        return
    rf = receptive_fields(net, (1, size, size))[str(len(net) - 1)]
    units = _units(out.shape[-2], out.shape[-1])
    found = gradient_supports(net, (1, size, size), str(len(net) - 1), units)
    for (i, j), support in zip(units, found, strict=True):
        box = rf.box(i, j)
        if min(box) >= 0 and max(box[2], box[3]) <= size:  # inside the image: exact
            assert support == box, (i, j)
        elif support is not None:  # at the border: never smaller than what the unit sees
            top, left, bottom, right = rf.clipped_box(i, j, (size, size))
            assert top <= support[0] and left <= support[1], (i, j)
            assert support[2] <= bottom and support[3] <= right, (i, j)


class _Reductions(nn.Module):
    """torch.max(a, b) is elementwise; norm over channels keeps the map; amax over H, W does not."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.max(self.a(x), self.b(x)[:, :, 1:-1, 1:-1])  # same windows: unit i sees i..i+2
        z = self.c(y / y.norm(2, dim=1, keepdim=True))
        return z.amax(dim=(2, 3))


def test_reductions_and_elementwise_max() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rf = receptive_fields(_Reductions(), (3, 9, 9))
    assert rf["c"] == RF(size=(3, 3), jump=(1, 1), start=(1.0, 1.0))
