"""Incremental inference for occlusion: recompute only what a patch can change (KRYPTON).

Occluding one patch of the input changes, in every later layer, only the units whose receptive
field meets the patch: its *projective field*, a rectangle that grows by the kernel's reach at each
convolution or pooling (Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference
for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019). This module runs a model once on
the clean image, keeps every intermediate tensor, and then, for a batch of occluded copies, computes
each layer only inside that rectangle, reading the rest from the clean tensors. The result is exact
(the same arithmetic on the same numbers, up to float rounding).

How a model is understood: it is traced with :func:`torch.fx.symbolic_trace` into a graph of
nodes (models whose forward branches on shapes, or slices an ``nn.Sequential``, are traced again
with meta tensors that carry concrete shapes). Each 4-D tensor node that depends on the input carries, per patch, a rectangle outside which
it equals the clean tensor. The rectangle is propagated through

* windowed ops (``Conv2d``, ``MaxPool2d``, ``AvgPool2d``): grown by kernel, stride, dilation, padding;
* pointwise ops (BatchNorm in eval mode, ReLU and other activations, dropout in eval mode, scalar
  arithmetic): unchanged;
* ``add``/``sub``/``mul`` of two tensors (residual blocks) and ``cat`` along channels (inception
  blocks): the bounding box of the inputs' rectangles.

Anything else (flatten, global pooling, linear layers, or an op the engine does not know) is computed
on the whole patched tensor, which is always exact; unknown ops are named once in a warning. A
rectangle that covers most of its tensor is widened to the whole tensor, where plain full computation
is cheaper than gathering windows. All patches of a batch share one rectangle size per node (the
largest one), so each layer is one batched call on a ``(P, C, h, w)`` tensor.

Two more exact rewrites make it fast on CPU: windows are kept channels-last (oneDNN's native layout,
~1.6x faster convolutions than NCHW, which needs reorders), and a convolution read only by an
eval-mode BatchNorm computes both at once with the BN folded into its weights. The model itself is
never modified: folded and re-laid-out weights are private copies.

From the middle of a deep network on, every patch changes the whole feature map, and those layers
dominate the time. There, 3x3 stride-1 convolutions with at least 256 input and output channels
run on CPU as
Winograd F(m, 3) with tiles of 4 and 3 (:mod:`convlens.inspect.winograd`, ~3x fewer multiplies)
applied to the *difference* from the clean tensor: `conv(x) = conv(clean) + conv(x - clean)`, with
`conv(clean)` the model's own clean value. Winograd's extra rounding then scales with the
difference, which is small away from the patch; the attributions stay within the 1e-4 of Captum's
that the tests ask.
"""

from __future__ import annotations

import inspect
import math
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.meta_tracer import MetaTracer
from torch.nn.utils.fusion import fuse_conv_bn_weights

from convlens.inspect.winograd import Winograd3x3

# Modules and functions that act on each element (or each channel) independently: a rectangle of
# their input maps to the same rectangle of their output.
_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.PReLU,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
)  # fmt: skip
_POINTWISE_FUNCTIONS: set[Any] = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh,
    F.dropout, F.dropout2d, torch.clamp, torch.neg, torch.abs, torch.exp,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
    operator.imul, torch.add, torch.sub, torch.mul, torch.div,
}  # fmt: skip
_POINTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max", "add", "add_", "mul",
    "mul_", "sub", "div", "neg", "abs", "exp", "contiguous",
}  # fmt: skip
_BINARY_FUNCTIONS: set[Any] = {
    operator.add, operator.iadd, operator.sub, operator.mul, operator.imul,
    torch.add, torch.sub, torch.mul,
}  # fmt: skip
_BINARY_METHODS = {"add", "add_", "sub", "mul", "mul_"}
# Ops that end the spatial part of a network; computing them in full is expected, not a fallback.
_EXPECTED_FULL_MODULES: tuple[type[nn.Module], ...] = (
    nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Softmax, nn.LogSoftmax,
)  # fmt: skip
_EXPECTED_FULL_FUNCTIONS: set[Any] = {
    torch.flatten, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.mean, F.linear, torch.amax,
    F.softmax, F.log_softmax,
}  # fmt: skip
_EXPECTED_FULL_METHODS = {"view", "reshape", "flatten", "mean", "size", "dim", "amax", "squeeze"}
# Winograd pays off on CPU from this many channels (with torch's tile transforms; none at 128).
_WINOGRAD_MIN_CHANNELS = 256


@dataclass(frozen=True)
class _Axis:
    """A windowed op's arithmetic along one spatial axis."""

    kernel: int
    stride: int
    dilation: int
    pad: int  # zeros (or -inf for max pooling) added before the first element

    @property
    def reach(self) -> int:
        """Input elements one output reads, minus one."""
        return self.dilation * (self.kernel - 1)


@dataclass
class _Window:
    """How to compute a windowed op on an explicitly padded window: `fn(window)` with padding 0."""

    axes: tuple[_Axis, _Axis]
    fill: float
    fn: Callable[[torch.Tensor], torch.Tensor]
    full: Callable[[torch.Tensor], torch.Tensor]  # the op with its own padding, on whole tensors
    wino: Winograd3x3 | None = None  # the same convolution by Winograd's algorithm


@dataclass
class _Geom:
    """Per-node rectangles: one row range per patch-grid row, one column range per grid column.

    Patch (i, j) changes this node only inside rows `[row_start[i], row_start[i] + h)` and columns
    `[col_start[j], col_start[j] + w)`; the tensor is `(C, H, W)` per image.
    """

    h: int
    w: int
    H: int
    W: int
    row_start: np.ndarray  # (gh,)
    col_start: np.ndarray  # (gw,)

    @property
    def full(self) -> bool:
        return self.h == self.H and self.w == self.W


@dataclass
class _Region:
    """A batch of patched tensors that equal the clean one outside a per-patch rectangle."""

    vals: torch.Tensor  # (P, C, h, w): the values inside the rectangles
    rows: torch.Tensor  # (P,) first row of each rectangle
    cols: torch.Tensor  # (P,) first column


@dataclass
class _Full:
    """A batched value computed in full (P, ...) (or any non-tensor value)."""

    value: Any


class _Same:
    """The node does not depend on the input: its clean value serves every patch."""


_SAME = _Same()


def _interval_through(
    lo: np.ndarray, hi: np.ndarray, ax: _Axis, size_out: int
) -> tuple[np.ndarray, np.ndarray]:
    """Output units whose window meets input range [lo, hi) (per grid index; empty stays empty)."""
    # Output j reads padded-input rows [j*s, j*s + reach], i.e. input rows [j*s - pad, j*s - pad + reach].
    out_lo = np.maximum(-((-(lo + ax.pad - ax.reach)) // ax.stride), 0)
    out_hi = np.minimum((hi - 1 + ax.pad) // ax.stride + 1, size_out)
    empty = (hi <= lo) | (out_hi <= out_lo)
    return np.where(empty, 0, out_lo), np.where(empty, 0, out_hi)


def _choose(
    lo: np.ndarray, hi: np.ndarray, size: int, full_fraction: float
) -> tuple[int, np.ndarray]:
    """One rectangle length for all grid indices, and each index's start, kept inside [0, size)."""
    length = int(max(1, (hi - lo).max()))
    if length >= full_fraction * size:
        return size, np.zeros_like(lo)
    return length, np.clip(lo, 0, size - length)


def _conv_window(
    m: nn.Conv2d,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    workspace: dict[str, torch.Tensor] | None = None,
) -> _Window | None:
    """A convolution as a windowed op, computing with `weight`/`bias` (BN may be folded in).

    With a `workspace`, wide 3x3 stride-1 convolutions run as Winograd F(m, 3) on CPU float32
    tensors (:mod:`convlens.inspect.winograd`; its buffers are shared through `workspace`).
    """
    kh, kw = m.kernel_size
    if isinstance(m.padding, str):
        if m.padding == "valid":
            ph, pw = 0, 0
        elif m.stride == (1, 1):  # 'same' puts the odd pixel of padding after the input
            ph, pw = m.dilation[0] * (kh - 1) // 2, m.dilation[1] * (kw - 1) // 2
        else:
            return None
    else:
        ph, pw = m.padding
    # oneDNN convolves channels-last tensors ~1.6x faster on CPU than NCHW ones (no reorders).
    w = weight.detach().contiguous(memory_format=torch.channels_last)
    b = None if bias is None else bias.detach()
    stride, dilation, groups, padding = m.stride, m.dilation, m.groups, m.padding

    wino = None  # used by IncrementalOcclusion._window, which has the clean tensors it needs
    if (
        workspace is not None
        and (kh, kw) == (3, 3)
        and stride == (1, 1)
        and dilation == (1, 1)
        and groups == 1
        and min(weight.shape[:2]) >= _WINOGRAD_MIN_CHANNELS
    ):
        wino = Winograd3x3(weight.detach(), b, workspace)

    def on_window(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, b, stride, 0, dilation, groups)

    def on_whole(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    axes = (_Axis(kh, stride[0], dilation[0], ph), _Axis(kw, stride[1], dilation[1], pw))
    return _Window(axes, 0.0, on_window, on_whole, wino)


def _window_of(
    module: nn.Module | None, workspace: dict[str, torch.Tensor] | None = None
) -> _Window | None:
    """The windowed-op description of a conv / pool module, or None if it is not one we understand."""
    m = module
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
        return _conv_window(m, m.weight, m.bias, workspace)
    if isinstance(m, nn.MaxPool2d) and not m.return_indices:
        k, s, p, d = (
            _pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation)
        )
        axes = (_Axis(k[0], s[0], d[0], p[0]), _Axis(k[1], s[1], d[1], p[1]))

        def max_fn(x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(x, k, s, 0, d)

        return _Window(axes, -math.inf, max_fn, m)
    if isinstance(m, nn.AvgPool2d) and m.divisor_override is None:
        k, s, p = (_pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding))
        # Explicit zero padding gives the same divisor only when padding counts (or there is none);
        # ceil_mode's last window is divided by its clipped size, which explicit padding would not see.
        if (p != (0, 0) and not m.count_include_pad) or m.ceil_mode:
            return None
        axes = (_Axis(k[0], s[0], 1, p[0]), _Axis(k[1], s[1], 1, p[1]))

        def avg_fn(x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, k, s, 0)

        return _Window(axes, 0.0, avg_fn, m)
    return None


def _fold_bn(
    conv: nn.Conv2d, bn: nn.BatchNorm2d, workspace: dict[str, torch.Tensor] | None = None
) -> _Window | None:
    """conv followed by eval-mode BN as one conv: `W * g / sqrt(v + eps)`, `(b - m) * that + beta`."""
    assert bn.running_var is not None and bn.running_mean is not None
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return _conv_window(conv, weight, bias, workspace)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))


def _node_args(node: fx.Node) -> list[fx.Node]:
    """The graph nodes among a node's arguments (flattened)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)  # type: ignore[func-returns-value]
    return found


class IncrementalOcclusion:
    """Evaluate a model on many occluded copies of one image, recomputing only changed regions.

    Args:
        model: any module; it is traced with `torch.fx` (models that cannot be traced are run in
            full for every patch, with a warning).
        input_shape: `(C, H, W)` of one image.
        rows: `(gh, 2)` row ranges `[start, stop)` of the occluding windows, one per grid row.
        cols: `(gw, 2)` column ranges, one per grid column.
        full_fraction: a rectangle covering at least this fraction of a tensor's height (or width)
            is widened to the whole height (width).
        winograd: compute wide 3x3 stride-1 convolutions (see the module's notes) by Winograd's
            algorithm on CPU (float32: 2-3x fewer multiplies, errors ~3e-6 of the
            output's scale instead of ~1e-6).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        rows: np.ndarray,
        cols: np.ndarray,
        *,
        full_fraction: float = 0.85,
        winograd: bool = True,
    ) -> None:
        self.model = model
        self.workspace: dict[str, torch.Tensor] | None = {} if winograd else None
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.full_fraction = full_fraction
        self.unsupported: list[str] = []
        traced = _trace(model, input_shape)
        self.gm: fx.GraphModule | None = None
        if isinstance(traced, str):
            self.unsupported.append(f"the whole model (torch.fx could not trace it: {traced})")
            return
        self.gm = traced
        self.nodes = list(self.gm.graph.nodes)
        self.modules = dict(self.gm.named_modules())
        # The last position each node is read, so batched states can be dropped early.
        self.last_use: dict[fx.Node, int] = {}
        for i, n in enumerate(self.nodes):
            for a in _node_args(n):
                self.last_use[a] = i
        self.kind: dict[fx.Node, str] = {}
        self.windows: dict[fx.Node, _Window] = {}
        self.geom: dict[fx.Node, _Geom] = {}
        self.inplace_relu: set[fx.Node] = set()
        self.inplace_add: set[fx.Node] = set()
        self.clean_out: dict[fx.Node, fx.Node] = {}  # conv -> node holding its clean output
        self.planned = False

    # ---- the clean pass -------------------------------------------------------------------------

    def _call(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            obj, *rest = args
            if node.target in ("view", "reshape") and rest and rest[0] == _TRACE_BATCH:
                rest[0] = obj.shape[0]  # a batch size frozen by the shape-aware tracer
            return getattr(obj, str(node.target))(*rest, **kwargs)
        if node.op == "get_attr":
            attr: Any = self.gm
            for part in str(node.target).split("."):
                attr = getattr(attr, part)
            return attr
        raise AssertionError(node.op)

    def clean_pass(self, image: torch.Tensor) -> tuple[dict[fx.Node, Any], torch.Tensor]:
        """Run the traced graph on one image `(1, C, H, W)`; every node's value and the output."""
        env: dict[fx.Node, Any] = {}
        cache: dict[fx.Node, Any] = {}
        out: Any = None
        for node in self.nodes:
            if node.op == "placeholder":
                # The first input is the image; any further ones keep their defaults.
                val: Any = image if node is self.nodes[0] else (node.args[0] if node.args else None)
            elif node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: env[n])
                break
            else:
                args = fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
                val = self._call(node, args, kwargs)
            env[node] = val
            # A later in-place op (ReLU(inplace=True)) would overwrite the stored value: keep a copy.
            if isinstance(val, torch.Tensor):
                fmt = torch.channels_last if val.dim() == 4 else torch.preserve_format
                cache[node] = val.clone(memory_format=fmt)
            else:
                cache[node] = val
        if not self.planned:
            self._plan(cache)
        return cache, out

    # ---- planning: what each node is and which rectangle it changes ---------------------------

    def _plan(self, cache: dict[fx.Node, Any]) -> None:
        dep: dict[fx.Node, bool] = {}
        is4d = {n: isinstance(v, torch.Tensor) and v.dim() == 4 for n, v in cache.items()}
        for node in self.nodes:
            if node.op == "output":
                continue
            args = _node_args(node)
            dep[node] = node is self.nodes[0] or any(dep.get(a, False) for a in args)
            self.kind[node] = self._classify(node, args, dep, is4d, cache)
        self._fold_batch_norms()
        self._find_inplace()
        bad = sorted(
            {
                self._describe(n)
                for n, k in self.kind.items()
                if k == "generic"
                and self._unexpected(n)
                and any(dep[a] and is4d[a] for a in _node_args(n))
            }
        )
        self.unsupported.extend(bad)
        self._geometry(cache)
        self.planned = True

    def _classify(
        self,
        node: fx.Node,
        args: list[fx.Node],
        dep: dict[fx.Node, bool],
        is4d: dict[fx.Node, bool],
        cache: dict[fx.Node, Any],
    ) -> str:
        if node.op == "placeholder":
            if node is not self.nodes[0]:
                return "same"  # extra inputs keep their defaults
            return "input"
        if not dep[node]:
            return "same"
        if not is4d[node]:
            return "generic"
        dep_args = [a for a in args if dep[a]]
        if not all(is4d[a] for a in dep_args):
            return "generic"
        shape = cache[node].shape
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        if node.op == "call_module":
            window = _window_of(module, self.workspace)
            if window is not None and len(args) == 1:
                self.windows[node] = window
                return "window"
            if isinstance(module, _POINTWISE_MODULES) and len(args) == 1:
                return "pointwise"
            if (
                isinstance(module, nn.BatchNorm2d)
                and module.track_running_stats
                and module.running_mean is not None
                and len(args) == 1
            ):
                return "pointwise"  # eval mode: a per-channel affine map
            return "generic"
        fn_ok = node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS
        meth_ok = node.op == "call_method" and node.target in _POINTWISE_METHODS
        same_shape = all(cache[a].shape == shape for a in dep_args)
        binary = (node.op == "call_function" and node.target in _BINARY_FUNCTIONS) or (
            node.op == "call_method" and node.target in _BINARY_METHODS
        )
        if binary and len(dep_args) == 2 and same_shape and len(args) == 2:
            return "binary"
        if node.op == "call_function" and node.target is torch.cat:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            parts = node.args[0]
            if (
                dim in (1, -3)
                and isinstance(parts, list | tuple)
                and all(isinstance(p, fx.Node) and dep[p] for p in parts)
                and all(cache[p].shape[2:] == shape[2:] for p in parts)  # type: ignore[index]
            ):
                return "cat"
            return "generic"
        if (fn_ok or meth_ok) and len(dep_args) == 1 and cache[dep_args[0]].shape == shape:
            # Other tensor arguments must broadcast per channel, not per pixel.
            others = [cache[a] for a in args if not dep[a]]
            if all(
                not isinstance(t, torch.Tensor) or t.numel() == 1 or t.shape[-2:] == (1, 1)
                for t in others
            ):
                return "pointwise"
        return "generic"

    def _fold_batch_norms(self) -> None:
        """A conv read only by an eval-mode BN becomes one conv; the BN node passes it through."""
        for node in self.nodes:
            users = list(node.users)
            if self.kind.get(node) != "window" or len(users) != 1:
                continue
            conv, user = self.modules.get(str(node.target)), users[0]
            bn = self.modules.get(str(user.target)) if user.op == "call_module" else None
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and self.kind.get(user) == "pointwise"
            ):
                folded = _fold_bn(conv, bn, self.workspace)
                if folded is not None:
                    self.windows[node] = folded
                    self.kind[user] = "alias"
                    self.clean_out[node] = user  # the model's own BN(conv(x)) on the clean image

    def _find_inplace(self) -> None:
        """ReLUs and residual adds that may overwrite their first input's batched values.

        Safe when that input is a freshly computed tensor (a conv, pool, add or cat result, or a BN
        folded into one) that nothing else reads.
        """
        fresh = {"window", "alias", "binary", "cat"}
        relus = {F.relu, torch.relu}
        for node in self.nodes:
            args = _node_args(node)
            if not args or self.kind.get(args[0]) not in fresh or len(args[0].users) != 1:
                continue
            if self.kind.get(node) == "pointwise" and len(args) == 1 and not node.kwargs:
                module = self.modules.get(str(node.target)) if node.op == "call_module" else None
                if type(module) is nn.ReLU or (node.op == "call_function" and node.target in relus):
                    self.inplace_relu.add(node)
            elif (
                self.kind.get(node) == "binary"
                and node.target in (operator.add, operator.iadd, torch.add)
                and not node.kwargs
                and args[0] is not args[1]
            ):
                self.inplace_add.add(node)

    def _describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.modules[str(node.target)]).__name__
        return getattr(node.target, "__name__", str(node.target))

    def _unexpected(self, node: fx.Node) -> bool:
        """Generic nodes worth a warning: not the usual flatten / global pooling / linear tail."""
        if node.op == "call_module":
            return not isinstance(self.modules[str(node.target)], _EXPECTED_FULL_MODULES)
        if node.op == "call_method":
            return str(node.target) not in _EXPECTED_FULL_METHODS
        return node.target not in _EXPECTED_FULL_FUNCTIONS

    def _geometry(self, cache: dict[fx.Node, Any]) -> None:
        lo_r, hi_r = self.rows[:, 0], self.rows[:, 1]
        lo_c, hi_c = self.cols[:, 0], self.cols[:, 1]
        iv: dict[fx.Node, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for node in self.nodes:
            kind = self.kind.get(node)
            if kind in (None, "same") or not (
                isinstance(cache[node], torch.Tensor) and cache[node].dim() == 4
            ):
                continue
            H, W = cache[node].shape[2:]
            if kind == "input":
                iv[node] = (lo_r, hi_r, lo_c, hi_c)
            elif kind == "window":
                src = _node_args(node)[0]
                ay, ax = self.windows[node].axes
                r = _interval_through(iv[src][0], iv[src][1], ay, H)
                c = _interval_through(iv[src][2], iv[src][3], ax, W)
                iv[node] = (r[0], r[1], c[0], c[1])
            elif kind in ("pointwise", "alias"):
                src = next(a for a in _node_args(node) if a in iv)
                iv[node] = iv[src]
                self.geom[node] = self.geom[src]  # the same rectangles, by construction
                continue
            elif kind in ("binary", "cat"):
                srcs = [iv[a] for a in _node_args(node) if a in iv]
                iv[node] = tuple(_union(srcs, k) for k in range(4))  # type: ignore[assignment]
            else:  # generic: computed on the whole tensor
                g = len(lo_r), len(lo_c)
                iv[node] = (np.zeros(g[0], np.int64), np.full(g[0], H), np.zeros(g[1], np.int64), np.full(g[1], W))  # fmt: skip
            r_lo, r_hi, c_lo, c_hi = iv[node]
            h, rs = _choose(r_lo, r_hi, H, self.full_fraction)
            w, cs = _choose(c_lo, c_hi, W, self.full_fraction)
            if kind == "generic":
                h, w, rs, cs = H, W, np.zeros_like(rs), np.zeros_like(cs)
            self.geom[node] = _Geom(h, w, H, W, rs, cs)

    def bytes_per_patch(self, cache: dict[fx.Node, Any]) -> int:
        """Bytes of the largest per-patch tensor any node holds (for choosing a batch size)."""
        sizes = [1]
        for node, g in self.geom.items():
            v = cache[node]
            sizes.append(v.shape[1] * g.h * g.w * v.element_size())
        for node, v in cache.items():
            if (
                isinstance(v, torch.Tensor)
                and node not in self.geom
                and self.kind.get(node) != "same"
            ):
                sizes.append(v[0].numel() * v.element_size())
        return max(sizes)

    # ---- the incremental pass -------------------------------------------------------------------

    def run(
        self,
        cache: dict[fx.Node, Any],
        image: torch.Tensor,
        baseline: torch.Tensor,
        patches: np.ndarray,
        padded: dict[tuple[Any, ...], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Model outputs for the occluded copies of `image` at `patches` (P, 2) grid indices.

        Args:
            cache: from :meth:`clean_pass` on the same image.
            image: `(1, C, H, W)`.
            baseline: `(1, C, H, W)` values that replace the occluded pixels.
            patches: `(P, 2)` (grid row, grid column) pairs.
            padded: padded clean tensors, filled on first use; pass the same dict for every
                batch of one image so each is padded once.
        """
        assert self.gm is not None
        dev = image.device
        pi = torch.as_tensor(patches[:, 0], device=dev)
        pj = torch.as_tensor(patches[:, 1], device=dev)
        padded = {} if padded is None else padded
        states: dict[fx.Node, Any] = {}
        out: Any = None
        for idx, node in enumerate(self.nodes):
            if node.op == "output":
                out = fx.node.map_arg(
                    node.args[0], lambda n: self._to_full(states[n], n, cache, pi, pj, padded)
                )
                break
            kind = self.kind[node]
            if kind == "same":
                states[node] = _SAME
            elif kind == "input":
                states[node] = self._input_region(node, image, baseline, patches, pi, pj)
            elif kind == "window":
                states[node] = self._window(node, states, cache, pi, pj, padded)
            elif kind == "pointwise":
                states[node] = self._pointwise(node, states, cache)
            elif kind == "alias":  # a BN folded into the conv before it
                states[node] = states[_node_args(node)[0]]
            elif kind in ("binary", "cat"):
                states[node] = self._combine(node, states, cache, pi, pj, padded)
            else:
                states[node] = self._generic(node, states, cache, pi, pj, padded)
            for a in _node_args(node):
                if self.last_use.get(a) == idx:
                    del states[a]
        assert isinstance(out, torch.Tensor), "the model must return one tensor of outputs"
        return out

    def _input_region(
        self,
        node: fx.Node,
        image: torch.Tensor,
        baseline: torch.Tensor,
        patches: np.ndarray,
        pi: torch.Tensor,
        pj: torch.Tensor,
    ) -> _Region:
        g = self.geom[node]
        dev = image.device
        rows = torch.as_tensor(g.row_start, device=dev)[pi]
        cols = torch.as_tensor(g.col_start, device=dev)[pj]
        x = _crop(image, rows, cols, g.h, g.w)  # (P, C, h, w)
        b = _crop(baseline, rows, cols, g.h, g.w)
        # Inside the occluding window (possibly cut by the image border) the baseline replaces x.
        ys = rows[:, None] + torch.arange(g.h, device=dev)  # (P, h)
        xs = cols[:, None] + torch.arange(g.w, device=dev)  # (P, w)
        r = torch.as_tensor(self.rows, device=dev)[pi]  # (P, 2)
        c = torch.as_tensor(self.cols, device=dev)[pj]
        in_r = (ys >= r[:, :1]) & (ys < r[:, 1:])
        in_c = (xs >= c[:, :1]) & (xs < c[:, 1:])
        mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (P, 1, h, w)
        return _Region(torch.where(mask, b, x), rows, cols)

    def _starts(
        self, node: fx.Node, pi: torch.Tensor, pj: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.geom[node]
        dev = pi.device
        return torch.as_tensor(g.row_start, device=dev)[pi], torch.as_tensor(
            g.col_start, device=dev
        )[pj]

    def _window(
        self,
        node: fx.Node,
        states: dict[fx.Node, Any],
        cache: dict[fx.Node, Any],
        pi: torch.Tensor,
        pj: torch.Tensor,
        padded: dict[tuple[Any, ...], torch.Tensor],
    ) -> _Region:
        src = _node_args(node)[0]
        win = self.windows[node]
        ay, ax = win.axes
        g = self.geom[node]
        rows, cols = self._starts(node, pi, pj)
        state = states[src]
        clean_in = cache[src]
        cpu_fp32 = clean_in.device.type == "cpu" and clean_in.dtype == torch.float32
        wino = win.wino if cpu_fp32 else None  # Winograd: CPU float32 only
        out_clean = cache[self.clean_out.get(node, node)]  # (1, K, H, W)
        if g.full and isinstance(state, _Region) and self.geom[src].full:
            if wino is not None:  # Winograd on the difference from the clean tensor
                y = wino(state.vals, ay.pad, ax.pad, g.H, g.W, clean_in, out_clean)
                return _Region(y, rows, cols)
            return _Region(win.full(state.vals), rows, cols)  # plain full computation
        ih = (g.h - 1) * ay.stride + ay.reach + 1
        iw = (g.w - 1) * ax.stride + ax.reach + 1
        # The padded input must reach the last window of the whole output (ceil_mode may need more).
        need_h = (g.H - 1) * ay.stride + ay.reach + 1
        need_w = (g.W - 1) * ax.stride + ax.reach + 1
        where = (src, cache, rows * ay.stride, cols * ax.stride, ih, iw)
        pad = (ay.pad, ax.pad, need_h, need_w)
        if wino is not None:
            y_ref = _crop(out_clean, rows, cols, g.h, g.w)
            if isinstance(state, _Region) and not self.geom[src].full:
                # The windows of the difference, built directly: zero outside each rectangle.
                delta = self._gather(state, *where, pad, win.fill, padded, delta=True)
                return _Region(wino(delta, 0, 0, g.h, g.w, None, y_ref), rows, cols)
            x = self._gather(state, *where, pad, win.fill, padded)
            x_ref = self._gather(_SAME, *where, pad, win.fill, padded)
            return _Region(wino(x, 0, 0, g.h, g.w, x_ref, y_ref), rows, cols)
        x = self._gather(state, *where, pad, win.fill, padded)
        return _Region(win.fn(x), rows, cols)

    def _pointwise(
        self, node: fx.Node, states: dict[fx.Node, Any], cache: dict[fx.Node, Any]
    ) -> _Region:
        region: list[_Region] = []

        def sub(n: fx.Node) -> Any:
            s = states[n]
            if isinstance(s, _Region):
                region.append(s)
                return s.vals
            return cache[n]

        args = fx.node.map_arg(node.args, sub)
        kwargs = fx.node.map_arg(node.kwargs, sub)
        if node in self.inplace_relu:  # saves allocating (and page-faulting) a new tensor
            return _Region(torch.relu_(args[0]), region[0].rows, region[0].cols)  # type: ignore[arg-type]
        return _Region(self._call(node, args, kwargs), region[0].rows, region[0].cols)

    def _combine(
        self,
        node: fx.Node,
        states: dict[fx.Node, Any],
        cache: dict[fx.Node, Any],
        pi: torch.Tensor,
        pj: torch.Tensor,
        padded: dict[tuple[Any, ...], torch.Tensor],
    ) -> _Region:
        g = self.geom[node]
        rows, cols = self._starts(node, pi, pj)

        def sub(n: fx.Node) -> Any:
            return self._gather(states[n], n, cache, rows, cols, g.h, g.w, None, 0.0, padded)

        args = fx.node.map_arg(node.args, sub)
        kwargs = fx.node.map_arg(node.kwargs, sub)
        if node in self.inplace_add:
            return _Region(args[0].add_(args[1]), rows, cols)  # type: ignore[union-attr,arg-type]
        return _Region(self._call(node, args, kwargs), rows, cols)

    def _generic(
        self,
        node: fx.Node,
        states: dict[fx.Node, Any],
        cache: dict[fx.Node, Any],
        pi: torch.Tensor,
        pj: torch.Tensor,
        padded: dict[tuple[Any, ...], torch.Tensor],
    ) -> Any:
        args = fx.node.map_arg(
            node.args, lambda n: self._to_full(states[n], n, cache, pi, pj, padded)
        )
        kwargs = fx.node.map_arg(
            node.kwargs, lambda n: self._to_full(states[n], n, cache, pi, pj, padded)
        )
        val = self._call(node, args, kwargs)
        if node in self.geom:  # a 4-D result: a rectangle that covers everything
            zero = torch.zeros_like(pi)
            return _Region(val, zero, zero)
        return _Full(val)

    def _to_full(
        self,
        state: Any,
        node: fx.Node,
        cache: dict[fx.Node, Any],
        pi: torch.Tensor,
        pj: torch.Tensor,
        padded: dict[tuple[Any, ...], torch.Tensor],
    ) -> Any:
        if isinstance(state, _Full):
            return state.value
        if isinstance(state, _Same):
            return cache[node]
        g = self.geom[node]
        zero = torch.zeros_like(pi)
        return self._gather(state, node, cache, zero, zero, g.H, g.W, None, 0.0, padded)

    def _gather(
        self,
        state: Any,
        node: fx.Node,
        cache: dict[fx.Node, Any],
        r0: torch.Tensor,
        c0: torch.Tensor,
        ih: int,
        iw: int,
        pad: tuple[int, int, int, int] | None,
        fill: float,
        padded: dict[tuple[Any, ...], torch.Tensor],
        delta: bool = False,
    ) -> torch.Tensor:
        """The patched tensor of `node` inside windows `[r0, r0+ih) x [c0, c0+iw)`, batched.

        Window coordinates are in the padded tensor when `pad = (top, left, need_h, need_w)` is
        given: `top`/`left` fill values before the input, and enough after it to make the padded
        size at least `need_h x need_w`. With `delta` (zero fill only, a `_Region` whose
        rectangle is not the whole tensor), the windows hold the patched minus the clean values:
        zero outside each patch's rectangle.
        """
        clean = cache[node]  # (1, C, H, W)
        H, W = clean.shape[2:]
        pt, pl = (pad[0], pad[1]) if pad else (0, 0)
        if pad:
            pb, pr = max(0, pad[2] - H - pt), max(0, pad[3] - W - pl)
        else:
            pb, pr = 0, 0
        if isinstance(state, _Same):
            key = (node, pt, pb, pl, pr, fill)
            if key not in padded:
                padded[key] = _pad(clean, (pl, pr, pt, pb), fill)
            return _crop(padded[key], r0, c0, ih, iw)
        assert isinstance(state, _Region)
        g = self.geom[node]
        P, C = state.vals.shape[:2]
        if g.full:
            src = _pad(state.vals, (pl, pr, pt, pb), fill)
            if src.shape[2] == ih and src.shape[3] == iw:
                return src
            return _crop(src, r0, c0, ih, iw)
        vals = state.vals
        if delta:
            vals = vals - _crop(clean, state.rows, state.cols, g.h, g.w)
            out = torch.zeros(P, ih, iw, C, dtype=vals.dtype, device=vals.device)
            out = out.permute(0, 3, 1, 2)  # (P, C, ih, iw), channels-last
        elif (
            pt == 0
            and pl == 0
            and (ih, iw) == (g.h, g.w)
            and bool((state.rows == r0).all() and (state.cols == c0).all())
        ):
            return vals
        else:
            key = (node, pt, pb, pl, pr, fill)
            if key not in padded:
                padded[key] = _pad(clean, (pl, pr, pt, pb), fill)
            out = _crop(padded[key], r0, c0, ih, iw)  # (P, C, ih, iw), channels-last
            if not out.is_contiguous(memory_format=torch.channels_last):  # e.g. expanded
                out = out.contiguous(memory_format=torch.channels_last)
        # Paste each patch's rectangle at its place in its window; parts outside the window are
        # not read by the op, so they go to a dummy slot at the end of a flat buffer.
        dev = out.device
        ys = state.rows[:, None] + pt - r0[:, None] + torch.arange(g.h, device=dev)  # (P, h)
        xs = state.cols[:, None] + pl - c0[:, None] + torch.arange(g.w, device=dev)  # (P, w)
        ok = ((ys >= 0) & (ys < ih))[:, :, None] & ((xs >= 0) & (xs < iw))[:, None, :]  # (P, h, w)
        pos = ys[:, :, None] * iw + xs[:, None, :]  # (P, h, w)
        L, hw = ih * iw, g.h * g.w
        rows_out = out.permute(0, 2, 3, 1).reshape(P * L, C)  # a view: `out` is channels-last
        vals = vals.permute(0, 2, 3, 1).reshape(P * hw, C)
        gidx = (torch.arange(P, device=dev) * L)[:, None] + pos.reshape(P, hw)  # (P, h*w)
        # index_copy_ of whole C-vectors: ~3x faster than scatter_ with an expanded index.
        if bool(ok.all()):
            rows_out.index_copy_(0, gidx.reshape(-1), vals)
            return out
        buf = torch.empty(P * L + 1, C, dtype=out.dtype, device=dev)
        buf[:-1] = rows_out
        gidx = torch.where(ok.reshape(P, hw), gidx, torch.full_like(gidx, P * L))
        buf.index_copy_(0, gidx.reshape(-1), vals)
        return buf[:-1].view(P, ih, iw, C).permute(0, 3, 1, 2)

    def iter_batches(self, n_patches: int, batch_size: int) -> Iterator[np.ndarray]:
        """Grid indices `(P, 2)` in row-major order, `batch_size` at a time."""
        gw = len(self.cols)
        flat = np.arange(n_patches)
        for s in range(0, n_patches, batch_size):
            f = flat[s : s + batch_size]
            yield np.stack([f // gw, f % gw], axis=1)


_TRACE_BATCH = 7  # batch size of the meta tensor the shape-aware tracer runs on


class _ShapeAwareTracer(MetaTracer):
    """fx tracing with concrete shapes, for models whose forward branches on shapes.

    Tensors carry meta-device values, so `if x.shape[-2:] != (1, 1)` is decided while tracing.
    Modules built on the fly from installed ones (`self.classifier[:-1]`) are traced through,
    never added to the model.
    """

    allow_insert_stateless_mods = False

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            fx.Tracer.path_of_module(self, m)
        except NameError:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def _trace(model: nn.Module, input_shape: tuple[int, int, int]) -> fx.GraphModule | str:
    """The model as an fx graph (plain tracing first, then shape-aware), or why it failed."""
    try:
        return fx.symbolic_trace(model)
    except Exception as e:
        first_error = str(e)
    try:
        name = next(iter(inspect.signature(model.forward).parameters))
        tracer = _ShapeAwareTracer()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = torch.empty(_TRACE_BATCH, *input_shape, device="meta")
            graph = tracer.trace(model, meta_args={name: meta})
        gm = fx.GraphModule(tracer.root, graph)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        return gm
    except Exception:
        return first_error


def _union(srcs: Sequence[tuple[np.ndarray, ...]], k: int) -> np.ndarray:
    """Bounding interval over several sources' (lo, hi) arrays, ignoring empty ones."""
    los = np.stack([s[0 if k < 2 else 2] for s in srcs])
    his = np.stack([s[1 if k < 2 else 3] for s in srcs])
    empty = his <= los
    big = np.iinfo(np.int64).max
    if k in (0, 2):
        lo = np.where(empty, big, los).min(0)
        return np.where(lo == big, 0, lo)
    return np.where(empty, 0, his).max(0)


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int], fill: float) -> torch.Tensor:
    """`F.pad` (left, right, top, bottom) keeping the channels-last layout."""
    if not any(pad):
        return x
    return F.pad(x, pad, value=fill).contiguous(memory_format=torch.channels_last)


def _crop(x: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Windows `x[b, :, r0[p]:r0[p]+h, c0[p]:c0[p]+w]` for each p, as channels-last `(P, C, h, w)`.

    `x` is `(1, C, H, W)` (one tensor shared by all patches) or `(P, C, H, W)` (one per patch).
    """
    P = len(r0)
    if x.shape[2] == h and x.shape[3] == w:
        return x.expand(P, -1, -1, -1) if x.shape[0] == 1 else x
    if x.shape[0] != 1 and not bool(r0.any() or c0.any()):
        return x[:, :, :h, :w]
    # Gather whole C-vectors by flat row index from the (B*H*W, C) channels-last storage
    # (index_select: ~2x faster than advanced indexing of an unfolded view).
    B, C, H, W = x.shape
    hwc = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    flat = (hwc if hwc.is_contiguous() else hwc.contiguous()).view(B * H * W, C)
    base = r0 * W + c0  # (P,)
    if B != 1:
        base = base + torch.arange(P, device=x.device) * (H * W)
    ar_h = torch.arange(h, device=x.device) * W
    ar_w = torch.arange(w, device=x.device)
    idx = base[:, None, None] + ar_h[None, :, None] + ar_w[None, None, :]  # (P, h, w)
    return flat.index_select(0, idx.reshape(-1)).view(P, h, w, C).permute(0, 3, 1, 2)
