"""Reaching inside any model, and always leaving it as it was: one helper per idea.

- :func:`get_layer` — a submodule by its name in ``named_modules()``, or a clear error.
- :func:`capture` — record the outputs of named layers during the forward passes in a block.
- :func:`truncated_forward` — run a model only as far as a layer (its output, or its input).
- :func:`evaluating` — eval mode (and, optionally, frozen parameters) for a block; every module's
  mode and every parameter's ``requires_grad`` restored afterwards, also when the block raises.
- :func:`fold_batchnorm` — a copy with each BatchNorm that follows a convolution folded into it
  (torch's own :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`).

Every tool of :mod:`convlens.anatomy` and :mod:`convlens.inspect` goes through these, so hooks are
removed on every exit path, including when the model raises (Captum tests the same).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from convlens.errors import ConvlensError, did_you_mean


class HooksUnsupported(ConvlensError):
    """A method that reads or changes a layer's output (hooks) asked of a TorchScript model."""


def require_hooks(model: nn.Module, what: str) -> None:
    """Refuse, in one line, a method that needs hooks on a model that cannot take them.

    TorchScript modules (``torch.jit.script`` / ``trace``) refuse ``register_forward_hook``;
    methods that only run the model (saliency, occlusion) still apply to them.

    Raises:
        HooksUnsupported: `model` is a TorchScript module.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise HooksUnsupported(
            f"{what} needs hooks on the model's layers, which a TorchScript model does not allow "
            "(no hooks on ScriptModules): saliency and occlusion apply to it; for this method "
            "pass the Python module (file.py:build_fn)"
        )


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` in `model.named_modules()`; a clear error listing valid names if none."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        valid = [n for n in modules if n]
        shown = ", ".join(valid[:40]) + (" ..." if len(valid) > 40 else "")
        raise ConvlensError(
            f"no layer named {name!r} in {type(model).__name__}.{did_you_mean(name, valid)} Layers: {shown}"
        )
    return modules[name]


@contextlib.contextmanager
def capture(
    model: nn.Module, layers: Sequence[str], *, detach: bool = True, clone: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers during the forward passes run inside the block.

    Example::

        with capture(model, ["layer1", "layer2"]) as acts:
            model(x)
        acts["layer1"]  # (N, C, H, W), the last forward's output

    Args:
        model: any module.
        layers: names from `model.named_modules()`.
        detach: store detached tensors (set False to keep the graph, e.g. for Grad-CAM).
        clone: store a copy, so that a later in-place op (VGG's `ReLU(inplace=True)` after a conv)
            cannot change the recorded output.
    """
    require_hooks(model, "reading a layer's output")
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in layers:
            module = get_layer(model, name)

            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
                    out = out[0]
                if isinstance(out, torch.Tensor):
                    t = out.detach() if detach else out
                    outputs[name] = t.clone() if clone else t

            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by :func:`truncated_forward` to end a forward pass once the wanted tensor exists."""


def truncated_forward(
    model: nn.Module,
    layer: str | nn.Module | None,
    x: torch.Tensor,
    *,
    at: Literal["output", "input"] = "output",
) -> torch.Tensor:
    """Run `model` on `x` only as far as `layer` and return its output (or its input); graph kept.

    Later layers are never computed: a hook raises :class:`StopForward` once the wanted tensor
    exists, as the Keras filter-visualisation example builds a model that stops at the layer.

    Args:
        model: any module.
        layer: a name from `model.named_modules()`, or the submodule itself; None for the whole
            model's output.
        x: the model's input.
        at: `output` for the layer's output, `input` for its first positional argument (the
            classifier's input is the penultimate feature vector).

    Raises:
        ConvlensError: unknown layer, or the layer did not run in the forward pass.
    """
    if layer is None:
        return model(x)
    require_hooks(model, "running a model up to a layer")
    module = get_layer(model, layer) if isinstance(layer, str) else layer
    result: list[torch.Tensor] = []

    def record(value: object) -> None:
        if isinstance(value, tuple | list) and value:
            value = value[0]
        if isinstance(value, torch.Tensor):
            result.append(value)
        raise StopForward

    if at == "input":
        handle = module.register_forward_pre_hook(lambda _m, args: record(args))
    else:
        handle = module.register_forward_hook(lambda _m, _i, out: record(out))
    try:
        model(x)
    except StopForward:
        pass
    finally:
        handle.remove()
    if not result:
        name = layer if isinstance(layer, str) else type(layer).__name__
        raise ConvlensError(
            f"layer {name!r} did not run in the forward pass of {type(model).__name__}"
        )
    return result[0]


@contextlib.contextmanager
def evaluating(model: nn.Module, *, freeze: bool = False) -> Iterator[nn.Module]:
    """Every submodule in eval mode for the block; each one's own mode restored afterwards.

    Eval mode keeps batch elements independent (BatchNorm uses its running statistics, dropout is
    off) and leaves the running statistics alone.

    Args:
        model: any module.
        freeze: also set `requires_grad=False` on every parameter for the block (gradients for the
            input only: weight gradients would be wasted work); each flag restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def fold_batchnorm(
    model: nn.Module,
    layer: str | None,
    input_shape: tuple[int, int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """A copy of `model` (eval mode) with each BatchNorm2d fed directly by a Conv2d folded into it.

    Eval-mode BatchNorm is an affine map per channel, so the folded network computes the same
    function with one pass over the activations less per BatchNorm. Pairs are found by running one
    random batch up to `layer`: a BatchNorm whose input is the very tensor a Conv2d returned, each
    module called once. Pairs that involve `layer` are left alone (their outputs may be what the
    caller reads). The copy is checked against the model on another random batch (relative error
    1e-4 of the output's range); if anything differs, or there is nothing to fold, the model itself
    is returned. The copy shares no tensor with the model.
    """
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model  # nothing to fold: no extra forward pass
    convs: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> conv name (output kept alive)
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def hook(name: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def record(m: nn.Module, inputs: tuple[object, ...], out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(m, nn.Conv2d) and isinstance(out, torch.Tensor):
                convs[id(out)] = (name, out)
            elif isinstance(m, nn.BatchNorm2d) and inputs and id(inputs[0]) in convs:
                pairs.append((convs[id(inputs[0])][0], name))

        return record

    g = torch.Generator().manual_seed(0)
    probe, check = (torch.randn(2, *input_shape, generator=g).to(device, dtype) for _ in range(2))
    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad(), evaluating(model):
            truncated_forward(model, layer, probe)
    finally:
        for h in handles:
            h.remove()
    pairs = [
        (c, b)
        for c, b in pairs
        if calls[c] == calls[b] == 1
        and layer not in (c, b)
        and model.get_submodule(b).track_running_stats  # eval BN uses running statistics
    ]
    if not pairs:
        return model
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in pairs:
        conv = folded.get_submodule(conv_name)
        bn = folded.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        for p in fused.parameters():
            p.requires_grad_(False)
        for name, new in ((conv_name, fused), (bn_name, nn.Identity())):
            parent, _, attr = name.rpartition(".")
            setattr(folded.get_submodule(parent), attr, new)
    with torch.no_grad(), evaluating(model):
        want, got = truncated_forward(model, layer, check), truncated_forward(folded, layer, check)
    if want.shape != got.shape or not bool(
        ((got - want).abs().max() <= 1e-4 * want.abs().max().clamp(min=1e-12)).item()
    ):
        return model
    return folded


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 for a parameter-free model)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
