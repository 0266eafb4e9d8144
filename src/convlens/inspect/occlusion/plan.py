"""Planning the incremental pass: what each graph node is, and which rectangle a patch changes.

A :class:`Plan` is made once per model and patch grid, from the clean pass's values (their shapes
decide what is 4-D and what depends on the input). For every node it records a *kind*:

* ``input``: the image; ``same``: does not depend on the input (its clean value serves every patch);
* ``window``: conv / pooling, recomputed on windows of its input (:mod:`.ops`);
* ``pointwise``: per element or per channel, the input's rectangle passes through unchanged;
* ``alias``: an eval-mode BatchNorm folded into the conv before it;
* ``binary`` / ``cat``: residual adds, channel concatenation: the bounding box of the inputs';
* ``generic``: anything else, computed on the whole tensor (exact, just not incremental).

and, for each 4-D node, a :class:`Geom`: one rectangle size per node, one start per grid row and
per grid column.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from convlens.inspect.occlusion.ops import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    EXPECTED_FULL_FUNCTIONS,
    EXPECTED_FULL_METHODS,
    EXPECTED_FULL_MODULES,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    Axis,
    Window,
    fold_bn,
    window_of,
)
from convlens.inspect.occlusion.tracing import node_args


@dataclass
class Geom:
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


def interval_through(
    lo: np.ndarray, hi: np.ndarray, ax: Axis, size_out: int
) -> tuple[np.ndarray, np.ndarray]:
    """Output units whose window meets input range [lo, hi) (per grid index; empty stays empty)."""
    # Output j reads padded-input rows [j*s, j*s + reach], i.e. input rows [j*s - pad, j*s - pad + reach].
    out_lo = np.maximum(-((-(lo + ax.pad - ax.reach)) // ax.stride), 0)
    out_hi = np.minimum((hi - 1 + ax.pad) // ax.stride + 1, size_out)
    empty = (hi <= lo) | (out_hi <= out_lo)
    return np.where(empty, 0, out_lo), np.where(empty, 0, out_hi)


def choose_length(
    lo: np.ndarray, hi: np.ndarray, size: int, full_fraction: float
) -> tuple[int, np.ndarray]:
    """One rectangle length for all grid indices, and each index's start, kept inside [0, size)."""
    length = int(max(1, (hi - lo).max()))
    if length >= full_fraction * size:
        return size, np.zeros_like(lo)
    return length, np.clip(lo, 0, size - length)


def union(srcs: Sequence[tuple[np.ndarray, ...]], k: int) -> np.ndarray:
    """Bounding interval over several sources' (lo, hi) arrays, ignoring empty ones."""
    los = np.stack([s[0 if k < 2 else 2] for s in srcs])
    his = np.stack([s[1 if k < 2 else 3] for s in srcs])
    empty = his <= los
    big = np.iinfo(np.int64).max
    if k in (0, 2):
        lo = np.where(empty, big, los).min(0)
        return np.where(lo == big, 0, lo)
    return np.where(empty, 0, his).max(0)


class Plan:
    """Kinds, windowed ops and rectangles of every node, for one model and one patch grid.

    Args:
        nodes: the traced graph's nodes, in order (the first is the image).
        modules: the traced module's submodules by name.
        cache: every node's value on the clean image (from the engine's clean pass).
        rows: `(gh, 2)` `[start, stop)` rows of the occluding windows.
        cols: `(gw, 2)` columns.
        full_fraction: a rectangle covering at least this fraction of a side becomes the whole side.
    """

    def __init__(
        self,
        nodes: list[fx.Node],
        modules: dict[str, nn.Module],
        cache: dict[fx.Node, Any],
        rows: np.ndarray,
        cols: np.ndarray,
        full_fraction: float,
    ) -> None:
        self.nodes, self.modules = nodes, modules
        self.rows, self.cols = rows, cols
        self.full_fraction = full_fraction
        self.kind: dict[fx.Node, str] = {}
        self.windows: dict[fx.Node, Window] = {}
        self.geom: dict[fx.Node, Geom] = {}
        self.inplace_relu: set[fx.Node] = set()  # ReLUs that may overwrite their input
        self.inplace_add: set[fx.Node] = set()  # residual adds that may overwrite their first input
        self.unsupported: list[str] = []  # ops computed in full that a user may not expect
        dep: dict[fx.Node, bool] = {}
        is4d = {n: isinstance(v, torch.Tensor) and v.dim() == 4 for n, v in cache.items()}
        for node in self.nodes:
            if node.op == "output":
                continue
            args = node_args(node)
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
                and any(dep[a] and is4d[a] for a in node_args(n))
            }
        )
        self.unsupported.extend(bad)
        self._geometry(cache)

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
            window = window_of(module)
            if window is not None and len(args) == 1:
                self.windows[node] = window
                return "window"
            if isinstance(module, POINTWISE_MODULES) and len(args) == 1:
                return "pointwise"
            if (
                isinstance(module, nn.BatchNorm2d)
                and module.track_running_stats
                and module.running_mean is not None
                and len(args) == 1
            ):
                return "pointwise"  # eval mode: a per-channel affine map
            return "generic"
        fn_ok = node.op == "call_function" and node.target in POINTWISE_FUNCTIONS
        meth_ok = node.op == "call_method" and node.target in POINTWISE_METHODS
        same_shape = all(cache[a].shape == shape for a in dep_args)
        binary = (node.op == "call_function" and node.target in BINARY_FUNCTIONS) or (
            node.op == "call_method" and node.target in BINARY_METHODS
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
                folded = fold_bn(conv, bn)
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
            args = node_args(node)
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
            return not isinstance(self.modules[str(node.target)], EXPECTED_FULL_MODULES)
        if node.op == "call_method":
            return str(node.target) not in EXPECTED_FULL_METHODS
        return node.target not in EXPECTED_FULL_FUNCTIONS

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
                src = node_args(node)[0]
                ay, ax = self.windows[node].axes
                r = interval_through(iv[src][0], iv[src][1], ay, H)
                c = interval_through(iv[src][2], iv[src][3], ax, W)
                iv[node] = (r[0], r[1], c[0], c[1])
            elif kind in ("pointwise", "alias"):
                src = next(a for a in node_args(node) if a in iv)
                iv[node] = iv[src]
                self.geom[node] = self.geom[src]  # the same rectangles, by construction
                continue
            elif kind in ("binary", "cat"):
                srcs = [iv[a] for a in node_args(node) if a in iv]
                iv[node] = tuple(union(srcs, k) for k in range(4))  # type: ignore[assignment]
            else:  # generic: computed on the whole tensor
                g = len(lo_r), len(lo_c)
                iv[node] = (np.zeros(g[0], np.int64), np.full(g[0], H), np.zeros(g[1], np.int64), np.full(g[1], W))  # fmt: skip
            r_lo, r_hi, c_lo, c_hi = iv[node]
            h, rs = choose_length(r_lo, r_hi, H, self.full_fraction)
            w, cs = choose_length(c_lo, c_hi, W, self.full_fraction)
            if kind == "generic":
                h, w, rs, cs = H, W, np.zeros_like(rs), np.zeros_like(cs)
            self.geom[node] = Geom(h, w, H, W, rs, cs)

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
