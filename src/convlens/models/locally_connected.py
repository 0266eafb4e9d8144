"""A locally-connected layer: a convolution's geometry without its weight sharing.

Every output position (i, j) owns its own filters: output channel o at (i, j) is

    y[n, o, i, j] = b[o, i, j] + sum over c, u, v of  w[(i, j), o, c, u, v] * x_pad[n, c, i*s + u, j*s + v]

where ``x_pad`` is the input zero-padded by `padding` and s is the stride. A convolution is the
special case where ``w[(i, j)]`` is the same for every position; the parameter count is the
summary's ``params_unshared`` of the convolution of the same geometry:
``H_out * W_out * C_out * (C_in * k * k + 1)``.

The computation is one ``unfold`` (the input patches, the im2col matrix) and one batched matrix
product per position, written as an ``einsum`` so that :func:`convlens.summary` counts its MACs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError


class LocallyConnected2d(nn.Module):
    """A 2-D locally-connected layer (a convolution with one weight set per output position).

    Args:
        in_channels: channels of the input.
        out_channels: filters per position.
        kernel_size: side of the square window.
        input_size: (H, W) of the input maps; the layer owns weights for exactly that size.
        stride: step between windows.
        padding: zeros added on every side of the input.
        bias: one bias per output element (channel and position).

    Attributes:
        weight: ``(H_out * W_out, C_out, C_in * k * k)``, positions in row-major order; the last axis
            is ordered as ``unfold`` orders a patch (channel, then row, then column).
        bias: ``(C_out, H_out, W_out)`` or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        input_size: tuple[int, int],
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        h, w = input_size
        oh = (h + 2 * padding - kernel_size) // stride + 1
        ow = (w + 2 * padding - kernel_size) // stride + 1
        if oh < 1 or ow < 1:
            raise ConvlensError(
                f"LocallyConnected2d: a {kernel_size}x{kernel_size} window does not fit a "
                f"{h}x{w} input with padding {padding}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.input_size = (h, w)
        self.output_size = (oh, ow)
        patch = in_channels * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(oh * ow, out_channels, patch))
        self.bias = nn.Parameter(torch.empty(out_channels, oh, ow)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(fan_in), as ``nn.Conv2d`` initialises, independently per position."""
        bound = 1.0 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``."""
        if tuple(x.shape[-2:]) != self.input_size:
            raise ConvlensError(
                f"LocallyConnected2d was built for {self.input_size[0]}x{self.input_size[1]} "
                f"inputs, not {x.shape[-2]}x{x.shape[-1]}"
            )
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # N x P x L
        y = torch.einsum("npl,lop->nol", cols, self.weight)  # N x C_out x L
        y = y.reshape(x.shape[0], self.out_channels, *self.output_size)  # N x C_out x H_out x W_out
        return y if self.bias is None else y + self.bias

    def filters_at(self, i: int, j: int) -> torch.Tensor:
        """The filters of output position (i, j), shaped like a convolution's: ``(C_out, C_in, k, k)``."""
        oh, ow = self.output_size
        if not (0 <= i < oh and 0 <= j < ow):
            raise ConvlensError(f"position ({i}, {j}) is outside the {oh}x{ow} output")
        k = self.kernel_size
        return self.weight[i * ow + j].reshape(self.out_channels, self.in_channels, k, k)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"input_size={self.input_size}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}"
        )
