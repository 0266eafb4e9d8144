"""The training engine: fit, run directories, recipes, schedules, evaluate, the CLI's errors.

Oracles: sklearn's confusion matrix, torch's own LR schedulers, a recount of the test accuracy from
the saved weights, `torch.load(weights_only=True)` for the checkpoint format.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.cli.main import main
from convlens.errors import ConvlensError
from convlens.train import TrainConfig, confusion_matrix, evaluate, fit, load_run, recipe
from convlens.train.schedules import lr_factor

# A tiny configuration: seconds on a loaded 2-core CPU.
TINY = {"epochs": 1, "limit_train": 512, "limit_test": 200, "threads": 1, "device": "cpu"}
TINY_ARGS = ["--epochs", "1", "--limit-train", "512", "--limit-test", "200", "--threads", "1", "-q"]


def _flat(text: str) -> str:
    """Rich wraps long error lines to the terminal width; compare the words."""
    return " ".join(text.split())


# ---- the shared fixture ---------------------------------------------------------------------------


def test_trained_run_fixture_is_a_complete_accurate_run(trained_run: Path) -> None:
    raw = json.loads((trained_run / "run.json").read_text())
    assert raw["status"] == "complete"
    assert raw["model"] == {"name": "lenet5", "options": {"num_classes": 10, "in_channels": 1}}
    assert raw["seed"] == raw["train"]["seed"] == 0
    assert set(raw["versions"]) >= {"convlens", "torch", "torchvision"}
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
    assert [h["epoch"] for h in run.history] == list(range(len(run.history)))
    # The saved weights give the recorded accuracy on the real test split (an independent recount).
    test = run.load_data("test")
    with torch.inference_mode():
        pred = run.model(run.normalize(test.images)).argmax(1)
    acc = (pred == test.labels).double().mean().item()
    assert acc == pytest.approx(run.history[-1]["test_acc"], abs=1e-9)


def test_checkpoint_loads_with_weights_only(trained_run: Path) -> None:
    ckpt = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    assert ckpt["format"] == 1
    assert ckpt["epoch"] == ckpt["config"]["epochs"] and ckpt["batch"] == 0
    assert ckpt["rng"]["torch"].dtype == torch.uint8
    assert ckpt["model_name"] == "lenet5" and ckpt["data_name"] == "sample"
    run = load_run(trained_run)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


# ---- evaluate -------------------------------------------------------------------------------------


def test_confusion_matrix_matches_sklearn() -> None:
    from sklearn.metrics import confusion_matrix as sk_confusion

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 7, (500,), generator=g)
    p = torch.where(torch.rand(500, generator=g) < 0.6, y, torch.randint(0, 7, (500,), generator=g))
    ours = confusion_matrix(y, p, 7).numpy()
    np.testing.assert_array_equal(ours, sk_confusion(y.numpy(), p.numpy(), labels=range(7)))


def test_evaluate_matches_sklearn_on_the_trained_run(trained_run: Path) -> None:
    from sklearn.metrics import accuracy_score, recall_score
    from sklearn.metrics import confusion_matrix as sk_confusion

    ev = evaluate(trained_run)
    run = load_run(trained_run)
    test = run.load_data("test")
    with torch.inference_mode():
        pred = run.model(run.normalize(test.images)).argmax(1).numpy()
    y = test.labels.numpy()
    np.testing.assert_array_equal(ev.confusion.numpy(), sk_confusion(y, pred, labels=range(10)))
    assert ev.accuracy == pytest.approx(accuracy_score(y, pred))
    np.testing.assert_allclose(ev.per_class_accuracy, recall_score(y, pred, average=None))
    assert ev.count == len(test) == 2000
    assert ev.accuracy == pytest.approx(run.history[-1]["test_acc"])


def test_evaluate_cli_json_and_table(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(trained_run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 2000 and len(out["confusion"]) == 10
    assert sum(map(sum, out["confusion"])) == 2000
    assert set(out["per_class_accuracy"]) == set(load_run(trained_run).data.classes)
    assert main(["evaluate", str(trained_run)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "Ankle boot" in text and "confusion matrix" in text


def test_flip_tta_averages_the_probabilities_of_image_and_mirror(
    trained_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConvlensError, match="without flip augmentation"):
        evaluate(trained_run, tta="flip")  # the sample recipe does not flip: refused
    with pytest.raises(ConvlensError, match="unknown test-time augmentation"):
        evaluate(trained_run, tta="crop10")
    # The same weights, declared as trained with flips (the model does not care; the check does).
    flipped = tmp_path / "flipped"
    shutil.copytree(trained_run, flipped)
    raw = json.loads((flipped / "run.json").read_text())
    raw["train"]["augment"] = "crop,flip"
    (flipped / "run.json").write_text(json.dumps(raw))
    ev = evaluate(flipped, tta="flip", limit=500)
    run = load_run(flipped)
    test = run.load_data("test")
    x = run.normalize(test.images[:500])
    with torch.inference_mode():
        p = (run.model(x).softmax(1) + run.model(x.flip(3)).softmax(1)).numpy() / 2  # (500, 10)
    y = test.labels[:500].numpy()
    assert ev.accuracy == pytest.approx(float((p.argmax(1) == y).mean()))
    assert ev.loss == pytest.approx(float(-np.log(p[np.arange(500), y]).mean()), rel=1e-4)
    assert ev.to_dict()["tta"] == "flip"


def test_evaluate_refuses_data_of_another_shape(trained_run: Path, tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "rgb", size=28, mode="RGB")
    with pytest.raises(ConvlensError, match=r"shape \(3, 28, 28\)"):
        evaluate(trained_run, data=f"folder:{folder}")


# ---- schedules against torch's schedulers ---------------------------------------------------------


def _torch_lrs(make: object, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)  # type: ignore[operator]
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_schedule_matches_torch() -> None:
    total = 97
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total), total)
    ours = [lr_factor("cosine", s, total, 0) for s in range(total)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_step_schedule_matches_torch_multistep() -> None:
    total = 200  # He et al.: x0.1 at 50 % and 75 % of training
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[100, 150], gamma=0.1), total
    )
    ours = [lr_factor("step", s, total, 0) for s in range(total)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_onecycle_rises_then_falls_to_zero() -> None:
    total, warm = 100, 20
    f = [lr_factor("onecycle", s, total, warm) for s in range(total + 1)]
    assert max(f) == 1.0 and f.index(1.0) == warm
    assert all(a < b for a, b in itertools.pairwise(f[: warm + 1]))
    assert all(a > b for a, b in itertools.pairwise(f[warm:]))
    assert f[total] == 0.0 and 0 < f[0] < 0.1


# ---- configuration and recipes --------------------------------------------------------------------


def test_recipe_for_cifar_resnets_is_he_et_al_plus_cutout() -> None:
    cfg = recipe("resnet20", "cifar10")
    assert (cfg.optimizer, cfg.momentum) == ("sgd", 0.9)
    # He et al.'s 0.1 at batch 128, scaled linearly with the batch (Goyal et al. 2017)
    assert cfg.lr / cfg.batch_size == pytest.approx(0.1 / 128)
    assert cfg.augmentations == ["crop", "flip", "cutout"] and cfg.crop_padding == 4
    assert cfg.cutout == 16  # DeVries & Taylor's size for CIFAR-10
    assert cfg.weight_decay in (1e-4, 5e-4)
    assert (
        "flip" not in recipe("resnet20", "mnist").augmentations
    )  # a mirrored digit is another glyph
    # explicit options win; None means "not given"
    assert recipe("resnet20", "cifar10", lr=0.05, epochs=None).lr == 0.05


def test_config_round_trips_and_validates() -> None:
    cfg = TrainConfig(epochs=3, augment="crop,flip", lr=0.2)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConvlensError, match="unknown optimizer 'adam'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConvlensError, match="unknown augmentation 'rotate'"):
        TrainConfig(augment="crop,rotate")
    with pytest.raises(ConvlensError, match="learning rate"):
        TrainConfig(lr=0)


# ---- fit: failures a user can cause ---------------------------------------------------------------


def test_nan_loss_stops_with_a_clear_message_and_keeps_a_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    cfg = recipe("lenet5", "sample", **TINY).replace(
        optimizer="sgd", lr=1e12, warmup=0, checkpoint_every_s=0.0, limit_train=2048
    )
    with pytest.raises(ConvlensError, match="NaN or infinite") as e:
        fit("lenet5", "sample", out=out, config=cfg, progress=False)
    raw = json.loads((out / "run.json").read_text())
    assert raw["status"] == "failed" and "NaN" in raw["error"]
    assert not (out / "model.safetensors").exists()
    # A checkpoint per step (checkpoint_every_s=0): the first steps are finite and get written, the
    # first bad one must not overwrite them (checkpoints are written after checking every weight).
    assert "last good checkpoint" in str(e.value)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] >= 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nan_loss_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "train",
            "lenet5",
            "--out",
            str(tmp_path / "r"),
            *TINY_ARGS,
            "--lr",
            "1e12",
            "--optimizer",
            "sgd",
            "--warmup",
            "0",
        ]
    )
    err = _flat(capsys.readouterr().err)
    assert rc == 1
    assert "NaN or infinite" in err and "smaller --lr" in err and "Traceback" not in err


def test_out_dir_holding_a_run_is_not_overwritten(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(trained_run, out)
    with pytest.raises(ConvlensError, match="already holds a run; pass --resume"):
        fit("lenet5", "sample", out=out, config=recipe("lenet5", "sample", **TINY), progress=False)


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    raw = {"status": "running", "model": {"name": "lenet5"}, "data": {"name": "sample"}}
    (out / "run.json").write_text(json.dumps(raw))
    with pytest.raises(ConvlensError, match="no checkpoint at"):
        fit("lenet5", "sample", out=out, resume=True, progress=False)
    run = fit(
        "lenet5", "sample", out=out, config=recipe("lenet5", "sample", **TINY), progress=False
    )
    assert run.status == "complete"


def test_resume_refuses_a_run_of_another_model(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(trained_run, out)
    rc = main(["train", "resnet20", "--data", "sample", "--out", str(out), "--resume", "-q"])
    err = _flat(capsys.readouterr().err)
    assert rc == 1 and "holds a run of lenet5 on sample, not resnet20 on sample" in err
    rc = main(["train", "lenet5", "--data", "mnist", "--out", str(out), "--resume", "-q"])
    assert rc == 1 and "not lenet5 on mnist" in _flat(capsys.readouterr().err)


def test_resume_refuses_changed_hyper_parameters(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(trained_run, out)
    raw = json.loads((out / "run.json").read_text())
    raw["status"] = "running"  # pretend it was interrupted
    (out / "run.json").write_text(json.dumps(raw))
    with pytest.raises(ConvlensError, match=r"options differ: lr 0.5 \(saved 0.004\)"):
        fit("lenet5", "sample", out=out, overrides={"lr": 0.5}, resume=True, progress=False)


def test_resume_of_a_complete_run_is_a_no_op(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(trained_run, out)
    before = (out / "model.safetensors").read_bytes()
    run = fit("lenet5", "sample", out=out, resume=True, progress=False)
    assert run.status == "complete" and (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_with_a_missing_or_truncated_checkpoint(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(trained_run, out)
    raw = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**raw, "status": "running"}))
    ckpt = out / "checkpoint.pt"
    if damage == "missing":
        ckpt.unlink()
    else:
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    rc = main(["train", "lenet5", "--out", str(out), "--resume", "-q"])
    err = _flat(capsys.readouterr().err)
    assert rc == 1 and "Traceback" not in err
    assert ("no checkpoint at" if damage == "missing" else "truncated or corrupt") in err


def _image_folder(root: Path, *, size: int, mode: str, per_class: int = 4) -> Path:
    """A tiny ImageFolder tree, train/ and test/, two classes of random images."""
    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                px = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
                Image.fromarray(px.squeeze(-1) if channels == 1 else px, mode).save(d / f"{i}.png")
    return root


def test_data_of_another_channel_count_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _image_folder(tmp_path / "rgb", size=28, mode="RGB")
    args = ["train", "lenet5", "--data", f"folder:{folder}", "--out", str(tmp_path / "r")]
    rc = main([*args, "-O", "in_channels=1", *TINY_ARGS])
    err = _flat(capsys.readouterr().err)
    assert rc == 1 and "3-channel images" in err and "in_channels=1" in err


def test_data_of_another_size_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _image_folder(tmp_path / "small", size=12, mode="L")
    rc = main(["train", "lenet5", "--data", f"folder:{folder}", "--out", str(tmp_path / "r")])
    err = _flat(capsys.readouterr().err)
    assert rc == 1 and "Traceback" not in err
    assert "shape (1, 12, 12) do not fit lenet5" in err and "(1, 28, 28)" in err


def test_fit_on_a_folder_trains_and_loads(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "rgb", size=28, mode="RGB", per_class=8)
    out = tmp_path / "run"
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, device="cpu", threads=1, augment="crop,flip")
    run = fit("lenet5", f"folder:{folder}", out=out, config=cfg, progress=False)
    assert run.model_options["in_channels"] == 3 and run.data.classes == ["a", "b"]
    assert len(run.history) == 2 and all(math.isfinite(h["train_loss"]) for h in run.history)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()] == [0, 1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", "lenet5", "--device", "cuda", "--out", str(tmp_path / "r"), *TINY_ARGS])
    err = _flat(capsys.readouterr().err)
    assert rc == 1 and "no CUDA device; use --device cpu" in err


def test_tensorboard_scalars_equal_the_metrics_file(tmp_path: Path) -> None:
    """The TensorBoard event file, read back by TensorBoard's own reader, holds metrics.jsonl's values."""
    pytest.importorskip("tensorboard")
    import io

    from rich.console import Console
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = recipe("lenet5", "sample", epochs=2, limit_train=512, limit_test=256, threads=1)
    fit("lenet5", "sample", out=out, config=cfg, console=Console(file=io.StringIO()))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    for key in ("train_loss", "test_acc", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        np.testing.assert_allclose([e.value for e in events], [h[key] for h in history], rtol=1e-6)


def test_compiled_training_gives_the_weights_of_eager_training(tmp_path: Path) -> None:
    """`--compile` changes how steps run, not what they compute (same seed, same batches)."""
    from safetensors.torch import load_file

    cfg = recipe("lenet5", "sample", epochs=1, limit_train=256, limit_test=128, threads=1)
    eager = fit("lenet5", "sample", out=tmp_path / "eager", config=cfg, progress=False)
    compiled = fit(
        "lenet5",
        "sample",
        out=tmp_path / "compiled",
        config=cfg.replace(compile=True),
        progress=False,
    )
    a = load_file(str(tmp_path / "eager" / "model.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "model.safetensors"))
    assert a.keys() == b.keys()  # no `_orig_mod.` prefixes: the saved model is the plain one
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    assert compiled.history[-1]["test_acc"] == pytest.approx(
        eager.history[-1]["test_acc"], abs=0.02
    )
