"""The model as a torch.fx graph, for the incremental engine.

Plain :func:`torch.fx.symbolic_trace` first; models whose forward branches on shapes (or slices an
``nn.Sequential``) are traced again with meta tensors that carry concrete shapes.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.meta_tracer import MetaTracer


def node_args(node: fx.Node) -> list[fx.Node]:
    """The graph nodes among a node's arguments (flattened)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)  # type: ignore[func-returns-value]
    return found


TRACE_BATCH = 7  # batch size of the meta tensor the shape-aware tracer runs on


class ShapeAwareTracer(MetaTracer):
    """fx tracing with concrete shapes, for models whose forward branches on shapes.

    Tensors carry meta-device values, so `if x.shape[-2:] != (1, 1)` is decided while tracing.
    Modules built on the fly from installed ones (`self.classifier[:-1]`) are traced through,
    never added to the model.
    """

    allow_insert_stateless_mods = False

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            fx.Tracer.path_of_module(self, m)
        except NameError:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def trace_model(model: nn.Module, input_shape: tuple[int, int, int]) -> fx.GraphModule | str:
    """The model as an fx graph (plain tracing first, then shape-aware), or why it failed."""
    try:
        return fx.symbolic_trace(model)
    except Exception as e:
        first_error = str(e)
    try:
        name = next(iter(inspect.signature(model.forward).parameters))
        tracer = ShapeAwareTracer()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = torch.empty(TRACE_BATCH, *input_shape, device="meta")
            graph = tracer.trace(model, meta_args={name: meta})
        gm = fx.GraphModule(tracer.root, graph)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        return gm
    except Exception:
        return first_error
