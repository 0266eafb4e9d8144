"""The inspection interface on models that are not ours, and the torchvision:/timm: wrappers.

Oracles: torchvision's own feature extractor (``create_feature_extractor``), the execution order of
the convolutions recorded by hooks, torchvision's models with weights copied through files, and
the arithmetic identity a grey image obeys under a channel-averaged first convolution.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchinfo
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from convlens import models
from convlens.errors import ConvlensError


@pytest.fixture(scope="module")
def tv_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def test_interface_on_torchvision_resnet(tv_resnet18: nn.Module) -> None:
    m = tv_resnet18
    assert models.classifier(m) is m.fc
    assert models.default_layer(m) == "layer4.1.conv2"  # the layer Grad-CAM's docs use
    order: list[str] = []
    names = {mod: n for n, mod in m.named_modules()}
    handles = [
        c.register_forward_hook(lambda mod, _i, _o: order.append(names[mod]))
        for c in models.conv_layers(m).values()
    ]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        m(x)
    for h in handles:
        h.remove()
    assert list(models.conv_layers(m)) == order and len(order) == 20
    with torch.no_grad():
        feats = models.forward_features(m, x)
        expected = create_feature_extractor(m, {"flatten": "f"})(x)["f"]
    torch.testing.assert_close(feats, expected)
    assert not m._forward_pre_hooks and not m.fc._forward_pre_hooks  # hook removed


def test_interface_on_torchvision_vgg_squeezenet_vit() -> None:
    with torch.device("meta"):
        vgg = torchvision.models.vgg11(weights=None)
        squeeze = torchvision.models.squeezenet1_1(weights=None)
        vit = torchvision.models.vit_b_16(weights=None)
        googlenet = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    assert models.classifier(vgg) is vgg.classifier[6]
    assert models.classifier(squeeze) is squeeze.classifier[1]  # a 1x1 convolution
    assert models.classifier(vit) is vit.heads.head
    assert models.default_layer(vgg) == "features.18"
    # torchvision registers the auxiliary heads after inception5b; they are not the last layer
    assert models.default_layer(googlenet) == "inception5b.branch4.1.conv"
    vgg_cpu = torchvision.models.vgg11(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = models.forward_features(vgg_cpu, x)
        expected = create_feature_extractor(vgg_cpu, {"classifier.4": "f"})(x)["f"]
    torch.testing.assert_close(feats, expected)  # the 4096-vector after FC7 and its ReLU


def test_our_features_equal_torchvision_features(tv_resnet18: nn.Module) -> None:
    with torch.device("meta"):
        ours = models.create("resnet18", num_classes=1000)
    ours.load_state_dict(tv_resnet18.state_dict(), assign=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = create_feature_extractor(tv_resnet18, {"flatten": "f"})(x)["f"]
        torch.testing.assert_close(models.forward_features(ours.eval(), x), expected)


def test_timm_style_interface_is_used() -> None:
    class TimmLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.head = nn.Linear(8, 5)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.stem(x)  # (N, 8, H, W): timm returns the unpooled map

        def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            x = x.mean((2, 3))
            return x if pre_logits else self.head(x)

        def get_classifier(self) -> nn.Module:
            return self.head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_head(self.forward_features(x))

    m = TimmLike()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(models.forward_features(m, x), m.stem(x).mean((2, 3)))
    assert models.classifier(m) is m.head


def test_module_without_layers() -> None:
    with pytest.raises(ConvlensError, match="no Conv2d"):
        models.default_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ConvlensError, match="no linear or convolutional"):
        models.classifier(nn.ReLU())


def test_torchvision_prefix_builds_any_classifier() -> None:
    m = models.create("torchvision:resnet18", num_classes=10, in_channels=1)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert type(m) is torchvision.models.ResNet  # the library's own class and names
    g = models.create("torchvision:googlenet", num_classes=10).train()
    assert isinstance(g(torch.randn(2, 3, 32, 32)), torch.Tensor)  # no aux tuple by default
    assert "torchvision:vit_b_16" in models.torchvision_names()
    assert models.info("torchvision:inception_v3").input_size == (3, 299, 299)


def test_torchvision_prefix_errors() -> None:
    with pytest.raises(ConvlensError, match="resnet18"):
        models.create("torchvision:resnet81")
    with pytest.raises(ConvlensError, match="refused"):
        models.create("torchvision:resnet18", wings=2)


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_path_loads_local_files(
    tv_resnet18: nn.Module, tmp_path: Path, suffix: str
) -> None:
    path = save(tv_resnet18.state_dict(), tmp_path / f"w{suffix}")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = tv_resnet18(x)
        same = models.create("torchvision:resnet18", num_classes=1000, weights_path=path).eval()
        torch.testing.assert_close(same(x), expected)
        # our resnet18 reads torchvision's file directly
        ours = models.create("resnet18", num_classes=1000, weights_path=str(path)).eval()
        torch.testing.assert_close(ours(x), expected)
        # fine-tuning set-up: new 10-class head, the features are the loaded ones
        tuned = models.create("torchvision:resnet18", num_classes=10, weights_path=path).eval()
        assert tuned.fc.out_features == 10
        torch.testing.assert_close(
            models.forward_features(tuned, x), models.forward_features(tv_resnet18, x)
        )


def test_weights_path_grey_input_sees_the_grey_rgb_response(
    tv_resnet18: nn.Module, tmp_path: Path
) -> None:
    path = save(tv_resnet18.state_dict(), tmp_path / "w.safetensors")
    grey = models.create("torchvision:resnet18", num_classes=1000, in_channels=1, weights_path=path)
    g = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        # conv(w_mean * 3, g) == sum_c conv(w_c, g): the same as the RGB net on (g, g, g)
        torch.testing.assert_close(
            grey.eval()(g), tv_resnet18(g.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4
        )


def test_weights_path_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    with pytest.raises(ConvlensError, match="truncated or corrupt"):
        models.create("resnet20", weights_path=bad)
    with pytest.raises(ConvlensError, match="no weights file"):
        models.create("resnet20", weights_path=tmp_path / "missing.pt")
    other = save(models.create("lenet5").state_dict(), tmp_path / "lenet.safetensors")
    with pytest.raises(ConvlensError, match="does not hold weights"):
        models.create("resnet20", weights_path=other)
    with pytest.raises(ConvlensError, match="does not hold weights"):
        models.create("torchvision:resnet18", weights_path=other)


def test_timm_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ConvlensError, match="timm is not installed"):
            models.create("timm:resnet18")
    calls: dict[str, object] = {}
    fake = types.ModuleType("timm")

    def create_model(name: str, **kw: object) -> nn.Module:
        calls.update(kw, name=name)
        return nn.Conv2d(int(kw["in_chans"]), int(kw["num_classes"]), 1)  # type: ignore[call-overload]

    fake.create_model = create_model  # type: ignore[attr-defined]
    fake.is_model = lambda name: name == "resnet18"  # type: ignore[attr-defined]
    fake.list_models = lambda: ["resnet18"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", fake)
    m = models.create("timm:resnet18", num_classes=7, in_channels=1, drop_rate=0.1)
    assert calls == {
        "name": "resnet18",
        "pretrained": False,
        "num_classes": 7,
        "in_chans": 1,
        "drop_rate": 0.1,
    }
    assert isinstance(m, nn.Conv2d)
    with pytest.raises(ConvlensError, match="Did you mean: resnet18"):
        models.create("timm:resnet19")


def test_reset_classifier_on_ours_and_torchvision() -> None:
    ours = models.create("resnet20")
    ours.reset_classifier(3)
    assert ours.fc.out_features == 3 and ours.fc.in_features == 64
    assert ours(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    squeeze = torchvision.models.squeezenet1_1(weights=None)
    models.reset_classifier(squeeze, 4)
    assert squeeze.classifier[1].out_channels == 4
    assert squeeze.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize(
    ("build", "shape", "expected"),
    [
        (lambda: models.create("lenet5", in_channels=1), (1, 28, 28), "conv2"),  # C5 is 1x1
        (lambda: models.create("resnet20"), (3, 32, 32), "layer3.2.conv2"),  # 8x8
        (lambda: torchvision.models.resnet18(weights=None), (3, 224, 224), "layer4.1.conv2"),
        (lambda: torchvision.models.vgg16(weights=None), (3, 224, 224), "features.28"),
        (
            lambda: torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False),
            (3, 224, 224),
            "inception5b.branch4.1.conv",
        ),
    ],
)
def test_default_layer_is_the_last_conv_with_a_map(
    build: Callable[[], nn.Module], shape: tuple[int, int, int], expected: str
) -> None:
    model = build().eval()
    layer = models.default_layer(model, shape)
    assert layer == expected
    # the oracle: torchinfo's output sizes give that layer a map larger than 1x1, and every later
    # convolution (outside auxiliary heads) a 1x1 map or none at all (it did not run)
    info = torchinfo.summary(model, input_size=(1, *shape), verbose=0, device="cpu")
    sizes = {id(row.module): row.output_size for row in info.summary_list if row.executed}
    convs = {n: m for n, m in models.conv_layers(model).items() if "aux" not in n}
    names = list(convs)
    area = {n: math.prod(sizes[id(m)][-2:]) for n, m in convs.items() if id(m) in sizes}
    assert area[layer] > 1
    assert all(area.get(n, 1) == 1 for n in names[names.index(layer) + 1 :])
