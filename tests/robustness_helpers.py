"""Shared pieces of the robustness tests: run the CLI in-process, snapshot a folder, a tiny run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from convlens.cli.main import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` -> (size, mtime_ns): what a command may not change."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            # A folder counts by its existence only (a check may create and drop an unnamed file).
            out[str(p.relative_to(root))] = (0, 0) if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Paths added, removed or modified between two snapshots."""
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k))


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """`convlens ARGV` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env() -> dict[str, str]:
    """The environment for a real `python -m convlens.cli.main` process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


CLI = [sys.executable, "-m", "convlens.cli.main"]


def train_tiny(out: Path) -> Path:
    """A finished LeNet-5 run on 600 sample images, one epoch (a few seconds)."""
    code = main(
        [
            "train",
            "lenet5",
            "--limit-train",
            "600",
            "--limit-test",
            "200",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    return out
