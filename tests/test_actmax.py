"""Activation maximisation on small networks: batching, objectives, simple mode, model state, errors.

Oracles: a hand-written Keras-style loop on an `nn.Sequential` prefix (no hooks, plain autograd);
closed forms (a linear model's gradient is its weight row; a unit's gradient lives in its receptive
field); NumPy's covariance for the colour matrix; plain slicing for the crop and shift.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.inspect import activation_maximization
from convlens.inspect.actmax import output_channels
from convlens.inspect.param import (
    TransformConfig,
    color_correlation_sqrt,
    fft_init,
    fft_scale,
    fft_to_image,
    view,
)

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def small_net(c_in: int = 3, seed: int = 0) -> nn.Sequential:
    """conv-BN-ReLU-conv-ReLU-pool-linear: BatchNorm would mix a batch if left in train mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(c_in, 8, 3, padding=1),  # 0
        nn.BatchNorm2d(8),  # 1
        nn.ReLU(inplace=True),  # 2
        nn.Conv2d(8, 12, 3, padding=1),  # 3
        nn.ReLU(),  # 4
        nn.AdaptiveAvgPool2d(1),  # 5
        nn.Flatten(),  # 6
        nn.Linear(12, 5),  # 7
    )
    # Non-trivial running statistics, so that eval and train mode really differ.
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 1.5)
    return net


# ---------------------------------------------------------------- batching changes speed, not results


@pytest.mark.parametrize(
    ("c_in", "size", "kwargs"),
    [
        (3, 32, {}),  # Fourier, decorrelated colours, transforms
        (1, 28, {"param": "pixel", "l2": 0.1, "blur": 0.5}),
        (3, 32, {"simple": True}),
        (3, 32, {"batch_size": 3}),  # chunks of 3 and 1: still the separate runs
        (3, 32, {"simple": True, "batch_size": 3}),
    ],
)
def test_batched_equals_one_channel_at_a_time(c_in: int, size: int, kwargs: dict) -> None:
    """In float64 the batch is the separate runs to 1e-9: no cross-talk between batch elements.

    (In float32 the kernels round differently for batch sizes 1 and K; over many steps a ReLU unit
    sitting on its threshold can flip in one run and not the other. tests/test_actmax_trained.py
    checks the float32 agreement within 1e-3 on a trained network.)
    """
    net = small_net(c_in).double().train()  # train mode on purpose: actmax must switch to eval
    mean, std = (MEAN3, STD3) if c_in == 3 else ((0.29,), (0.35,))
    channels = [0, 3, 5, 11]
    common = dict(size=size, steps=24, mean=mean, std=std, seed=7, **kwargs)
    batched = activation_maximization(net, "3", channels, **common)
    assert batched.images.shape == (4, c_in, size, size)
    assert batched.images.dtype == torch.float64
    for k, c in enumerate(channels):
        alone = activation_maximization(net, "3", [c], **common)
        np.testing.assert_allclose(alone.images[0], batched.images[k], atol=1e-9, rtol=0)
        np.testing.assert_allclose(alone.values[0], batched.values[k], atol=1e-9, rtol=1e-9)
    assert net.training


def test_batched_equals_one_channel_at_a_time_float32() -> None:
    net = small_net(3).train()
    common = dict(size=32, steps=16, mean=MEAN3, std=STD3, seed=7, precision="fp32")
    batched = activation_maximization(net, "3", [0, 3, 5, 11], **common)
    for k, c in enumerate([0, 3, 5, 11]):
        alone = activation_maximization(net, "3", [c], **common)
        np.testing.assert_allclose(alone.images[0], batched.images[k], atol=1e-3, rtol=0)


def test_images_are_pixels_and_the_objective_rises() -> None:
    net = small_net()
    res = activation_maximization(net, "3", [1, 2], size=32, steps=40, mean=MEAN3, std=STD3)
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert res.history.shape == (40, 2)
    assert (res.history[-5:].mean(0) > res.history[:5].mean(0)).all()
    # `values` is the channel's mean activation of the final image, recomputed here by slicing the net
    x = (res.images - torch.tensor(MEAN3).view(1, 3, 1, 1)) / torch.tensor(STD3).view(1, 3, 1, 1)
    with torch.no_grad():
        out = net.eval()[:4](x)  # (2, 12, 32, 32)
    np.testing.assert_allclose(res.values, out[[0, 1], [1, 2]].mean((1, 2)), atol=1e-5)


@pytest.mark.parametrize(("c_in", "size"), [(1, 28), (3, 32), (3, 224)])
def test_grey_colour_small_and_large_inputs(c_in: int, size: int) -> None:
    net = small_net(c_in)
    res = activation_maximization(net, "0", [0, 7], size=size, steps=3, in_channels=c_in)
    assert res.images.shape == (2, c_in, size, size)
    assert torch.isfinite(res.images).all()


# ---------------------------------------------------------------- simple mode = the Keras example


def keras_loop(prefix: nn.Module, channel: int, x0: torch.Tensor, steps: int, step: float):
    """The Keras `conv_filter_visualization.py` loop for one filter: mean activation, gradient divided
    by its L2 norm, plain ascent. `prefix` is the network cut at the layer (no hooks involved)."""
    m = torch.tensor(MEAN3).view(1, 3, 1, 1)
    s = torch.tensor(STD3).view(1, 3, 1, 1)
    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = prefix((x - m) / s)[0, channel].mean()
        (g,) = torch.autograd.grad(loss, x)
        x = (x + step * g / g.norm()).detach()
    return x.clamp(0, 1)


def test_simple_mode_is_the_keras_loop_batched() -> None:
    net = small_net().eval()
    channels, seed, size = [2, 9], 3, 32
    res = activation_maximization(
        net, "3", channels, size=size, simple=True, mean=MEAN3, std=STD3, seed=seed,
        precision="fp32",
    )  # fmt: skip
    assert res.history.shape[0] == 20  # the Keras example's 20 steps
    step = (3 * size * size) ** 0.5 / 255  # one grey level per pixel per step, root-mean-square
    for k, c in enumerate(channels):
        g = torch.Generator().manual_seed(
            seed + c
        )  # documented: image k starts from seed + channel
        x0 = ((128 + 20 * torch.rand((3, size, size), generator=g)) / 255)[None]
        ref = keras_loop(net[:4], c, x0, 20, step)
        np.testing.assert_allclose(res.images[k], ref[0], atol=1e-5)


# ---------------------------------------------------------------- objectives


def test_logit_objective_on_a_linear_model_follows_the_weight_row() -> None:
    """For logits W x + b the gradient is the weight row: one normalised step moves x along W[c] / std."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    res = activation_maximization(
        lin, None, [2], objective="logit", size=8, simple=True, steps=1, lr=0.05,
        mean=MEAN3, std=STD3, in_channels=3, precision="fp32",
    )  # fmt: skip
    g = torch.Generator().manual_seed(2)
    x0 = (128 + 20 * torch.rand((3, 8, 8), generator=g)) / 255
    direction = lin[1].weight[2].detach().view(3, 8, 8) / torch.tensor(STD3).view(3, 1, 1)
    expected = x0 + 0.05 * direction / direction.norm()
    np.testing.assert_allclose(res.images[0], expected, atol=1e-6)
    with torch.no_grad():
        logit = lin(
            (res.images - torch.tensor(MEAN3).view(1, 3, 1, 1))
            / torch.tensor(STD3).view(1, 3, 1, 1)
        )
    np.testing.assert_allclose(res.values[0], logit[0, 2], atol=1e-5)


def test_neuron_objective_changes_only_the_centre_units_receptive_field() -> None:
    """Two stacked 3x3 convolutions: the centre unit (16, 16) of a 32x32 map sees rows/cols 14..18."""
    net = small_net().eval()
    res = activation_maximization(
        net, "3", [4], objective="neuron", size=32, simple=True, steps=1, mean=MEAN3, std=STD3
    )
    g = torch.Generator().manual_seed(4)
    x0 = (128 + 20 * torch.rand((3, 32, 32), generator=g)) / 255
    changed = (res.images[0] - x0).abs().amax(0) > 1e-7  # (32, 32)
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert changed.any()
    assert rows.min() >= 14 and rows.max() <= 18 and cols.min() >= 14 and cols.max() <= 18
    x = (res.images - torch.tensor(MEAN3).view(1, 3, 1, 1)) / torch.tensor(STD3).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(res.values[0], net[:4](x)[0, 4, 16, 16], atol=1e-5)


def test_negative_objective_lowers_the_channel() -> None:
    net = small_net()
    kw = dict(size=32, steps=40, mean=MEAN3, std=STD3)
    up = activation_maximization(net, "3", [6], objective="channel", **kw)
    down = activation_maximization(net, "3", [6], objective="negative", **kw)
    assert down.history[-5:].mean() < down.history[:5].mean()
    assert down.values[0] < up.values[0]


def test_redirected_relu_lets_a_dead_unit_start() -> None:
    """A ReLU unit that is off everywhere for the start image has zero gradient (checked with plain
    autograd); Lucid's redirected gradient still lets the optimisation switch it on."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with (
        torch.no_grad()
    ):  # a box filter: off for grey (-0.2), on for white; its negative: on for black
        conv.weight[0].fill_(1 / 9)
        conv.weight[1].fill_(-1 / 9)
        conv.bias.copy_(torch.tensor([-0.7, 0.2]))
    net = nn.Sequential(conv, nn.ReLU())
    x = torch.full((1, 1, 16, 16), 0.5, requires_grad=True)
    net(x)[0].mean().backward()
    assert x.grad is not None and float(x.grad.abs().max()) == 0.0  # dead: plain ascent is stuck
    res = activation_maximization(net, "1", [0, 1], size=16, steps=60, in_channels=1)
    assert (res.values > 0).all()
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in net.modules())


# ---------------------------------------------------------------- the model is left as it was


def _state(net: nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in net.state_dict().items()},
        [p.requires_grad for p in net.parameters()],
        [m.training for m in net.modules()],
        [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in net.modules()
        ],
    )


def _assert_same(net: nn.Module, before: tuple) -> None:
    params, flags, modes, hooks = _state(net)
    for k, v in before[0].items():
        assert torch.equal(params[k], v), k
    assert flags == before[1]
    assert modes == before[2]
    assert hooks == before[3]


@pytest.mark.parametrize("simple", [False, True])
def test_model_unchanged_afterwards(simple: bool) -> None:
    net = small_net().train()
    net[1].eval()  # mixed modes must come back as they were
    net[0].weight.requires_grad_(False)
    before = _state(net)
    activation_maximization(net, "4", [0, 1], size=16, steps=5, simple=simple, mean=MEAN3, std=STD3)
    _assert_same(net, before)
    assert all(p.grad is None for p in net.parameters())


class Boom(nn.Module):
    """Raises on its n-th call: the model fails halfway through the optimisation."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError("boom")
        return x


def test_model_unchanged_when_it_raises() -> None:
    net = small_net().train()
    net.insert(3, Boom(4))  # the forward pass reaches it on the way to layer "4"
    before = _state(net)
    with pytest.raises(RuntimeError, match="boom"):
        activation_maximization(net, "4", [0], size=16, steps=10, mean=MEAN3, std=STD3)
    _assert_same(net, before)


# ---------------------------------------------------------------- errors a user can hit


def test_errors_are_clear() -> None:
    net = small_net()
    with pytest.raises(ConvlensError, match=r"no layer named 'conv9'"):
        activation_maximization(net, "conv9", [0], size=16)
    with pytest.raises(ConvlensError, match=r"channel 12 out of range: there are 12 channels"):
        activation_maximization(net, "3", [0, 12], size=16)
    with pytest.raises(ConvlensError, match="out of range"):
        activation_maximization(net, "3", [-1], size=16)
    with pytest.raises(ConvlensError, match="unknown objective"):
        activation_maximization(net, "3", [0], size=16, objective="max")
    with pytest.raises(ConvlensError, match="no channels"):
        activation_maximization(net, "3", [], size=16)
    with pytest.raises(ConvlensError, match="needs a layer"):
        activation_maximization(net, None, [0], size=16, objective="channel")
    with pytest.raises(ConvlensError, match="mean has 2 values"):
        activation_maximization(net, "3", [0], size=16, mean=(0.5, 0.5), in_channels=3)
    lenet_like = nn.Sequential(nn.Conv2d(1, 2, 5), nn.Flatten(), nn.Linear(2 * 24 * 24, 3))
    with pytest.raises(ConvlensError, match="cannot run on 1x32x32"):
        activation_maximization(lenet_like, None, [0], size=32, objective="logit")
    assert output_channels(lenet_like, None, (1, 28, 28)) == 3
    assert output_channels(net, "3", (3, 16, 16)) == 12


# ---------------------------------------------------------------- parameterisation and transforms


def test_color_correlation_sqrt_squares_to_the_covariance() -> None:
    rng = np.random.default_rng(0)
    mix = np.array([[0.9, 0.3, 0.1], [0.2, 0.8, 0.3], [0.1, 0.2, 0.6]])
    px = np.clip(rng.normal(0.5, 0.15, (20000, 3)) @ mix.T, 0, 1)
    images = torch.from_numpy((px * 255).round().astype(np.uint8).reshape(20, 1000, 1, 3)).permute(
        0, 3, 1, 2
    )
    m = color_correlation_sqrt(images).double().numpy()
    cov = np.cov(images.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy().T / 255.0)
    # M M^T is the covariance up to the normalisation (largest column of M has unit norm)
    mmt = m @ m.T
    np.testing.assert_allclose(mmt * (cov[0, 0] / mmt[0, 0]), cov, rtol=1e-6, atol=1e-9)
    assert np.isclose(np.linalg.norm(m, axis=0).max(), 1.0)


def test_view_without_transform_is_the_centre_crop_and_shifts_by_whole_pixels() -> None:
    img = torch.rand(2, 3, 20, 20)
    crop = view(img, 12)
    assert torch.equal(crop, img[..., 4:16, 4:16])
    cfg = TransformConfig(jitter=2.0, scale=0.0, degrees=0.0)
    zero = view(img, 12, torch.zeros(2, 4), cfg)
    np.testing.assert_allclose(zero, crop, atol=1e-5)
    # a shift of +1 px in x (draw 0.5 of a 2 px jitter) reads one column to the right
    draws = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
    shifted = view(img, 12, draws, cfg)
    np.testing.assert_allclose(shifted[0], img[0, :, 4:16, 5:17], atol=1e-5)
    np.testing.assert_allclose(shifted[1], img[1, :, 2:14, 4:16], atol=1e-5)


def test_fourier_image_has_a_one_over_f_spectrum() -> None:
    """Lucent's fft_image: white noise in the spectrum, scaled by 1/f, gives an image whose
    amplitude spectrum (NumPy's FFT) falls as 1/f."""
    g = torch.Generator().manual_seed(0)
    spec = fft_init(1, 64, 64, g, sd=1.0)[None]  # (1, 1, 64, 33, 2)
    img = fft_to_image(spec, fft_scale(64, 64), 64, 64)[0, 0].numpy()
    amp = np.abs(np.fft.rfft2(img))
    fy = np.fft.fftfreq(64)[:, None]
    fx = np.fft.rfftfreq(64)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    low, high = amp[(f > 0.05) & (f < 0.1)].mean(), amp[(f > 0.4) & (f < 0.5)].mean()
    expected = (1 / 0.075) / (1 / 0.45)  # ~6x, mid-band frequencies
    assert 0.6 * expected < low / high < 1.6 * expected


def test_bf16_autocast_runs_and_stays_close_to_float32() -> None:
    net = small_net()
    common = dict(size=16, steps=3, mean=MEAN3, std=STD3, simple=True)
    full = activation_maximization(net, "3", [0, 1], precision="fp32", **common)
    half = activation_maximization(net, "3", [0, 1], precision="bf16", **common)
    assert half.images.dtype == torch.float32 and torch.isfinite(half.images).all()
    # three steps of one grey level each: bf16 may change directions, not the scale of the change
    assert float((half.images - full.images).abs().max()) < 0.05
    # `values` are measured in float32 even after a bf16 run: the oracle is the plain prefix
    x = (half.images - torch.tensor(MEAN3).view(1, 3, 1, 1)) / torch.tensor(STD3).view(1, 3, 1, 1)
    with torch.no_grad():
        out = net.eval()[:4](x)  # (2, 12, 16, 16)
    np.testing.assert_allclose(half.values, out[[0, 1], [0, 1]].mean((1, 2)), atol=1e-5)


def test_precision_choice() -> None:
    # auto is the float32 run, bit for bit: bf16 only when asked (no hardware probing)
    common = dict(size=16, steps=3, mean=MEAN3, std=STD3, simple=True)
    auto = activation_maximization(small_net(), "3", [0, 1], **common)
    fp32 = activation_maximization(small_net(), "3", [0, 1], precision="fp32", **common)
    assert torch.equal(auto.images, fp32.images)
    # bf16: the steps run under autocast; the probe and the final values in float32
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.Conv2d(32, 8, 3))
    for precision, step_dtype in (("auto", torch.float32), ("bf16", torch.bfloat16)):
        dtypes: list[torch.dtype] = []
        handle = wide[2].register_forward_hook(
            lambda _m, _a, out, seen=dtypes: seen.append(out.dtype)
        )
        try:
            activation_maximization(
                wide, "3", [0], size=16, steps=1, simple=True, precision=precision
            )
        finally:
            handle.remove()
        # probe, the objective's affine test, the start image (float32), the one step, the final
        # values (float32)
        f32 = torch.float32
        assert dtypes == [f32, f32, f32, step_dtype, f32]
    with pytest.raises(ConvlensError, match="unknown precision 'fp16'"):
        activation_maximization(small_net(), "3", [0], size=16, precision="fp16")
    with pytest.raises(ConvlensError, match="batch_size must be >= 1"):
        activation_maximization(small_net(), "3", [0], size=16, batch_size=0)


def test_cpu_chunks_follow_the_largest_activation() -> None:
    """Chunking is invisible in the result (float64: equal to 1e-9 to one batch of all images), and
    the automatic CPU chunk size comes from the largest activation the forward pass computes."""
    net = small_net().double()
    common = dict(size=64, steps=4, mean=MEAN3, std=STD3, simple=True)
    auto = activation_maximization(net, "3", list(range(12)), **common)
    one = activation_maximization(net, "3", list(range(12)), batch_size=1, **common)
    np.testing.assert_allclose(auto.images, one.images, atol=1e-9, rtol=0)
    calls: list[int] = []
    handle = net[3].register_forward_pre_hook(lambda _m, a: calls.append(a[0].shape[0]))
    try:
        # fold_bn=False: folding runs its own passes (and copies the hook along with the model)
        activation_maximization(
            net, "3", list(range(12)), size=256, steps=1, simple=True, fold_bn=False
        )
    finally:
        handle.remove()
    # Layer "3" gives 12 x 256 x 256 = 786,432 elements per image: 2**21 // 786,432 = 2 images per
    # pass. One probe image, the objective's affine test (3 images, one pass), then 6 chunks for the
    # start, 6 for the step and 6 for the final values.
    assert calls == [1, 3] + [2] * 18


def test_fold_batchnorm_matches_the_model_and_leaves_it_alone(resnet20_bn: nn.Module) -> None:
    from convlens.inspect.actmax import fold_batchnorm

    net = resnet20_bn
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net, None, (3, 32, 32), torch.device("cpu"), torch.float32)
    assert folded is not net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)
    assert (
        sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 19
    )  # the model keeps its BNs
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # The target layer's own BatchNorm is never folded: its output is the objective.
    kept = fold_batchnorm(net, "layer1.0.bn1", (3, 32, 32), torch.device("cpu"), torch.float32)
    assert isinstance(kept.get_submodule("layer1.0.bn1"), nn.BatchNorm2d)


def test_fold_batchnorm_refuses_a_conv_output_used_twice() -> None:
    from convlens.inspect.actmax import fold_batchnorm

    class Skip(nn.Module):  # the conv's output feeds the BN and, unnormalised, the sum
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    net = Skip().eval()
    net.bn.running_var.fill_(4.0)  # so that folding would visibly change `y`
    assert fold_batchnorm(net, None, (3, 8, 8), torch.device("cpu"), torch.float32) is net


def test_folding_changes_speed_not_values(resnet20_bn: nn.Module) -> None:
    net = resnet20_bn
    kw = dict(steps=6, size=32, simple=True, precision="fp32", seed=1)
    a = activation_maximization(net, "layer2", [0, 5, 9], fold_bn=False, **kw)
    b = activation_maximization(net, "layer2", [0, 5, 9], fold_bn=True, **kw)
    torch.testing.assert_close(b.values, a.values, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- the readable default, against oracles


@pytest.mark.parametrize(("h", "w"), [(64, 64), (21, 17)])
def test_fourier_image_is_numpys_inverse_fft_of_the_scaled_spectrum(h: int, w: int) -> None:
    """The image is `irfft2(spectrum * 1/f) / 4` (Lucid's `fft_image`), recomputed in NumPy with
    the 1/f scale written out: `1 / max(sqrt(fx^2 + fy^2), 1 / max(h, w))`."""
    g = torch.Generator().manual_seed(0)
    spec = fft_init(3, h, w, g, sd=1.0)[None]  # (1, 3, h, w//2+1, 2)
    ours = fft_to_image(spec, fft_scale(h, w), h, w)[0].numpy()  # (3, h, w)
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    scale = 1.0 / np.maximum(f, 1.0 / max(h, w))
    z = (spec[0, ..., 0].double().numpy() + 1j * spec[0, ..., 1].double().numpy()) * scale
    ref = np.fft.irfft2(z, s=(h, w), norm="ortho") / 4.0
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_imagenet_colour_matrix_is_lucids_square_root_of_the_covariance() -> None:
    """Lucid's `color_correlation_svd_sqrt` (Olah et al. 2017): M M^T is the ImageNet colour
    covariance stated in param.py, and the columns are orthogonal (M = U sqrt(S) of an SVD, to the
    two decimals Lucid publishes), brightness first."""
    from convlens.inspect.param import IMAGENET_COLOR_SQRT, to_valid_pixels

    m = IMAGENET_COLOR_SQRT.double().numpy()
    lucid = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    np.testing.assert_allclose(m, lucid, atol=1e-7)
    cov = np.array([[0.0761, 0.0692, 0.0627], [0.0692, 0.0754, 0.0714], [0.0627, 0.0714, 0.0819]])
    np.testing.assert_allclose(m @ m.T, cov, atol=1e-4)
    mtm = m.T @ m
    assert np.abs(mtm - np.diag(np.diag(mtm))).max() < 2e-3  # orthogonal columns
    assert mtm[0, 0] > mtm[1, 1] > mtm[2, 2]  # principal directions in order
    # to_valid_pixels maps decorrelated coordinates e to sigmoid(M e) per pixel
    e = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    e[0, 1] = 1.0
    rgb = to_valid_pixels(e, IMAGENET_COLOR_SQRT.double())[0, :, 0, 0].numpy()
    np.testing.assert_allclose(rgb, 1 / (1 + np.exp(-m[:, 1])), atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("layer", "objective"), [("3", "channel"), ("4", "neuron"), ("3", "negative")]
)
def test_best_so_far_is_never_worse_than_the_start(seed: int, layer: str, objective: str) -> None:
    """Property over random nets and seeds, with a step size large enough to overshoot: the returned
    image scores at least the start image, and the start image is what `steps=0` returns."""
    net = small_net(seed=seed)
    kw = dict(size=16, objective=objective, mean=MEAN3, std=STD3, seed=seed)
    start = activation_maximization(net, layer, range(12), steps=0, **kw)  # type: ignore[arg-type]
    res = activation_maximization(net, layer, range(12), steps=12, lr=2.0, **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(res.start_values, start.values, rtol=1e-5, atol=1e-6)
    sign = -1.0 if objective == "negative" else 1.0
    assert (sign * res.values >= sign * start.values - 1e-6).all()


def test_default_objective_is_the_centre_neuron_for_an_affine_layer() -> None:
    """A linear filter's channel mean depends only on the image's mean colour (a flat square); the
    centre unit's maximum in the [0, 1] box is the filter's own sign pattern (closed form: pixel 1
    where the weight is positive, 0 where negative), which the image must follow."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 5, padding=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3)
    )
    net[1].running_var.uniform_(0.5, 1.5)
    assert activation_maximization(net, "0", [0], size=16, steps=0).objective == "neuron"
    assert activation_maximization(net, "1", [0], size=16, steps=0).objective == "neuron"
    assert activation_maximization(net, "2", [0], size=16, steps=0).objective == "channel"
    assert activation_maximization(net, "3", [0], size=16, steps=0).objective == "channel"
    assert (
        activation_maximization(net, "3", [0], size=16, steps=0, objective="neuron").objective
        == "neuron"
    )
    head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))
    assert (
        activation_maximization(head, None, [1], size=16, steps=0, in_channels=1).objective
        == "logit"
    )

    res = activation_maximization(net, "0", range(4), size=16, steps=128, in_channels=1)
    w, b = net[0].weight.detach()[:, 0], net[0].bias.detach()  # (4, 5, 5), (4,)
    optimum = b + w.clamp_min(0).sum((1, 2))  # the centre unit's largest value over [0, 1] images
    patch = res.images[:, 0, 6:11, 6:11]  # (4, 5, 5): the centre unit (8, 8)'s receptive field
    agree = ((patch > 0.5) == (w > 0)).float().mean((1, 2))  # (4,) pixels on the optimum's side
    progress = (res.values - res.start_values) / (optimum - res.start_values)
    # 128 smooth (Fourier, transformed) steps get 60-80 % of the way and 76-92 % of the pixels
    assert (agree >= 0.7).all(), agree
    assert (progress >= 0.5).all() and (res.values <= optimum + 1e-5).all(), progress


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readable_default_beats_noise_on_a_random_regnet() -> None:
    """Issue 24's independent check (benchmarks/actmax_regnet_check.py runs all 104 channels).

    torchvision's random-weight `regnet_y_400mf` (seed 0), BatchNorm statistics accumulated as a
    plain average over 4 train-mode passes of 32 uniform-noise images, then eval; layer
    `trunk_output.block2` at 64x64 with ImageNet's mean and std. The first 16 channels (of 104; ~20 s
    on two idle cores, ten minutes on a machine loaded 7 times over): at least 90 % end above the
    best of 64 uniform-noise images (torchvision's own forward, no hooks), none below its start.
    """
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m_t, s_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = torchvision.models.regnet_y_400mf()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model((torch.rand(32, 3, 64, 64, generator=g) - m_t) / s_t)
    model.eval()
    layer, chans = "trunk_output.block2", list(range(16))
    res = activation_maximization(model, layer, chans, size=64, mean=mean, std=std)
    assert res.objective == "channel"
    start = activation_maximization(model, layer, chans, size=64, steps=0, mean=mean, std=std)
    fx = create_feature_extractor(model, {layer: "out"})
    with torch.no_grad():
        noise = torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        best_noise = fx((noise - m_t) / s_t)["out"].mean((2, 3)).amax(0)[chans]  # (16,)
        ours = fx((res.images - m_t) / s_t)["out"].mean((2, 3))[torch.arange(16), chans]
    np.testing.assert_allclose(ours, res.values, rtol=1e-4, atol=1e-4)
    assert (ours > best_noise).float().mean() >= 0.9
    assert (res.values >= start.values).all()
