"""What one batch of the index pass records, through forward hooks on the model's own forward.

Per image: the top-5 outputs with probabilities from ``log_softmax`` of the logits in float64 (a
stable sort: equal logits, the lower class first), the loss and correctness where the labels are the
model's outputs, the penultimate features (the classifier's input) as float16. Per channel of each
chosen layer: the maximum over the map and its arg-max, merged into the shard's running top-k.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens import models
from convlens.errors import ConvlensError
from convlens.index import topk as tk
from convlens.index.source import Source
from convlens.index.store import note
from convlens.models.hooks import get_layer
from convlens.subjects.core import Subject

if TYPE_CHECKING:
    from convlens.index.shards import Plan

TOP_CLASSES = 5


# --------------------------------------------------------------------------------------------------
# One batch
# --------------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Forward hooks: each layer's per-channel maximum and arg-max, and the classifier's input."""

    model: nn.Module
    layers: list[str]
    maxima: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]] = field(
        default_factory=dict
    )
    features: torch.Tensor | None = None

    @contextmanager
    def hooks(self) -> Iterator[Recorder]:
        handles = []
        try:
            for name in self.layers:
                handles.append(get_layer(self.model, name).register_forward_hook(self._layer(name)))
            handles.append(models.classifier(self.model).register_forward_pre_hook(self._head))
            yield self
        finally:
            for h in handles:
                h.remove()

    def _layer(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, tuple | list) and out:
                out = out[0]
            if not isinstance(out, torch.Tensor):
                return
            a = out[:, :, None, None] if out.dim() == 2 else out  # a flat layer: one position
            if a.dim() != 4:
                raise ConvlensError(f"layer {name!r} outputs {tuple(out.shape)}, not (N, C, H, W)")
            # Reduced here, before an in-place op that follows (VGG's ReLU) can change the output.
            best, arg = (
                a.flatten(2).float().max(dim=2)
            )  # (B, C): maximum over the map, first arg-max
            self.maxima[name] = (best, arg, (int(a.shape[2]), int(a.shape[3])))

        return hook

    def _head(self, _m: nn.Module, args: tuple[object, ...]) -> None:
        if self.features is None and args and isinstance(args[0], torch.Tensor):
            self.features = args[0].flatten(1)  # (B, D): the classifier's input

    def reset(self) -> None:
        self.maxima, self.features = {}, None


@dataclass
class ShardResult:
    """What a shard keeps: per image rows and each layer's running top-k."""

    top_classes: list[np.ndarray] = field(default_factory=list)
    top_probs: list[np.ndarray] = field(default_factory=list)
    loss: list[np.ndarray] = field(default_factory=list)
    correct: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    units: dict[str, tk.UnitTopK] = field(default_factory=dict)
    map_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


class BatchPass:
    """The model, its hooks and the rules of one index pass, applied batch by batch."""

    def __init__(self, sub: Subject, src: Source, plan: Plan, device: torch.device) -> None:
        self.sub, self.src, self.plan, self.device = sub, src, plan, device
        self.recorder = Recorder(sub.model, plan.layers)
        self.features_by_hook = True  # decided by check_features() before the pass

    def run_batch(
        self, images: torch.Tensor, index: np.ndarray, problems: list[str], out: ShardResult
    ) -> None:
        """Forward one uint8 batch ``(B, C, H, W)`` of images `index` and add it to `out`."""
        rec = self.recorder
        rec.reset()
        x = self.sub.preprocess.normalize(images.to(self.device, non_blocking=True))
        try:
            logits = self.sub.model(x)
        except RuntimeError as e:  # the model's own failure on a batch, in one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConvlensError(
                f"{type(self.sub.model).__name__} failed on a batch of {tuple(x.shape)}: {first}"
            ) from None
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ConvlensError(
                f"{type(self.sub.model).__name__} does not return logits (N, classes); it cannot "
                "be indexed"
            )
        maxima, feats = rec.maxima, rec.features
        if not self.features_by_hook:
            feats = models.forward_features(self.sub.model, x).flatten(1)
        assert feats is not None
        ok = np.array([not p for p in problems])
        for i, p in zip(index, problems, strict=True):
            if p:
                out.problems.append((int(i), p))

        # Top-5 from the logits in float64; a stable sort puts the lower class first on ties.
        log_p = F.log_softmax(logits.double(), dim=1)  # (B, K)
        vals, cls = log_p.sort(dim=1, descending=True, stable=True)
        m = min(TOP_CLASSES, log_p.shape[1])
        top_c = np.full((len(index), TOP_CLASSES), -1, dtype=np.int64)
        top_p = np.zeros((len(index), TOP_CLASSES), dtype=np.float32)
        top_c[:, :m] = cls[:, :m].cpu().numpy()
        top_p[:, :m] = vals[:, :m].exp().float().cpu().numpy()
        out.top_classes.append(top_c)
        out.top_probs.append(top_p)
        if self.src.labels_are_outputs:
            y = torch.from_numpy(self.src.labels[index]).to(log_p.device)  # (B,)
            out.loss.append((-log_p.gather(1, y[:, None])[:, 0]).float().cpu().numpy())
            out.correct.append((cls[:, 0] == y).cpu().numpy())
        out.features.append(feats.to(torch.float16).cpu().numpy())

        for name in self.plan.layers:
            if name not in maxima:
                raise ConvlensError(f"layer {name!r} did not run in the forward pass")
            best, arg, (_, w) = maxima[name]
            values = best.T.cpu().numpy()  # (C, B)
            flat = arg.T.cpu().numpy()
            values[:, ~ok] = -np.inf  # an unreadable image never ranks
            images_ = np.broadcast_to(np.where(ok, index, -1), values.shape)
            pos = np.stack([flat // w, flat % w], axis=-1)  # (C, B, 2) as (row, col)
            run = out.units.get(name) or tk.empty(values.shape[0], self.plan.k)
            out.units[name] = tk.merge(run, tk.UnitTopK(values, images_, pos), self.plan.k)
            out.map_sizes[name] = maxima[name][2]

    def check_features(self) -> None:
        """Is the classifier's input what `forward_features` returns? Decided once before the
        pass, on one random image (the batch-1 shapes the layer probe has already run)."""
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(1, *self.sub.image_shape, generator=g).to(self.device)
        self.recorder.reset()
        self.sub.model(probe)
        feats = self.recorder.features
        ref = models.forward_features(self.sub.model, probe).flatten(1)
        same = feats is not None and feats.shape == ref.shape
        if feats is not None and same:
            scale = max(float(ref.abs().max()), 1e-12)
            same = torch.allclose(feats.float(), ref.float(), rtol=1e-4, atol=1e-6 * scale)
        self.features_by_hook = same
        if not same:
            note(
                f"the classifier's input of {type(self.sub.model).__name__} is not what its "
                "forward_features returns; the features take a second (truncated) forward per "
                "batch"
            )
