"""`convlens.summary(model, input_size)`: every layer's shape, parameters, MACs and receptive field.

One row per module call that does arithmetic of its own (a leaf module, or a container that holds
parameters or runs a convolution itself), in forward order; the model itself gets a first row named
``(model)`` when its own ``forward`` holds parameters or runs convolutions or matrix products. The columns, per image (batch of 1):

* ``output_shape``: the output without the batch dimension, e.g. (96, 55, 55).
* ``neurons``: output elements, C x H x W.
* ``params``: the module's own parameters (a parameter shared by two modules appears in both rows
  and once in the totals).
* ``params_unshared``: the parameters the same layer would need with no weight sharing, i.e. as a
  locally-connected layer where every neuron owns its weights:
  - convolution: neurons x (Cin / groups x kh x kw + 1 if it has a bias);
  - linear: neurons x (in_features + 1 if bias), equal to ``params`` on an (N, features) input;
  - normalisation (BatchNorm, GroupNorm, InstanceNorm, LayerNorm): neurons x (1 per affine tensor),
    one scale and one shift per output element;
  - pooling, activations, dropout and other modules without parameters: 0;
  - any other module with parameters: ``params`` (no sharing pattern is assumed).
* ``macs``: multiply-accumulates of the convolutions, linear layers, matrix products and attention
  (``nn.MultiheadAttention``, ``scaled_dot_product_attention``) run by the module: output elements x
  weights per output (Cin / groups x kh x kw for a convolution). Bias
  additions, normalisation, pooling and activations are not multiply-accumulates and count 0.
  torchinfo's "mult-adds" count the same products plus one per bias per output position and one per
  BatchNorm parameter; ``tests/test_anatomy_summary.py`` checks the difference is exactly that, and
  that the totals equal the GFLOPS of torchvision's model cards (which count the same way).
* ``rf``: the theoretical receptive field (:mod:`convlens.anatomy.receptive_field`).

The forward pass runs on the meta device (:mod:`convlens.anatomy.trace`), the common layers by their
arithmetic alone, so ResNet-152 at 224x224 is summarised in about a hundredth of a second, on any
``nn.Module``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from convlens.anatomy.receptive_field import RF, describe
from convlens.anatomy.trace import Call, trace
from convlens.errors import ConvlensError, InputError, InputTypeError

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class LayerRow:
    """One module call in the summary; see the module docstring for the meaning of each column."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    neurons: int
    params: int
    params_unshared: int
    macs: int
    rf: RF | None
    call: int = 1  # > 1 when the same module runs again (e.g. torchvision's shared ReLU)

    @property
    def label(self) -> str:
        """The name as shown in tables: a repeated call gets its number, ``relu (2)``."""
        return self.name if self.call == 1 else f"{self.name} ({self.call})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": list(self.output_shape),
            "neurons": self.neurons,
            "params": self.params,
            "params_unshared": self.params_unshared,
            "macs": self.macs,
            "rf": self.rf.to_dict() if self.rf is not None else None,
            "call": self.call,
        }


@dataclass
class Summary:
    """The result of :func:`summary`: rows, totals, and notes on the receptive fields.

    ``totals`` holds ``params`` (each parameter counted once, the published count), ``trainable``,
    ``non_trainable``, ``params_unshared`` and ``macs`` (sums over rows), ``neurons`` (output elements
    of the layers with weights, i.e. convolutions and linear layers) and ``layers`` (rows).
    """

    model: str
    input_size: tuple[int, int, int]
    output_shape: tuple[int, ...]
    layers: list[LayerRow]
    totals: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> LayerRow:
        """The (first call's) row of the module called `name`."""
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """``{"model", "input", "output", "layers", "totals", "warnings"}``, JSON-ready."""
        return {
            "model": self.model,
            "input": list(self.input_size),
            "output": list(self.output_shape),
            "layers": [row.to_dict() for row in self.layers],
            "totals": dict(self.totals),
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        """The summary as an indented JSON document."""
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """One line per layer (no totals line), receptive fields as ``h x w`` strings."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(
            [
                *("name", "type", "output_shape", "neurons", "params", "params_unshared", "macs"),
                *("rf_size", "rf_jump", "rf_start"),
            ]
        )
        for row in self.layers:
            rf = row.rf
            writer.writerow(
                [
                    row.label,
                    row.type,
                    "x".join(map(str, row.output_shape)),
                    row.neurons,
                    row.params,
                    row.params_unshared,
                    row.macs,
                    f"{rf.size[0]}x{rf.size[1]}" if rf else "",
                    f"{rf.jump[0]}x{rf.jump[1]}" if rf else "",
                    f"{rf.start[0]:g}x{rf.start[1]:g}" if rf else "",
                ]
            )
        return buf.getvalue()

    def table(self) -> Any:
        """A ``rich.table.Table`` of the rows with the totals as its footer."""
        from rich.table import Table

        c, h, w = self.input_size
        table = Table(
            title=f"{self.model} on a {c}x{h}x{w} input",
            show_footer=True,
            header_style="bold",
            footer_style="bold",
        )
        t = self.totals
        table.add_column("layer", footer="total", no_wrap=True)
        table.add_column("type")
        table.add_column("output", footer="x".join(map(str, self.output_shape)))
        table.add_column("neurons", justify="right", footer=f"{t['neurons']:,}")
        table.add_column("params", justify="right", footer=f"{t['params']:,}")
        table.add_column("unshared", justify="right", footer=f"{t['params_unshared']:,}")
        table.add_column("MACs", justify="right", footer=f"{t['macs']:,}")
        table.add_column("RF size / jump @ start", no_wrap=True)
        for row in self.layers:
            table.add_row(
                row.label,
                row.type,
                "x".join(map(str, row.output_shape)),
                f"{row.neurons:,}",
                f"{row.params:,}" if row.params else "",
                f"{row.params_unshared:,}" if row.params_unshared else "",
                f"{row.macs:,}" if row.macs else "",
                describe(row.rf) if row.rf is not None else "",
            )
        return table

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=160, record=True, file=io.StringIO(), color_system=None)
        console.print(self.table())
        return console.export_text()


def summary(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    name: str | None = None,
    warn: bool = True,
    through_gates: bool = True,
) -> Summary:
    """Summarise `model` on one image of `input_size` = (C, H, W), without computing on data.

    Args:
        model: any ``nn.Module`` taking an (N, C, H, W) batch; it is not modified.
        input_size: (C, H, W) of one input image.
        name: the model's name in the summary (default: its class name).
        warn: emit a ``UserWarning`` where branches disagree on a receptive field's centre or jump.
        through_gates: see :func:`~convlens.anatomy.receptive_field.receptive_fields`.

    Returns:
        A :class:`Summary`; ``str()`` of it is a table, ``.to_dict()`` / ``.to_json()`` /
        ``.to_csv()`` the machine forms.

    Raises:
        ConvlensError: the input is too small for the network (names the layer that collapses),
            the model fails on it, or it is a TorchScript module (whose calls bypass Python).

    Example:
        >>> s = convlens.summary(convlens.models.create("alexnet"), (3, 227, 227))
        >>> s["features.0"].params_unshared
        105705600
    """
    if isinstance(model, str):
        raise InputTypeError(
            f"summary takes a module, not the name {model!r}: "
            f"convlens.summary(convlens.models.create({model!r}), (C, H, W))"
        )
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"summary takes a torch.nn.Module, not {type(model).__name__}")
    if (
        not isinstance(input_size, tuple | list)
        or len(input_size) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)
    ):
        raise InputError(
            f"input_size must be (C, H, W) of one image, three positive ints, e.g. (3, 224, 224); "
            f"got {input_size!r}"
        )
    if isinstance(model, torch.jit.ScriptModule):
        # Scripted submodules run inside the TorchScript interpreter: no Python forward to observe.
        raise ConvlensError(
            "convlens.summary needs the Python module, not a TorchScript one "
            "(torch.jit.script/trace hide the layers' calls); pass the module before scripting"
        )
    result = trace(model, tuple(input_size), warn=warn, through_gates=through_gates)  # type: ignore[arg-type]
    layers: dict[int, _Layer] = {}  # id(module) -> what its rows share, worked out once
    rows: list[LayerRow] = []
    for call in result.calls:
        if call.output_shape is None:
            continue
        layer = layers.get(id(call.module))
        if layer is None:
            layer = layers[id(call.module)] = _Layer.of(call.module)
        if layer.leaf or layer.owns_parameters or call.macs:
            rows.append(_row(call, layer))
    root = result.root
    if root is not None:
        layer = _Layer.of(model)
        if layer.owns_parameters or root.macs:
            # Parameters or convolutions of the model's own forward (e.g. ViT's class token).
            rows.insert(0, replace(_row(root, layer), name="(model)"))
    unique = {id(p): p for _, m in result.modules for p in _own_parameters(m)}.values()
    totals = {
        "params": sum(p.numel() for p in unique),
        "trainable": sum(p.numel() for p in unique if p.requires_grad),
        "non_trainable": sum(p.numel() for p in unique if not p.requires_grad),
        "params_unshared": sum(r.params_unshared for r in rows),
        "macs": sum(r.macs for r in rows),
        "neurons": sum(r.neurons for r in rows if r.macs),
        "layers": len(rows),
    }
    return Summary(
        model=name or type(model).__name__,
        input_size=tuple(input_size),  # type: ignore[arg-type]
        output_shape=tuple(result.output_shape[1:]) if result.output_shape else (),
        layers=rows,
        totals=totals,
        warnings=list(result.notes),
    )


def _own_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters `module` registers itself (not its children's), each once."""
    return list(module.parameters(recurse=False))


class _Layer(NamedTuple):
    """What every call of one module shares in the summary: its type and parameter counts."""

    type: str
    params: int
    owns_parameters: bool  # even of size 0
    leaf: bool  # no child modules
    per_neuron: int | None  # params_unshared per output element; None: params_unshared = params

    @staticmethod
    def of(module: nn.Module) -> _Layer:
        own = _own_parameters(module)
        return _Layer(
            type(module).__name__,
            sum(p.numel() for p in own),
            bool(own),
            next(module.children(), None) is None,
            _unshared_per_neuron(module),
        )


def _row(call: Call, layer: _Layer) -> LayerRow:
    shape = tuple(call.output_shape[1:]) if call.output_shape else ()
    neurons = 1
    for s in shape:
        neurons *= s
    return LayerRow(
        name=call.name,
        type=layer.type,
        output_shape=shape,
        neurons=neurons,
        params=layer.params,
        params_unshared=layer.params if layer.per_neuron is None else neurons * layer.per_neuron,
        macs=call.macs,
        rf=call.rf,
        call=call.call,
    )


def _unshared_per_neuron(module: nn.Module) -> int | None:
    """Parameters per output element without weight sharing (module docstring); None: ``params``."""
    if isinstance(module, nn.modules.conv._ConvNd):
        bias = 1 if module.bias is not None else 0
        return math.prod(module.weight.shape[1:]) + bias  # weight (Cout, Cin/groups, kh, kw)
    if isinstance(module, nn.Linear):
        return module.in_features + (1 if module.bias is not None else 0)
    if isinstance(module, _NORMS):
        return sum(1 for p in (getattr(module, "weight", None), module.bias) if p is not None)
    return None
