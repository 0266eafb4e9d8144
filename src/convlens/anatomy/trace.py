"""One forward pass without data: shapes, MACs and receptive fields of every module call.

:func:`trace` runs the model on the meta device (tensors with a shape and no storage, so no
arithmetic: ResNet-152 at 224x224 takes about a tenth of a second) and watches it two ways:

* forward pre-/post-hooks on every module record which module is running and what it returns;
* a ``TorchFunctionMode`` sees every torch function the forward calls, including the functional ones
  inside ``forward`` methods (``torch.flatten``, ``F.relu``, ``x + y``, ``torch.cat``, ``F.max_pool2d``),
  counts the multiply-accumulates of convolutions and matrix products for the innermost running module,
  and attaches a :class:`~convlens.anatomy.receptive_field.Field` to every tensor it produces.

The user's module is not copied or changed: its parameters and buffers are swapped for meta tensors by
``torch.func.functional_call`` for the duration of the call, and its train/eval flags are restored.
If a model cannot run on the meta device (data-dependent control flow, a CPU constant held outside
its buffers), the trace runs once on zeros on the model's own device instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens.anatomy.receptive_field import RF, Field, union
from convlens.errors import ConvlensError

_ATTR = "_convlens_field"  # where a traced tensor carries its Field


@dataclass
class Call:
    """One call of one module during the traced forward pass."""

    name: str  # as in model.named_modules()
    module: nn.Module
    call: int  # 1 for the module's first call, 2 for its second...
    order: int  # position of the call's start in the forward pass
    input_shape: tuple[int, ...] | None = None  # first tensor argument, batch included
    output_shape: tuple[int, ...] | None = None  # first tensor output, batch included
    macs: int = 0  # multiply-accumulates of the ops run directly by this module (not its children)
    field: Field | None = None
    rf: RF | None = None


@dataclass
class Trace:
    """What :func:`trace` saw: the module calls in forward order, and notes on the geometry."""

    input_size: tuple[int, int, int]
    calls: list[Call]
    notes: list[str] = field(default_factory=list)
    output_shape: tuple[int, ...] | None = None
    on_meta: bool = True
    root: Call | None = None  # the model's own call: its functional ops' MACs, its own parameters


def trace(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    warn: bool = True,
    through_gates: bool = True,
) -> Trace:
    """Run `model` once on a (1, C, H, W) input without data; see the module docstring.

    `through_gates`: see :func:`convlens.anatomy.receptive_field.receptive_fields`.

    Raises:
        ConvlensError: the model fails on an input of this size (the message names the module).
    """
    c, h, w = input_size
    if min(c, h, w) < 1:
        raise ConvlensError(f"input size must be positive, got {c}x{h}x{w}")
    training = [(m, m.training) for m in model.modules()]
    model.eval()  # BatchNorm on a 1x1 map and GoogLeNet's auxiliary heads want eval mode
    try:
        try:
            result = _trace_once(model, input_size, on_meta=True, through_gates=through_gates)
        except ConvlensError:
            raise
        except Exception:  # not all models run on meta; zeros on the real device decide
            result = _trace_once(model, input_size, on_meta=False, through_gates=through_gates)
    finally:
        for m, flag in training:
            m.training = flag
    if warn:
        for note in result.notes:
            warnings.warn(f"receptive field: {note}", stacklevel=3)
    return result


def _trace_once(
    model: nn.Module, input_size: tuple[int, int, int], *, on_meta: bool, through_gates: bool
) -> Trace:
    c, h, w = input_size
    names: dict[int, str] = {id(m): n for n, m in model.named_modules()}
    calls: list[Call] = []
    stack: list[Call] = []
    times_called: dict[int, int] = {}

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        k = times_called[id(module)] = times_called.get(id(module), 0) + 1
        call = Call(names[id(module)], module, k, len(calls))
        first = next(_tensors(args), None)
        call.input_shape = tuple(first.shape) if first is not None else None
        calls.append(call)
        stack.append(call)

    def post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        call = stack.pop()
        out = next(_tensors(output), None)
        if out is not None:
            call.output_shape = tuple(out.shape)
            call.field = getattr(out, _ATTR, None)
            if call.field is not None:
                call.rf = call.field.to_rf((h, w))

    mode = _GeometryMode(stack, through_gates=through_gates)
    handles = []
    for m in {id(m): m for m in model.modules()}.values():
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(post_hook))
    try:
        if on_meta:
            x = torch.empty(1, c, h, w, device="meta")
            state = _meta_state(model)
            with torch.no_grad(), mode:
                setattr(x, _ATTR, Field.image())
                y = torch.func.functional_call(model, state, (x,), strict=False)
        else:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            dtype = next((p.dtype for p in model.parameters()), torch.float32)
            x = torch.zeros(1, c, h, w, device=device, dtype=dtype)
            with torch.no_grad(), mode:
                setattr(x, _ATTR, Field.image())
                y = model(x)
    except Exception as e:
        if on_meta:
            raise
        raise _explain_failure(model, input_size, stack, e) from e
    finally:
        for handle in handles:
            handle.remove()
    out = next(_tensors(y), None)
    return Trace(
        input_size=input_size,
        calls=[call for call in calls if call.name != ""],
        root=next((call for call in calls if call.name == ""), None),
        notes=mode.notes,
        output_shape=tuple(out.shape) if out is not None else None,
        on_meta=on_meta,
    )


def _meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer; a tensor shared by two names stays shared."""
    same: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, t in named:
        if id(t) not in same:
            same[id(t)] = torch.empty_like(t, device="meta")
        state[name] = same[id(t)]
    return state


def _explain_failure(
    model: nn.Module, input_size: tuple[int, int, int], stack: list[Call], error: Exception
) -> ConvlensError:
    """Turn a failure inside the forward pass into a message naming the module that failed."""
    c, h, w = input_size
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = f"{type(model).__name__}.forward"
    got = ""
    if stack and stack[-1].name:  # the innermost named module running when it failed
        call = stack[-1]
        where = f"layer {call.name!r} ({type(call.module).__name__})"
        if call.input_shape is not None:
            got = f", which receives a {'x'.join(map(str, call.input_shape[1:]))} input"
    small = (
        "too small",
        "can't be greater than",
        "non-positive",
        "negative dimension",
        "size <= 0",
    )
    if any(s in message for s in small) or "Output size" in message:
        return ConvlensError(
            f"input {c}x{h}x{w} is too small for {type(model).__name__}: the feature map collapses "
            f"at {where}{got} ({message}); use a larger input."
        )
    return ConvlensError(
        f"{type(model).__name__} cannot run on a {c}x{h}x{w} input: {where}{got} fails: {message}"
    )


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in `obj` (a tensor, or nested tuples / lists / dicts of them), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _einsum_macs(args: Sequence[Any]) -> int:
    """Multiply-accumulates of a two-operand einsum: the product of the sizes of all its indices."""
    if not args or not isinstance(args[0], str):
        return 0
    operands = (
        list(args[1][0:]) if len(args) == 2 and isinstance(args[1], list | tuple) else args[1:]
    )
    inputs = args[0].replace(" ", "").split("->")[0].split(",")
    if len(inputs) != 2 or len(operands) != 2 or "." in args[0]:
        return 0  # one operand (a sum or a transpose) or ellipses: not counted
    sizes: dict[str, int] = {}
    for letters, t in zip(inputs, operands, strict=True):
        if not isinstance(t, torch.Tensor) or len(letters) != t.dim():
            return 0
        sizes.update(zip(letters, (int(d) for d in t.shape), strict=True))
    macs = 1
    for size in sizes.values():
        macs *= size
    return macs


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _spatial(t: torch.Tensor, f: Field) -> tuple[int, int] | None:
    """The (H, W) sizes of `t` at the field's dimensions, or None if `t` has no such dims."""
    if t.dim() < -min(f.dims):
        return None
    return int(t.shape[f.dims[0]]), int(t.shape[f.dims[1]])


# Shape-preserving ops whose meta kernels are Python reference implementations (torch._refs):
# on ResNet-152 they took two thirds of a summary. Their output is a tensor like their input.
_UNARY_SAME_SHAPE = frozenset(
    {"relu", "relu_", "relu6", "batch_norm", "dropout", "gelu", "silu", "sigmoid", "tanh",
     "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu"}
)  # fmt: skip
_BINARY_SAME_SHAPE = frozenset({"add", "add_", "__add__", "__iadd__", "__radd__"})


def _same_shape_shortcut(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The output of a shape-preserving op on meta tensors, without running its meta kernel.

    Returns None when the shortcut does not apply (then the op runs as usual). In-place forms
    return their input, as the op would.
    """
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return None
    x = args[0]
    inplace = name.endswith("_") or name == "__iadd__" or kwargs.get("inplace") is True
    if name in _UNARY_SAME_SHAPE:
        if name in (
            "relu",
            "relu6",
            "hardtanh",
            "elu",
            "leaky_relu",
            "hardswish",
            "hardsigmoid",
            "silu",
        ):
            inplace = inplace or (len(args) > 1 and args[-1] is True)
        return x if inplace else torch.empty_like(x)
    if (
        name in _BINARY_SAME_SHAPE
        and len(args) == 2
        and not kwargs
        and isinstance(args[1], torch.Tensor)
        and args[1].is_meta
        and args[1].shape == x.shape
        and args[1].dtype == x.dtype
    ):
        return x if inplace else torch.empty_like(x)
    return None


class _GeometryMode(TorchFunctionMode):
    """Attaches a receptive-field :class:`Field` to every tensor a traced forward produces."""

    def __init__(self, stack: list[Call], *, through_gates: bool = True) -> None:
        super().__init__()
        self.stack = stack
        self.through_gates = through_gates
        self.gate_noted = False
        self.notes: list[str] = []
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

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        out = _same_shape_shortcut(name, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor | tuple | list):
            return out  # .shape, .size(), .dim() ...
        outputs = list(_tensors(out))
        if not outputs:
            return out
        self._count_macs(name, args, outputs[0])
        fields = [f for t in _tensors((args, kwargs)) if (f := getattr(t, _ATTR, None)) is not None]
        if not fields:
            return out
        rule = self._rules.get(name)
        for t in outputs:
            if rule is not None:
                result = rule(args, kwargs, fields, t)
            else:
                result = self._elementwise(name, args, kwargs, fields, t)
            if result is not None:
                setattr(t, _ATTR, result)
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
            self.stack[-1].macs += _einsum_macs(args)
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
        return getattr(first, _ATTR, None) if isinstance(first, torch.Tensor) else None

    def _conv(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None:
            return fields[0]
        weight = _arg(args, kwargs, 1, "weight", None)
        kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
        stride = _pair(_arg(args, kwargs, 3, "stride", 1))
        dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
        padding_arg = _arg(args, kwargs, 4, "padding", 0)
        if isinstance(padding_arg, str):  # "valid" or "same" (stride 1): the left/top share
            total = [dilation[a] * (kernel[a] - 1) for a in (0, 1)]
            padding = (0, 0) if padding_arg == "valid" else (total[0] // 2, total[1] // 2)
        else:
            padding = _pair(padding_arg)
        return f.window(kernel, stride, padding, dilation)

    def _pool(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None:
            return fields[0]
        kernel = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
        stride_arg = _arg(args, kwargs, 2, "stride", None)
        stride = kernel if stride_arg is None or stride_arg == [] else _pair(stride_arg)
        padding = _pair(_arg(args, kwargs, 3, "padding", 0))
        # max_pool2d's 5th argument is dilation; avg_pool2d's is ceil_mode, a bool (no dilation)
        d = _arg(args, kwargs, 4, "dilation", 1)
        dilation = (1, 1) if isinstance(d, bool) else _pair(d)
        return f.window(kernel, stride, padding, dilation)

    def _lp_pool(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None:
            return fields[0]
        kernel = _pair(_arg(args, kwargs, 2, "kernel_size", 1))
        stride_arg = _arg(args, kwargs, 3, "stride", None)
        stride = kernel if stride_arg is None else _pair(stride_arg)
        return f.window(kernel, stride, (0, 0))

    def _adaptive(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None:
            return fields[0]
        src = _spatial(args[0], f)
        dst = _spatial(out, f)
        if src is None or dst is None:
            return Field.everything()
        if src == dst:
            return f
        if dst == (1, 1):
            return Field.everything()
        if src[0] % dst[0] == 0 and src[1] % dst[1] == 0:  # then it is an ordinary pooling window
            kernel = (src[0] // dst[0], src[1] // dst[1])
            return f.window(kernel, kernel, (0, 0))
        # Unequal windows (e.g. VGG's 7x7 pooling of a 2x2 map): no single jump describes them; the
        # units are reported as seeing the whole input, which is what the classifier after it sees.
        return Field.everything()

    def _pad(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        f = self._input_field(args)
        if f is None or f.whole:
            return fields[0]
        pad = list(_arg(args, kwargs, 1, "pad", ()))
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
        f = getattr(src, _ATTR, None)
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
        f = getattr(src, _ATTR, None)
        if f is None or f.whole:
            return fields[0]
        n = src.dim()
        start = _arg(args, kwargs, 1, "start_dim", 0) % max(n, 1)
        end = _arg(args, kwargs, 2, "end_dim", -1) % max(n, 1)
        if any(start <= n + d <= end for d in f.dims):
            return Field.everything()
        return f  # dims counted from the end are unchanged when leading dims merge

    def _reshape(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        src = args[0]
        f = getattr(src, _ATTR, None)
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
        f = getattr(src, _ATTR, None)
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
        f = getattr(src, _ATTR, None)
        if f is None or f.whole:
            return fields[0]
        n = src.dim()
        a = int(_arg(args, kwargs, 1, "dim0", 0)) % n
        b = int(_arg(args, kwargs, 2, "dim1", 1)) % n
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
        f = getattr(src, _ATTR, None) if isinstance(src, torch.Tensor) else None
        if f is None or f.whole or not isinstance(src, torch.Tensor):
            return fields[0]
        dim = _arg(args, kwargs, at, "dim", None)
        if isinstance(dim, torch.Tensor):  # torch.max(a, b): elementwise, not a reduction
            return self._elementwise("max/min", args, kwargs, fields, out)
        if dim is None or isinstance(dim, bool) or (not isinstance(dim, int) and len(dim) == 0):
            return Field.everything()  # over every dimension
        n = src.dim()
        reduced = {int(d) % n for d in ([dim] if isinstance(dim, int) else dim)}
        if any(n + d in reduced for d in f.dims):
            return Field.everything()
        keepdim = bool(_arg(args, kwargs, at + 1, "keepdim", False))
        if keepdim:
            return f
        after = [sum(1 for r in reduced if r > n + d) for d in f.dims]
        return f.moved((f.dims[0] + after[0], f.dims[1] + after[1]))

    def _cat(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        tensors = [t for t in _arg(args, kwargs, 0, "tensors", []) if isinstance(t, torch.Tensor)]
        dim = int(_arg(args, kwargs, 1, "dim", 0))
        with_field = [(t, getattr(t, _ATTR, None)) for t in tensors]
        for t, f in with_field:
            if f is not None and not f.whole and dim % t.dim() in {t.dim() + d for d in f.dims}:
                return Field.everything()  # joined along height or width
        return self._union([f for _, f in with_field if f is not None], "torch.cat")

    def _stack(
        self, args: Sequence[Any], kwargs: dict[str, Any], fields: list[Field], out: Any
    ) -> Field | None:
        tensors = [t for t in _arg(args, kwargs, 0, "tensors", []) if isinstance(t, torch.Tensor)]
        dim = int(_arg(args, kwargs, 1, "dim", 0))
        found = [f for t in tensors if (f := getattr(t, _ATTR, None)) is not None]
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
        for t in _tensors((args, kwargs)):
            f = getattr(t, _ATTR, None)
            if f is None:
                continue
            src, dst = _spatial(t, f), _spatial(out, f)
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
        for t in _tensors((args, kwargs)):
            f = getattr(t, _ATTR, None)
            if f is not None and f.whole and _spatial(t, local) not in (None, (1, 1)):
                return False
        return True

    def _union(self, fields: list[Field], op: str) -> Field:
        if not fields:
            return Field.everything()
        merged, disagreement = union(fields)
        if disagreement:
            self._note(f"{disagreement} at {op}; reporting the union")
        return merged
