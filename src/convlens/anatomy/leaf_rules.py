"""The common leaf layers by arithmetic: output shape, receptive field and MACs without running them.

Used by :func:`convlens.anatomy.trace.trace` on the meta device: a ``Conv2d`` of ResNet-152 costs a few
microseconds here instead of a meta kernel in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from convlens.anatomy.fields import Field
from convlens.anatomy.trace_ops import (
    META,
    adaptive_field,
    conv_padding,
    int_pair,
    is_nchw,
    new_meta,
    spatial_size,
)

# (an empty meta tensor of the right shape), its Field and the call's MACs; or None, and then the
# layer runs as usual (under the mode). Each rule accepts only the cases whose result it knows to be
# the layer's own: contiguous (N, C, H, W) meta inputs, matching channels and dtypes, sizes that do
# not collapse. Anything else (including every error case) goes to the real forward, which raises.
LeafResult = tuple[torch.Tensor, Field | None, int]
LeafRule = Callable[[torch.Tensor, Field | None], LeafResult | None]


def leaf_rule(module: nn.Module) -> LeafRule | None:
    """The arithmetic of `module` when it is one of the common leaf layers, else None.

    Exact types only: a subclass may override ``forward``.
    """
    if type(module) is nn.Conv2d:
        return _conv_rule(module)
    if type(module) is nn.BatchNorm2d:
        return _batch_norm_rule(module)
    if type(module) in _SAME_SHAPE_LAYERS:
        return _same_shape_rule(bool(getattr(module, "inplace", False)))
    if type(module) is nn.Identity:
        return lambda x, f: (x, f, 0)
    if type(module) is nn.MaxPool2d and not module.return_indices:
        return _pool_rule(module)
    if type(module) is nn.AvgPool2d:
        return _pool_rule(module)
    if type(module) is nn.AdaptiveAvgPool2d:
        return _adaptive_rule(module.output_size)
    if type(module) is nn.AdaptiveMaxPool2d and not module.return_indices:
        return _adaptive_rule(module.output_size)
    if type(module) is nn.Linear:
        return _linear_rule(module)
    return None


# Layers whose output is shaped like their input, element by element (dropout: in eval mode).
_SAME_SHAPE_LAYERS = frozenset(
    {nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
     nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout}
)  # fmt: skip


def _same_shape_rule(inplace: bool) -> LeafRule:
    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not (x.is_meta and x.is_contiguous()):
            return None
        return (x if inplace else new_meta(x.shape, x)), f, 0

    return rule


def _batch_norm_rule(bn: nn.BatchNorm2d) -> LeafRule | None:
    if bn.training:
        return None  # batch statistics and running-stat updates: the real forward
    channels = bn.num_features

    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not is_nchw(x) or x.shape[1] != channels:
            return None
        return new_meta(x.shape, x), f, 0

    return rule


def _conv_rule(conv: nn.Conv2d) -> LeafRule | None:
    weight, bias = conv.weight, conv.bias  # (Cout, Cin / groups, kh, kw), (Cout,)
    cout, cin, groups = conv.out_channels, conv.in_channels, conv.groups
    kernel, stride, dilation = (
        int_pair(conv.kernel_size),
        int_pair(conv.stride),
        int_pair(conv.dilation),
    )
    if (
        conv.padding_mode != "zeros"
        or kernel is None
        or stride is None
        or dilation is None
        or tuple(weight.shape) != (cout, cin // groups, *kernel)
        or cout == 0
        or (bias is not None and bias.dtype != weight.dtype)
    ):
        return None
    same = conv.padding == "same"  # stride 1, output size = input size
    padding = conv_padding(conv.padding, kernel, dilation)
    if padding is None:
        return None
    dtype = weight.dtype
    per_output = weight.numel() // cout  # weights per output element: Cin / groups x kh x kw
    reach = [dilation[a] * (kernel[a] - 1) + 1 - 2 * padding[a] for a in (0, 1)]

    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not is_nchw(x) or x.shape[1] != cin or x.dtype != dtype:
            return None
        n, _, h, w = x.shape
        if same:
            oh, ow = h, w
        else:  # (H + 2P - D (K - 1) - 1) // S + 1
            oh, ow = (h - reach[0]) // stride[0] + 1, (w - reach[1]) // stride[1] + 1
        if oh < 1 or ow < 1:
            return None
        out = torch.empty((n, cout, oh, ow), dtype=dtype, device=META)
        field = f.window(kernel, stride, padding, dilation) if f is not None else None
        return out, field, n * cout * oh * ow * per_output

    return rule


def _pool_rule(pool: nn.MaxPool2d | nn.AvgPool2d) -> LeafRule | None:
    kernel = int_pair(pool.kernel_size)
    stride = int_pair(pool.stride if pool.stride is not None else pool.kernel_size)
    padding = int_pair(pool.padding)
    dilation = int_pair(pool.dilation) if isinstance(pool, nn.MaxPool2d) else (1, 1)
    if kernel is None or stride is None or padding is None or dilation is None:
        return None
    if min(*kernel, *stride, *dilation) < 1 or any(padding[a] > kernel[a] // 2 for a in (0, 1)):
        return None  # PyTorch refuses these: its message, from the real forward
    ceil = bool(pool.ceil_mode)

    def size(n: int, a: int) -> int:
        """PyTorch's pooling_output_shape: floor or ceil, no window starting in the right padding."""
        span = n + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1
        out = (span + (stride[a] - 1 if ceil else 0)) // stride[a] + 1
        if ceil and (out - 1) * stride[a] >= n + padding[a]:
            out -= 1
        return out

    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not is_nchw(x):
            return None
        n, c, h, w = x.shape
        oh, ow = size(h, 0), size(w, 1)
        if oh < 1 or ow < 1:
            return None
        field = f.window(kernel, stride, padding, dilation) if f is not None else None
        return new_meta((n, c, oh, ow), x), field, 0

    return rule


def _adaptive_rule(output_size: Any) -> LeafRule | None:
    if isinstance(output_size, int):
        wanted: tuple[int | None, int | None] = (output_size, output_size)
    elif isinstance(output_size, tuple | list) and len(output_size) == 2:
        wanted = (output_size[0], output_size[1])
    else:
        return None
    if any(s is not None and (not isinstance(s, int) or s < 1) for s in wanted):
        return None

    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not is_nchw(x) or x.shape[-2] < 1 or x.shape[-1] < 1:
            return None
        n, c, h, w = x.shape
        oh = h if wanted[0] is None else wanted[0]
        ow = w if wanted[1] is None else wanted[1]
        out = new_meta((n, c, oh, ow), x)
        if f is None:
            return out, None, 0
        return out, adaptive_field(f, spatial_size(x, f), spatial_size(out, f)), 0

    return rule


def _linear_rule(linear: nn.Linear) -> LeafRule | None:
    weight, bias = linear.weight, linear.bias  # (out, in), (out,)
    n_in, n_out = linear.in_features, linear.out_features
    if tuple(weight.shape) != (n_out, n_in) or (bias is not None and bias.dtype != weight.dtype):
        return None
    dtype = weight.dtype

    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not (x.is_meta and x.is_contiguous()) or x.dim() < 2:
            return None
        if x.shape[-1] != n_in or x.dtype != dtype:
            return None
        out = torch.empty((*x.shape[:-1], n_out), dtype=dtype, device=META)
        if f is not None and (f.whole or -1 in f.dims):
            f = Field.everything()  # the weights mix every position of the last dim
        return out, f, out.numel() * n_in

    return rule
