"""One forward pass without data: shapes, MACs and receptive fields of every module call.

:func:`trace` runs the model on a meta input (a tensor with a shape and no storage, so no
arithmetic: ResNet-152 at 224x224 takes about ten milliseconds) and watches it two ways:

* every module's ``forward`` is wrapped, for the duration of the call, to record which module is
  running and what it returns; the common leaf layers (``Conv2d``, ``BatchNorm2d``, ``Linear``,
  pooling, activations, dropout, ``Identity``) are not run at all: their output shape, MACs and
  receptive field come from the layer arithmetic (:func:`leaf_rule`), and the output is an empty
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convlens.anatomy.fields import RF, Field
from convlens.anatomy.geometry_mode import GeometryMode
from convlens.anatomy.leaf_rules import leaf_rule
from convlens.anatomy.trace_ops import FIELD_ATTR, META, Call, WritesRealTensor, iter_tensors
from convlens.errors import ConvlensError
from convlens.models.hooks import evaluating


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
    # Eval mode: BatchNorm on a 1x1 map and GoogLeNet's auxiliary heads want it.
    with evaluating(model):
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
            for name, child in module.named_children()
        ]
        todo.extend(reversed(children))
    return found


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
    mode = GeometryMode(stack, through_gates=through_gates, guard=how == "meta")
    rf_of: dict[int, tuple[Field, RF]] = {}  # id(field) -> (field, its RF); keeps fields alive

    def finish(call: Call, output: Any) -> None:
        """Record what `call` returned (with torch functions switched off)."""
        out = output if type(output) is torch.Tensor else next(iter_tensors(output), None)
        if out is not None:
            call.output_shape = tuple(out.shape)
            f = call.field = getattr(out, FIELD_ATTR, None)
            if f is not None:
                known = rf_of.get(id(f))
                if known is None or known[0] is not f:
                    known = rf_of[id(f)] = (f, f.to_rf((h, w)))
                call.rf = known[1]

    def wrap(name: str, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        # The arithmetic stands in for the class's own forward only: not on real data, nor in front
        # of a forward the user set on the instance (e.g. accelerate's hooks).
        own = "forward" in module.__dict__
        leaf = leaf_rule(module) if how != "device" and not own else None
        times = 0

        def traced_forward(*args: Any, **kwargs: Any) -> Any:
            nonlocal times
            times += 1
            with mode.paused():
                call = Call(name, module, times, len(calls))
                calls.append(call)
                x = args[0] if args else None
                if type(x) is torch.Tensor:
                    call.input_shape = tuple(x.shape)
                    made = None
                    if leaf is not None and len(args) == 1 and not kwargs:
                        made = leaf(x, getattr(x, FIELD_ATTR, None))
                    if made is not None:  # the layer's arithmetic instead of its forward
                        output, out_field, call.macs = made
                        if out_field is not None:
                            setattr(output, FIELD_ATTR, out_field)
                        finish(call, output)
                        return output
                elif (first := next(iter_tensors(args), None)) is not None:
                    call.input_shape = tuple(first.shape)
                stack.append(call)
            output = forward(*args, **kwargs)
            with mode.paused():
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
                setattr(x, FIELD_ATTR, Field.image())
                y = model(x)
        else:
            x = torch.empty(1, c, h, w, device=META)
            setattr(x, FIELD_ATTR, Field.image())
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
        raise WritesRealTensor("the model caught the refusal of an in-place write")
    out = next(iter_tensors(y), None)
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
