"""Every experiment end to end at the tiny budget (256 training images, one epoch, two seeds), its
page, resume.

What is checked against something independent: the tables' parameter counts against the formulas
(27C², 49C²) and the summary, a verdict's interval against scipy's paired t-test on the runs' own
accuracies, and that the page is self-contained. The tiny budget is a smoke test: every verdict
must say it decides nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convlens import experiments
from convlens.cli.main import main
from convlens.errors import ConvlensError
from convlens.experiments.runner import ExperimentResult
from convlens.experiments.stats import SMOKE


def _check_page(result: ExperimentResult) -> str:
    html = result.page.read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from anywhere
    assert html.count('src="data:image/png;base64,') == len(result.findings.pictures)
    assert "Smoke test: decides nothing" in html
    for v in result.verdicts:
        assert v.status == SMOKE and not v.held  # the tiny budget decides nothing
        assert v.status in html
    assert (result.out / "results.json").is_file()
    return html


@pytest.fixture(scope="module")
def stack_result(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> ExperimentResult:
    out = tmp_path_factory.mktemp("exp") / "stack"
    return experiments.run(
        "stack", out=out, budget="tiny", device="cpu", settings={"width": 8}, progress=False
    )


def test_stack_table_against_formulas(stack_result: ExperimentResult) -> None:
    from scipy import stats as sp

    _check_page(stack_result)
    t = stack_result.findings.table("The block")
    params = dict(zip(t.column("block"), t.column("block parameters (summary)"), strict=True))
    narrow = round(27 * 8 / 49)
    assert params == {
        "three 3x3": 27 * 8 * 8,
        "three 3x3, no ReLU between": 27 * 8 * 8,
        "one 7x7": 49 * 8 * 8,
        f"one 7x7, {narrow} channels": 49 * 8 * narrow,
    }
    assert t.column("RF (summary)") == [7, 7, 7, 7]
    assert t.column("RF (brute force, trained)") == [7, 7, 7, 7]
    assert t.column("non-linearities") == [3, 1, 1, 1]
    # the accuracy claim's interval is scipy's paired t interval on the runs' own accuracies
    runs = stack_result.runs
    a = [100 * runs[f"three3x3-s{s}"].history[-1]["test_acc"] for s in (0, 1)]
    b = [100 * runs[f"one7x7-s{s}"].history[-1]["test_acc"] for s in (0, 1)]
    iv = stack_result.verdicts[2].interval
    assert iv is not None and iv.n == 2
    if a != b and len({x - y for x, y in zip(a, b, strict=True)}) > 1:
        ci = sp.ttest_rel(a, b).confidence_interval()
        assert (iv.lo, iv.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # seeds pair: the same seed gives every arm the same config seed
    seeds = {n: r.config["seed"] for n, r in runs.items()}
    assert seeds["three3x3-s1"] == seeds["one7x7-s1"] == 1


def test_resume_skips_finished_runs_and_report_redraws(stack_result: ExperimentResult) -> None:
    out = stack_result.out
    weights = out / "runs" / "three3x3-s0" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    with pytest.raises(ConvlensError, match="--resume"):
        experiments.run("stack", out=out, budget="tiny", settings={"width": 8}, progress=False)
    with pytest.raises(ConvlensError, match="differ"):
        experiments.run("stack", out=out, budget="small", resume=True, progress=False)
    again = experiments.run(
        "stack", out=out, budget="tiny", resume=True, settings={"width": 8}, progress=False
    )
    assert weights.stat().st_mtime_ns == before  # nothing retrained
    assert [v.status for v in again.verdicts] == [v.status for v in stack_result.verdicts]
    stack_result.page.unlink()
    assert main(["experiment", "stack", "--report", str(out)]) == 0
    assert stack_result.page.is_file()
    assert main(["experiment", "pooling", "--report", str(out)]) == 1  # another experiment's dir


@pytest.mark.slow
def test_interrupted_experiment_resumes_the_unfinished_runs(
    tmp_path: Path,
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from convlens.experiments import runner

    real_fit = runner.fit
    calls: list[str] = []

    def fit_then_die(model: str, *args: object, **kwargs: object) -> object:
        calls.append(model)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second run
        return real_fit(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "fit", fit_then_die)
    out = tmp_path / "pooling"
    with pytest.raises(KeyboardInterrupt):
        experiments.run("pooling", out=out, budget="tiny", device="cpu", progress=False)
    assert f"convlens experiment pooling --budget tiny --out {out} --resume" in (
        capsys.readouterr().err.replace("\n", "")
    )
    with pytest.raises(ConvlensError, match="not finished"):
        experiments.report(out)
    first = (out / "runs" / "max-s0" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(runner, "fit", real_fit)
    result = experiments.run("pooling", out=out, budget="tiny", resume=True, progress=False)
    assert (out / "runs" / "max-s0" / "model.safetensors").stat().st_mtime_ns == first
    _check_page(result)
    t = result.tables[0]
    assert [r[0] for r in t.rows] == ["max pooling", "average pooling", "stride-2 convolution"]
    assert t.headers[1] == "σ = 0" and "relative drop %" in t.headers


@pytest.mark.slow
def test_sharing_parameters_against_the_summary(tmp_path: Path, data_root: Path) -> None:
    result = experiments.run("sharing", out=tmp_path / "s", budget="tiny", progress=False)
    _check_page(result)
    t = result.tables[0]
    layer = t.column("layer parameters")
    unshared = t.column("params_unshared (summary)")
    assert layer == [16 * 25 + 16, 24 * 24 * 16 * 26, 24 * 24 * 16 * 26]
    assert unshared == [layer[1]] * 3
    train, test = t.column("train acc. %"), t.column("test acc. %")
    assert min(train + test) >= 0 and max(train + test) <= 100
    # the stated rule matches the layer-1 steps: within 2x of the convolution's, 16x the same-lr's
    step = t.column("layer-1 step / lr at init")
    assert 0.5 < step[1] / step[0] < 2 and step[1] / step[2] == pytest.approx(16, rel=1e-6)


@pytest.mark.slow
def test_first_filters_runs(tmp_path: Path, data_root: Path) -> None:
    ff = experiments.run("first-filters", out=tmp_path / "ff", budget="tiny", progress=False)
    _check_page(ff)
    t = ff.tables[0]
    assert t.column("filters (all seeds)") == [64, 64, 64, 64, 12, 12]  # 2 seeds, w and w − w0


@pytest.mark.slow
def test_degradation_runs(tmp_path: Path, data_root: Path) -> None:
    deg = experiments.run(
        "degradation",
        out=tmp_path / "deg",
        budget="tiny",
        device="cpu",
        settings={"depths": (20, 32)},
        progress=False,
    )
    _check_page(deg)
    t = deg.tables[0]
    assert t.column("network") == ["plain-20", "resnet-20", "plain-32", "resnet-32"]
    params = t.column("parameters")
    assert params[0] == params[1] == 269_722 and params[2] == params[3]  # He et al.: 0.27M
    assert "margin of 2" in deg.verdicts[1].rule  # the residual claim is non-inferiority
    assert [r[0] for r in deg.tables[1].rows] == [4]  # 256 images / 64 = 4 steps, one epoch


def test_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "stacks", "--out", str(tmp_path / "x")]) == 1
    assert "stack" in capsys.readouterr().err
    assert main(["experiment", "stack", "--budget", "huge", "--out", str(tmp_path / "x")]) == 1
    assert (
        main(["experiment", "first-filters", "--data", "mnist", "--out", str(tmp_path / "x")]) == 1
    )
    assert main(["experiment", "stack", "--depths", "20,56", "--out", str(tmp_path / "x")]) == 1
    assert (
        main(["experiment", "degradation", "--depths", "56,20", "--out", str(tmp_path / "x")]) == 1
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["experiment", "stack", "--resume", "--out", str(empty)]) == 1
    assert main(["experiment", "stack", "--device", "tpu", "--out", str(tmp_path / "t")]) == 1
    assert not (tmp_path / "t").exists()  # refused before any folder is made
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"small or paper", err)
    assert "nothing to resume" in err
    assert "unknown device 'tpu'" in err


def test_ctrl_c_names_the_experiments_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from convlens import interrupts
    from convlens.experiments import runner

    def stopped(*args: object, **kwargs: object) -> object:
        # what fit raises on Ctrl-C: a checkpoint saved, its own (train) resume command
        raise interrupts.stop("in epoch 1; checkpoint saved. Resume with: convlens train x")

    monkeypatch.setattr(runner, "fit", stopped)
    out = tmp_path / "stack"
    code = main(["experiment", "stack", "--budget", "tiny", "--out", str(out)])
    err = capsys.readouterr().err.replace("\n", "")
    assert code == 130
    assert f"convlens experiment stack --budget tiny --out {out} --resume" in err
    assert "convlens train" not in err
