"""The torch-function mode of the tracer: a receptive-field :class:`Field` on every tensor produced.

It sees every torch function a traced forward calls (``F.conv2d``, ``torch.flatten``, ``x + y``,
``torch.cat``, slicing), counts the multiply-accumulates of convolutions and matrix products for the
innermost running module, and applies the rules of :mod:`convlens.anatomy.fields` to the geometry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from convlens.anatomy.fields import Field, union
from convlens.anatomy.trace_ops import (
    CATS,
    FIELD_ATTR,
    Call,
    WritesRealTensor,
    adaptive_field,
    arg_or_kwarg,
    cat_shortcut,
    conv_padding,
    einsum_macs,
    fields_of,
    iter_tensors,
    pair,
    same_shape_shortcut,
    spatial_size,
    writes_real_tensor,
)


class GeometryMode(TorchFunctionMode):
    """Attaches a receptive-field :class:`Field` to every tensor a traced forward produces."""

    def __init__(
        self, stack: list[Call], *, through_gates: bool = True, guard: bool = False
    ) -> None:
        super().__init__()
        self.stack = stack
        self.through_gates = through_gates
        self.guard = guard  # refuse in-place writes to real tensors (the model's own state)
        self.refused = False
        self.gate_noted = False
        self.notes: list[str] = []
        self._paused = 0  # > 0 while the tracer's own bookkeeping runs: ops pass straight through
        self._rules: dict[str, Callable[..., Field | None]] = {
            "conv2d": self._conv,
            "max_pool2d": self._pool,
            "_max_pool2d": self._pool,
            "max_pool2d_with_indices": self._pool,
            "avg_pool2d": self._pool,
            "lp_pool2d": self._lp_pool,
            "adaptive_avg_pool2d": self._adaptive,
            "adaptive_max_pool2d": self._adaptive,
            "_adaptive_max_pool2d": self._adaptive,
            "adaptive_max_pool2d_with_indices": self._adaptive,
            "pad": self._pad,
            "__getitem__": self._getitem,
            "flatten": self._flatten,
            "view": self._reshape,
            "reshape": self._reshape,
            "permute": self._permute,
            "transpose": self._transpose,
            "swapaxes": self._transpose,
            "linear": self._linear,
            "matmul": self._linear,
            "cat": self._cat,
            "concat": self._cat,
            "concatenate": self._cat,
            "stack": self._stack,
        }
        for name in (
            "mean",
            "sum",
            "amax",
            "amin",
            "max",
            "min",
            "std",
            "var",
            "logsumexp",
        ):
            self._rules[name] = self._reduce
        self._rules["norm"] = lambda a, k, f, o: self._reduce(a, k, f, o, at=2)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Let torch functions through untouched (the tracer reading shapes, making outputs)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._paused:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.guard and writes_real_tensor(name, args, kwargs):
            self.refused = True  # even if the model catches the exception, this run is void
            raise WritesRealTensor(name)
        if name in CATS:
            out = cat_shortcut(args, kwargs)
        else:
            out = same_shape_shortcut(name, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if type(out) is torch.Tensor:
            outputs = [out]
        elif isinstance(out, torch.Tensor | tuple | list):
            outputs = list(iter_tensors(out))
            if not outputs:
                return out
        else:
            return out  # .shape, .size(), .dim() ...
        self._count_macs(name, args, outputs[0])
        fields = fields_of(args, kwargs)
        if not fields:
            return out
        rule = self._rules.get(name)
        for t in outputs:
            if rule is not None:
                result = rule(args, kwargs, fields, t)
            else:
                result = self._elementwise(name, args, kwargs, fields, t)
            if result is not None:
                setattr(t, FIELD_ATTR, result)
        return out

    # -- bookkeeping -------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.stack[-1].name!r}" if self.stack and self.stack[-1].name else "the model"

    def _note(self, text: str) -> None:
        note = f"{text} in {self._where()}"
        if note not in self.notes:
            self.notes.append(note)

    def _count_macs(self, name: str, args: Sequence[Any], out: torch.Tensor) -> None:
        """Multiply-accumulates per image (the batch is 1): one per weight per output position."""
        if name == "einsum" and self.stack:
            self.stack[-1].macs += einsum_macs(args)
            return
        if not self.stack or len(args) < 2 or not isinstance(args[1], torch.Tensor):
            return
        if name == "conv2d":
            weight = args[1]  # (Cout, Cin / groups, kh, kw)
            self.stack[-1].macs += out.numel() * (weight.numel() // weight.shape[0])
        elif name == "linear":
            self.stack[-1].macs += out.numel() * args[1].shape[-1]  # weight (out, in)
        elif name in ("matmul", "mm", "bmm") and isinstance(args[0], torch.Tensor):
            self.stack[-1].macs += out.numel() * args[0].shape[-1]
        elif name == "scaled_dot_product_attention" and len(args) >= 3:
            q, k = args[0], args[1]  # (..., L, E), (..., S, E); v (..., S, Ev) -> out (..., L, Ev)
            self.stack[-1].macs += q.numel() * k.shape[-2] + out.numel() * k.shape[-2]
        elif name == "multi_head_attention_forward":
            # One fused call (its inner ops are not seen): query (L, N, E), key = value (S, N, E).
            # Projections of q, k, v and the output, then Q K^T and A V over all heads.
            q, k = args[0], args[1]
            e, length, source = q.shape[-1], q.shape[0], k.shape[0]
            batch = q.numel() // (length * e)
            per_image = 2 * length * e * e + 2 * source * e * e + 2 * length * source * e
            self.stack[-1].macs += batch * per_image

    # -- rules: each returns the output's Field (None: no geometry) ---------------------------
    def _input_field(self, args: Sequence[Any]) -> Field | None:
        first = args[0] if args else None
        return getattr(first, FIELD_ATTR, None) if isinstance(first, torch.Tensor) else None

    def _conv(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None:
            return fields[0]
        weight = arg_or_kwarg(args, kwargs, 1, "weight", None)
        kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
        stride = pair(arg_or_kwarg(args, kwargs, 3, "stride", 1))
        dilation = pair(arg_or_kwarg(args, kwargs, 5, "dilation", 1))
        padding_arg = arg_or_kwarg(args, kwargs, 4, "padding", 0)
        padding = conv_padding(padding_arg, kernel, dilation) or pair(padding_arg)
        return f.window(kernel, stride, padding, dilation)

    def _pool(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None:
            return fields[0]
        kernel = pair(arg_or_kwarg(args, kwargs, 1, "kernel_size", 1))
        stride_arg = arg_or_kwarg(args, kwargs, 2, "stride", None)
        stride = kernel if stride_arg is None or stride_arg == [] else pair(stride_arg)
        padding = pair(arg_or_kwarg(args, kwargs, 3, "padding", 0))
        # max_pool2d's 5th argument is dilation; avg_pool2d's is ceil_mode, a bool (no dilation)
        d = arg_or_kwarg(args, kwargs, 4, "dilation", 1)
        dilation = (1, 1) if isinstance(d, bool) else pair(d)
        return f.window(kernel, stride, padding, dilation)

    def _lp_pool(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None:
            return fields[0]
        kernel = pair(arg_or_kwarg(args, kwargs, 2, "kernel_size", 1))
        stride_arg = arg_or_kwarg(args, kwargs, 3, "stride", None)
        stride = kernel if stride_arg is None else pair(stride_arg)
        return f.window(kernel, stride, (0, 0))

    def _adaptive(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None:
            return fields[0]
        return adaptive_field(f, spatial_size(args[0], f), spatial_size(out, f))

    def _pad(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None or f.whole:
            return fields[0]
        pad = list(arg_or_kwarg(args, kwargs, 1, "pad", ()))
        before = [0, 0]
        for axis, dim in enumerate(f.dims):  # pad lists (before, after) pairs from the last dim
            k = 2 * (-dim - 1)
            if k < len(pad):
                before[axis] = int(pad[k])
        return f.shift((-before[0], -before[1]))

    def _getitem(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        src = args[0]
        f = getattr(src, FIELD_ATTR, None)
        if f is None or f.whole:
            return fields[0]
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(not isinstance(i, int | slice | type(None) | type(Ellipsis)) for i in index):
            return Field.everything()  # tensor / boolean indexing: positions are scrambled
        n_real = sum(1 for i in index if isinstance(i, int | slice))
        expanded: list[Any] = []
        for i in index:
            if i is Ellipsis:
                expanded.extend([slice(None)] * (src.dim() - n_real))
            else:
                expanded.append(i)
        expanded.extend([slice(None)] * (src.dim() - sum(1 for i in expanded if i is not None)))
        # Walk the index: where each input dim goes in the output, and what happens to H and W.
        in_dim, out_dim = 0, 0
        position: dict[int, int] = {}
        offset, step = [0, 0], [1, 1]
        spatial = {src.dim() + f.dims[0]: 0, src.dim() + f.dims[1]: 1}
        for i in expanded:
            if i is None:
                out_dim += 1
                continue
            if in_dim in spatial:
                if isinstance(i, int):
                    return Field.everything()  # one row picked out: no longer a map
                start, _, st = i.indices(int(src.shape[in_dim]))
                if st < 1:
                    return Field.everything()
                offset[spatial[in_dim]], step[spatial[in_dim]] = start, st
            if isinstance(i, slice):
                position[in_dim] = out_dim
                out_dim += 1
            in_dim += 1
        n_out = out.dim()
        dims = (position[src.dim() + f.dims[0]] - n_out, position[src.dim() + f.dims[1]] - n_out)
        return f.shift((offset[0], offset[1]), (step[0], step[1])).moved(dims)

    def _flatten(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        src = args[0]
        f = getattr(src, FIELD_ATTR, None)
        if f is None or f.whole:
            return fields[0]
        n = src.dim()
        start = arg_or_kwarg(args, kwargs, 1, "start_dim", 0) % max(n, 1)
        end = arg_or_kwarg(args, kwargs, 2, "end_dim", -1) % max(n, 1)
        if any(start <= n + d <= end for d in f.dims):
            return Field.everything()
        return f  # dims counted from the end are unchanged when leading dims merge

    def _reshape(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        src = args[0]
        f = getattr(src, FIELD_ATTR, None)
        if f is None or f.whole or not isinstance(out, torch.Tensor):
            return fields[0]
        # Kept only if the spatial dims are the trailing ones and stay trailing and unchanged
        # (e.g. ShuffleNet's channel shuffle); anything else mixes positions.
        if f.dims == (-2, -1) and out.dim() >= 2 and tuple(out.shape[-2:]) == tuple(src.shape[-2:]):
            return f
        return Field.everything()

    def _permute(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        src = args[0]
        f = getattr(src, FIELD_ATTR, None)
        if f is None or f.whole:
            return fields[0]
        if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)):
            given = args[1:]  # x.permute(0, 2, 3, 1)
        else:
            given = args[1] if len(args) == 2 else kwargs.get("dims", ())
        n = src.dim()
        order = [int(d) % n for d in given]
        return f.moved((order.index(n + f.dims[0]) - n, order.index(n + f.dims[1]) - n))

    def _transpose(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        src = args[0]
        f = getattr(src, FIELD_ATTR, None)
        if f is None or f.whole:
            return fields[0]
        n = src.dim()
        a = int(arg_or_kwarg(args, kwargs, 1, "dim0", 0)) % n
        b = int(arg_or_kwarg(args, kwargs, 2, "dim1", 1)) % n
        swap = {a: b, b: a}
        h, w = (swap.get(n + d, n + d) - n for d in f.dims)
        return f.moved((h, w))

    def _linear(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None or f.whole or -1 in f.dims:
            return Field.everything()  # the weights mix every position of the last dim
        return self._elementwise("linear", args, kwargs, fields, out)

    def _reduce(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        fields: list[Field],
        out: Any,
        at: int = 1,  # position of `dim` (2 for norm(input, p, dim))
    ) -> Field | None:
        src = args[0] if args else None
        f = getattr(src, FIELD_ATTR, None) if isinstance(src, torch.Tensor) else None
        if f is None or f.whole or not isinstance(src, torch.Tensor):
            return fields[0]
        dim = arg_or_kwarg(args, kwargs, at, "dim", None)
        if isinstance(dim, torch.Tensor):  # torch.max(a, b): elementwise, not a reduction
            return self._elementwise("max/min", args, kwargs, fields, out)
        if dim is None or isinstance(dim, bool) or (not isinstance(dim, int) and len(dim) == 0):
            return Field.everything()  # over every dimension
        n = src.dim()
        reduced = {int(d) % n for d in ([dim] if isinstance(dim, int) else dim)}
        if any(n + d in reduced for d in f.dims):
            return Field.everything()
        keepdim = bool(arg_or_kwarg(args, kwargs, at + 1, "keepdim", False))
        if keepdim:
            return f
        after = [sum(1 for r in reduced if r > n + d) for d in f.dims]
        return f.moved((f.dims[0] + after[0], f.dims[1] + after[1]))

    def _cat(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        tensors = [
            t for t in arg_or_kwarg(args, kwargs, 0, "tensors", []) if isinstance(t, torch.Tensor)
        ]
        dim = int(arg_or_kwarg(args, kwargs, 1, "dim", 0))
        with_field = [(t, getattr(t, FIELD_ATTR, None)) for t in tensors]
        for t, f in with_field:
            if f is not None and not f.whole and dim % t.dim() in {t.dim() + d for d in f.dims}:
                return Field.everything()  # joined along height or width
        return self._union([f for _, f in with_field if f is not None], "torch.cat")

    def _stack(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        tensors = [
            t for t in arg_or_kwarg(args, kwargs, 0, "tensors", []) if isinstance(t, torch.Tensor)
        ]
        dim = int(arg_or_kwarg(args, kwargs, 1, "dim", 0))
        found = [f for t in tensors if (f := getattr(t, FIELD_ATTR, None)) is not None]
        merged = self._union(found, "torch.stack")
        if merged.whole or not tensors:
            return merged
        n = tensors[0].dim() + 1
        dim %= n
        return merged.moved(tuple(d - 1 if n + d - 1 < dim else d for d in merged.dims))  # type: ignore[arg-type]

    def _elementwise(
        self, name: str, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        """Default rule: same H and W in as out (broadcasting allowed) means a union of the inputs."""
        if not isinstance(out, torch.Tensor):
            return None
        live = [f for f in fields if not f.whole]
        if len(live) < len(fields):
            if live and self._is_gate(args, kwargs, live[0]):
                if not self.through_gates:
                    return self._union(live, name)
                if not self.gate_noted:
                    self.gate_noted = True
                    self._note(
                        "a global gate (a 1x1 map computed from the whole input, e.g. "
                        "squeeze-and-excitation) scales the feature map; the units after it see the "
                        "whole input (through_gates=False, or --local-rf, reports their local field)"
                    )
            return Field.everything()
        for t in iter_tensors((args, kwargs)):
            f = getattr(t, FIELD_ATTR, None)
            if f is None:
                continue
            src, dst = spatial_size(t, f), spatial_size(out, f)
            if dst is None or (src != dst and src != (1, 1)):
                if name in ("interpolate", "upsample", "conv_transpose2d", "pixel_shuffle"):
                    self._note(
                        f"{name} (upsampling) is not modelled; its units are reported as seeing the whole input"
                    )
                else:
                    self._note(
                        f"{name or 'an op'} changes the feature map's size in a way convlens does not "
                        "model; its units are reported as seeing the whole input"
                    )
                return Field.everything()
        return self._union(fields, name)

    def _is_gate(self, args: Sequence[Any], kwargs: dict[str, Any], local: Field) -> bool:
        """Every whole-input operand is a 1x1 map broadcast over the local one (x * gate)."""
        for t in iter_tensors((args, kwargs)):
            f = getattr(t, FIELD_ATTR, None)
            if f is not None and f.whole and spatial_size(t, local) not in (None, (1, 1)):
                return False
        return True

    def _union(self, fields: list[Field], op: str) -> Field:
        if not fields:
            return Field.everything()
        merged, disagreement = union(fields)
        if disagreement:
            self._note(f"{disagreement} at {op}; reporting the union")
        return merged
