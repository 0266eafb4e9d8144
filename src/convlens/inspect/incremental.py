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
"""

from __future__ import annotations

import inspect
import math
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.meta_tracer import MetaTracer

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
# Cost model for grouping windows, in FLOP-equivalents (2-core AVX-512 CPU, ResNet-18, measured):
# a batch costs ~10 ms of dispatch and weight reads beyond its arithmetic (~1.5 GFLOP at
# ~150 GFLOP/s per core); a memory-bound element op costs about as much as 100 FLOPs per element.
_BATCH_COST = 1.5e9
_ELEMENT_COST = 100.0


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


@dataclass
class WindowGroup:
    """The windows at grid rows `rows` x grid columns `cols`, whose rectangles share one size."""

    rows: np.ndarray  # (gr,) grid row indices
    cols: np.ndarray  # (gc,) grid column indices
    geom: dict[fx.Node, _Geom]

    def patches(self) -> np.ndarray:
        """`(gr * gc, 2)` (grid row, grid column) pairs, row-major."""
        r, c = np.meshgrid(self.rows, self.cols, indexing="ij")
        return np.stack([r.ravel(), c.ravel()], axis=1)


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
    lo: np.ndarray, hi: np.ndarray, sel: np.ndarray, size: int, full_fraction: float
) -> tuple[int, np.ndarray]:
    """One rectangle length for the grid indices `sel`, and every index's start, inside [0, size).

    Starts are given for the whole grid (indices outside `sel` get 0; they are never read).
    """
    length = int(max(1, (hi[sel] - lo[sel]).max()))
    if length >= full_fraction * size:
        return size, np.zeros_like(lo)
    starts = np.zeros_like(lo)
    starts[sel] = np.clip(lo[sel], 0, size - length)
    return length, starts


def _conv_window(m: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> _Window | None:
    """A convolution as a windowed op, computing with `weight`/`bias` (BN may be folded in)."""
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

    def on_window(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, b, stride, 0, dilation, groups)

    def on_whole(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    axes = (_Axis(kh, stride[0], dilation[0], ph), _Axis(kw, stride[1], dilation[1], pw))
    return _Window(axes, 0.0, on_window, on_whole)


def _window_of(module: nn.Module | None) -> _Window | None:
    """The windowed-op description of a conv / pool module, or None if it is not one we understand."""
    m = module
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
        return _conv_window(m, m.weight, m.bias)
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


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> _Window | None:
    """conv followed by eval-mode BN as one conv: `W * g / sqrt(v + eps)`, `(b - m) * that + beta`."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return _conv_window(conv, conv.weight * scale[:, None, None, None], bias)


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
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        rows: np.ndarray,
        cols: np.ndarray,
        *,
        full_fraction: float = 0.85,
    ) -> None:
        self.model = model
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
        # Per node: the changed interval (row lo, row hi, col lo, col hi) per grid row / column,
        # the spatial size, and the rectangles of the whole grid taken as one group.
        self.intervals: dict[fx.Node, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.sizes: dict[fx.Node, tuple[int, int]] = {}
        self.geom: dict[fx.Node, _Geom] = {}
        self.groups: list[WindowGroup] = []
        self.inplace_relu: set[fx.Node] = set()
        self.inplace_add: set[fx.Node] = set()
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
            window = _window_of(module)
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
                folded = _fold_bn(conv, bn)
                if folded is not None:
                    self.windows[node] = folded
                    self.kind[user] = "alias"

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
        """Each node's changed interval per grid row and column, then rectangles and groups."""
        lo_r, hi_r = self.rows[:, 0], self.rows[:, 1]
        lo_c, hi_c = self.cols[:, 0], self.cols[:, 1]
        iv = self.intervals
        for node in self.nodes:
            kind = self.kind.get(node)
            if kind in (None, "same") or not (
                isinstance(cache[node], torch.Tensor) and cache[node].dim() == 4
            ):
                continue
            H, W = cache[node].shape[2:]
            self.sizes[node] = (H, W)
            if kind == "input":
                iv[node] = (lo_r, hi_r, lo_c, hi_c)
            elif kind == "window":
                src = _node_args(node)[0]
                ay, ax = self.windows[node].axes
                r = _interval_through(iv[src][0], iv[src][1], ay, H)
                c = _interval_through(iv[src][2], iv[src][3], ax, W)
                iv[node] = (r[0], r[1], c[0], c[1])
            elif kind in ("pointwise", "alias"):
                iv[node] = iv[next(a for a in _node_args(node) if a in iv)]
            elif kind in ("binary", "cat"):
                srcs = [iv[a] for a in _node_args(node) if a in iv]
                iv[node] = tuple(_union(srcs, k) for k in range(4))  # type: ignore[assignment]
            else:  # generic: computed on the whole tensor
                g = len(lo_r), len(lo_c)
                iv[node] = (np.zeros(g[0], np.int64), np.full(g[0], H), np.zeros(g[1], np.int64), np.full(g[1], W))  # fmt: skip
        everything = np.arange(len(self.rows)), np.arange(len(self.cols))
        self.geom = self._geom_for(*everything)
        self.groups = [WindowGroup(*everything, self.geom)]

    def _geom_for(self, grid_rows: np.ndarray, grid_cols: np.ndarray) -> dict[fx.Node, _Geom]:
        """Rectangles shared by the windows at `grid_rows` x `grid_cols` (one size per node).

        Start arrays span the whole grid; entries outside the group are 0 and never read.
        """
        geom: dict[fx.Node, _Geom] = {}
        for node, (r_lo, r_hi, c_lo, c_hi) in self.intervals.items():
            kind = self.kind[node]
            if kind in ("pointwise", "alias"):
                # The same rectangles as the source, by construction.
                geom[node] = geom[next(a for a in _node_args(node) if a in geom)]
                continue
            H, W = self.sizes[node]
            if kind == "generic":
                h, w, rs, cs = H, W, np.zeros_like(r_lo), np.zeros_like(c_lo)
            else:
                h, rs = _choose(r_lo, r_hi, grid_rows, H, self.full_fraction)
                w, cs = _choose(c_lo, c_hi, grid_cols, W, self.full_fraction)
            geom[node] = _Geom(h, w, H, W, rs, cs)
        return geom

    def plan_groups(self, cache: dict[fx.Node, Any], max_bytes: int) -> list[WindowGroup]:
        """Split the window grid into rectangular groups whose rectangles are sized separately.

        One rectangle size for all windows wastes work: near the image border a window's
        projective field is cut off (ResNet-18's `layer3.1` at 14x14: 8 rows for a window in the
        top row, all 14 for one in the middle). Grid rows (and columns) are cut into bands; each
        band pair is a group. The bands minimise an estimated cost: work per window (conv FLOPs,
        element ops) plus a fixed cost per batch (dispatch, weight reads), which keeps groups from
        getting too small.
        """
        nodes = [n for n in self.intervals if self.kind[n] != "generic"]
        if not nodes:
            return self.groups
        per_px = np.array([self._pixel_cost(n, cache) for n in nodes])  # (N,) per output pixel
        chans = np.array([cache[n].shape[1] * cache[n].element_size() for n in nodes])  # (N,)
        iv = self.intervals
        axes = []
        for k, size in (
            (0, [self.sizes[n][0] for n in nodes]),
            (2, [self.sizes[n][1] for n in nodes]),
        ):
            length = np.stack([iv[n][k + 1] - iv[n][k] for n in nodes])  # (N, grid)
            axes.append((length, np.array(size)))
        ff = self.full_fraction

        def band_len(axis: int, a: int, b: int) -> np.ndarray:
            length, size = axes[axis]
            ln = np.maximum(length[:, a:b].max(1), 1)
            return np.where(ln >= ff * size, size, ln)  # (N,) rectangle side per node

        def cost(r: np.ndarray, nr: int, cs: np.ndarray, ncs: np.ndarray) -> float:
            """Cost of one row band `r` (N,) of `nr` rows against column bands `cs` (N, CB)."""
            work = (per_px * r) @ cs  # (CB,) per window
            per_patch = (chans[:, None] * r[:, None] * cs).max(0)  # (CB,) bytes
            bs = np.clip(max_bytes // per_patch, 16, 512)
            n = nr * ncs
            return float((n * work).sum() + _BATCH_COST * np.ceil(n / bs).sum())

        # For fixed column bands the best row bands are a shortest path over cut points (a band's
        # cost does not depend on the other row bands), and vice versa: alternate until stable.
        bands: list[list[tuple[int, int]]] = [[(0, len(self.rows))], [(0, len(self.cols))]]
        for _ in range(4):
            before = [list(b) for b in bands]
            for axis in (0, 1):
                other = bands[1 - axis]
                o_len = np.stack([band_len(1 - axis, a, b) for a, b in other], 1)  # (N, B')
                o_n = np.array([b - a for a, b in other])
                n = len(axes[axis][0][0])
                best = [0.0] + [math.inf] * n  # best[k]: cost of the first k grid indices
                cut = [0] * (n + 1)
                for b in range(1, n + 1):
                    for a in range(b):
                        c = best[a] + cost(band_len(axis, a, b), b - a, o_len, o_n)
                        if c < best[b]:
                            best[b], cut[b] = c, a
                found, b = [], n
                while b > 0:
                    found.append((cut[b], b))
                    b = cut[b]
                bands[axis] = found[::-1]
            if bands == before:
                break
        groups = []
        for a, b in bands[0]:
            for c, d in bands[1]:
                rows, cols = np.arange(a, b), np.arange(c, d)
                groups.append(WindowGroup(rows, cols, self._geom_for(rows, cols)))
        return groups

    def _pixel_cost(self, node: fx.Node, cache: dict[fx.Node, Any]) -> float:
        """Estimated work per output pixel of a node, in FLOP-equivalents."""
        C = cache[node].shape[1]
        kind = self.kind[node]
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        if kind == "window" and isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            return 2.0 * C * module.in_channels // module.groups * kh * kw
        if kind == "window":
            ay, ax = self.windows[node].axes
            return _ELEMENT_COST * C * ay.kernel * ax.kernel
        if kind == "alias":
            return 0.0
        return _ELEMENT_COST * C * max(1, len(_node_args(node)))

    def bytes_per_patch(self, cache: dict[fx.Node, Any], group: WindowGroup | None = None) -> int:
        """Bytes of the largest per-patch tensor any node holds (for choosing a batch size)."""
        geom = self.geom if group is None else group.geom
        sizes = [1]
        for node, g in geom.items():
            v = cache[node]
            sizes.append(v.shape[1] * g.h * g.w * v.element_size())
        for node, v in cache.items():
            if isinstance(v, torch.Tensor) and node not in geom and self.kind.get(node) != "same":
                sizes.append(v[0].numel() * v.element_size())
        return max(sizes)

    # ---- the incremental pass -------------------------------------------------------------------

    def batches(
        self, cache: dict[fx.Node, Any], max_bytes: int = 24 << 20, batch_size: int | None = None
    ) -> Iterator[tuple[WindowGroup, np.ndarray]]:
        """All windows as `(group, patches)` batches; `patches` are `(P, 2)` grid indices.

        Groups come from :meth:`plan_groups` (planned on the first call). Each batch's size keeps
        its largest tensor near `max_bytes`: bigger ones are mmap'd afresh by the allocator (a page
        fault on every allocation) and run slower on CPU; `batch_size` overrides it.
        """
        if len(self.groups) == 1 and self.groups[0].geom is self.geom:
            self.groups = self.plan_groups(cache, max_bytes)
        for group in self.groups:
            bs = batch_size or int(
                np.clip(max_bytes // self.bytes_per_patch(cache, group), 16, 512)
            )
            patches = group.patches()
            # Equal batches rather than full ones and a remainder: same work, steadier sizes.
            n = math.ceil(len(patches) / bs)
            for part in np.array_split(patches, n):
                yield group, part

    def run(
        self,
        cache: dict[fx.Node, Any],
        image: torch.Tensor,
        baseline: torch.Tensor,
        patches: np.ndarray,
        padded: dict[tuple[Any, ...], torch.Tensor] | None = None,
        group: WindowGroup | None = None,
    ) -> torch.Tensor:
        """Model outputs for the occluded copies of `image` at `patches` (P, 2) grid indices.

        Args:
            cache: from :meth:`clean_pass` on the same image.
            image: `(1, C, H, W)`.
            baseline: `(1, C, H, W)` values that replace the occluded pixels.
            patches: `(P, 2)` (grid row, grid column) pairs, all in `group`.
            padded: padded clean tensors, filled on first use; pass the same dict for every
                batch of one image so each is padded once.
            group: the window group the patches belong to (default: the whole grid as one).
        """
        assert self.gm is not None
        dev = image.device
        ps = _Pass(
            cache=cache,
            geom=self.geom if group is None else group.geom,
            pi=torch.as_tensor(patches[:, 0], device=dev),
            pj=torch.as_tensor(patches[:, 1], device=dev),
            padded={} if padded is None else padded,
        )
        states = ps.states
        out: Any = None
        for idx, node in enumerate(self.nodes):
            if node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: self._to_full(ps, n))
                break
            kind = self.kind[node]
            if kind == "same":
                states[node] = _SAME
            elif kind == "input":
                states[node] = self._input_region(ps, node, image, baseline)
            elif kind == "window":
                states[node] = self._window(ps, node)
            elif kind == "pointwise":
                states[node] = self._pointwise(ps, node)
            elif kind == "alias":  # a BN folded into the conv before it
                states[node] = states[_node_args(node)[0]]
            elif kind in ("binary", "cat"):
                states[node] = self._combine(ps, node)
            else:
                states[node] = self._generic(ps, node)
            for a in _node_args(node):
                if self.last_use.get(a) == idx:
                    del states[a]
        assert isinstance(out, torch.Tensor), "the model must return one tensor of outputs"
        return out

    def _input_region(
        self, ps: _Pass, node: fx.Node, image: torch.Tensor, baseline: torch.Tensor
    ) -> _Region:
        g = ps.geom[node]
        dev = image.device
        rows, cols = self._starts(ps, node)
        x = _crop(image, rows, cols, g.h, g.w)  # (P, C, h, w)
        b = _crop(baseline, rows, cols, g.h, g.w)
        # Inside the occluding window (possibly cut by the image border) the baseline replaces x.
        ys = rows[:, None] + torch.arange(g.h, device=dev)  # (P, h)
        xs = cols[:, None] + torch.arange(g.w, device=dev)  # (P, w)
        r = torch.as_tensor(self.rows, device=dev)[ps.pi]  # (P, 2)
        c = torch.as_tensor(self.cols, device=dev)[ps.pj]
        in_r = (ys >= r[:, :1]) & (ys < r[:, 1:])
        in_c = (xs >= c[:, :1]) & (xs < c[:, 1:])
        mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (P, 1, h, w)
        return _Region(torch.where(mask, b, x), rows, cols)

    def _starts(self, ps: _Pass, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor]:
        """`(P,)` first row and first column of each patch's rectangle at `node`."""
        g = ps.geom[node]
        dev = ps.pi.device
        rows = torch.as_tensor(g.row_start, device=dev)[ps.pi]
        return rows, torch.as_tensor(g.col_start, device=dev)[ps.pj]

    def _window(self, ps: _Pass, node: fx.Node) -> _Region:
        src = _node_args(node)[0]
        win = self.windows[node]
        ay, ax = win.axes
        g = ps.geom[node]
        rows, cols = self._starts(ps, node)
        state = ps.states[src]
        if g.full and isinstance(state, _Region) and ps.geom[src].full:
            return _Region(win.full(state.vals), rows, cols)  # plain full computation
        ih = (g.h - 1) * ay.stride + ay.reach + 1
        iw = (g.w - 1) * ax.stride + ax.reach + 1
        # The padded input must reach the last window of the whole output (ceil_mode may need more).
        need_h = (g.H - 1) * ay.stride + ay.reach + 1
        need_w = (g.W - 1) * ax.stride + ax.reach + 1
        x = self._gather(
            ps, src, rows * ay.stride, cols * ax.stride, ih, iw,
            (ay.pad, ax.pad, need_h, need_w), win.fill,
        )  # fmt: skip
        return _Region(win.fn(x), rows, cols)

    def _pointwise(self, ps: _Pass, node: fx.Node) -> _Region:
        region: list[_Region] = []

        def sub(n: fx.Node) -> Any:
            s = ps.states[n]
            if isinstance(s, _Region):
                region.append(s)
                return s.vals
            return ps.cache[n]

        args = fx.node.map_arg(node.args, sub)
        kwargs = fx.node.map_arg(node.kwargs, sub)
        if node in self.inplace_relu:  # saves allocating (and page-faulting) a new tensor
            return _Region(torch.relu_(args[0]), region[0].rows, region[0].cols)  # type: ignore[arg-type]
        return _Region(self._call(node, args, kwargs), region[0].rows, region[0].cols)

    def _combine(self, ps: _Pass, node: fx.Node) -> _Region:
        g = ps.geom[node]
        rows, cols = self._starts(ps, node)

        def sub(n: fx.Node) -> Any:
            return self._gather(ps, n, rows, cols, g.h, g.w, None, 0.0)

        args = fx.node.map_arg(node.args, sub)
        kwargs = fx.node.map_arg(node.kwargs, sub)
        if node in self.inplace_add:
            return _Region(args[0].add_(args[1]), rows, cols)  # type: ignore[union-attr,arg-type]
        return _Region(self._call(node, args, kwargs), rows, cols)

    def _generic(self, ps: _Pass, node: fx.Node) -> Any:
        args = fx.node.map_arg(node.args, lambda n: self._to_full(ps, n))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self._to_full(ps, n))
        val = self._call(node, args, kwargs)
        if node in ps.geom:  # a 4-D result: a rectangle that covers everything
            zero = torch.zeros_like(ps.pi)
            return _Region(val, zero, zero)
        return _Full(val)

    def _to_full(self, ps: _Pass, node: fx.Node) -> Any:
        state = ps.states[node]
        if isinstance(state, _Full):
            return state.value
        if isinstance(state, _Same):
            return ps.cache[node]
        g = ps.geom[node]
        zero = torch.zeros_like(ps.pi)
        return self._gather(ps, node, zero, zero, g.H, g.W, None, 0.0)

    def _gather(
        self,
        ps: _Pass,
        node: fx.Node,
        r0: torch.Tensor,
        c0: torch.Tensor,
        ih: int,
        iw: int,
        pad: tuple[int, int, int, int] | None,
        fill: float,
    ) -> torch.Tensor:
        """The patched tensor of `node` inside windows `[r0, r0+ih) x [c0, c0+iw)`, batched.

        Window coordinates are in the padded tensor when `pad = (top, left, need_h, need_w)` is
        given: `top`/`left` fill values before the input, and enough after it to make the padded
        size at least `need_h x need_w`.
        """
        state = ps.states[node]
        padded = ps.padded
        clean = ps.cache[node]  # (1, C, H, W)
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
        g = ps.geom[node]
        P, C = state.vals.shape[:2]
        if g.full:
            src = _pad(state.vals, (pl, pr, pt, pb), fill)
            if src.shape[2] == ih and src.shape[3] == iw:
                return src
            return _crop(src, r0, c0, ih, iw)
        if (
            pt == 0
            and pl == 0
            and (ih, iw) == (g.h, g.w)
            and bool((state.rows == r0).all() and (state.cols == c0).all())
        ):
            return state.vals
        key = (node, pt, pb, pl, pr, fill)
        if key not in padded:
            padded[key] = _pad(clean, (pl, pr, pt, pb), fill)
        out = _crop(padded[key], r0, c0, ih, iw)  # (P, C, ih, iw), channels-last
        if out.stride(0) == 0:  # the window is the whole tensor: an expanded view, copy it
            out = out.contiguous(memory_format=torch.channels_last)
        # Paste each patch's rectangle at its place in its window; parts outside the window are
        # not read by the op, so they go to a dummy slot at the end of a flat buffer.
        dev = out.device
        ys = state.rows[:, None] + pt - r0[:, None] + torch.arange(g.h, device=dev)  # (P, h)
        xs = state.cols[:, None] + pl - c0[:, None] + torch.arange(g.w, device=dev)  # (P, w)
        ok = ((ys >= 0) & (ys < ih))[:, :, None] & ((xs >= 0) & (xs < iw))[:, None, :]  # (P, h, w)
        pos = ys[:, :, None] * iw + xs[:, None, :]  # (P, h, w)
        L, hw = ih * iw, g.h * g.w
        rows_out = out.permute(0, 2, 3, 1).reshape(P, L, C)  # a view: `out` is channels-last
        vals = state.vals.permute(0, 2, 3, 1).reshape(P, hw, C)
        if bool(ok.all()):
            rows_out.scatter_(1, pos.reshape(P, hw, 1).expand(P, hw, C), vals)
            return out
        buf = torch.empty(P * L + 1, C, dtype=out.dtype, device=dev)
        buf[:-1] = rows_out.reshape(P * L, C)
        gidx = (torch.arange(P, device=dev) * L)[:, None] + pos.reshape(P, hw)  # (P, h*w)
        gidx = torch.where(ok.reshape(P, hw), gidx, torch.full_like(gidx, P * L))
        buf[gidx.reshape(-1)] = vals.reshape(P * hw, C)
        return buf[:-1].view(P, ih, iw, C).permute(0, 3, 1, 2)


@dataclass
class _Pass:
    """What one batched incremental pass reads and writes."""

    cache: dict[fx.Node, Any]  # clean values, (1, ...) each
    geom: dict[fx.Node, _Geom]  # the rectangles of the batch's window group
    pi: torch.Tensor  # (P,) grid row of each patch
    pj: torch.Tensor  # (P,) grid column
    # Padded clean tensors, filled on first use and shared by all batches of one image.
    padded: dict[tuple[Any, ...], torch.Tensor]
    states: dict[fx.Node, Any] = field(default_factory=dict)  # batched values of computed nodes


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
    # Index an (nH, nW, h, w, C) view of all windows: the result is (P, h, w, C) contiguous,
    # which is (P, C, h, w) channels-last.
    hwc = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    u = hwc.unfold(1, h, 1).unfold(2, w, 1).permute(0, 1, 2, 4, 5, 3)  # (B, nH, nW, h, w, C)
    win = u[0][r0, c0] if x.shape[0] == 1 else u[torch.arange(P, device=x.device), r0, c0]
    return win.permute(0, 3, 1, 2)
