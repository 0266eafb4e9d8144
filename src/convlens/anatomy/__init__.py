"""The anatomy of a network: shapes, parameters (shared and unshared), MACs and receptive fields.

Nothing here runs real data. ``summary`` and ``receptive_fields`` trace the model on the meta device
(:mod:`~convlens.anatomy.trace`); ``effective_receptive_field`` back-propagates from one unit on
random inputs; :mod:`~convlens.anatomy.explain` writes one layer's arithmetic out in words, with
:mod:`~convlens.anatomy.reference` (a NumPy reference of the layers) as its oracle.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convlens.anatomy.erf import EffectiveRF, effective_receptive_field
    from convlens.anatomy.receptive_field import RF, clip_box, receptive_fields
    from convlens.anatomy.summary import LayerRow, Summary, summary

# Loaded on first use: `convlens explain` needs only `explain` (NumPy), not torch.
_LAZY = {
    "EffectiveRF": "erf",
    "effective_receptive_field": "erf",
    "RF": "receptive_field",
    "clip_box": "receptive_field",
    "receptive_fields": "receptive_field",
    "LayerRow": "summary",
    "Summary": "summary",
    "summary": "summary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RF",
    "EffectiveRF",
    "LayerRow",
    "Summary",
    "clip_box",
    "effective_receptive_field",
    "receptive_fields",
    "summary",
]


class _Package(types.ModuleType):
    # Loading the submodule `summary` sets the package's attribute `summary` to that module, which
    # would hide the function of the same name; the function is what `anatomy.summary` means.
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
