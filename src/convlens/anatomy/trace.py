"""One forward pass without data: shapes, MACs and receptive fields of every module call.

:func:`trace` runs the model on a meta input (a tensor with a shape and no storage, so no
arithmetic: ResNet-152 at 224x224 takes about ten milliseconds) and watches it two ways:

* every module's ``forward`` is wrapped, for the duration of the call, to record which module is
  running and what it returns; the common leaf layers (``Conv2d``, ``BatchNorm2d``, ``Linear``,
  pooling, activations, dropout, ``Identity``) are not run at all: their output shape, MACs and
  receptive field come from the layer arithmetic (:func:`_leaf_rule`), and the output is an empty
  meta tensor of that shape;
* a ``TorchFunctionMode`` sees every torch function the rest of the forward calls, including the
  functional ones inside ``forward`` methods (``torch.flatten``, ``F.relu``, ``x + y``, ``torch.cat``,
  ``F.max_pool2d``), counts the multiply-accumulates of convolutions and matrix products for the
  innermost running module, and attaches a :class:`~convlens.anatomy.receptive_field.Field` to every
  tensor it produces.

The user's module is not copied and is left as it was: its ``forward`` attributes and train/eval
flags are restored, and its parameters are never written. Three ways to run, the first that works:

1. a meta input through the model as it is (its parameters stay where they are: the arithmetic of
   the leaf layers needs only their shapes), aborted if an op would write to a real tensor;
2. the same with every parameter and buffer swapped for a meta stand-in by
   ``torch.func.functional_call`` (for models whose functional ops mix parameters with the input,
   e.g. ViT's class token);
3. zeros on the model's own device, for models that cannot run on meta (data-dependent control
   flow, a CPU constant held outside its buffers); its failure is the message the user sees.
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
_META = torch.device("meta")
# Switches every torch function mode off (ours included) while the wrappers read shapes and make
# outputs: under the mode, even ``x.shape`` is a Python call.
_no_torch_function = torch._C.DisableTorchFunction


@dataclass(slots=True)
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
    modules: list[tuple[str, nn.Module]] = field(default_factory=list)  # as model.named_modules()


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
    modules = named_modules(model)
    training = [m.training for _, m in modules]
    if any(training):
        model.eval()  # BatchNorm on a 1x1 map and GoogLeNet's auxiliary heads want eval mode
    try:
        result = None
        for how in ("meta", "meta-state"):
            try:
                result = _trace_once(model, modules, input_size, how, through_gates)
                break
            except ConvlensError:
                raise
            except Exception:
                continue  # the next way decides; the last one explains a failure
        if result is None:
            result = _trace_once(model, modules, input_size, "device", through_gates)
    finally:
        for (_, m), flag in zip(modules, training, strict=True):
            if m.training != flag:
                m.training = flag
    if warn:
        for note in result.notes:
            warnings.warn(f"receptive field: {note}", stacklevel=3)
    return result


def named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``list(model.named_modules())``: each module once, under its first name, in pre-order."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    todo: list[tuple[str, nn.Module]] = [("", model)]
    while todo:
        prefix, module = todo.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append((prefix, module))
        children = [
            (f"{prefix}.{name}" if prefix else name, child)
            for name, child in module._modules.items()
            if child is not None
        ]
        todo.extend(reversed(children))
    return found


class _WritesRealTensor(Exception):
    """Raised to abort a trace whose forward would write into a real tensor (a buffer...)."""


def _trace_once(
    model: nn.Module,
    modules: list[tuple[str, nn.Module]],
    input_size: tuple[int, int, int],
    how: str,
    through_gates: bool,
) -> Trace:
    """One traced forward pass; `how` is "meta", "meta-state" or "device" (module docstring)."""
    c, h, w = input_size
    calls: list[Call] = []
    stack: list[Call] = []
    mode = _GeometryMode(stack, through_gates=through_gates, guard=how == "meta")
    rf_of: dict[int, tuple[Field, RF]] = {}  # id(field) -> (field, its RF); keeps fields alive

    def finish(call: Call, output: Any) -> None:
        """Record what `call` returned (with torch functions switched off)."""
        out = output if type(output) is torch.Tensor else next(_tensors(output), None)
        if out is not None:
            call.output_shape = tuple(out.shape)
            f = call.field = getattr(out, _ATTR, None)
            if f is not None:
                known = rf_of.get(id(f))
                if known is None or known[0] is not f:
                    known = rf_of[id(f)] = (f, f.to_rf((h, w)))
                call.rf = known[1]

    def wrap(name: str, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        # The arithmetic stands in for the class's own forward only: not on real data, nor in front
        # of a forward the user set on the instance (e.g. accelerate's hooks).
        own = "forward" in module.__dict__
        leaf = _leaf_rule(module) if how != "device" and not own else None
        times = 0

        def traced_forward(*args: Any, **kwargs: Any) -> Any:
            nonlocal times
            times += 1
            with _no_torch_function():
                call = Call(name, module, times, len(calls))
                calls.append(call)
                x = args[0] if args else None
                if type(x) is torch.Tensor:
                    call.input_shape = tuple(x.shape)
                    made = None
                    if leaf is not None and len(args) == 1 and not kwargs:
                        made = leaf(x, getattr(x, _ATTR, None))
                    if made is not None:  # the layer's arithmetic instead of its forward
                        output, out_field, call.macs = made
                        if out_field is not None:
                            setattr(output, _ATTR, out_field)
                        finish(call, output)
                        return output
                elif (first := next(_tensors(args), None)) is not None:
                    call.input_shape = tuple(first.shape)
                stack.append(call)
            output = forward(*args, **kwargs)
            with _no_torch_function():
                stack.pop()
                finish(call, output)
            return output

        return traced_forward

    # The wrappers go into the modules' instance dicts, in front of their class's forward, and come
    # out in the `finally`; one the user set there before is called through and put back.
    own_forward = [m.__dict__.get("forward") for _, m in modules]
    y: Any = None
    try:
        for name, m in modules:
            m.__dict__["forward"] = wrap(name, m, m.forward)
        if how == "device":
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            dtype = next((p.dtype for p in model.parameters()), torch.float32)
            x = torch.zeros(1, c, h, w, device=device, dtype=dtype)
            with torch.no_grad(), mode:
                setattr(x, _ATTR, Field.image())
                y = model(x)
        else:
            x = torch.empty(1, c, h, w, device=_META)
            setattr(x, _ATTR, Field.image())
            with torch.no_grad(), mode:
                if how == "meta":
                    y = model(x)
                else:
                    y = torch.func.functional_call(model, _meta_state(model), (x,), strict=False)
    except Exception as e:
        if how != "device":
            raise
        raise _explain_failure(model, input_size, stack, e) from e
    finally:
        for (_, m), before in zip(modules, own_forward, strict=True):
            if before is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = before
    if mode.refused:
        raise _WritesRealTensor("the model caught the refusal of an in-place write")
    out = next(_tensors(y), None)
    return Trace(
        input_size=input_size,
        calls=[call for call in calls if call.name != ""],
        root=next((call for call in calls if call.name == ""), None),
        notes=mode.notes,
        output_shape=tuple(out.shape) if out is not None else None,
        on_meta=how != "device",
        modules=modules,
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


def _like(x: torch.Tensor) -> torch.Tensor:
    """A new meta tensor like `x` (``torch.empty_like`` runs a Python reference on meta: 30 us)."""
    return _new(x.shape, x) if x.is_contiguous() else torch.empty_like(x)


_CATS = frozenset({"cat", "concat", "concatenate"})


def _cat_shortcut(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``torch.cat`` of contiguous meta tensors by arithmetic (its meta kernel is Python: 0.2 ms).

    Only the plain case: one dtype, one rank, equal sizes off the joined dim. Anything else (and
    every error) is left to the kernel.
    """
    tensors = _arg(args, kwargs, 0, "tensors", None)
    dim = _arg(args, kwargs, 1, "dim", 0)
    if set(kwargs) - {"tensors", "dim"} or not isinstance(tensors, list | tuple) or not tensors:
        return None
    first = tensors[0]
    if type(first) is not torch.Tensor or not isinstance(dim, int) or first.dim() == 0:
        return None
    n = first.dim()
    if not -n <= dim < n:
        return None
    dim %= n
    shape = list(first.shape)
    joined = 0
    for t in tensors:
        if type(t) is not torch.Tensor or not t.is_meta or t.dtype != first.dtype:
            return None
        if t.dim() != n or not t.is_contiguous():
            return None
        if any(t.shape[d] != shape[d] for d in range(n) if d != dim):
            return None
        joined += t.shape[dim]
    shape[dim] = joined
    return torch.empty(shape, dtype=first.dtype, device=_META)


def _fits_batch_norm(x: torch.Tensor, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """F.batch_norm(input, running_mean, running_var, weight, bias, ...): one value per channel."""
    per_channel = [
        *args[1:5],
        *(kwargs.get(k) for k in ("running_mean", "running_var", "weight", "bias")),
    ]
    return x.dim() >= 2 and all(
        t.numel() == x.shape[1] for t in per_channel if isinstance(t, torch.Tensor)
    )


def _same_shape_shortcut(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The output of a shape-preserving op on meta tensors, without running its meta kernel.

    Returns None when the shortcut does not apply (then the op runs as usual). In-place forms
    return their input, as the op would.
    """
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return None
    x = args[0]
    inplace = name.endswith("_") or name == "__iadd__" or kwargs.get("inplace") is True
    if name == "batch_norm" and not _fits_batch_norm(x, args, kwargs):
        return None  # the meta kernel says what is wrong
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
        return x if inplace else _like(x)
    if (
        name in _BINARY_SAME_SHAPE
        and len(args) == 2
        and not kwargs
        and isinstance(args[1], torch.Tensor)
        and args[1].is_meta
        and args[1].shape == x.shape
        and args[1].dtype == x.dtype
    ):
        return x if inplace else _like(x)
    return None


# -- leaf layers by arithmetic ---------------------------------------------------------------------
# A leaf rule takes the meta input x of one call (with its Field, or None) and returns the output
# (an empty meta tensor of the right shape), its Field and the call's MACs; or None, and then the
# layer runs as usual (under the mode). Each rule accepts only the cases whose result it knows to be
# the layer's own: contiguous (N, C, H, W) meta inputs, matching channels and dtypes, sizes that do
# not collapse. Anything else (including every error case) goes to the real forward, which raises.
LeafResult = tuple[torch.Tensor, Field | None, int]
LeafRule = Callable[[torch.Tensor, Field | None], LeafResult | None]


def _leaf_rule(module: nn.Module) -> LeafRule | None:
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


def _is_nchw(x: torch.Tensor) -> bool:
    return x.is_meta and x.dim() == 4 and x.is_contiguous()


def _new(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=_META)


def _same_shape_rule(inplace: bool) -> LeafRule:
    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not (x.is_meta and x.is_contiguous()):
            return None
        return (x if inplace else _new(x.shape, x)), f, 0

    return rule


def _batch_norm_rule(bn: nn.BatchNorm2d) -> LeafRule | None:
    if bn.training:
        return None  # batch statistics and running-stat updates: the real forward
    channels = bn.num_features

    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not _is_nchw(x) or x.shape[1] != channels:
            return None
        return _new(x.shape, x), f, 0

    return rule


def _conv_rule(conv: nn.Conv2d) -> LeafRule | None:
    weight, bias = conv.weight, conv.bias  # (Cout, Cin / groups, kh, kw), (Cout,)
    cout, cin, groups = conv.out_channels, conv.in_channels, conv.groups
    kernel, stride, dilation = _ints(conv.kernel_size), _ints(conv.stride), _ints(conv.dilation)
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
    padding = _conv_padding(conv.padding, kernel, dilation)
    if padding is None:
        return None
    dtype = weight.dtype
    per_output = weight.numel() // cout  # weights per output element: Cin / groups x kh x kw
    reach = [dilation[a] * (kernel[a] - 1) + 1 - 2 * padding[a] for a in (0, 1)]

    def rule(x: torch.Tensor, f: Field | None) -> LeafResult | None:
        if not _is_nchw(x) or x.shape[1] != cin or x.dtype != dtype:
            return None
        n, _, h, w = x.shape
        if same:
            oh, ow = h, w
        else:  # (H + 2P - D (K - 1) - 1) // S + 1
            oh, ow = (h - reach[0]) // stride[0] + 1, (w - reach[1]) // stride[1] + 1
        if oh < 1 or ow < 1:
            return None
        out = torch.empty((n, cout, oh, ow), dtype=dtype, device=_META)
        field = f.window(kernel, stride, padding, dilation) if f is not None else None
        return out, field, n * cout * oh * ow * per_output

    return rule


def _pool_rule(pool: nn.MaxPool2d | nn.AvgPool2d) -> LeafRule | None:
    kernel = _ints(pool.kernel_size)
    stride = _ints(pool.stride if pool.stride is not None else pool.kernel_size)
    padding = _ints(pool.padding)
    dilation = _ints(pool.dilation) if isinstance(pool, nn.MaxPool2d) else (1, 1)
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
        if not _is_nchw(x):
            return None
        n, c, h, w = x.shape
        oh, ow = size(h, 0), size(w, 1)
        if oh < 1 or ow < 1:
            return None
        field = f.window(kernel, stride, padding, dilation) if f is not None else None
        return _new((n, c, oh, ow), x), field, 0

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
        if not _is_nchw(x) or x.shape[-2] < 1 or x.shape[-1] < 1:
            return None
        n, c, h, w = x.shape
        oh = h if wanted[0] is None else wanted[0]
        ow = w if wanted[1] is None else wanted[1]
        out = _new((n, c, oh, ow), x)
        if f is None:
            return out, None, 0
        return out, _adaptive_field(f, _spatial(x, f), _spatial(out, f)), 0

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
        out = torch.empty((*x.shape[:-1], n_out), dtype=dtype, device=_META)
        if f is not None and (f.whole or -1 in f.dims):
            f = Field.everything()  # the weights mix every position of the last dim
        return out, f, out.numel() * n_in

    return rule


def _conv_padding(
    padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int] | None:
    """A convolution's padding as (top, left): "valid" none, "same" (stride 1) the top/left share of
    the total, ints as given; None for anything else."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        return dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2
    return None if isinstance(padding, str) else _ints(padding)


def _ints(v: Any) -> tuple[int, int] | None:
    """A layer's int-or-pair argument as (h, w), or None if it is anything else (a string...)."""
    if isinstance(v, int):
        return v, v
    if isinstance(v, tuple | list) and len(v) in (1, 2) and all(isinstance(i, int) for i in v):
        return (v[0], v[-1])
    return None


def _adaptive_field(f: Field, src: tuple[int, int] | None, dst: tuple[int, int] | None) -> Field:
    """The field after adaptive pooling from an `src` to a `dst` (height, width) map."""
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


# In-place forms without the trailing underscore; "__set__" is an attribute write (``t.data = ...``).
_INPLACE_DUNDERS = frozenset(
    {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
     "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__", "__setitem__",
     "__set__"}
)  # fmt: skip


def _writes_real_tensor(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """The op writes into a tensor that is not on meta (an in-place op, or ``out=``)."""
    if "out" in kwargs:
        target: Any = kwargs["out"]
    elif (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS:
        target = args[0] if args else None
    else:
        return False
    return any(not t.is_meta for t in _tensors(target))


def _fields(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Field]:
    """The Fields carried by the tensors among an op's arguments, in order."""
    found = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if (f := getattr(a, _ATTR, None)) is not None:
                found.append(f)
        elif isinstance(a, tuple | list | dict):
            found.extend(f for t in _tensors(a) if (f := getattr(t, _ATTR, None)) is not None)
    if kwargs:
        found.extend(f for t in _tensors(kwargs) if (f := getattr(t, _ATTR, None)) is not None)
    return found


class _GeometryMode(TorchFunctionMode):
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
        if self.guard and _writes_real_tensor(name, args, kwargs):
            self.refused = True  # even if the model catches the exception, this run is void
            raise _WritesRealTensor(name)
        if name in _CATS:
            out = _cat_shortcut(args, kwargs)
        else:
            out = _same_shape_shortcut(name, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if type(out) is torch.Tensor:
            outputs = [out]
        elif isinstance(out, torch.Tensor | tuple | list):
            outputs = list(_tensors(out))
            if not outputs:
                return out
        else:
            return out  # .shape, .size(), .dim() ...
        self._count_macs(name, args, outputs[0])
        fields = _fields(args, kwargs)
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
        padding = _conv_padding(padding_arg, kernel, dilation) or _pair(padding_arg)
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
        return _adaptive_field(f, _spatial(args[0], f), _spatial(out, f))

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
