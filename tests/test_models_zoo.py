"""Registry-wide tests: every model trains (forward + backward), parameter counts equal the papers'
and torchvision's, the ImageNet architectures load torchvision's state dicts and give its outputs.

Oracles: torchvision's models (random init, copied into ours), the published parameter counts,
the papers' feature-map sizes, a NumPy reference of the paper's local response normalisation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from convlens import models

torch.manual_seed(0)


def small_input(name: str) -> tuple[dict[str, object], tuple[int, int, int]]:
    """Options and the smallest cheap input each model takes (C, H, W)."""
    spec = models.info(name)
    if spec.family in ("lenet",):
        return {}, (1, 28, 28)
    if spec.family == "experiment":  # the experiments' twins: built for their data's size
        return {}, spec.input_size
    if spec.family in ("resnet-cifar", "plain-cifar"):
        return {}, (3, 32, 32)
    if spec.family == "alexnet":
        return {}, (3, 67, 67)  # the smallest size an 11x11/4 stem and three 3x3/2 pools take
    if spec.family == "vgg" and name not in ("vgg11", "vgg11_bn"):
        # VGG-13..19 at their full 138M parameters cost seconds each on a 2-core machine; the
        # default classifier is exercised by vgg11/vgg11_bn and by the torchvision tests.
        return {"small_input": True}, (3, 32, 32)
    return {}, (3, 32, 32)


@pytest.mark.parametrize("name", models.names())
def test_forward_backward_every_model(name: str) -> None:
    options, (c, h, w) = small_input(name)
    model = models.create(name, num_classes=10, in_channels=c, **options).train()
    x = torch.randn(2, c, h, w)
    called: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    handles = [
        m.register_forward_hook(lambda mod, _i, _o: called.append(names[mod]))
        for m in models.conv_layers(model).values()
    ]
    try:
        logits = model(x)
    finally:
        for hd in handles:
            hd.remove()
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    # conv_layers() lists the convolutions in the order the forward pass runs them
    assert called == list(models.conv_layers(model))
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the forward pass: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())  # type: ignore[arg-type]
    # the interface: features (N, D) feed the classifier to give the logits
    model.eval()
    with torch.no_grad():
        feats = models.forward_features(model, x)
        head = models.classifier(model)
        assert isinstance(head, nn.Linear) and feats.shape == (2, head.in_features)
        torch.testing.assert_close(head(feats), model(x))
    assert models.default_layer(model) == list(models.conv_layers(model))[-1]


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("lenet5", 61_706),  # LeCun 1998, modern reading
        ("resnet20", 269_722),  # He et al. 2016, table 6 ("0.27M")
        ("resnet50", 25_557_032),
        ("vgg16", 138_357_544),
        ("alexnet", 62_378_344),  # one tower
    ],
)
def test_published_parameter_counts(name: str, count: int) -> None:
    assert models.num_parameters(name) == count


def test_alexnet_paper_two_towers_is_sixty_million() -> None:
    # "The neural network has 60 million parameters" (Krizhevsky et al. 2012): 60,965,224 with groups
    assert models.num_parameters("alexnet", lrn=True, two_towers=True) == 60_965_224


TORCHVISION_TWINS = {
    "alexnet_owt": "alexnet",
    **{n: n for n in models.names("vgg")},
    "googlenet": "googlenet",
    **{n: n for n in models.names("resnet")},
}


@pytest.mark.parametrize(("ours", "theirs"), TORCHVISION_TWINS.items())
def test_parameter_counts_equal_torchvision(ours: str, theirs: str) -> None:
    with torch.device("meta"):
        kw = {"aux_logits": False, "init_weights": True} if theirs == "googlenet" else {}
        ref = torchvision.models.get_model(theirs, weights=None, **kw)
    assert models.num_parameters(ours) == sum(p.numel() for p in ref.parameters())


def randomize_norm_stats(model: nn.Module) -> None:
    """Random batch-norm statistics and affine parameters, so that eval-mode BN is not ~identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)  # type: ignore[union-attr]
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)  # type: ignore[union-attr]
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


HEAVY = {"vgg13", "vgg13_bn", "vgg16_bn", "vgg19", "vgg19_bn", "resnet101", "resnet152"}


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        pytest.param(o, t, marks=pytest.mark.slow) if o in HEAVY else (o, t)
        for o, t in TORCHVISION_TWINS.items()
    ],
)
def test_torchvision_state_dict_loads_strictly_and_outputs_match(ours: str, theirs: str) -> None:
    torch.manual_seed(0)
    kw: dict[str, object] = {}
    if theirs == "googlenet":  # with its auxiliary classifiers and the input transform
        kw = {"aux_logits": True, "transform_input": True}
    init = {"init_weights": True} if theirs == "googlenet" else {}
    ref = torchvision.models.get_model(theirs, weights=None, **kw, **init).eval()
    randomize_norm_stats(ref)
    with torch.device("meta"):  # ours needs no initialisation: every tensor comes from the file
        model = models.create(ours, num_classes=1000, **kw)  # type: ignore[arg-type]
    model.load_state_dict(ref.state_dict(), strict=True, assign=True)
    model.eval()
    size = 96 if theirs == "alexnet" else 64
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = ref(x)
        got = model(x)
    assert expected.abs().max() > 0  # a meaningful comparison
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def shapes_on_meta(
    model: nn.Module, layers: list[str], size: tuple[int, int, int]
) -> dict[str, tuple[int, ...]]:
    """Output shapes of the named layers, propagated on the meta device (no computation)."""
    out: dict[str, tuple[int, ...]] = {}
    mods = dict(model.named_modules())
    handles = [
        mods[n].register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, tuple(o.shape)))
        for n in layers
    ]
    with torch.no_grad():
        model.eval()(torch.empty(1, *size, device="meta"))
    for h in handles:
        h.remove()
    return out


def test_alexnet_map_sizes_are_the_papers() -> None:
    with torch.device("meta"):
        model = models.create("alexnet", num_classes=1000, lrn=True, two_towers=True)
    convs = list(models.conv_layers(model))
    shapes = shapes_on_meta(model, convs, (3, 227, 227))
    # Krizhevsky et al. 2012, figure 2 and section 3.5 (the paper's "224" is 227 in practice)
    assert [shapes[n][1:] for n in convs] == [
        (96, 55, 55), (256, 27, 27), (384, 13, 13), (384, 13, 13), (256, 13, 13)
    ]  # fmt: skip
    assert [model.features[i].groups for i in (0, 4, 8, 10, 12)] == [1, 2, 1, 2, 2]


def test_alexnet_lrn_matches_the_papers_formula() -> None:
    model = models.create("alexnet", lrn=True)
    lrn = model.features[2]
    assert isinstance(lrn, nn.LocalResponseNorm)
    a = torch.randn(2, 96, 5, 5) * 10
    b = lrn(a).numpy()
    # Section 3.3: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    an = a.numpy()
    ref = np.empty_like(an)
    for i in range(96):
        lo, hi = max(0, i - n // 2), min(95, i + n // 2)
        ref[:, i] = an[:, i] / (k + alpha * (an[:, lo : hi + 1] ** 2).sum(1)) ** beta
    np.testing.assert_allclose(b, ref, rtol=1e-5)


def test_googlenet_inception_outputs_are_the_papers_table() -> None:
    with torch.device("meta"):
        model = models.create("googlenet", num_classes=1000)
    names = [f"inception{s}" for s in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    shapes = shapes_on_meta(model, names, (3, 224, 224))
    # Szegedy et al. 2015, table 1: output size of each inception module
    assert [shapes[n][1:] for n in names] == [
        (256, 28, 28), (480, 28, 28), (512, 14, 14), (512, 14, 14), (512, 14, 14),
        (528, 14, 14), (832, 14, 14), (832, 7, 7), (1024, 7, 7),
    ]  # fmt: skip
    paper = models.create("googlenet", paper_5x5=True, in_channels=3)
    assert paper.inception3a.branch3[1].conv.kernel_size == (5, 5)


def test_googlenet_aux_classifiers_in_training() -> None:
    model = models.create("googlenet", num_classes=10, aux_logits=True, small_input=True).train()
    out = model.forward_train(torch.randn(2, 3, 16, 16))  # small: the maps shrink to 1x1 by 5b
    assert out.logits.shape == out.aux_logits1.shape == out.aux_logits2.shape == (2, 10)  # type: ignore[union-attr]
    (out.logits.sum() + 0.3 * (out.aux_logits1.sum() + out.aux_logits2.sum())).backward()  # type: ignore[union-attr]
    assert all(p.grad is not None for p in model.parameters())
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)  # forward: main logits only
    assert models.default_layer(model) == "inception5b.branch4.1.conv"
    model.eval()
    assert model.forward_train(torch.randn(2, 3, 16, 16)).aux_logits1 is None


def test_resnet_stage_sizes_and_bottleneck() -> None:
    with torch.device("meta"):
        model = models.create("resnet50", num_classes=1000)
    shapes = shapes_on_meta(
        model, ["maxpool", "layer1", "layer2", "layer3", "layer4"], (3, 224, 224)
    )
    # He et al. 2016, table 1: conv2_x 56x56 ... conv5_x 7x7; bottleneck output depth 4x the base
    assert [s[1:] for s in shapes.values()] == [
        (64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)
    ]  # fmt: skip
    block = model.layer2[0]
    assert [block.conv1.kernel_size, block.conv2.kernel_size, block.conv3.kernel_size] == [
        (1, 1), (3, 3), (1, 1)
    ]  # fmt: skip
    assert (block.conv1.out_channels, block.conv3.out_channels) == (128, 512)


@pytest.mark.parametrize("name", ["alexnet", "alexnet_owt", "vgg11", "googlenet", "resnet18"])
def test_small_input_option_takes_32x32(name: str) -> None:
    model = models.create(name, num_classes=10, small_input=True).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
