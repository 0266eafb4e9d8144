"""The plain batched occlusion: whole occluded copies through the model, a batch at a time.

This is the reference path: what every other library does (Captum's ``Occlusion``), and what the
incremental engine must equal (to 1e-4 of the largest attribution).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def window_masks(
    rows: np.ndarray, cols: np.ndarray, H: int, W: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean coverage of the windows along each axis: `(gh, H)` rows and `(gw, W)` columns."""
    ys, xs = torch.arange(H, device=device), torch.arange(W, device=device)
    r = torch.as_tensor(rows, device=device)
    c = torch.as_tensor(cols, device=device)
    in_rows = (ys >= r[:, :1]) & (ys < r[:, 1:])  # (gh, H)
    in_cols = (xs >= c[:, :1]) & (xs < c[:, 1:])  # (gw, W)
    return in_rows, in_cols


def occluded_outputs(
    model: nn.Module,
    image: torch.Tensor,
    baseline: torch.Tensor,
    rows: np.ndarray,
    cols: np.ndarray,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Model outputs for every occluded copy of one image, `batch_size` copies at a time.

    Args:
        model: the classifier, already in eval mode.
        image: `(1, C, H, W)`.
        baseline: `(1, C, H, W)` values that replace the occluded pixels.
        rows: `(gh, 2)` `[start, stop)` rows of the windows, one per grid row.
        cols: `(gw, 2)` columns, one per grid column.
        batch_size: copies per forward pass.

    Yields:
        `(P,)` flat (row-major) window indices and the model's `(P, K)` outputs for those copies.
    """
    _, _, H, W = image.shape
    gw = len(cols)
    in_rows, in_cols = window_masks(rows, cols, H, W, image.device)
    for start in range(0, len(rows) * gw, batch_size):
        flat = np.arange(start, min(start + batch_size, len(rows) * gw))
        i = torch.as_tensor(flat // gw, device=image.device)
        j = torch.as_tensor(flat % gw, device=image.device)
        covered = in_rows[i][:, :, None] & in_cols[j][:, None, :]  # (P, H, W)
        copies = torch.where(covered[:, None], baseline, image)  # (P, C, H, W)
        yield flat, model(copies)
