"""A corpus of bad or unusual invocations (issue #16): each gets one clear line and the right exit
status, never a traceback, and changes nothing outside the output it asked for.

CLI cases run in-process through `convlens.cli.main.main` (the same code as the console script; the
real-process cases are in test_robustness_signals.py); API cases call the library.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convlens
from convlens.errors import ConvlensError, InputError, InputTypeError
from robustness_helpers import changed, run_cli, snapshot, train_tiny

# ---- the workspace every case runs in ----------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cwd of every case: a file, an empty folder, a finished run, image folders good and bad."""
    root = tmp_path_factory.mktemp("ws")
    (root / "file.txt").write_text("not a folder\n")
    (root / "dir").mkdir()
    train_tiny(root / "run")
    (root / "notrun").mkdir()
    (root / "notrun" / "run.json").write_text("{not json")
    rng = np.random.default_rng(0)

    def png(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(path)

    for i in range(12):
        png(root / "oneclass" / "cat" / f"{i}.png")
        png(root / "emptyclass" / "cat" / f"{i}.png")
    (root / "emptyclass" / "dog").mkdir()
    png(root / "img.png")
    (root / "bad.png").write_bytes(b"not an image")
    return root


RUN = "run"
# fmt: off
# (argv, exit status, text expected in the first line of stderr)
BAD_CLI: list[tuple[list[str], int, str]] = [
    # -- usage errors: unknown commands and options, missing arguments, values out of range
    (["bogus"], 2, "No such command"),
    (["train"], 2, "Missing argument"),
    (["train", "lenet5", "--nope"], 2, "No such option"),
    (["summary"], 2, "Missing argument"),
    (["evaluate"], 2, "Missing argument"),
    (["visualize", RUN], 2, "Missing argument"),
    (["report"], 2, "Missing argument"),
    (["explain"], 2, ""),
    (["explain", "conv"], 2, "Missing option"),
    (["explain", "bogus"], 2, "No such command"),
    *[
        (["train", "lenet5", opt, val], 2, f"Invalid value for '{opt}'")
        for opt, val in [
            ("--epochs", "0"), ("--epochs", "-1"), ("--epochs", "x"), ("--epochs", "1.5"),
            ("--batch-size", "0"), ("--batch-size", "-64"), ("--momentum", "5"),
            ("--momentum", "-0.1"), ("--weight-decay", "-1"), ("--warmup", "-1"),
            ("--label-smoothing", "2"), ("--cutout", "0"), ("--seed", "-1"),
            ("--seed", str(2**64)), ("--seed", "99999999999999999999999"), ("--threads", "0"), ("--threads", "2147483648"), ("--epochs", str(2**63)),
            ("--checkpoint-every", "-1"), ("--checkpoint-every", "-0.5"), ("--limit-train", "0"),
            ("--limit-test", "-5"), ("--lr", "abc"),
        ]
    ],
    (["train", "lenet5", "--amp", "x"], 2, "Got unexpected extra argument"),
    *[
        (["evaluate", RUN, opt, val], 2, f"Invalid value for '{opt}'")
        for opt, val in [("--limit", "0"), ("--limit", "-1"), ("--limit", "x")]
    ],
    *[
        (["visualize", RUN, "occlusion", opt, val], 2, f"Invalid value for '{opt}'")
        for opt, val in [
            ("--window", "0"), ("--stride", "-2"), ("--target", "-1"), ("--seed", "-3"),
            ("--seed", str(2**70)),
        ]
    ],
    *[
        (["visualize", RUN, "neighbors", "--k", val], 2, "Invalid value for '--k'")
        for val in ("0", "-1", "1e3")
    ],
    (["visualize", RUN, "actmax", "--steps", "-1"], 2, "Invalid value for '--steps'"),
    (["visualize", RUN, "actmax", "--size", "0"], 2, "Invalid value for '--size'"),
    (["visualize", RUN, "actmax", "--size", "100000"], 2, "Invalid value for '--size'"),
    (["visualize", RUN, "tsne", "--count", "0"], 2, "Invalid value for '--count'"),
    (["summary", "lenet5", "--num-classes", "0"], 2, "Invalid value for '--num-classes'"),
    (["summary", "lenet5", "--format", "xml"], 2, "Invalid value for '--format'"),
    (["models", "--in-channels", "0"], 2, "Invalid value for '--in-channels'"),
    (["explain", "conv", "--input", "7x7x3", "--kernel", "x", "--filters", "1"], 2, "Invalid"),
    (["explain", "conv", "--input", "7x7x3", "--kernel", "3", "--filters", "1", "--seed", "-1"], 2,
     "Invalid value for '--seed'"),
    # -- options that do not apply to the method: refused, not ignored
    (["visualize", RUN, "filters", "--channels", "abc"], 2, "--channels does not apply to filters"),
    (["visualize", RUN, "filters", "--channels", "0-3"], 2, "--channels does not apply to filters"),
    (["visualize", RUN, "filters", "--window", "3"], 2, "--window does not apply to filters"),
    (["visualize", RUN, "saliency", "--k", "3"], 2, "--k does not apply to saliency"),
    (["visualize", RUN, "tsne", "--image", "img.png"], 2, "--image does not apply to tsne"),
    (["visualize", RUN, "gradcam", "--steps", "5"], 2, "--steps does not apply to gradcam"),
    (["visualize", RUN, "erf", "--metric", "l2"], 2, "--metric does not apply to erf"),
    (["visualize", RUN, "occlusion", "--simple"], 2, "--simple does not apply to occlusion"),
    (["visualize", RUN, "actmax", "--channels", "abc"], 2, "--channels 'abc'"),
    (["visualize", RUN, "actmax", "--channels", "0-"], 2, "--channels '0-'"),
    (["visualize", RUN, "actmax", "--channels", "3-1-2"], 2, "--channels '3-1-2'"),
    (["visualize", RUN, "actmax", "--channels", ","], 2, "--channels ','"),
    (["visualize", RUN, "top-patches", "--channels", "-1"], 2, "--channels '-1'"),
    (["visualize", RUN, "neighbors", "--k", "100000"], 2, "--k 100000: at most 64"),
    (["visualize", RUN, "top-patches", "--k", "65"], 2, "--k 65: at most 64"),
    (["evaluate", RUN, "--split", "val"], 2, "--split must be test or train"),
    (["train", "lenet5", "--augment", "flip", "--cutout", "8"], 2, "--cutout applies with"),
    (["evaluate", RUN, "--tta", "rotate"], 2, "--tta must be none or flip"),
    # -- output destinations, checked before any work
    (["summary", "lenet5", "--output", "dir"], 1, "--output dir is a folder"),
    (["summary", "lenet5", "--output", "file.txt/x.json"], 1, "is a file, not a folder"),
    (["summary", "lenet5", "--output", "/proc/x.json"], 1, "cannot write into /proc"),
    (["train", "lenet5", "--out", "file.txt"], 1, "--out file.txt is a file"),
    (["train", "lenet5", "--out", "file.txt/run"], 1, "is a file, not a folder"),
    (["train", "lenet5", "--out", "/proc/run"], 1, "cannot write into /proc"),
    (["demo", "--out", "file.txt"], 1, "--out file.txt is a file"),
    (["demo", "--out", "/proc/demo"], 1, "cannot write into /proc"),
    (["visualize", RUN, "filters", "--out", "file.txt"], 1, "--out file.txt is a file"),
    (["visualize", RUN, "filters", "--out", "/proc/v"], 1, "cannot write into /proc"),
    (["report", RUN, "--out", "dir"], 1, "--out dir is a folder"),
    (["report", RUN, "--out", "/proc/x.html"], 1, "cannot write into /proc"),
    (["report", RUN, "--out", "file.txt/x.html"], 1, "is a file, not a folder"),
    # -- devices
    *[
        (argv, 1, what)
        for dev, what in [("cuda", "no CUDA device"), ("cuda:7", "no CUDA device"),
                          ("tpu", "unknown device 'tpu'"), ("", "unknown device"),
                          ("gpu", "unknown device 'gpu'")]
        for argv in (
            ["evaluate", RUN, "--device", dev],
            ["visualize", RUN, "filters", "--device", dev],
            ["report", RUN, "--device", dev],
            ["train", "lenet5", "--device", dev, "--out", "newrun"],
        )
    ],
    # -- missing or wrong inputs
    (["train", "lenet5", "--data-dir", "missing"], 1, "--data-dir missing does not exist"),
    (["train", "lenet5", "--data-dir", "file.txt"], 1, "--data-dir file.txt is a file"),
    (["evaluate", RUN, "--data-dir", "missing"], 1, "--data-dir missing does not exist"),
    (["visualize", RUN, "filters", "--data-dir", "missing"], 1, "--data-dir missing"),
    (["report", RUN, "--data-dir", "missing"], 1, "--data-dir missing does not exist"),
    (["demo", "--data-dir", "missing"], 1, "--data-dir missing does not exist"),
    (["evaluate", "missing"], 1, "no run directory at missing"),
    (["evaluate", "dir"], 1, "dir is not a run directory"),
    (["evaluate", "file.txt"], 1, "no run directory at file.txt"),
    (["evaluate", "notrun"], 1, "is corrupt or not a convlens run file"),
    (["visualize", "missing", "filters"], 1, "no run directory at missing"),
    (["visualize", "dir", "filters"], 1, "dir is not a run directory"),
    (["report", "missing"], 1, "no run directory at missing"),
    (["report", "notrun"], 1, "is corrupt"),
    (["visualize", RUN, "bogus"], 1, "unknown method 'bogus'"),
    (["visualize", RUN, "filter"], 1, "unknown method 'filter'"),
    (["visualize", RUN, "saliency", "--image", "missing.png"], 1, "--image missing.png: no such"),
    (["visualize", RUN, "saliency", "--image", "dir"], 1, "--image dir: no such file"),
    (["summary", "nosuchmodel"], 1, "nosuchmodel"),
    (["summary", "lenet5", "--input", "3x224"], 1, "--input takes CxHxW"),
    (["summary", "lenet5", "--input", "axbxc"], 1, "--input takes"),
    (["summary", "lenet5", "--input", "0x32x32"], 1, "sizes must be positive"),
    (["summary", "lenet5", "--input", ""], 1, "--input takes"),
    (["summary", "lenet5", "--input", "1x2x2"], 1, "too small"),
    (["summary", "lenet5", "-o", "novalue"], 1, "--option takes KEY=VALUE"),
    (["models", "nosuchmodel"], 1, "nosuchmodel"),
    (["models", "--family", "nosuch"], 1, "no family 'nosuch'"),
    (["models", "--format", "xml"], 1, "--format must be table or json"),
    (["models", "-o", "a=b"], 1, "--option needs a model NAME"),
    (["datasets", "--download"], 1, "name the data sets to download"),
    (["train", "nosuchmodel", "--out", "newrun"], 1, "nosuchmodel"),
    (["train", "lenet5", "--data", "nosuchdata", "--out", "newrun"], 1, "nosuchdata"),
    (["train", "lenet5", "-O", "novalue", "--out", "newrun"], 1, "model option 'novalue'"),
    (["train", "lenet5", "--optimizer", "adam", "--out", "newrun"], 1, "unknown optimizer"),
    (["train", "lenet5", "--schedule", "linear", "--out", "newrun"], 1, "unknown schedule"),
    (["train", "lenet5", "--augment", "rotate", "--out", "newrun"], 1, "unknown augmentation"),
    (["train", "lenet5", "--label-smoothing", "1", "--out", "newrun"], 1, "label smoothing"),
    (["train", "lenet5", "--lr", "0", "--out", "newrun"], 1, "learning rate must be positive"),
    (["train", "lenet5", "--lr", "-1", "--out", "newrun"], 1, "learning rate must be positive"),
    (["train", "lenet5", "--lr", "nan", "--out", "newrun"], 1, "lr must be a finite number"),
    (["train", "lenet5", "--lr", "inf", "--out", "newrun"], 1, "lr must be a finite number"),
    (["train", "lenet5", "--momentum", "nan", "--out", "newrun"], 2, "Invalid value for '--mom"),
    (["train", "lenet5", "--warmup", "nan", "--out", "newrun"], 2, "Invalid value for '--warmup'"),
    (["train", "lenet5", "--weight-decay", "inf", "--out", "newrun"], 1,
     "weight decay must be a finite number"),
    (["train", "lenet5", "--optimizer", "adamw", "--momentum", "1", "--out", "newrun"], 1,
     "AdamW's beta1 (--momentum) must be in [0, 1)"),
    (["train", "lenet5", "--optimizer", "sgd", "--momentum", "1", "--out", "newrun"], 1,
     "SGD momentum must be in [0, 1)"),
    (["train", "lenet5", "--epochs", "2", "--warmup", "3", "--out", "newrun"], 1,
     "the warm-up (3 epochs) is longer than the training (2 epochs)"),
    (["train", "lenet5", "--epochs", "1", "--warmup", "1.5", "--out", "newrun"], 1,
     "(1 epoch)"),
    (["train", "lenet5", "--data", "folder:oneclass", "--out", "newrun"], 1,
     "has 1 class (cat); a classifier needs at least two"),
    (["train", "lenet5", "--data", "folder:emptyclass", "--out", "newrun"], 1,
     "class 'dog' of folder:emptyclass has no training images"),
    (["train", "lenet5", "--data", "folder:missing", "--out", "newrun"], 1, "missing"),
    (["train", "lenet5", "--out", RUN], 1, "already holds a run; pass --resume"),
    (["train", "lenet5", "--out", "dir", "--resume"], 1, "dir is not a run directory"),
    (["train", "lenet5", "--out", "missing", "--resume"], 1, "no run directory at missing"),
    (["train", "resnet20", "--out", RUN, "--resume"], 1, "holds a run of lenet5 on sample"),
    (["train", "lenet5", "--out", RUN, "--resume", "--lr", "0.1"], 1,
     "is a finished run; --resume cannot change lr"),
    (["train", "lenet5", "--out", RUN, "--resume", "--epochs", "3"], 1,
     "is a finished run; --resume cannot change epochs"),
    (["evaluate", RUN, "--data", "mnist"], 1, "classes differ from those"),
    (["evaluate", RUN, "--data", "cifar10"], 1, "has images of shape"),
    (["evaluate", RUN, "--data", "nosuch"], 1, "nosuch"),
    (["evaluate", RUN, "--tta", "flip"], 1, "trained without flip augmentation"),
    (["demo", "--data", "imagenet"], 1, "the demo runs on"),
    (["explain", "pool", "--input", "55x55x96", "--pad", "5", "--kernel", "3"], 1,
     "pooling padding P = 5 is more than half the window"),
    (["explain", "pool", "--input", "5x5x1", "--pad", "2", "--kernel", "3"], 1,
     "pooling padding P = 2"),
    (["explain", "pool", "--input", "55x55x96", "--kind", "min"], 1, "pooling kind"),
    (["explain", "pool", "--input", "2x2x1", "--kernel", "3", "--stride", "1"], 1,
     "does not fit"),
    (["explain", "conv", "--input", "5x5x3", "--kernel", "7", "--filters", "2"], 1,
     "does not fit"),
    (["explain", "conv", "--input", "5x5x3", "--kernel", "0", "--filters", "2"], 1,
     "--kernel must be a positive integer"),
    (["explain", "conv", "--input", "5x5x3", "--kernel", "3", "--filters", "0"], 1,
     "--filters must be a positive integer"),
    (["explain", "conv", "--input", "5x5x3", "--kernel", "3", "--filters", "2", "--pad", "-1"], 1,
     "--pad must be 0 or more"),
    (["explain", "conv", "--input", "5x5", "--kernel", "3", "--filters", "2"], 1,
     "--input takes WxHxD"),
    (["explain", "conv", "--input", "5x5x3", "--kernel", "3", "--filters", "2", "--show-one",
      "--at", "9,9"], 1, ""),
    (["explain", "conv", "--input", "5x5x3", "--kernel", "3", "--filters", "2", "--show-one",
      "--at", "a,b"], 1, "--at takes ROW,COL"),
    (["explain", "fc", "--input", "0", "--units", "3"], 1, "sizes must be positive"),
    (["explain", "fc", "--input", "7x7x512", "--units", "0"], 1, "--units must be a positive"),
    (["explain", "stack", "--depth", "0"], 1, "--depth must be a positive"),
]

# Unusual but valid: exit 0, and only the named output appears.
GOOD_CLI: list[tuple[list[str], str | None]] = [
    (["--help"], None),
    (["-h"], None),
    (["--version"], None),
    (["train", "--help"], None),
    (["explain", "pool", "--input", "55x55x96", "--pad", "1", "--kernel", "3"], None),
    (["explain", "conv", "--input", "3x227x227", "--kernel", "11", "--stride", "4", "--filters",
      "96"], None),
    (["explain", "fc", "--input", "25088", "--units", "10"], None),
    (["summary", "lenet5", "--format", "json"], None),
    (["summary", "lenet5", "--output", "new/deeper/summary.csv", "--format", "csv"],
     "new/deeper/summary.csv"),
    (["summary", "lenet5", "--output", "file2.txt"], "file2.txt"),
    (["models", "lenet5", "--format", "json"], None),
    (["datasets", "sample"], None),
    (["visualize", RUN, "filters", "--out", "vis", "--device", "auto"], "vis"),
    (["evaluate", RUN, "--limit", "1", "--json"], None),
    (["evaluate", RUN, "--limit", "100000"], None),
    (["train", "lenet5", "--out", RUN, "--resume"], None),  # a finished run: nothing to do
]

# fmt: on


@pytest.mark.parametrize(
    ("argv", "status", "first"), BAD_CLI, ids=[" ".join(c[0])[:80] for c in BAD_CLI]
)
def test_bad_cli(
    ws: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    first: str,
) -> None:
    if "--data" in argv and argv[argv.index("--data") + 1] in ("mnist", "cifar10"):
        request.getfixturevalue(
            "data_root"
        )  # these cases read a real data set: skipped without one
    monkeypatch.chdir(ws)
    before = snapshot(ws)
    code, out, err = run_cli(capsys, argv)
    assert "Traceback" not in out + err
    assert code == status, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert lines, "no message"
    if status == 1 or (argv[0] == "visualize" and "does not apply" in first):
        assert lines[0].startswith("error: ")
    assert first in lines[0]
    assert changed(before, snapshot(ws)) == []


@pytest.mark.parametrize(("argv", "output"), GOOD_CLI, ids=[" ".join(c[0])[:80] for c in GOOD_CLI])
def test_unusual_but_valid_cli(
    ws: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    output: str | None,
) -> None:
    monkeypatch.chdir(ws)
    before = snapshot(ws)
    code, out, err = run_cli(capsys, argv)
    assert "Traceback" not in out + err
    assert code == 0, err
    diff = changed(before, snapshot(ws))
    allowed = [] if output is None else [output, *[str(p) for p in Path(output).parents]]
    assert [d for d in diff if not any(d == a or d.startswith(a + "/") for a in allowed)] == []
    if output is not None:
        assert (ws / output).exists()
        shutil.rmtree(ws / output) if (ws / output).is_dir() else (ws / output).unlink()


def test_evaluate_sample_run_on_fashion_mnist_says_it_overlaps(
    ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    monkeypatch.chdir(ws)
    code, _, err = run_cli(capsys, ["evaluate", RUN, "--data", "fashion-mnist", "--limit", "50"])
    assert code == 0, err
    assert "note: the sample data set is drawn from Fashion-MNIST's test split" in err


def test_weights_have_the_mode_of_the_other_run_files(ws: Path) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in (ws / RUN).iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["run.json"], modes


# ---- the Python API ----------------------------------------------------------------------------


def _lenet() -> torch.nn.Module:
    return convlens.models.create("lenet5")  # type: ignore[attr-defined,no-any-return]


# fmt: off
API: list[tuple[str, object, type[Exception], str]] = [
    ("summary of a name", lambda: convlens.summary("resnet18", (3, 224, 224)), InputTypeError,
     "summary takes a module, not the name 'resnet18'"),
    ("summary of a number", lambda: convlens.summary(3, (3, 224, 224)), InputTypeError,
     "summary takes a torch.nn.Module"),
    ("summary with (C, H)", lambda: convlens.summary(_lenet(), (3, 224)), InputError,
     "input_size must be (C, H, W)"),
    ("summary with zeros", lambda: convlens.summary(_lenet(), (1, 0, 32)), InputError,
     "input_size must be (C, H, W)"),
    ("summary with floats", lambda: convlens.summary(_lenet(), (1.0, 32, 32)), InputError,
     "input_size must be (C, H, W)"),
    ("load_run on cuda", lambda: convlens.load_run(API_RUN[0], device="cuda"), ConvlensError,
     "device cuda"),
    ("load_run on tpu", lambda: convlens.load_run(API_RUN[0], device="tpu"), ConvlensError,
     "unknown device 'tpu'"),
    ("load_run missing", lambda: convlens.load_run("/nonexistent/run"), ConvlensError,
     "no run directory"),
    ("data.load unknown", lambda: convlens.data.load("nosuch"), ConvlensError, "nosuch"),
    ("data.load bad split", lambda: convlens.data.load("sample", split="val"), ConvlensError,
     "val"),
    ("tsne with NaN", lambda: _tsne(np.full((20, 4), np.nan)), InputError, "NaN"),
    ("tsne of a list", lambda: _tsne([[1.0, 2.0]] * 20), InputTypeError, "features must be"),
    ("tsne of 1-D", lambda: _tsne(np.zeros(20)), InputError, "features must be (N, D)"),
    ("features of 10x10 images", lambda: _features(10), InputError,
     "the model cannot take images of shape (1, 10, 10)"),
    ("neighbors k = 0", lambda: _neighbors(k=0), ConvlensError, "k must be at least 1"),
]
# fmt: on
API_RUN: list[Path] = []


def _tsne(x: object) -> object:
    from convlens.inspect.tsne import tsne

    return tsne(x)  # type: ignore[arg-type]


def _features(side: int) -> object:
    from convlens.inspect import extract_features

    net = convlens.models.create("lenet5", in_channels=1)  # type: ignore[attr-defined]
    images = torch.randint(0, 255, (2, 1, side, side), dtype=torch.uint8)
    return extract_features(net, images, mean=(0.5,), std=(0.5,))


def test_neighbors_k_is_bounded_by_the_pool() -> None:
    nb = _neighbors(k=100_000)
    assert nb.feature_indices.shape == (2, 30)  # type: ignore[attr-defined]


def _neighbors(k: int) -> object:
    from convlens.inspect.neighbors import neighbors

    pool = torch.randint(0, 255, (30, 3, 28, 28), dtype=torch.uint8)
    return neighbors(_lenet(), pool[:2], pool, k=k, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.mark.parametrize(("name", "call", "error", "message"), API, ids=[a[0] for a in API])
def test_api_boundary(
    ws: Path, name: str, call: object, error: type[Exception], message: str
) -> None:
    API_RUN[:] = [ws / RUN]
    with pytest.raises(error) as info:
        call()  # type: ignore[operator]
    assert message in str(info.value)


def test_dataset_repr_is_short() -> None:
    ds = convlens.data.load("sample", split="test")  # type: ignore[attr-defined]
    assert repr(ds) == "Dataset('sample', split='test', 2,000 images 1x28x28, 10 classes)"


def test_corpus_is_large_enough() -> None:
    assert len(BAD_CLI) + len(GOOD_CLI) + len(API) >= 150


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["explain", "conv", "--input", "227x227x3", "--kernel", "11", "--filters", "96"],
     ["explain", "pool", "--input", "55x55x96", "--kernel", "3"], ["train", "--help"]],
)  # fmt: skip
def test_light_commands_do_not_import_torch(argv: list[str]) -> None:
    """Start-up: torch (~1.5 s, ~900 MB) loads only in the commands that compute."""
    import subprocess

    from robustness_helpers import subprocess_env

    code = (
        "import sys\nfrom convlens.cli.main import main\n"
        f"rc = main({argv!r})\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', rc, heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True
    )
    assert done.stdout.strip().splitlines()[-1] == "HEAVY 0 []", done.stdout + done.stderr


def test_report_on_corrupt_weights_does_not_fall_back_to_the_checkpoint(
    ws: Path, tmp_path: Path
) -> None:
    from convlens.errors import ConvlensError
    from convlens.subjects import open_subject

    run = tmp_path / "run"
    shutil.copytree(ws / RUN, run)
    (run / "model.safetensors").write_bytes(b"\0" * 100)  # corrupt; checkpoint.pt is intact
    with pytest.raises(ConvlensError) as err:
        open_subject(str(run))  # what `convlens report RUN` opens
    assert "missing" not in str(err.value)
    assert "model.safetensors" in str(err.value) and "corrupt" in str(err.value)


@pytest.mark.parametrize("kind", ["attribution", "occlusion"])
def test_cli_heat_maps_draw_uint8_images_as_the_report_does(kind: str) -> None:
    """The CLI's figures once drew uint8 images cast to float (0..255, clipped to white)."""
    from convlens.render.attribution import attribution_figure, occlusion_figure
    from convlens.render.common import to_hwc

    images = torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8)
    heat = torch.rand(1, 8, 8)
    if kind == "attribution":
        fig = attribution_figure(images, heat, method="Grad-CAM")
    else:
        cells = np.array([[0, 4], [4, 8]])
        fig = occlusion_figure(images, heat, torch.rand(1, 2, 2), cells, cells)
    under_heat = fig.axes[1].get_images()[0].get_array()  # the image drawn below the heat map
    np.testing.assert_allclose(np.asarray(under_heat), to_hwc(images[0]), atol=1e-6)
