"""`convlens.summary` against independent numbers: the notes, torchvision's published parameter and
operation counts (its weights' metadata), torchinfo's mult-adds, and real forward passes."""

from __future__ import annotations

import csv
import io
import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import torchinfo
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import convlens
from convlens.anatomy.summary import summary
from convlens.errors import ConvlensError


def test_alexnet_conv1_reproduces_the_notes() -> None:
    import convlens.models as models

    s = convlens.summary(models.create("alexnet", num_classes=1000), (3, 227, 227))
    conv1 = s.layers[0]
    assert conv1.type == "Conv2d" and conv1.output_shape == (96, 55, 55)
    assert conv1.neurons == 290_400  # 55 x 55 x 96
    assert conv1.params == 34_944  # 96 x (11 x 11 x 3 + 1)
    assert conv1.params_unshared == 105_705_600  # 290,400 x (363 + 1)
    assert conv1.macs == 290_400 * 363
    assert conv1.rf is not None and conv1.rf.size == (11, 11) and conv1.rf.jump == (4, 4)


@pytest.mark.parametrize(
    ("name", "size", "published"),
    [
        ("resnet50", 224, 25_557_032),
        ("vgg16", 224, 138_357_544),
        ("googlenet", 224, 6_624_904),
        ("resnet152", 224, 60_192_808),
        ("densenet121", 224, 7_978_856),
        ("mobilenet_v2", 224, 3_504_872),
        ("vit_b_16", 224, 86_567_656),  # attention MACs
        ("swin_t", 224, 28_288_354),
        ("efficientnet_b0", 224, 5_288_548),
        ("maxvit_t", 224, 30_919_624),  # einsum MACs
    ],
)
def test_totals_equal_published_counts_and_torchvision_ops(
    name: str, size: int, published: int
) -> None:
    kw = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    with torch.device("meta"):  # no weights to initialise: the summary needs none (instant)
        model = torchvision.models.get_model(name, weights=None, **kw)
    s = summary(model, (3, size, size), warn=False)
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    assert s.totals["params"] == published == meta["num_params"]
    assert s.totals["params"] == sum(p.numel() for p in model.parameters())
    # torchvision's model cards give GFLOPS rounded to 3 decimals, counting multiply-accumulates
    # of convolutions and linear layers, as we do.
    assert round(s.totals["macs"] / 1e9, 3) == pytest.approx(meta["_ops"], abs=1e-9)
    assert s.output_shape == (1000,)


@pytest.mark.parametrize(("name", "size"), [("resnet50", 96), ("vgg16", 64), ("alexnet", 224)])
def test_macs_equal_torchinfo_without_bias_and_norm_terms(name: str, size: int) -> None:
    """torchinfo counts weights x positions like us, plus one per bias per position and BN params."""
    model = torchvision.models.get_model(name, weights=None).eval()
    ours = summary(model, (3, size, size))
    stats = torchinfo.summary(model, input_size=(1, 3, size, size), verbose=0, depth=100)
    leaves = [i for i in stats.summary_list if i.is_leaf_layer]
    by_module: dict[int, list[torchinfo.layer_info.LayerInfo]] = {}
    for info in leaves:
        by_module.setdefault(id(info.module), []).append(info)
    modules = {n: m for n, m in model.named_modules()}
    compared = 0
    for row in ours.layers:
        module = modules[row.name]
        infos = by_module[id(module)]
        info = infos[min(row.call, len(infos)) - 1]
        assert list(info.output_size[1:]) == list(row.output_shape), row.name
        bias = getattr(module, "bias", None)
        if isinstance(module, nn.Conv2d):
            positions = row.output_shape[1] * row.output_shape[2]
            term = bias.numel() * positions if bias is not None else 0
            assert info.macs == row.macs + term, row.name
            compared += 1
        elif isinstance(module, nn.Linear):
            assert info.macs == row.macs + (bias.numel() if bias is not None else 0), row.name
            compared += 1
        elif isinstance(module, nn.BatchNorm2d):
            assert row.macs == 0 and info.macs == row.params
    assert compared >= 8
    assert stats.total_params == ours.totals["params"]


def test_shapes_and_params_equal_a_real_forward() -> None:
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False).eval()
    s = summary(model, (3, 64, 80))
    seen: dict[str, list[tuple[int, ...]]] = {}
    modules = dict(model.named_modules())

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            seen.setdefault(name, []).append(tuple(out.shape[1:]))

        return record

    handles = [modules[r.name].register_forward_hook(hook(r.name)) for r in s.layers if r.call == 1]
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 80))
    for h in handles:
        h.remove()
    for row in s.layers:
        assert seen[row.name][row.call - 1] == row.output_shape, row.label
        assert row.params == sum(p.numel() for p in modules[row.name].parameters(recurse=False))
    assert s.output_shape == tuple(y.shape[1:])


def test_params_unshared_definitions() -> None:
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False),  # 8 x 8 x 8 neurons, 2*3*3 weights
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    )
    s = summary(net, (4, 8, 8))
    conv, bn, relu, pool, flat, fc = s.layers
    assert conv.params_unshared == 512 * (2 * 3 * 3)
    assert bn.params_unshared == 512 * 2 and bn.params == 16
    assert relu.params_unshared == pool.params_unshared == flat.params_unshared == 0
    assert fc.params_unshared == fc.params == 5 * (128 + 1)
    assert fc.macs == 5 * 128 and conv.macs == 512 * 18
    assert s.totals["neurons"] == 512 + 5


def test_shared_parameters_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))  # one module, two calls

    model = Tied()
    s = summary(model, (3, 10, 10))
    assert [r.label for r in s.layers] == ["conv", "conv (2)"]
    assert s.totals["params"] == 84 == sum(p.numel() for p in model.parameters())
    assert s.layers[1].rf is not None and s.layers[1].rf.size == (5, 5)

    twin = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    twin[1].weight = twin[0].weight  # tied weights across two modules
    s = summary(twin, (1, 1, 6))
    assert s.totals["params"] == 36 + 6 + 6 == sum(p.numel() for p in twin.parameters())


def test_model_is_left_untouched_and_fast_path_is_meta() -> None:
    model = torchvision.models.resnet18(weights=None)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary(model, (3, 224, 224))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(before[k], after[k]) for k in before)
    assert not any(hasattr(m, "_forward_hooks") and m._forward_hooks for m in model.modules())


def test_model_that_cannot_run_on_meta_falls_back() -> None:
    class NeedsData(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.sum().item() > 1e9:  # data-dependent control flow: impossible on meta
                return y * 2
            return y

    s = summary(NeedsData(), (1, 9, 9))
    assert s.layers[0].output_shape == (2, 7, 7)


def test_formats() -> None:
    s = summary(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), (1, 5, 5), name="tiny")
    d = json.loads(s.to_json())
    assert set(d) >= {"model", "input", "layers", "totals"}
    assert d["model"] == "tiny" and d["input"] == [1, 5, 5]
    assert d["layers"][0]["rf"] == {"size": [3, 3], "jump": [1, 1], "start": [1, 1]}
    assert d["totals"]["params"] == 20
    rows = list(csv.DictReader(io.StringIO(s.to_csv())))
    assert (
        rows[0]["name"] == "0"
        and rows[0]["output_shape"] == "2x3x3"
        and rows[0]["rf_size"] == "3x3"
    )
    text = str(s)
    assert "Conv2d" in text and "total" in text and "20" in text


def test_input_too_small_names_the_collapsing_layer() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    with pytest.raises(ConvlensError, match=r"too small.*layer '3' \(Conv2d\).*2x1x1"):
        summary(net, (1, 8, 8))


def test_wrong_channels_is_a_clear_error() -> None:
    with pytest.raises(ConvlensError, match=r"cannot run on a 1x32x32 input: layer 'conv1'"):
        summary(torchvision.models.resnet18(weights=None), (1, 32, 32))


def test_registry_models_shapes_equal_real_forward() -> None:
    import convlens.models as models

    for name, size in [
        ("lenet5", (1, 28, 28)),
        ("resnet20", (3, 32, 32)),
        ("plain20", (3, 32, 32)),
    ]:
        model = models.create(name, in_channels=size[0]).eval()
        s = summary(model, size)
        with torch.no_grad():
            y = model(torch.randn(2, *size))
        assert s.output_shape == tuple(y.shape[1:])
        assert s.totals["params"] == sum(p.numel() for p in model.parameters())
    assert summary(models.create("resnet20"), (3, 32, 32)).totals["params"] == 269_722
    assert summary(models.create("lenet5", in_channels=1), (1, 28, 28)).totals["params"] == 61_706


def test_hooks_removed_and_modes_restored_when_the_model_fails() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Conv2d(2, 2, 5))
    net.train()
    with pytest.raises(ConvlensError):
        summary(net, (1, 8, 8))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert all("forward" not in m.__dict__ for m in net.modules())  # the trace's wrappers are gone
    assert all(m.training for m in net.modules())
    assert torch.overrides._get_current_function_mode_stack() == []
    y = net(torch.zeros(1, 1, 16, 16))  # still an ordinary module
    assert not hasattr(y, "_convlens_field")


def test_model_level_functional_ops_and_einsum_are_counted() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))  # used by the model's own forward
            self.c = nn.Conv2d(4, 4, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.c(F.conv2d(x, self.w))  # (N, 4, 6, 6)
            return torch.einsum("bchw,dc->bdhw", y, torch.ones(5, 4))  # 5 x 4 per position

    s = summary(Functional(), (3, 8, 8))
    root, conv = s.layers
    assert root.name == "(model)" and root.params == 108
    assert root.macs == 4 * 6 * 6 * 27 + 5 * 6 * 6 * 4 and conv.macs == 4 * 6 * 6 * 4
    assert s.totals["params"] == 124 and s.totals["macs"] == root.macs + conv.macs


# -- the common leaf layers, summarised by their arithmetic instead of their forward ----------------


def _without_layer_arithmetic() -> mock._patch:  # type: ignore[type-arg]
    """Every layer runs its own forward on the meta device (PyTorch's meta kernels give the shapes)."""
    return mock.patch("convlens.anatomy.trace.leaf_rule", lambda module: None)


@st.composite
def _layer_and_input(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, int, int]]:
    """One leaf layer the trace computes by arithmetic, with geometries PyTorch may refuse."""
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["conv", "max", "avg", "adaptive", "linear", "bn", "elementwise"]))
    layer: nn.Module
    if kind == "conv":
        cin = c if draw(st.integers(0, 9)) else c + 1  # now and then the wrong number of channels
        groups = draw(st.sampled_from([1, cin]))
        stride = draw(st.integers(1, 3))
        pads = [st.integers(0, 3), st.just("valid")] + ([st.just("same")] if stride == 1 else [])
        layer = nn.Conv2d(
            cin,
            groups * draw(st.integers(1, 3)),
            (draw(st.integers(1, 5)), draw(st.integers(1, 5))),
            stride=stride,
            padding=draw(st.one_of(*pads)),
            dilation=draw(st.integers(1, 2)),
            groups=groups,
            bias=draw(st.booleans()),
        )
    elif kind in ("max", "avg"):
        k, s, p = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
        ceil = draw(st.booleans())  # p > k // 2 is refused by PyTorch
        if kind == "max":
            layer = nn.MaxPool2d(k, s, p, dilation=draw(st.integers(1, 2)), ceil_mode=ceil)
        else:
            layer = nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=draw(st.booleans()))
    elif kind == "adaptive":
        size = (draw(st.none() | st.integers(1, 6)), draw(st.none() | st.integers(1, 6)))
        adaptive = draw(st.sampled_from([nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d]))
        layer = adaptive(size)
    elif kind == "linear":
        layer = nn.Linear(w if draw(st.integers(0, 9)) else w + 1, draw(st.integers(1, 5)))
    elif kind == "bn":
        layer = nn.BatchNorm2d(c if draw(st.integers(0, 9)) else c + 1)
    else:
        inplace = draw(st.booleans())
        layer = draw(
            st.sampled_from(
                [nn.ReLU(inplace), nn.ReLU6(inplace), nn.Hardswish(inplace), nn.GELU(),
                 nn.Sigmoid(), nn.Dropout(0.5, inplace), nn.Identity()]
            )
        )  # fmt: skip
    return layer, (c, h, w)


@settings(max_examples=150, deadline=None)
@given(_layer_and_input())
def test_layer_arithmetic_equals_pytorch(case: tuple[nn.Module, tuple[int, int, int]]) -> None:
    """Shapes and refusals as PyTorch's CPU kernels; MACs = outputs x weights per output; the
    receptive field as the layer's own forward traced on meta."""
    layer, size = case
    net = nn.Sequential(layer).eval()
    try:
        with torch.no_grad():
            real = net(torch.zeros(1, *size))
    except (RuntimeError, ValueError):
        with pytest.raises(ConvlensError):
            summary(net, size)
        return
    s = summary(net, size)
    row = s["0"]
    assert row.output_shape == tuple(real.shape[1:]) == s.output_shape
    if isinstance(layer, nn.Conv2d):
        assert row.macs == real.numel() * layer.weight[0].numel()
    elif isinstance(layer, nn.Linear):
        assert row.macs == real.numel() * layer.in_features
    else:
        assert row.macs == 0
    with _without_layer_arithmetic():
        general = summary(net, size)
    assert s.to_dict() == general.to_dict()


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet18", (3, 64, 64)),
        ("googlenet", (3, 97, 97)),  # ceil-mode pooling at an odd size
        ("squeezenet1_0", (3, 65, 71)),
        ("densenet121", (3, 64, 64)),
        ("mobilenet_v3_small", (3, 64, 64)),  # squeeze-and-excitation gates, Hardswish
        ("alexnet", (3, 97, 97)),
        ("vit_b_16", (3, 224, 224)),  # class token: parameters swapped for meta stand-ins
    ],
)
def test_layer_arithmetic_equals_the_layers_own_forward_on_whole_networks(
    name: str, size: tuple[int, int, int]
) -> None:
    kw = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, weights=None, **kw)
    fast = summary(model, size, warn=False)
    with _without_layer_arithmetic():
        general = summary(model, size, warn=False)
    assert fast.to_dict() == general.to_dict()
    with torch.no_grad():
        assert fast.output_shape == tuple(model.eval()(torch.zeros(1, *size)).shape[1:])


def test_in_place_writes_to_the_models_buffers_do_not_happen() -> None:
    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1  # in place, on a real buffer
            return self.conv(x)

    model = Counter()
    s = summary(model, (1, 8, 8))
    assert s.layers[0].output_shape == (2, 6, 6) and s.layers[0].macs == 2 * 36 * 9
    assert model.calls.device.type == "cpu" and model.calls.item() == 0
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 2, 6, 6) and model.calls.item() == 1


def test_a_forward_set_on_the_instance_is_called_and_kept() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    seen: list[tuple[int, ...]] = []
    relu_forward = net[1].forward

    def spy(x: torch.Tensor) -> torch.Tensor:  # as accelerate's hooks wrap a module's forward
        seen.append(tuple(x.shape))
        return relu_forward(x)

    net[1].forward = spy
    s = summary(net, (1, 5, 5))
    assert seen == [(1, 2, 3, 3)] and s["1"].output_shape == (2, 3, 3)
    assert net[1].__dict__["forward"] is spy
    assert "forward" not in net[0].__dict__ and "forward" not in net.__dict__


def test_concatenations_equal_pytorch() -> None:
    class Joins(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 3, 1)
            self.b = nn.Conv2d(2, 5, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.cat([self.a(x), self.b(x)], dim=-3)  # (N, 8, H, W)
            z = torch.cat((y, y[:, :, :2]), 2)  # a strided slice: left to the kernel
            return torch.cat(tensors=[z, z], dim=3)  # (N, 8, H + 2, 2 W)

    with torch.no_grad():
        real = Joins()(torch.zeros(1, 2, 6, 7))
    assert summary(Joins(), (2, 6, 7)).output_shape == tuple(real.shape[1:]) == (8, 8, 14)

    class Mismatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, self.conv(x)], dim=1)  # 6x7 and 4x5 maps

    with pytest.raises(ConvlensError, match="cannot run on a 2x6x7 input"):
        summary(Mismatch(), (2, 6, 7))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_modules_are_refused_with_a_message() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
    with pytest.raises(ConvlensError, match="not a TorchScript one"):
        convlens.summary(scripted, (3, 32, 32))
