"""Real signals to real `convlens` processes (issue #16).

SIGINT (Ctrl-C) and SIGTERM mid-epoch, mid-report and mid-visualize: the process stops with one line
and exit status 130 / 143, never a traceback or "Exception ignored", and leaves nothing half-written.
A training stopped this way says where, and resumes to a complete run. Two trainings into one --out:
the second is refused with the first one's PID.
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

from robustness_helpers import CLI, subprocess_env, train_tiny

TRAIN = ["train", "lenet5", "--limit-train", "3000", "--limit-test", "300", "--epochs", "4",
         "--device", "cpu", "--checkpoint-every", "1000"]  # fmt: skip


def _start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, *argv], cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=log.open("wb")
    )


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until `text` appears in the process's stderr (it has reached that point)."""
    end = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < end, f"no {text!r} in time: {log.read_text()}"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, str, str]:
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out.decode(), log.read_text()


def _no_debris(folder: Path) -> None:
    """No temporary file of an atomic write left behind."""
    assert not [p.name for p in folder.rglob(".*.tmp")]


@pytest.mark.parametrize(("sig", "status", "verb"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated")])  # fmt: skip
def test_training_stops_at_a_checkpoint_and_resumes(
    tmp_path: Path, sig: int, status: int, verb: str
) -> None:
    log = tmp_path / "err"
    proc = _start([*TRAIN, "--out", "run"], tmp_path, log)
    _wait_for(log, "training lenet5 on sample", proc)
    time.sleep(0.3)  # into the first epoch
    proc.send_signal(sig)
    code, _, err = _finish(proc, log)
    assert code == status, err
    assert "Traceback" not in err and "Exception ignored" not in err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith(f"{verb} ")
    assert (
        "checkpoint saved. Resume with: convlens train lenet5 --data sample --out run --resume"
        in last
    )
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert (run / "checkpoint.pt").is_file() and not (run / "model.safetensors").exists()
    assert not (run / ".lock").exists()
    _no_debris(run)

    resumed = subprocess.run(
        [*CLI, "train", "lenet5", "--out", "run", "--resume", "--quiet"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


def test_two_trainings_into_one_folder(tmp_path: Path) -> None:
    log = tmp_path / "err"
    long = ["train", "lenet5", "--limit-train", "3000", "--epochs", "50", "--device", "cpu"]
    first = _start([*long, "--out", "run"], tmp_path, log)
    _wait_for(log, "training lenet5 on sample", first)
    second = subprocess.run(
        [*CLI, *long, "--out", "run"], cwd=tmp_path, env=subprocess_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert first.poll() is None, "the first training ended before the second started"
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    assert second.stderr.splitlines()[0] == (
        f"error: run is being written by process {first.pid}; wait for it to finish, stop it, "
        "or choose another --out"
    )
    first.send_signal(signal.SIGTERM)
    code, _, err = _finish(first, log)
    assert code == 143, err
    assert not (tmp_path / "run" / ".lock").exists()  # released with the process


def test_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    from convlens.train.lock import run_lock

    (tmp_path / ".lock").write_text("999999\n")  # left by a process killed with -9
    ended = "left locked by process 999999, which has ended"
    with pytest.warns(UserWarning, match=ended), run_lock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip().isdigit()
    assert not (tmp_path / ".lock").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("signals") / "run")


@pytest.mark.parametrize(
    ("argv", "sig", "status"),
    [
        (["report", "{run}", "--out", "{tmp}/report.html"], signal.SIGINT, 130),
        (["report", "{run}", "--out", "{tmp}/report.html"], signal.SIGTERM, 143),
        (["visualize", "{run}", "actmax", "--steps", "100000", "--out", "{tmp}/vis"],
         signal.SIGINT, 130),
        (["visualize", "{run}", "tsne", "--count", "2000", "--out", "{tmp}/vis"],
         signal.SIGTERM, 143),
    ],
    ids=["report-INT", "report-TERM", "visualize-INT", "visualize-TERM"],
)  # fmt: skip
def test_interrupted_commands_write_nothing_half_done(
    tmp_path: Path, tiny_run: Path, argv: list[str], sig: int, status: int
) -> None:
    argv = [a.format(run=tiny_run, tmp=tmp_path) for a in argv]
    before = sorted(p.name for p in tiny_run.iterdir())
    log = tmp_path / "err"
    proc = _start(argv, tmp_path, log)
    time.sleep(4.0)  # well into the work (imports take ~2 s)
    assert proc.poll() is None, log.read_text()
    proc.send_signal(sig)
    code, _, err = _finish(proc, log)
    assert code == status, err
    assert "Traceback" not in err and "Exception ignored" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == ("interrupted" if sig == signal.SIGINT else "terminated")
    assert not (tmp_path / "report.html").exists()
    assert sorted(p.name for p in tiny_run.iterdir()) == before
    _no_debris(tmp_path)
    if (tmp_path / "vis").exists():  # figures written before the signal are whole PNGs
        for png in (tmp_path / "vis").glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_data_tests_fail_in_ci_when_the_data_is_missing(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    """In CI a missing data folder fails the tests that need it; on a laptop they are skipped."""
    (tmp_path / "test_needs_data.py").write_text("def test_x(data_root):\n    pass\n")
    env = subprocess_env()
    env["PYTHONPATH"] = str(Path(__file__).parent) + os.pathsep + env["PYTHONPATH"]
    env.update(CI=ci, CONVLENS_DATA=str(tmp_path / "no-data-here"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
         str(tmp_path / "test_needs_data.py")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert outcome in done.stdout, done.stdout + done.stderr
    assert done.returncode == (1 if ci else 0), done.stdout  # a setup failure fails the run
    if ci:
        assert "in CI the data tests must run" in done.stdout
