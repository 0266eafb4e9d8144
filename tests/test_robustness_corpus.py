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
    _model_and_class_files(root, rng)
    return root


def _model_and_class_files(root: Path, rng: np.random.Generator) -> None:
    """Issue 25's inputs: weights and model files good and bad, class files, image folders, runs
    of another format."""
    import json
    import zipfile

    from convlens import models

    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
    (root / "text.safetensors").write_text("hello, I am not weights\n")
    with zipfile.ZipFile(root / "junk.zip", "w") as z:
        z.writestr("a.txt", "a zip that is neither TorchScript nor a state dict")
    torch.save(torch.nn.Linear(2, 2), root / "pickled.pt")  # a whole pickled module
    torch.manual_seed(0)
    lenet = models.create("lenet5", in_channels=1).eval()
    torch.save(lenet.state_dict(), root / "lenet_sd.pt")
    torch.save(models.create("resnet20").state_dict(), root / "resnet20_sd.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(lenet, torch.zeros(1, 1, 28, 28)).save(str(root / "scripted.pt"))
    (root / "good.py").write_text(
        "import sys\nfrom torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, 2))\n\n"
        "def bye():\n    sys.exit(3)\n\n"
        "def boom():\n    raise ValueError('no model today')\n\n"
        "def number():\n    return 3\n"
    )
    (root / "exits.py").write_text("import sys\nsys.exit(0)\ndef build():\n    return None\n")
    (root / "syntax.py").write_text("def build(:\n    pass\n")
    (root / "bin.txt").write_bytes(b"\x00\xff\xfe\x89PNG binary")
    (root / "nul.txt").write_bytes(b"cat\x00dog\n")
    (root / "latin1.txt").write_bytes(b"caf\xe9\nth\xe9\n")
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("  \n\n\t\n")
    (root / "badjson.txt").write_text("[1, 2")
    (root / "dictjson.txt").write_text('[{"name": "cat"}]')
    (root / "two.txt").write_text("a\nb\n")
    (root / "three.txt").write_text("a\nb\nc\n")
    (root / "ten.txt").write_text("\n".join(f"kind {i}" for i in range(10)) + "\n")
    (root / "flatdir").mkdir()  # images with no class folders
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            root / "flatdir" / f"{i}.png"
        )
    (root / "nonimg" / "a").mkdir(parents=True)
    (root / "nonimg" / "a" / "notes.txt").write_text("no images here\n")
    for c in ("a", "b"):
        (root / "grey28" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(
                root / "grey28" / c / f"{i}.png"
            )
    for name, fmt in (("run99", 99), ("runfmt", "x")):
        shutil.copytree(root / RUN, root / name)
        raw = json.loads((root / name / "run.json").read_text())
        raw["format"] = fmt
        (root / name / "run.json").write_text(json.dumps(raw))


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

# Issue 25: model files, class files, image folders, empty paths, run formats, experiments. Each
# fails before any work with one `error:` line.
_M = ["report", "--model"]  # report opens the subject before writing anything
BAD_CLI_25: list[tuple[list[str], int, str]] = [
    # -- model and weights files
    ([*_M, "empty.pt"], 1, "empty.pt is empty (0 bytes)"),
    (["visualize", "--model", "empty.pt", "filters"], 1, "empty.pt is empty"),
    (["evaluate", "--model", "empty.pt", "--images", "oneclass"], 1, "empty.pt is empty"),
    ([*_M, "lenet5", "--weights", "empty.pt"], 1, "empty.pt is empty"),
    (["visualize", "--model", "lenet5", "--weights", "empty.pt", "filters"], 1, "is empty"),
    ([*_M, "torchvision:resnet18", "--weights", "empty.pt"], 1, "empty.pt is empty"),
    ([*_M, "resnet20", "--weights", "empty.pt"], 1, "empty.pt is empty"),
    ([*_M, "garbage.pt"], 1, "garbage.pt is truncated or corrupt"),
    ([*_M, "lenet5", "--weights", "garbage.pt"], 1, "garbage.pt is truncated or corrupt"),
    ([*_M, "text.safetensors"], 1, "text.safetensors is truncated or corrupt"),
    ([*_M, "lenet5", "--weights", "text.safetensors"], 1, "is truncated or corrupt"),
    ([*_M, "junk.zip"], 1, "junk.zip is truncated or corrupt"),
    ([*_M, "lenet5", "--weights", "junk.zip"], 1, "junk.zip is truncated or corrupt"),
    ([*_M, "pickled.pt"], 1, "holds a whole pickled model"),
    ([*_M, "lenet5", "--weights", "pickled.pt"], 1, "holds a whole pickled model"),
    ([*_M, "lenet_sd.pt"], 1, "holds weights but no architecture"),
    ([*_M, "resnet20", "--weights", "lenet_sd.pt"], 1, "does not hold weights of resnet20"),
    ([*_M, "lenet5", "--weights", "resnet20_sd.pt"], 1, "does not hold weights of lenet5"),
    ([*_M, "scripted.pt", "--weights", "lenet_sd.pt"], 1, "TorchScript file with its own"),
    ([*_M, "lenet5", "--weights", "scripted.pt"], 1, "scripted.pt is a TorchScript file"),
    ([*_M, "scripted.pt"], 1, "1x224x224 was a guess (no --images); pass --images"),
    ([*_M, "scripted.pt", "--images", "oneclass"], 1, "does not say its input size"),
    ([*_M, "lenet5", "--weights", "missing.pt"], 1, "no weights file at missing.pt"),
    ([*_M, "lenet5", "--weights", "dir"], 1, "no weights file at dir"),
    ([*_M, "file.txt"], 1, "file.txt is truncated or corrupt"),
    ([*_M, "good.py"], 1, "good.py is Python code: name the function"),
    (["visualize", "--model", "good.py", "filters"], 1, "--model good.py:build"),
    (["evaluate", "--model", "good.py", "--images", "oneclass"], 1, "good.py is Python code"),
    ([*_M, "good.py:bye"], 1, "good.py:bye called sys.exit(3)"),
    ([*_M, "good.py:boom"], 1, "good.py:boom raised ValueError: no model today (good.py:"),
    ([*_M, "good.py:nosuch"], 1, "good.py has no function 'nosuch'"),
    ([*_M, "good.py:number"], 1, "good.py:number returned int"),
    ([*_M, "exits.py:build"], 1, "importing exits.py called sys.exit(0)"),
    ([*_M, "syntax.py:build"], 1, "importing syntax.py raised SyntaxError"),
    ([*_M, "missing.py:build"], 1, "no Python file at missing.py"),
    ([*_M, "no_such_module_xyz:build"], 1, "no Python module 'no_such_module_xyz'"),
    ([*_M, "torchvision:resnet_nope"], 1, "torchvision has no classification model"),
    ([*_M, "torchvision:resnet18", "--weights", "NOPE"], 1, "has no weights 'NOPE'"),
    ([*_M, "timm:no_such_timm_model"], 1, "timm"),
    ([*_M, "lenet6"], 1, "'lenet6' is not a run directory, a file, or a model name"),
    ([*_M, RUN, "--weights", "lenet_sd.pt"], 1, "is a run directory with its own weights"),
    # -- class-name files
    ([*_M, "lenet5", "--classes", "bin.txt"], 1, "bin.txt is not a text file"),
    ([*_M, "lenet5", "--classes", "latin1.txt"], 1, "latin1.txt is not a text file"),
    ([*_M, "lenet5", "--classes", "nul.txt"], 1, "nul.txt is a binary file"),
    ([*_M, "lenet5", "--classes", "empty.txt"], 1, "empty.txt holds no class names"),
    ([*_M, "lenet5", "--classes", "blank.txt"], 1, "blank.txt holds no class names"),
    ([*_M, "lenet5", "--classes", "badjson.txt"], 1, "starts like JSON but is not valid JSON"),
    ([*_M, "lenet5", "--classes", "dictjson.txt"], 1, "must hold a JSON list of names"),
    ([*_M, "lenet5", "--classes", "missing.txt"], 1, "no class names file at missing.txt"),
    ([*_M, "lenet5", "--classes", "dir"], 1, "no class names file at dir"),
    ([*_M, "good.py:build", "--classes", "three.txt"], 1, "names 3 classes but the model has 2"),
    (["visualize", "--model", "lenet5", "--classes", "bin.txt", "filters"], 1, "not a text file"),
    (["evaluate", RUN, "--classes", "bin.txt"], 1, "bin.txt is not a text file"),
    (["evaluate", RUN, "--classes", "two.txt"], 1, "names 2 classes but the run has 10 outputs"),
    (["evaluate", RUN, "--classes", "empty.txt"], 1, "holds no class names"),
    (["evaluate", RUN, "--classes", "missing.txt"], 1, "no class names file at missing.txt"),
    (["evaluate", "--model", "lenet5", "--images", "oneclass", "--classes", "nul.txt"], 1,
     "binary file"),
    # -- image folders as data sets
    (["datasets", "folder:missing"], 1, "no folder at"),
    (["datasets", "folder:/nonexistent/deeper"], 1, "no folder at /nonexistent/deeper"),
    (["datasets", "folder:dir"], 1, "holds no class folders"),
    (["datasets", "folder:flatdir"], 1, "(3 images lie in it directly"),
    (["datasets", "folder:nonimg"], 1, "holds no images"),
    (["datasets", "folder:file.txt"], 1, "file.txt is a file, not a folder"),
    (["datasets", "folder:"], 1, "folder: needs a path"),
    (["datasets", "folder:   "], 1, "folder: needs a path"),
    (["datasets", "sample", "folder:missing"], 1, "1 of the data sets named cannot be read"),
    (["datasets", "nosuchdata"], 1, "unknown data set 'nosuchdata'"),
    (["train", "lenet5", "--data", "folder:", "--out", "newrun"], 1, "folder: needs a path"),
    (["train", "lenet5", "--data", "folder:flatdir", "--out", "newrun"], 1, "lie in it directly"),
    (["train", "lenet5", "--data", "folder:file.txt", "--out", "newrun"], 1, "is a file"),
    (["evaluate", RUN, "--data", "folder:nonimg"], 1, "holds no images"),
    # -- empty paths: never the current folder
    (["train", "lenet5", "--out", ""], 2, "--out is empty; give a path"),
    (["train", "lenet5", "--out="], 2, "--out is empty"),
    (["train", "lenet5", "--data-dir", "", "--out", "newrun"], 2, "--data-dir is empty"),
    (["visualize", RUN, "filters", "--out", ""], 2, "--out is empty"),
    (["report", RUN, "--out", ""], 2, "--out is empty"),
    (["report", RUN, "-o", ""], 2, "-o is empty"),
    (["demo", "--out", ""], 2, "--out is empty"),
    (["summary", "lenet5", "--output", ""], 2, "--output is empty"),
    (["evaluate", RUN, "--data-dir", ""], 2, "--data-dir is empty"),
    (["evaluate", RUN, "--classes", ""], 2, "--classes is empty"),
    ([*_M, "lenet5", "--images", ""], 2, "--images is empty"),
    (["experiment", "stack", "--out", ""], 2, "--out is empty"),
    # -- run directories of another format
    (["evaluate", "run99"], 1, "run99/run.json has format 99; this convlens"),
    (["report", "run99"], 1, "written by a newer convlens: upgrade convlens"),
    (["visualize", "run99", "filters"], 1, "has format 99"),
    (["train", "lenet5", "--out", "run99", "--resume"], 1, "has format 99"),
    (["evaluate", "runfmt"], 1, "runfmt/run.json has format 'x'"),
    # -- subject options that do not go together
    (["evaluate", RUN, "--model", "lenet5"], 2, "give RUN_DIR (run) or --model (lenet5), not both"),
    (["report", "--weights", "lenet_sd.pt"], 2, "Missing argument 'RUN_DIR'"),
    (["report", RUN, "--weights", "lenet_sd.pt"], 2, "--weights goes with --model"),
    (["visualize", "--model", "lenet5"], 2, "Missing argument 'METHOD'"),
    (["evaluate", "--model", "lenet5"], 1, "--model needs --images"),
    (["evaluate", "--model", "lenet5", "--images", "oneclass", "--tta", "flip"], 1,
     "--data and --tta apply to a run's own data set"),
    # -- no command at all
    ([], 2, "name a command"),
    # -- experiments: refused before anything is trained or written
    (["experiment", "bogus"], 1, "unknown experiment 'bogus'"),
    (["experiment", "stack", "--budget", "huge"], 1, "unknown budget 'huge'"),
    (["experiment", "stack", "--depths", "20,56"], 1, "--depths applies to the degradation"),
    (["experiment", "degradation", "--depths", "x"], 1, "--depths takes two depths"),
    (["experiment", "degradation", "--depths", "20"], 1, "takes two depths, shallow then deep"),
    (["experiment", "stack", "--report", "missing"], 1, "missing is not an experiment directory"),
    (["experiment", "stack", "--report", "dir"], 1, "dir is not an experiment directory"),
    (["experiment", "stack", "--report", "file.txt"], 1, "is not an experiment directory"),
    (["experiment"], 2, "Missing argument"),
]
BAD_CLI += BAD_CLI_25

# `serve` options refused before the server starts (the server itself is stubbed to fail loudly).
SERVE_BAD: list[tuple[list[str], int]] = [
    (["serve"], 1),
    (["serve", "missing"], 1),
    (["serve", "file.txt"], 1),
    (["serve", "dir"], 1),
    (["serve", RUN, "--port", "70000"], 2),
    (["serve", RUN, "--port", "-1"], 2),
    (["serve", RUN, "--port", "x"], 2),
    (["serve", "--model", "empty.pt"], 1),
    (["serve", "--model", "garbage.pt"], 1),
    (["serve", "--model", "pickled.pt"], 1),
    (["serve", "--model", "good.py"], 1),
    (["serve", "--model", "good.py:bye"], 1),
    (["serve", "--model", "good.py:boom"], 1),
    (["serve", "--model", "lenet5", "--classes", "bin.txt"], 1),
    (["serve", "--model", "lenet5", "--classes", "empty.txt"], 1),
    (["serve", "--model", "lenet5", "--images", "missing"], 1),
    (["serve", "--model", "torchvision:resnet_nope"], 1),
    (["serve", "--model", "lenet6"], 1),
    (["serve", "--model", "lenet5", "--weights", "empty.pt"], 1),
    (["serve", "--model", "resnet20", "--weights", "lenet_sd.pt"], 1),
    (["serve", "--model", "scripted.pt"], 1),
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
    if status == 1 or (argv[:1] == ["visualize"] and "does not apply" in first):
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


@pytest.mark.parametrize(("argv", "status"), SERVE_BAD, ids=[" ".join(c[0]) for c in SERVE_BAD])
def test_serve_refuses_before_it_starts(
    ws: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
) -> None:
    import uvicorn

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the server started for {argv}")

    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.setattr(uvicorn.Server, "run", started)
    monkeypatch.setattr(uvicorn.Server, "serve", started)
    monkeypatch.chdir(ws)
    before = snapshot(ws)
    code, out, err = run_cli(capsys, argv)
    assert "Traceback" not in out + err
    assert code == status, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "serving" not in out + err and "http://" not in out
    assert changed(before, snapshot(ws)) == []


@pytest.mark.parametrize("method", ["gradcam", "guided-gradcam", "guided-backprop", "activations"])
def test_torchscript_methods_needing_hooks_are_one_line(
    ws: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    method: str,
) -> None:
    monkeypatch.chdir(ws)
    argv = ["visualize", "--model", "scripted.pt", method, "--images", "grey28", "--out"]
    code, out, err = run_cli(capsys, [*argv, str(tmp_path / "v")])
    assert "Traceback" not in out + err
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert lines == [lines[0]] and "TorchScript" in lines[0] and lines[0].startswith("error: ")


def test_torchscript_saliency_runs(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ws)
    argv = ["visualize", "--model", "scripted.pt", "saliency", "--images", "grey28", "--out"]
    code, _, err = run_cli(capsys, [*argv, str(tmp_path / "v")])
    assert code == 0, err
    assert (tmp_path / "v" / "saliency.png").is_file()


def test_evaluate_classes_names_the_rows(
    ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    monkeypatch.chdir(ws)
    code, out, err = run_cli(capsys, ["evaluate", RUN, "--classes", "ten.txt", "--limit", "20",
                                      "--json", "--device", "cpu"])  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["classes"] == [f"kind {i}" for i in range(10)]


@pytest.mark.parametrize(
    ("spec", "hint"), [("lenet5", "--weights FILE"), ("torchvision:alexnet", "--weights DEFAULT")]
)
def test_random_weights_are_said(
    ws: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    spec: str,
    hint: str,
) -> None:
    monkeypatch.chdir(ws)
    argv = ["visualize", "--model", spec, "filters", "--out", str(tmp_path / "v")]
    code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    assert f"note: {spec} has random weights (no --weights given; seed 0)" in err and hint in err


def test_device_defaults_to_auto() -> None:
    import typer

    from convlens.cli.main import app

    root = typer.main.get_command(app)
    for name in ("report", "visualize", "evaluate"):
        device = next(p for p in root.commands[name].params if p.name == "device")  # type: ignore[attr-defined]
        assert device.default == "auto", name


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
    assert len(BAD_CLI_25) + len(SERVE_BAD) >= 80  # issue 25's own cases


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
