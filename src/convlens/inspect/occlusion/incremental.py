"""The incremental occlusion engine: recompute only what a patch can change (KRYPTON).

Occluding one patch of the input changes, in every later layer, only the units whose receptive
field meets the patch: its *projective field*, a rectangle that grows by the kernel's reach at each
convolution or pooling (Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference
for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019). The engine runs a model once on the
clean image, keeps every intermediate tensor, and then, for a batch of occluded copies, computes
each layer only inside that rectangle, reading the rest from the clean tensors.

Contract: the model's outputs for the occluded copies equal those of the plain batched path
(:mod:`.plain`, whole copies through the model) up to float rounding; the attributions agree to 1e-4
of the largest one (tested against the plain path and against Captum).

How a model is understood: it is traced with torch.fx (:mod:`.tracing`); :class:`~.plan.Plan` gives
each node a kind and each 4-D node a rectangle per patch. Rectangles propagate through

* windowed ops (``Conv2d``, ``MaxPool2d``, ``AvgPool2d``): grown by kernel, stride, dilation, padding;
* pointwise ops (BatchNorm in eval mode, activations, dropout in eval mode, scalar arithmetic);
* ``add``/``sub``/``mul`` of two tensors (residual blocks) and ``cat`` along channels: the
  bounding box of the inputs' rectangles.

Anything else (flatten, global pooling, linear layers, an unknown op) is computed on the whole
patched tensor, which is always exact; unknown ops are named once in a warning. A rectangle that
covers most of its tensor is widened to the whole tensor, where full computation is cheaper than
gathering windows. All patches of a batch share one rectangle size per node, so each layer is one
batched call on a ``(P, C, h, w)`` tensor.

Two exact rewrites make it fast on CPU: tensors are kept channels-last (oneDNN's preferred layout:
convolutions avoid reorders), and a convolution read only by an eval-mode BatchNorm computes both at
once with the BN folded into private copies of its weights (the model itself is never modified).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from convlens.inspect.occlusion.ops import crop_windows, pad_nhwc
from convlens.inspect.occlusion.plan import Plan
from convlens.inspect.occlusion.tracing import TRACE_BATCH, node_args, trace_model


@dataclass
class Region:
    """A batch of patched tensors that equal the clean one outside a per-patch rectangle."""

    vals: torch.Tensor  # (P, C, h, w): the values inside the rectangles
    rows: torch.Tensor  # (P,) first row of each rectangle
    cols: torch.Tensor  # (P,) first column


@dataclass
class Full:
    """A batched value computed in full (P, ...) (or any non-tensor value)."""

    value: Any


class Same:
    """The node does not depend on the input: its clean value serves every patch."""


SAME = Same()


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
        traced = trace_model(model, input_shape)
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
            for a in node_args(n):
                self.last_use[a] = i
        self._plan: Plan | None = None  # made on the first clean pass, from its shapes

    @property
    def plan(self) -> Plan:
        """What each node is and which rectangle a patch changes (after the first clean pass)."""
        assert self._plan is not None, "run clean_pass first"
        return self._plan

    # ---- the clean pass -------------------------------------------------------------------------

    def _call(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            obj, *rest = args
            if node.target in ("view", "reshape") and rest and rest[0] == TRACE_BATCH:
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
        if self._plan is None:
            self._plan = Plan(
                self.nodes, self.modules, cache, self.rows, self.cols, self.full_fraction
            )
            self.unsupported.extend(self._plan.unsupported)
        return cache, out

    def bytes_per_patch(self, cache: dict[fx.Node, Any]) -> int:
        """Bytes of the largest per-patch tensor any node holds (for choosing a batch size)."""
        return self.plan.bytes_per_patch(cache)

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
            kind = self.plan.kind[node]
            if kind == "same":
                states[node] = SAME
            elif kind == "input":
                states[node] = self._input_region(node, image, baseline, patches, pi, pj)
            elif kind == "window":
                states[node] = self._window(node, states, cache, pi, pj, padded)
            elif kind == "pointwise":
                states[node] = self._pointwise(node, states, cache)
            elif kind == "alias":  # a BN folded into the conv before it
                states[node] = states[node_args(node)[0]]
            elif kind in ("binary", "cat"):
                states[node] = self._combine(node, states, cache, pi, pj, padded)
            else:
                states[node] = self._generic(node, states, cache, pi, pj, padded)
            for a in node_args(node):
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
    ) -> Region:
        g = self.plan.geom[node]
        dev = image.device
        rows = torch.as_tensor(g.row_start, device=dev)[pi]
        cols = torch.as_tensor(g.col_start, device=dev)[pj]
        x = crop_windows(image, rows, cols, g.h, g.w)  # (P, C, h, w)
        b = crop_windows(baseline, rows, cols, g.h, g.w)
        # Inside the occluding window (possibly cut by the image border) the baseline replaces x.
        ys = rows[:, None] + torch.arange(g.h, device=dev)  # (P, h)
        xs = cols[:, None] + torch.arange(g.w, device=dev)  # (P, w)
        r = torch.as_tensor(self.rows, device=dev)[pi]  # (P, 2)
        c = torch.as_tensor(self.cols, device=dev)[pj]
        in_r = (ys >= r[:, :1]) & (ys < r[:, 1:])
        in_c = (xs >= c[:, :1]) & (xs < c[:, 1:])
        mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (P, 1, h, w)
        return Region(torch.where(mask, b, x), rows, cols)

    def _starts(
        self, node: fx.Node, pi: torch.Tensor, pj: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.plan.geom[node]
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
    ) -> Region:
        """A conv or pooling inside each patch's output rectangle `(P, K, h, w)`, from the input
        window it reads `(P, C, ih, iw)`: clean values, the changed rectangle pasted in, padding
        made explicit (so the op runs with padding 0)."""
        src = node_args(node)[0]
        win = self.plan.windows[node]
        ay, ax = win.axes
        g = self.plan.geom[node]
        rows, cols = self._starts(node, pi, pj)
        state = states[src]
        if g.full and isinstance(state, Region) and self.plan.geom[src].full:
            # Every patch changed the whole input: the op on whole tensors (P, C, H, W) -> (P, K, H', W')
            return Region(win.full(state.vals), rows, cols)
        ih = (g.h - 1) * ay.stride + ay.reach + 1
        iw = (g.w - 1) * ax.stride + ax.reach + 1
        # The padded input must reach the last window of the whole output (ceil_mode may need more).
        need_h = (g.H - 1) * ay.stride + ay.reach + 1
        need_w = (g.W - 1) * ax.stride + ax.reach + 1
        where = (src, cache, rows * ay.stride, cols * ax.stride, ih, iw)
        pad = (ay.pad, ax.pad, need_h, need_w)
        x = self._gather(state, *where, pad, win.fill, padded)
        return Region(win.fn(x), rows, cols)

    def _pointwise(
        self, node: fx.Node, states: dict[fx.Node, Any], cache: dict[fx.Node, Any]
    ) -> Region:
        region: list[Region] = []

        def sub(n: fx.Node) -> Any:
            s = states[n]
            if isinstance(s, Region):
                region.append(s)
                return s.vals
            return cache[n]

        args = fx.node.map_arg(node.args, sub)
        kwargs = fx.node.map_arg(node.kwargs, sub)
        if node in self.plan.inplace_relu:  # saves allocating (and page-faulting) a new tensor
            return Region(torch.relu_(args[0]), region[0].rows, region[0].cols)  # type: ignore[arg-type]
        return Region(self._call(node, args, kwargs), region[0].rows, region[0].cols)

    def _combine(
        self,
        node: fx.Node,
        states: dict[fx.Node, Any],
        cache: dict[fx.Node, Any],
        pi: torch.Tensor,
        pj: torch.Tensor,
        padded: dict[tuple[Any, ...], torch.Tensor],
    ) -> Region:
        g = self.plan.geom[node]
        rows, cols = self._starts(node, pi, pj)

        def sub(n: fx.Node) -> Any:
            return self._gather(states[n], n, cache, rows, cols, g.h, g.w, None, 0.0, padded)

        args = fx.node.map_arg(node.args, sub)
        kwargs = fx.node.map_arg(node.kwargs, sub)
        if node in self.plan.inplace_add:
            return Region(args[0].add_(args[1]), rows, cols)  # type: ignore[union-attr,arg-type]
        return Region(self._call(node, args, kwargs), rows, cols)

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
        if node in self.plan.geom:  # a 4-D result: a rectangle that covers everything
            zero = torch.zeros_like(pi)
            return Region(val, zero, zero)
        return Full(val)

    def _to_full(
        self,
        state: Any,
        node: fx.Node,
        cache: dict[fx.Node, Any],
        pi: torch.Tensor,
        pj: torch.Tensor,
        padded: dict[tuple[Any, ...], torch.Tensor],
    ) -> Any:
        if isinstance(state, Full):
            return state.value
        if isinstance(state, Same):
            return cache[node]
        g = self.plan.geom[node]
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
    ) -> torch.Tensor:
        """The patched tensor of `node` inside windows `[r0, r0+ih) x [c0, c0+iw)`, batched.

        Window coordinates are in the padded tensor when `pad = (top, left, need_h, need_w)` is
        given: `top`/`left` fill values before the input, and enough after it to make the padded
        size at least `need_h x need_w`.
        """
        clean = cache[node]  # (1, C, H, W)
        H, W = clean.shape[2:]
        pt, pl = (pad[0], pad[1]) if pad else (0, 0)
        if pad:
            pb, pr = max(0, pad[2] - H - pt), max(0, pad[3] - W - pl)
        else:
            pb, pr = 0, 0
        if isinstance(state, Same):
            key = (node, pt, pb, pl, pr, fill)
            if key not in padded:
                padded[key] = pad_nhwc(clean, (pl, pr, pt, pb), fill)
            return crop_windows(padded[key], r0, c0, ih, iw)
        assert isinstance(state, Region)
        g = self.plan.geom[node]
        P, C = state.vals.shape[:2]
        if g.full:
            src = pad_nhwc(state.vals, (pl, pr, pt, pb), fill)
            if src.shape[2] == ih and src.shape[3] == iw:
                return src
            return crop_windows(src, r0, c0, ih, iw)
        vals = state.vals  # (P, C, h, w)
        if (
            pt == 0
            and pl == 0
            and (ih, iw) == (g.h, g.w)
            and bool((state.rows == r0).all() and (state.cols == c0).all())
        ):
            return vals
        else:
            key = (node, pt, pb, pl, pr, fill)
            if key not in padded:
                padded[key] = pad_nhwc(clean, (pl, pr, pt, pb), fill)
            out = crop_windows(padded[key], r0, c0, ih, iw)  # (P, C, ih, iw), channels-last
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
