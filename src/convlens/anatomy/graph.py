"""Which layer feeds which: the data flow between a network's layers, for drawing its branches.

:func:`layer_graph` traces the model symbolically with ``torch.fx`` (no data, no arithmetic) and keeps
the module calls plus the functional ops that join two paths (``x + identity`` of a residual block,
``torch.cat`` of an inception block). Every other functional op (``flatten``, ``F.relu``) is passed
through: its consumers are wired to its producers. Labels are those of
:attr:`convlens.anatomy.LayerRow.label` (``relu (2)`` for a module's second call), so the graph and
the summary's rows join on them.

A model that ``torch.fx`` cannot trace (data-dependent control flow) gets ``None``; draw its summary
rows as one chain then.
"""

from __future__ import annotations

from collections import Counter

from torch import fx, nn

INPUT = "input"
# Ops with several graph inputs that read or reshape one tensor rather than merge two paths.
_NOT_JOINS = frozenset(
    {"size", "getattr", "getitem", "view", "reshape", "flatten", "dim", "expand_as"}
)


def layer_graph(model: nn.Module) -> dict[str, list[str]] | None:
    """``{label: [labels of its inputs]}`` in forward order, starting with ``"input"``.

    Joins are labelled by their op and a number (``add``, ``add_1``, ``cat``), as ``torch.fx`` names
    them. None when the model cannot be traced symbolically.
    """
    leaves = {name for name, m in model.named_modules() if not any(m.children())}
    try:
        graph = fx.Tracer().trace(model)
    except Exception:  # fx raises many kinds on untraceable code; every one means "no graph"
        return None
    calls: Counter[str] = Counter()
    sources: dict[fx.Node, list[str]] = {}  # node -> the kept labels its value comes from
    out: dict[str, list[str]] = {}
    for node in graph.nodes:
        inputs = list(
            dict.fromkeys(s for arg in node.all_input_nodes for s in sources.get(arg, []))
        )
        if node.op == "placeholder":
            if not out:
                out[INPUT] = []
                sources[node] = [INPUT]
            continue
        if node.op == "call_module" and str(node.target) in leaves:
            name = str(node.target)
            calls[name] += 1
            label = name if calls[name] == 1 else f"{name} ({calls[name]})"
        elif node.op in ("call_function", "call_method") and len(inputs) > 1 and _joins(node):
            label = node.name
        else:  # pass-through op (flatten, view, getattr, a container's call): keep its sources
            sources[node] = inputs
            continue
        out[label] = inputs
        sources[node] = [label]
    return out


def _joins(node: fx.Node) -> bool:
    """Whether an op merges paths (add, cat, mul...), as opposed to reading shapes or attributes."""
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return name not in _NOT_JOINS
