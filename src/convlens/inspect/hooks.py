"""Reaching inside a model by layer name, and always leaving it as it was.

Every method in :mod:`convlens.inspect` reads intermediate tensors through :func:`capture`, so that
hooks are removed on every exit path, including when the model raises (Captum tests the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from convlens.errors import ConvlensError, did_you_mean


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
    """Raised by :func:`truncated_forward` to end a forward pass once the wanted layer has run."""


def truncated_forward(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Run `model` on `x` only as far as `layer` and return that layer's output (graph kept).

    Later layers are never computed: the hook raises :class:`StopForward` once `layer` has produced
    its output, as the Keras filter-visualisation example builds a model that stops at the layer.
    """
    module = get_layer(model, layer)
    result: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        result.append(out[0] if isinstance(out, tuple | list) else out)  # type: ignore[arg-type]
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except StopForward:
        pass
    finally:
        handle.remove()
    if not result:
        raise ConvlensError(
            f"layer {layer!r} did not run in the forward pass of {type(model).__name__}"
        )
    return result[0]
