"""`fit` on a user's own module and own Dataset (real Fashion-MNIST images), interrupted and resumed.

The oracle for the resume is an uninterrupted run of the same module: on a CPU a resumed run must
end with bit-identical weights (the property tests/test_train_resume.py checks with kill -9).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from convlens.data import Dataset, load
from convlens.errors import ConvlensError
from convlens.train import TrainConfig, fit, load_run


class SmallNet(nn.Module):
    """A user's module: two convolutions and a linear head, nothing from convlens."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # N x w x 14 x 14
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class Crash(Exception):
    pass


class CrashingNet(SmallNet):
    """Raises on its `crash_at`-th training forward: a process killed in the middle of an epoch."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.calls, self.crash_at = 0, crash_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.crash_at:
                raise Crash
        return super().forward(x)


def _subset(ds: Dataset, n: int) -> Dataset:
    return Dataset(
        name=f"{ds.name}-{n}", split=ds.split, images=ds.images[:n], labels=ds.labels[:n],
        classes=ds.classes, mean=ds.mean, std=ds.std,
    )  # fmt: skip


@pytest.fixture(scope="module")
def splits(data_root: Path) -> tuple[Dataset, Dataset]:
    root = str(data_root)
    try:
        train, test = load("fashion-mnist", "train", root), load("fashion-mnist", "test", root)
    except ConvlensError as e:
        from conftest import in_ci

        if in_ci():  # a data folder without Fashion-MNIST in CI is a broken set-up, not a skip
            pytest.fail(f"Fashion-MNIST not available: {e}", pytrace=False)
        pytest.skip(f"Fashion-MNIST not available: {e}")
    return _subset(train, 1024), _subset(test, 256)


CFG = TrainConfig(
    epochs=2, batch_size=64, lr=0.05, schedule="cosine", warmup=0.5, device="cpu", threads=1,
    checkpoint_every_s=1e-9,  # a checkpoint at every step: the crash leaves one mid-epoch
)  # fmt: skip


def _fresh(cls: type[SmallNet], *args: int) -> SmallNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls(*args)


def test_fit_a_user_module_on_a_user_dataset_then_resume_exactly(
    splits: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    train, test = splits
    state = torch.get_rng_state()
    whole = fit(
        _fresh(SmallNet), train, test_data=test, out=tmp_path / "whole", config=CFG, progress=False
    )
    assert torch.equal(state, torch.get_rng_state())  # the run seeded inside fork_rng
    assert whole.history[-1]["test_acc"] > 0.5  # ten classes: it learned something
    raw = json.loads((tmp_path / "whole" / "run.json").read_text())
    assert raw["model"]["name"] == "user:SmallNet" and raw["model"]["user_supplied"]
    assert raw["data"]["name"] == "fashion-mnist-1024" and raw["data"]["user_supplied"]

    out = tmp_path / "crashed"
    steps = len(train) // CFG.batch_size  # 16 per epoch: crash in the 2nd epoch, at step 20
    with pytest.raises(Crash):
        fit(
            _fresh(CrashingNet, steps + 4),
            train,
            test_data=test,
            out=out,
            config=CFG,
            progress=False,
        )
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    # Resuming needs the same module: not a name, not another architecture.
    with pytest.raises(ConvlensError, match=r"your own module \(CrashingNet\).*fit\(model="):
        fit("lenet5", train, test_data=test, out=out, resume=True, progress=False)
    with pytest.raises(ConvlensError, match="not the architecture it was trained with"):
        fit(_fresh(SmallNet, 4), train, test_data=test, out=out, resume=True, progress=False)
    with pytest.raises(ConvlensError, match="your own Dataset"):
        fit(_fresh(SmallNet), "fashion-mnist", out=out, resume=True, progress=False)

    resumed = fit(_fresh(SmallNet), train, test_data=test, out=out, resume=True, progress=False)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [r["test_acc"] for r in resumed.history] == [r["test_acc"] for r in whole.history]

    # Loading the directory needs the module too; with it, the trained weights come back.
    with pytest.raises(ConvlensError, match=r"load_run\(path, model="):
        load_run(out)
    again = load_run(out, model=SmallNet())
    assert all(
        torch.equal(v, again.model.state_dict()[k]) for k, v in whole.model.state_dict().items()
    )


def test_a_user_dataset_needs_its_test_split(
    splits: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    train, _ = splits
    with pytest.raises(ConvlensError, match="pass test_data="):
        fit(SmallNet(), train, out=tmp_path / "x", config=CFG, progress=False)


def test_a_user_module_that_does_not_fit_the_data_is_refused(
    splits: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    train, test = splits
    three_channels = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ConvlensError, match="do not fit user:Sequential"):
        fit(three_channels, train, test_data=test, out=tmp_path / "y", config=CFG, progress=False)
