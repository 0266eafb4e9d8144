"""Gradient attributions against Captum and pytorch-grad-cam (the oracles), and model hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam, Saliency
from torch import nn

from convlens import models
from convlens.errors import ConvlensError
from convlens.inspect.attribution import (
    grad_cam,
    guided_backprop,
    guided_grad_cam,
    saliency,
)
from convlens.models.hooks import get_layer

# Captum warns that it sets requires_grad and hooks ReLUs; that is its business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum.*")

CASES = [  # model, input shape, Grad-CAM layer (conv layers followed by in-place ReLUs included)
    ("lenet5", (2, 1, 28, 28), "conv2"),
    ("vgg11", (2, 3, 32, 32), "features.18"),
    ("resnet18", (2, 3, 64, 64), "layer4"),
]


def _model(name: str, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    return models.create(name, in_channels=shape[1], num_classes=10).eval()


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    ref = ref.detach()
    scale = float(ref.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(("name", "shape", "layer"), CASES)
def test_equal_to_captum(name: str, shape: tuple[int, ...], layer: str) -> None:
    m = _model(name, shape)
    x = torch.randn(*shape)
    t = torch.tensor([3, 7])
    _close(saliency(m, x, t), Saliency(m).attribute(x, target=t, abs=True).amax(1))
    _close(guided_backprop(m, x, t), GuidedBackprop(m).attribute(x, target=t))
    L = get_layer(m, layer)
    cam = LayerGradCam(m, L).attribute(x, target=t, relu_attributions=True)
    _close(grad_cam(m, x, t, layer, upsample=False), cam[:, 0])
    _close(
        grad_cam(m, x, t, layer), LayerAttribution.interpolate(cam, x.shape[2:], "bilinear")[:, 0]
    )
    _close(guided_grad_cam(m, x, t, layer), GuidedGradCam(m, L).attribute(x, target=t))


def test_grad_cam_equals_pytorch_grad_cam() -> None:
    """pytorch-grad-cam min-max normalises each map and resizes it with OpenCV (bilinear)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = _model("resnet18", (2, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with GradCAM(model=m, target_layers=[m.layer4]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(5)])
    ours = grad_cam(m, x, [1, 5], "layer4")
    ours = ours - ours.amin(dim=(1, 2), keepdim=True)
    ours = ours / (1e-7 + ours.amax(dim=(1, 2), keepdim=True))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_default_target_is_prediction_and_default_layer_is_last_spatial_conv() -> None:
    m = _model("lenet5", (2, 1, 28, 28))
    x = torch.randn(2, 1, 28, 28)
    pred = m(x).argmax(1)
    torch.testing.assert_close(saliency(m, x), saliency(m, x, pred))
    assert models.default_layer(m) == "conv3"  # the last conv ...
    assert models.default_layer(m, (1, 28, 28)) == "conv2"  # ... but C5 is 1x1: C3 is the default
    torch.testing.assert_close(grad_cam(m, x, pred), grad_cam(m, x, pred, "conv2"))


def _snapshot(model: nn.Module) -> dict[str, object]:
    hooks = {}
    for name, mod in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            hooks[f"{name}.{attr}"] = dict(getattr(mod, attr))
    hooks["training"] = [mod.training for mod in model.modules()]
    hooks["modules"] = [(n, type(mod)) for n, mod in model.named_modules()]
    hooks["grads"] = [p.grad for p in model.parameters()]
    return hooks


def test_model_left_exactly_as_it_was_also_after_exceptions() -> None:
    m = torchvision.models.resnet18(
        num_classes=4
    ).train()  # in-place ReLUs; training flags restored
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    before_out = m(x).detach()
    m.train()
    before = _snapshot(m)
    for fn in (saliency, guided_backprop, grad_cam, guided_grad_cam):
        fn(m, x, 1)  # type: ignore[operator]
    assert _snapshot(m) == before

    class Boom(Exception):
        pass

    def explode(_m: nn.Module, _i: object, _o: object) -> None:
        raise Boom

    handle = m.layer4.register_forward_hook(explode)
    before = _snapshot(m)
    for fn in (saliency, guided_backprop, grad_cam, guided_grad_cam):
        with pytest.raises(Boom):
            fn(m, x, 1)  # type: ignore[operator]
        assert _snapshot(m) == before
    handle.remove()
    m.eval()
    torch.testing.assert_close(m(x).detach(), before_out)


def test_bad_input_is_a_clear_error() -> None:
    m = _model("lenet5", (1, 1, 28, 28))
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ConvlensError, match="out of range"):
        saliency(m, x, 10)
    with pytest.raises(ConvlensError, match="no layer named"):
        grad_cam(m, x, 0, "conv9")
    with pytest.raises(ConvlensError, match="targets for"):
        guided_backprop(m, x, [1, 2])
