"""One unit of a convolution, computed by hand with the numbers of a real forward pass.

CNN Explainer's best idea (Wang et al., 2020), for any ``nn.Conv2d`` of any network: click a neuron
and see the convolution that made it. :func:`unit_computation` runs the model once with hooks on the
layer (and on the BatchNorm and activation that follow it, when they do), takes the layer's input
from that forward, and redoes the unit's arithmetic in float64 in plain sight:

    pre_activation = sum over input channels c of the group, taps (i, j) of
                     patch[c, i, j] * kernel[c, i, j]   + bias

where ``patch[c, i, j] = input[c, row * stride_h - pad_top + i * dilation_h, ...]`` (zero where the
tap falls in zero padding; the reflected, replicated or wrapped pixel for the other padding modes).
The value the network itself computed at that unit is read from the same forward, so the two can be
compared: they agree to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError, InputError
from convlens.models.hooks import evaluating, get_layer
from convlens.validate import check_images

MAX_SHOWN_CHANNELS = 16
# Elementwise modules whose value at one unit is the module applied to that unit's value alone.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


@dataclass(frozen=True)
class UnitComputation:
    """How unit ``(channel, row, col)`` of a conv layer was computed, for one image.

    Attributes:
        layer: the conv layer's name.
        channel, row, col: the unit (output channel and position in the layer's map).
        output_shape: ``(C_out, H_out, W_out)`` of the layer for this image.
        kernel_size, stride, dilation: the layer's, as ``(h, w)``.
        padding: ``(top, bottom, left, right)`` pixels of padding actually applied.
        padding_mode: ``zeros``, ``reflect``, ``replicate`` or ``circular``.
        groups: the layer's groups.
        in_channels: the input channels this unit reads (its group), ``(C_g,)`` indices into the
            layer's input.
        shown_channels: the first ``min(C_g, 16)`` of them, whose detail below is given.
        truncated: True when fewer channels are shown than the unit reads (the sums cover all).
        rows, cols: the input rows ``(kH,)`` and columns ``(kW,)`` under the kernel's taps
            (may be negative or past the edge: those taps fall in the padding).
        padded: bool ``(kH, kW)``: the taps that fall in the padding.
        patch: ``(S, kH, kW)`` float64, the input values under the kernel, per shown channel.
        kernel: ``(S, kH, kW)`` float64, the weights of output channel `channel`.
        products: ``(S, kH, kW)`` float64, ``patch * kernel``.
        channel_sums: ``(C_g,)`` float64, the sum of the products of each input channel (all).
        total: the sum of all products (all channels, all taps).
        bias: the layer's bias for `channel` (0.0 when it has none).
        pre_activation: ``total + bias``: the layer's output at the unit, by hand.
        network_value: the layer's output at the unit in the model's own forward pass.
        equal: whether the two agree to float32 rounding (relative 1e-5 of the terms' magnitude).
        steps: what the model did next to this unit, in order: ``[(kind, module name, value by
            hand, value in the network)]`` for a BatchNorm2d then an elementwise activation
            (ReLU, tanh, ...) applied straight to this layer's output; empty when none follows.
        activation: the value after the activation that follows (the last of `steps` when it is
            an activation), else None.
    """

    layer: str
    channel: int
    row: int
    col: int
    output_shape: tuple[int, int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]
    padding_mode: str
    groups: int
    in_channels: list[int]
    shown_channels: list[int]
    truncated: bool
    rows: list[int]
    cols: list[int]
    padded: np.ndarray
    patch: np.ndarray
    kernel: np.ndarray
    products: np.ndarray
    channel_sums: np.ndarray
    total: float
    bias: float
    pre_activation: float
    network_value: float
    equal: bool
    steps: list[tuple[str, str, float, float]]
    activation: float | None


def conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` padding that `conv` applies to its input.

    ``padding="same"`` puts the odd pixel at the bottom/right, as PyTorch does; ``"valid"`` is 0.
    """
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        th, tw = dh * (kh - 1), dw * (kw - 1)  # 'same': total padding, split low side first
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = conv.padding
    return (ph, ph, pw, pw)


def unit_computation(
    model: nn.Module, x: torch.Tensor, layer: str, channel: int, row: int, col: int
) -> UnitComputation:
    """The computation of unit ``(channel, row, col)`` of conv `layer` for one image.

    Args:
        model: any module; `layer` must name an ``nn.Conv2d`` in it.
        x: the normalised input, ``(1, C, H, W)`` (or ``(C, H, W)``).
        layer: the conv layer's name in ``model.named_modules()``.
        channel: the output channel.
        row, col: the unit's position in the layer's output map.

    Returns:
        A :class:`UnitComputation`; the layer's input and output come from one forward pass of the
        model (eval mode), read by hooks.

    Raises:
        ConvlensError: `layer` is not a convolution, or the model never calls it.
        InputError: the channel or position is outside the layer's output.
    """
    if x.dim() == 3:
        x = x[None]
    x = check_images(x, name="x")
    if x.shape[0] != 1:
        raise InputError(f"x holds {x.shape[0]} images; the unit computation takes one")
    conv = get_layer(model, layer)
    if not isinstance(conv, nn.Conv2d):
        raise ConvlensError(
            f"layer {layer!r} is a {type(conv).__name__}, not a convolution (nn.Conv2d)"
        )
    seen = _forward(model, x, conv, channel, row, col)

    c_out, h_out, w_out = seen["shape"]
    if not 0 <= channel < c_out:
        raise InputError(
            f"layer {layer!r} has {c_out} channels (0-{c_out - 1}); no channel {channel}"
        )
    if not (0 <= row < h_out and 0 <= col < w_out):
        raise InputError(f"layer {layer!r} has a {h_out} x {w_out} map; no unit ({row}, {col})")

    inp: torch.Tensor = seen["input"]  # (C_in, H, W), the layer's input in this forward
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    top, bottom, left, right = conv_padding(conv)
    per_group = conv.in_channels // conv.groups
    group = channel // (conv.out_channels // conv.groups)
    chans = list(range(group * per_group, (group + 1) * per_group))  # the unit's input channels

    rows = [row * sh - top + i * dh for i in range(kh)]  # input rows under the taps, (kH,)
    cols = [col * sw - left + j * dw for j in range(kw)]  # (kW,)
    h, w = inp.shape[-2:]
    padded = np.array([[not (0 <= r < h and 0 <= c < w) for c in cols] for r in rows])
    src = inp[chans].double()  # (C_g, H, W)
    if conv.padding_mode == "zeros":
        src = F.pad(src, (left, right, top, bottom))
    else:  # the pixels the layer pads with: reflected, replicated or wrapped around
        src = F.pad(src[None], (left, right, top, bottom), mode=conv.padding_mode)[0]
    r_idx = torch.tensor([r + top for r in rows])
    c_idx = torch.tensor([c + left for c in cols])
    patch = src[:, r_idx][:, :, c_idx]  # (C_g, kH, kW)
    kernel = conv.weight.detach()[channel].double().cpu()  # (C_g, kH, kW)
    products = patch.cpu() * kernel
    channel_sums = products.sum(dim=(1, 2))  # (C_g,)
    total = float(channel_sums.sum())
    bias = float(conv.bias.detach()[channel]) if conv.bias is not None else 0.0
    pre = total + bias
    value = float(seen["value"])
    scale = float(products.abs().sum()) + abs(bias)
    shown = min(len(chans), MAX_SHOWN_CHANNELS)

    steps: list[tuple[str, str, float, float]] = []
    current = pre
    for name, module, net_value in seen["after"]:
        if isinstance(module, nn.BatchNorm2d):
            current = _batchnorm(module, channel, current)
            steps.append(("batchnorm", name, current, net_value))
        else:
            current = float(module(torch.tensor(current, dtype=torch.float64)))
            steps.append((type(module).__name__, name, current, net_value))
    activation = steps[-1][2] if steps and steps[-1][0] != "batchnorm" else None

    return UnitComputation(
        layer=layer,
        channel=channel,
        row=row,
        col=col,
        output_shape=(c_out, h_out, w_out),
        kernel_size=(kh, kw),
        stride=(sh, sw),
        dilation=(dh, dw),
        padding=(top, bottom, left, right),
        padding_mode=conv.padding_mode,
        groups=conv.groups,
        in_channels=chans,
        shown_channels=chans[:shown],
        truncated=shown < len(chans),
        rows=rows,
        cols=cols,
        padded=padded,
        patch=patch[:shown].numpy(),
        kernel=kernel[:shown].numpy(),
        products=products[:shown].numpy(),
        channel_sums=channel_sums.numpy(),
        total=total,
        bias=bias,
        pre_activation=pre,
        network_value=value,
        equal=abs(pre - value) <= 1e-5 * max(scale, abs(value), 1e-12),
        steps=steps,
        activation=activation,
    )


def _forward(
    model: nn.Module, x: torch.Tensor, conv: nn.Conv2d, channel: int, row: int, col: int
) -> dict[str, Any]:
    """One forward pass of `model`, reading `conv`'s input and output and what follows it.

    What follows: the next module called after the conv, if it is a BatchNorm2d taking the conv's
    output, then the next one if it is an elementwise activation taking that (tensor identity, so
    a ReLU applied to a sum that merely includes this output does not count). Values are read in
    the hooks themselves, before a later in-place op can change them.
    """
    seen: dict[str, Any] = {"after": []}
    # The tensor the chain ends in (conv output, then BatchNorm output) and a copy of it: a module
    # continues the chain only when it takes that very tensor, unchanged (a residual `out += x`
    # between BatchNorm and ReLU changes it in place: that ReLU does not count).
    last: list[torch.Tensor] = []
    pending: set[nn.Module] = set()
    names = {m: n for n, m in model.named_modules()}
    following = (nn.BatchNorm2d, *ACTIVATIONS)

    def on_conv_input(_: nn.Module, args: tuple[Any, ...]) -> None:
        if "input" not in seen:
            seen["input"] = args[0][0].detach().clone()  # (C_in, H, W)

    def on_conv_output(_: nn.Module, __: Any, out: torch.Tensor) -> None:
        if "shape" in seen:
            return  # a layer called twice: the first call is the one shown
        seen["shape"] = tuple(out.shape[1:])
        seen["value"] = _at(out, channel, row, col)
        last[:] = [out, out.detach().clone()]

    def before_any(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not last or module is conv:
            return
        bn_again = isinstance(module, nn.BatchNorm2d) and bool(seen["after"])
        if (
            isinstance(module, following)
            and not bn_again
            and args
            and args[0] is last[0]
            and torch.equal(args[0], last[1])
        ):
            pending.add(module)
        else:
            last.clear()  # something else ran first: nothing more follows this unit directly

    def after_any(module: nn.Module, _: Any, out: Any) -> None:
        if module not in pending:
            return
        pending.discard(module)
        seen["after"].append((names.get(module, "?"), module, _at(out, channel, row, col)))
        if isinstance(module, nn.BatchNorm2d):
            last[:] = [out, out.detach().clone()]
        else:
            last.clear()  # the activation ends the chain

    handles = [
        conv.register_forward_pre_hook(on_conv_input),
        conv.register_forward_hook(on_conv_output),
    ]
    for m in model.modules():
        if not list(m.children()):
            handles += [m.register_forward_pre_hook(before_any), m.register_forward_hook(after_any)]
    try:
        with evaluating(model), torch.no_grad():
            model(x)
    except RuntimeError as e:
        if "ScriptModule" in str(e) or "hook" in str(e):
            raise ConvlensError(
                "the unit computation reads the layer through hooks, which this model "
                f"({type(model).__name__}) does not support"
            ) from None
        raise
    finally:
        for hd in handles:
            hd.remove()
    if "shape" not in seen or "input" not in seen:
        raise ConvlensError(f"the model never called layer {names.get(conv, '?')!r} in its forward")
    return seen


def _at(out: torch.Tensor, channel: int, row: int, col: int) -> float:
    """``out[0, channel, row, col]`` as a float, or NaN when outside (checked by the caller)."""
    if out.dim() != 4:
        return float("nan")
    c, h, w = out.shape[1:]
    if 0 <= channel < c and 0 <= row < h and 0 <= col < w:
        return float(out[0, channel, row, col])
    return float("nan")


def _batchnorm(bn: nn.BatchNorm2d, channel: int, value: float) -> float:
    """BatchNorm in eval mode at one unit: ``(v - mean) / sqrt(var + eps) * weight + bias``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConvlensError("a BatchNorm2d without running statistics cannot be shown per unit")
    mean = float(bn.running_mean[channel])
    var = float(bn.running_var[channel])
    weight, bias = bn.weight, bn.bias
    out = (value - mean) / float(np.sqrt(var + bn.eps))
    if weight is not None and bias is not None:
        out = out * float(weight.detach()[channel]) + float(bias.detach()[channel])
    return out
