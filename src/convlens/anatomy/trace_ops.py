"""Small pieces shared by the tracer's leaf rules and its torch-function mode.

Argument reading for torch functions (``arg_or_kwarg``, ``pair``), shortcuts that make the output of a
shape-preserving op on meta tensors without running its meta kernel, and the test for an op that would
write into a real tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convlens.anatomy.fields import RF, Field

FIELD_ATTR = "_convlens_field"  # where a traced tensor carries its Field
META = torch.device("meta")


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


class WritesRealTensor(Exception):
    """Raised to abort a trace whose forward would write into a real tensor (a buffer...)."""


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in `obj` (a tensor, or nested tuples / lists / dicts of them), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_tensors(item)


def einsum_macs(args: Sequence[Any]) -> int:
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


def pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def arg_or_kwarg(
    args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any
) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def spatial_size(t: torch.Tensor, f: Field) -> tuple[int, int] | None:
    """The (H, W) sizes of `t` at the field's dimensions, or None if `t` has no such dims."""
    if t.dim() < -min(f.dims):
        return None
    return int(t.shape[f.dims[0]]), int(t.shape[f.dims[1]])


# Shape-preserving ops whose meta kernels are Python reference implementations (torch._refs):
# on ResNet-152 they took two thirds of a summary. Their output is a tensor like their input.
UNARY_SAME_SHAPE = frozenset(
    {"relu", "relu_", "relu6", "batch_norm", "dropout", "gelu", "silu", "sigmoid", "tanh",
     "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu"}
)  # fmt: skip
BINARY_SAME_SHAPE = frozenset({"add", "add_", "__add__", "__iadd__", "__radd__"})


def meta_like(x: torch.Tensor) -> torch.Tensor:
    """A new meta tensor like `x` (``torch.empty_like`` runs a Python reference on meta: 30 us)."""
    return new_meta(x.shape, x) if x.is_contiguous() else torch.empty_like(x)


CATS = frozenset({"cat", "concat", "concatenate"})


def cat_shortcut(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``torch.cat`` of contiguous meta tensors by arithmetic (its meta kernel is Python: 0.2 ms).

    Only the plain case: one dtype, one rank, equal sizes off the joined dim. Anything else (and
    every error) is left to the kernel.
    """
    tensors = arg_or_kwarg(args, kwargs, 0, "tensors", None)
    dim = arg_or_kwarg(args, kwargs, 1, "dim", 0)
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
    return torch.empty(shape, dtype=first.dtype, device=META)


def fits_batch_norm(x: torch.Tensor, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """F.batch_norm(input, running_mean, running_var, weight, bias, ...): one value per channel."""
    per_channel = [
        *args[1:5],
        *(kwargs.get(k) for k in ("running_mean", "running_var", "weight", "bias")),
    ]
    return x.dim() >= 2 and all(
        t.numel() == x.shape[1] for t in per_channel if isinstance(t, torch.Tensor)
    )


def same_shape_shortcut(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The output of a shape-preserving op on meta tensors, without running its meta kernel.

    Returns None when the shortcut does not apply (then the op runs as usual). In-place forms
    return their input, as the op would.
    """
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return None
    x = args[0]
    inplace = name.endswith("_") or name == "__iadd__" or kwargs.get("inplace") is True
    if name == "batch_norm" and not fits_batch_norm(x, args, kwargs):
        return None  # the meta kernel says what is wrong
    if name in UNARY_SAME_SHAPE:
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
        return x if inplace else meta_like(x)
    if (
        name in BINARY_SAME_SHAPE
        and len(args) == 2
        and not kwargs
        and isinstance(args[1], torch.Tensor)
        and args[1].is_meta
        and args[1].shape == x.shape
        and args[1].dtype == x.dtype
    ):
        return x if inplace else meta_like(x)
    return None


# -- leaf layers by arithmetic ---------------------------------------------------------------------
# A leaf rule takes the meta input x of one call (with its Field, or None) and returns the output


def is_nchw(x: torch.Tensor) -> bool:
    return x.is_meta and x.dim() == 4 and x.is_contiguous()


def new_meta(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=META)


def conv_padding(
    padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int] | None:
    """A convolution's padding as (top, left): "valid" none, "same" (stride 1) the top/left share of
    the total, ints as given; None for anything else."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        return dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2
    return None if isinstance(padding, str) else int_pair(padding)


def int_pair(v: Any) -> tuple[int, int] | None:
    """A layer's int-or-pair argument as (h, w), or None if it is anything else (a string...)."""
    if isinstance(v, int):
        return v, v
    if isinstance(v, tuple | list) and len(v) in (1, 2) and all(isinstance(i, int) for i in v):
        return (v[0], v[-1])
    return None


def adaptive_field(f: Field, src: tuple[int, int] | None, dst: tuple[int, int] | None) -> Field:
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
INPLACE_DUNDERS = frozenset(
    {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
     "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__", "__setitem__",
     "__set__"}
)  # fmt: skip


def writes_real_tensor(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """The op writes into a tensor that is not on meta (an in-place op, or ``out=``)."""
    if "out" in kwargs:
        target: Any = kwargs["out"]
    elif (name.endswith("_") and not name.endswith("__")) or name in INPLACE_DUNDERS:
        target = args[0] if args else None
    else:
        return False
    return any(not t.is_meta for t in iter_tensors(target))


def fields_of(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Field]:
    """The Fields carried by the tensors among an op's arguments, in order."""
    found = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if (f := getattr(a, FIELD_ATTR, None)) is not None:
                found.append(f)
        elif isinstance(a, tuple | list | dict):
            found.extend(
                f for t in iter_tensors(a) if (f := getattr(t, FIELD_ATTR, None)) is not None
            )
    if kwargs:
        found.extend(
            f for t in iter_tensors(kwargs) if (f := getattr(t, FIELD_ATTR, None)) is not None
        )
    return found
