"""Training: `fit` a model on a data set into a run directory, `evaluate` it, `load_run` it back.

- :func:`fit` (in :mod:`~convlens.train.loop`) — the training loop: resumable, distributed under torchrun;
- :class:`TrainConfig` and :func:`recipe` — hyper-parameters and per-model defaults;
- :func:`evaluate` — accuracy, per-class accuracy, confusion matrix;
- :func:`load_run` — a run directory back as a model plus its data description and history.
"""

from __future__ import annotations

from convlens.train.config import TrainConfig
from convlens.train.evaluate import Evaluation, confusion_matrix, evaluate
from convlens.train.loop import TrainingDiverged, fit
from convlens.train.recipes import recipe
from convlens.train.run_dir import DataInfo, Run, load_run

__all__ = [
    "DataInfo",
    "Evaluation",
    "Run",
    "TrainConfig",
    "TrainingDiverged",
    "confusion_matrix",
    "evaluate",
    "fit",
    "load_run",
    "recipe",
]
