"""`convlens demo`: train a small network, write its report, print the report's path.

The end-to-end run goes through the real entry point; the reuse / resume / retrain decisions are
checked on run directories built to the run-directory schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convlens.cli.main import main
from convlens.cli.report_cmds import _prepare_demo_dir
from convlens.errors import ConvlensError


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
def test_demo_trains_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    # One epoch keeps the test short; the default run is measured in benchmarks/RESULTS.md.
    assert main(["demo", "--out", str(out), "--epochs", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    report = out / "report.html"
    assert captured.out.strip().splitlines()[-1] == str(report)  # the path alone on stdout
    assert report.is_file() and (out / "model.safetensors").is_file()
    raw = json.loads((out / "run.json").read_text())
    assert (raw["model"]["name"], raw["data"]["name"], raw["status"]) == (
        "lenet5",
        "sample",
        "complete",
    )
    html = report.read_text()
    assert "What lenet5 learned on sample" in html
    assert 'class="report-section status-failed"' not in html
    err = flat(captured.err)
    assert "training lenet5 on sample" in err and "report:" in err and "Traceback" not in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["test_acc"] > 0.5  # one epoch of LeNet-5 already learns


def test_demo_refuses_unknown_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--data", "imagenet", "--out", str(tmp_path / "d")]) == 1
    err = flat(capsys.readouterr().err)
    assert "the demo runs on sample, mnist, fashion-mnist, cifar10, not 'imagenet'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "d").exists()


def _run_json(out: Path, model: str, data: str, status: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    raw = {"format": 1, "status": status, "model": {"name": model, "options": {}},
           "data": {"name": data, "classes": [], "mean": [0.5], "std": [0.5], "image_shape": [1, 28, 28]}}  # fmt: skip
    (out / "run.json").write_text(json.dumps(raw))


def test_demo_reuses_resumes_or_refuses_what_out_holds(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert _prepare_demo_dir(fresh, "lenet5", "sample", retrain=False) is False

    done = tmp_path / "done"
    _run_json(done, "lenet5", "sample", "complete")
    (done / "model.safetensors").write_bytes(b"weights")
    assert _prepare_demo_dir(done, "lenet5", "sample", retrain=False) is None  # reuse: report only

    interrupted = tmp_path / "interrupted"
    _run_json(interrupted, "lenet5", "sample", "running")
    (interrupted / "checkpoint.pt").write_bytes(b"state")
    assert _prepare_demo_dir(interrupted, "lenet5", "sample", retrain=False) is True  # resume

    other = tmp_path / "other"
    _run_json(other, "resnet20", "cifar10", "complete")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConvlensError, match="holds a run of resnet20 on cifar10; pass --retrain"):
        _prepare_demo_dir(other, "lenet5", "sample", retrain=False)
    # --retrain removes the run's own files and nothing else.
    assert _prepare_demo_dir(other, "lenet5", "sample", retrain=True) is False
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
