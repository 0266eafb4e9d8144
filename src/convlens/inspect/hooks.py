"""Reaching inside a model by layer name: the helpers of :mod:`convlens.models.hooks`, by their
inspect-level names (one implementation, used by every method here and by :mod:`convlens.anatomy`).
"""

from __future__ import annotations

from convlens.models.hooks import (
    StopForward,
    capture,
    evaluating,
    fold_batchnorm,
    get_layer,
    model_device,
    model_dtype,
    truncated_forward,
)

__all__ = [
    "StopForward",
    "capture",
    "evaluating",
    "fold_batchnorm",
    "get_layer",
    "model_device",
    "model_dtype",
    "truncated_forward",
]
