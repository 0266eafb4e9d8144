"""The same `convlens train` under `torchrun --nproc-per-node=2`: DDP over gloo on two CPU processes.

Oracle: the one-process run of the same command. With the same global batch, the two runs take the
same number of optimiser steps and reach the same accuracy within noise (the shards reorder the
images inside each batch's gradient sum, and the last batch is padded, so they are not bit-equal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ARGS = ["train", "lenet5", "--data", "sample", "--epochs", "3", "--limit-train", "3000"]
ARGS += ["--limit-test", "1000", "--batch-size", "64", "--threads", "1", "-q"]


def _rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.Popen(
        [str(BIN / "convlens"), *ARGS, "--out", str(one)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    torchrun = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "convlens.cli.main",
    ]
    ddp = subprocess.run(
        [*torchrun, *ARGS, "--out", str(two)],
        capture_output=True,
        env=env,
        timeout=300,
    )
    _, s_err = single.communicate(timeout=300)
    assert single.returncode == 0, s_err.decode()
    assert ddp.returncode == 0, ddp.stderr.decode()[-3000:]

    raw = json.loads((two / "run.json").read_text())
    assert raw["status"] == "complete" and raw["world_size"] == 2
    assert raw["train"]["batch_size"] == 64  # the global batch; each rank ran 32
    # Only rank 0 printed the result line and wrote files.
    assert ddp.stdout.decode().count("test accuracy") == 1
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in one.iterdir() if not p.name.startswith(".")
    )
    a, b = _rows(one), _rows(two)
    assert (
        [r["step"] for r in a] == [r["step"] for r in b] == [47, 94, 141]
    )  # ceil(3000 / 64) a epoch
    assert b[-1]["test_acc"] > 0.7
    assert abs(a[-1]["test_acc"] - b[-1]["test_acc"]) < 0.03
    assert abs(a[-1]["train_loss"] - b[-1]["train_loss"]) < 0.1
