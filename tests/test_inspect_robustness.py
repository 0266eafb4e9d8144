"""Every method leaves the model as it found it (no hooks, same train/eval mode), also when the model
raises, as Captum tests its attribution methods; and every method runs on a torchvision model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from convlens.inspect import activations, extract_features, filters, neighbors, top_patches, tsne

MEAN, STD = (0.5,), (0.25,)


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def exploding_model() -> nn.Module:
    # conv -> pool -> Boom -> conv -> flatten -> linear: layers before and after the failure.
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), Boom(), nn.Conv2d(4, 4, 3), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).train()  # fmt: skip


def assert_untouched(model: nn.Module) -> None:
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
            "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
        ):  # fmt: skip
            assert not getattr(m, attr, {}), f"{name or 'model'}.{attr} left behind"
        assert m.training, f"{name or 'model'} left in eval mode"


IMAGES = torch.randint(
    0, 256, (6, 1, 14, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
)

CALLS: dict[str, Callable[[nn.Module], object]] = {
    "activations-default": lambda m: activations(m, torch.randn(1, 1, 14, 14)),
    "activations-named": lambda m: activations(m, torch.randn(1, 1, 14, 14), ["0", "3"]),
    "features-penultimate": lambda m: extract_features(m, IMAGES, mean=MEAN, std=STD, batch_size=4),
    "features-layer": lambda m: extract_features(m, IMAGES, mean=MEAN, std=STD, layer="3"),
    "neighbors": lambda m: neighbors(m, IMAGES[:2], IMAGES, 2, mean=MEAN, std=STD, batch_size=4),
    "top-patches": lambda m: top_patches(m, "3", IMAGES, 2, n=2, mean=MEAN, std=STD),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_hooks_removed_and_mode_restored_when_the_model_raises(call: str) -> None:
    model = exploding_model()
    with pytest.raises(RuntimeError, match="boom"):
        CALLS[call](model)
    assert_untouched(model)


def test_filters_and_successful_calls_leave_no_hooks() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 3)
    ).train()
    filters(model)
    activations(model, torch.randn(1, 1, 14, 14))
    extract_features(model, IMAGES, mean=MEAN, std=STD)
    neighbors(model, IMAGES[:2], IMAGES, 2, mean=MEAN, std=STD)
    top_patches(model, "0", IMAGES, 2, n=2, mean=MEAN, std=STD)
    assert_untouched(model)


def test_every_method_on_torchvision_resnet18_at_64px() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    imgs = torch.randint(
        0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    assert filters(model).shape == (64, 3, 7, 7)
    acts = activations(model, torch.randn(1, 3, 64, 64))
    assert len(acts) >= 4 and all(a.dim() == 4 for a in acts.values())
    feats = extract_features(model, imgs, mean=mean, std=std, batch_size=5)
    assert feats.shape == (12, 512)
    nb = neighbors(model, imgs[:2], imgs, 3, mean=mean, std=std, batch_size=5)
    assert nb.feature_indices[:, 0].tolist() == [0, 1] and nb.pixel_indices[:, 0].tolist() == [0, 1]
    top = top_patches(model, None, imgs, 3, n=4, mean=mean, std=std, batch_size=5)
    assert top.layer == "layer4.1.conv2" and top.values.shape == (3, 4)
    assert tsne(feats, n_jobs=1).coords.shape == (12, 2)
    assert_untouched_eval(model)


def assert_untouched_eval(model: nn.Module) -> None:
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training
