"""`kill -9` a real `convlens train` process, `--resume` it, and get the uninterrupted run's weights.

The oracle is an uninterrupted run of the same command: on CPU with a fixed seed, the resumed run
must end with bit-identical weights (torch.equal) and the same per-epoch losses and accuracies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CONVLENS = Path(sys.executable).parent / "convlens"
# Small but several checkpoints long: 3 epochs of 47 steps, a checkpoint every 0.2 s mid-epoch.
ARGS = ["lenet5", "--data", "sample", "--epochs", "3", "--limit-train", "1500"]
ARGS += ["--limit-test", "300", "--batch-size", "32", "--checkpoint-every", "0.2"]
ARGS += ["--threads", "1", "--seed", "3", "-q"]


def _train(out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(CONVLENS), "train", *ARGS, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    reference = _train(whole)  # runs alongside: the machine has two cores
    victim = _train(broken)
    ckpt = broken / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert victim.poll() is None, b"\n".join(victim.communicate()).decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    raw = json.loads((broken / "run.json").read_text())
    assert raw["status"] == "running" and not (broken / "model.safetensors").exists()
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] < 3 * 47, "the process was killed after it had finished"

    resumed = _train(broken, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err.decode()

    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (broken / "metrics.jsonl").read_text().splitlines()]
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "step")
    assert [[r[k] for k in keys] for r in rows_a] == [[r[k] for k in keys] for r in rows_b]
    assert json.loads((broken / "run.json").read_text())["status"] == "complete"
