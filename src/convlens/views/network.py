"""The network as a table and a graph: every layer's shape, parameters, MACs, receptive field and
hyper-parameters, the blocks it is built of, and the layer every other view looks at by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from convlens.errors import ConvlensError
from convlens.subjects import Subject
from convlens.views import defaults

if TYPE_CHECKING:
    from convlens.anatomy.summary import Summary

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_HYPER = ("kernel_size", "stride", "padding", "dilation", "groups")


@dataclass(frozen=True)
class Block:
    """A group of layers the page can fold: a ResNet stage or residual block, an inception module.

    Attributes:
        name: the module's name (``layer1``, ``layer1.0``, ``inception3a``); blocks nest by name.
        type: its class name.
        layers: the summary rows (layer names) inside it, in forward order.
    """

    name: str
    type: str
    layers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{name, type, layers}``."""
        return {"name": self.name, "type": self.type, "layers": list(self.layers)}


@dataclass(frozen=True)
class NetworkView:
    """The summary of a network, with what the other views default to.

    Attributes:
        summary: :class:`convlens.anatomy.summary.Summary` (rows, totals, warnings); None when the
            model cannot be traced (TorchScript), with the reason in `problem`.
        rows: one dict per layer call: the summary's row plus ``kernel``, ``stride``, ``padding``,
            ``dilation`` and ``groups`` where the layer has them.
        graph: which layer feeds which (None when the model cannot be traced symbolically).
        blocks: foldable groups of layers.
        conv_layers: the names of the ``nn.Conv2d`` layers in forward order.
        default_layer: the layer every view uses unless told (None without a convolution).
        defaults: every default of the views for this subject (:func:`defaults.as_dict`).
    """

    summary: Summary | None
    rows: tuple[dict[str, Any], ...]
    graph: dict[str, list[str]] | None
    blocks: tuple[Block, ...]
    conv_layers: tuple[str, ...]
    default_layer: str | None
    defaults: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    def row(self, name: str) -> Any:
        """The summary row of layer `name` (KeyError when there is none)."""
        if self.summary is None:
            raise KeyError(name)
        return self.summary[name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary's fields with the richer rows, graph, blocks and defaults."""
        base = self.summary.to_dict() if self.summary is not None else {"layers": []}
        return {
            **base,
            "layers": list(self.rows),
            "graph": self.graph,
            "blocks": [b.to_dict() for b in self.blocks],
            "conv_layers": list(self.conv_layers),
            "default_layer": self.default_layer,
            "defaults": self.defaults,
            "problem": self.problem,
        }


def hyper_parameters(module: nn.Module) -> dict[str, Any]:
    """``kernel``, ``stride``, ``padding``, ``dilation``, ``groups`` of a conv or pooling layer
    (as pairs; the ones it has)."""
    out: dict[str, Any] = {}
    for attr in _HYPER:
        if not hasattr(module, attr):
            continue
        v = getattr(module, attr)
        key = "kernel" if attr == "kernel_size" else attr
        if isinstance(v, str):  # padding="same"
            out[key] = v
        elif isinstance(v, int):
            out[key] = v if attr == "groups" else [v, v]
        elif isinstance(v, tuple) and all(isinstance(e, int) for e in v):
            out[key] = list(v)
    return out


def block_names(model: nn.Module) -> list[str]:
    """Modules that group layers: not a leaf, not a plain container, not the model itself (a
    ResNet's ``BasicBlock``, an inception module), in definition order."""
    return [
        name
        for name, m in model.named_modules()
        if name and any(m.children()) and not isinstance(m, _CONTAINERS)
    ]


def _blocks(model: nn.Module, row_names: list[str]) -> tuple[Block, ...]:
    # A block is a grouping module, or a container (ResNet's `layer1`) whose children are blocks.
    groups = set(block_names(model))
    out = []
    for name, m in model.named_modules():
        if not name or not any(m.children()):
            continue
        stage = isinstance(m, _CONTAINERS) and any(
            f"{name}.{c}" in groups for c, _ in m.named_children()
        )
        if name not in groups and not stage:
            continue
        inside = tuple(dict.fromkeys(r for r in row_names if r.startswith(name + ".")))
        if len(inside) >= 2:
            out.append(Block(name=name, type=type(m).__name__, layers=inside))
    return tuple(out)


def network_view(
    subject: Subject,
    *,
    summary: Summary | None = None,
    graph: dict[str, list[str]] | None = None,
) -> NetworkView:
    """The network of `subject`: rows, totals, graph, blocks and default layer.

    `summary` and `graph` may be given when the caller already computed them (the web app keeps them).
    """
    from convlens.anatomy.graph import layer_graph
    from convlens.anatomy.summary import summary as summarise
    from convlens.models import conv_layers

    model = subject.model
    problem = None
    if summary is None:
        try:
            summary = summarise(model, subject.image_shape, name=subject.name, warn=False)
        except ConvlensError as e:
            problem = f"the model cannot be traced: {e}"
        if graph is None and summary is not None:
            graph = layer_graph(model)
    modules = dict(model.named_modules())
    rows = []
    for r in summary.layers if summary is not None else []:
        m = modules.get(r.name)
        rows.append({**r.to_dict(), **(hyper_parameters(m) if m is not None else {})})
    names = [r.name for r in summary.layers] if summary is not None else []
    try:
        layer: str | None = defaults.default_layer(subject)
    except ConvlensError:
        layer = None
    macs = int(summary.totals["macs"]) if summary is not None else None
    return NetworkView(
        summary=summary,
        rows=tuple(rows),
        graph=graph,
        blocks=_blocks(model, names),
        conv_layers=tuple(conv_layers(model)),
        default_layer=layer,
        defaults=defaults.as_dict(subject, macs, layer=layer),
        problem=problem,
    )
