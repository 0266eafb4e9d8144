"""The training engine: fit, run directories, recipes, schedules, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convlens.train import load_run


def test_trained_run_fixture_is_a_complete_accurate_run(trained_run: Path) -> None:
    raw = json.loads((trained_run / "run.json").read_text())
    assert raw["status"] == "complete"
    assert raw["model"] == {
        "name": "lenet5",
        "options": {"num_classes": 10, "in_channels": 1},
    }
    run = load_run(trained_run)
    assert not run.model.training
    assert run.data.name == "sample" and run.data.image_shape == (1, 28, 28)
    assert len(run.history) == raw["train"]["epochs"]
    assert run.history[-1]["test_acc"] >= 0.85
    for key in (
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "lr",
        "images_per_s",
        "seconds",
    ):
        assert key in run.history[0]
    assert (trained_run / "checkpoint.pt").is_file()
    # The weights give the recorded accuracy on the real test split (an independent recount).
    test = run.load_data("test")
    with torch.inference_mode():
        pred = run.model(run.normalize(test.images)).argmax(1)
    acc = (pred == test.labels).double().mean().item()
    assert acc == pytest.approx(run.history[-1]["test_acc"], abs=1e-9)
