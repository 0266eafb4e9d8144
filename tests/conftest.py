"""Shared test fixtures.

The real data sets live in ../shared/data; tests hand that folder to the code through
CONVLENS_DATA, exactly as a user points convlens at a folder of their own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "CONVLENS_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["CONVLENS_DATA"] = str(SHARED_DATA)

# One cache per test session (indexes, decoded data sets, the web app's jobs): an index the user
# built in ~/.cache/convlens would otherwise change which path a test takes. Subprocesses inherit it.
_CACHE = tempfile.mkdtemp(prefix="convlens-test-cache-")
os.environ["CONVLENS_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# Two cores on CI: one intra-op thread per test process keeps timings stable and avoids oversubscription.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder of real data sets; tests that need it are skipped when it is absent, except in
    CI (``CI`` set to true, as GitHub Actions and most CI services do): there a missing folder is a
    failure, so that a broken data step cannot turn every data test into a silent skip."""
    root = os.environ.get("CONVLENS_DATA")
    if not root or not Path(root).is_dir():
        why = f"CONVLENS_DATA is not set to a folder of data sets (it is {root!r})"
        if in_ci():
            pytest.fail(f"{why}; in CI the data tests must run, not skip", pytrace=False)
        pytest.skip(why)
    return Path(root)


def in_ci() -> bool:
    """Whether the tests run in CI (the ``CI`` environment variable is set to a true value)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory: LeNet-5 trained by `convlens.train.fit` on the bundled `sample` data.

    About 6 epochs over 8,000 Fashion-MNIST images, a few seconds on a CPU; the recipe reaches
    >= 85 % test accuracy (asserted in tests/test_train.py). Treat the directory as read-only.
    """
    from convlens.train import fit, recipe

    out = tmp_path_factory.mktemp("trained_run") / "lenet5-sample"
    fit(
        "lenet5",
        "sample",
        out=out,
        config=recipe("lenet5", "sample", device="cpu", threads=1),
        progress=False,
    )
    return out


@pytest.fixture
def resnet20_bn() -> torch.nn.Module:
    """ResNet-20 (random weights, seed 0) in eval mode with non-trivial BatchNorm statistics and
    affine parameters, so that folding BatchNorm into the convolutions visibly matters."""
    from convlens import models

    torch.manual_seed(0)
    net = models.create("resnet20", num_classes=10, in_channels=3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net.eval()
