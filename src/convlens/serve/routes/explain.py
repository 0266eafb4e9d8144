"""The conv arithmetic explainer: one layer's output size, parameters and neurons, worked out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from convlens.serve import compute

router = APIRouter(prefix="/api/explain", tags=["explain"])


@router.get("/conv")
def explain_conv(
    size: Annotated[int, Query(ge=1, le=512)] = 7,
    kernel: Annotated[int, Query(ge=1, le=64)] = 3,
    stride: Annotated[int, Query(ge=1, le=64)] = 1,
    padding: Annotated[int, Query(ge=0, le=64)] = 0,
    filters: Annotated[int, Query(ge=1, le=1024)] = 2,
    depth: Annotated[int, Query(ge=1, le=1024)] = 3,
) -> dict[str, Any]:
    """Input `size` x `size` x `depth`, `filters` kernels of `kernel` x `kernel`, `stride`,
    `padding`: the sizes up to AlexNet's first layer (227, 11, 4) and beyond."""
    return compute.arithmetic(size, kernel, stride, padding, filters, depth)
