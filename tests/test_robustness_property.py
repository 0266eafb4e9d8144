"""Property test (issue #16): any combination of options, with values drawn from each option's
declared type (numbers at and beyond their bounds, empty and odd strings, paths that are files,
folders, missing or unwritable), ends with exit status 0, 1 or 2 and never a traceback.

Commands are found from the Typer app itself, so a command added later is covered too. Light
commands run in full; commands that would train or render get a first argument that stops them after
their option checks (a missing run, an unknown model); commands this file does not know are parsed
only.
"""

from __future__ import annotations

import contextlib
import io
import os
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convlens.cli.main import _CLICK_ERROR, app, main

ROOT = typer.main.get_command(app)
SCALE = int(os.environ.get("CONVLENS_PROPERTY_SCALE", "1"))  # more examples for a longer hunt
RUNS_IN_FULL = {"summary", "models", "explain conv", "explain pool", "explain fc", "explain stack"}
# The first argument that ends these after their checks, before any training or drawing.
STOPPED_BY = {
    "train": ["nosuchmodel", "lenet6"],
    "evaluate": ["missing", "notrun", "file.txt", "dir"],
    "visualize": ["missing", "notrun", "file.txt", "dir"],
    "report": ["missing", "notrun", "dir"],
}
NEVER = {("datasets", "download"), ("demo", "retrain")}  # would reach the network or train

PATHS = ["file.txt", "dir", "missing", "file.txt/x", "/proc/x", "", "dir/new/deeper", "notrun"]
STRINGS = ["", " ", "x", "-1", "0", "1", "ä", "a=b", "=", "0-3", "3-1", "a,b", ",", "cpu", "cuda",
           "auto", "nan", "1e400", "lenet5", "x" * 300, "--help", "../..", "none", "l2"]  # fmt: skip


def _leaves(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if hasattr(cmd, "commands"):
            out += _leaves(cmd, full + " ")
        else:
            out.append((full, cmd))
    return out


LEAVES = _leaves(ROOT)


def _numbers(param: Any, floats: bool) -> st.SearchStrategy[str]:
    edges: list[Any] = [0, 1, 2, -1, 3, 2**31, 2**63, 2**64, -(2**63)]
    for b in (getattr(param, "min", None), getattr(param, "max", None)):
        if b is not None:
            edges += [b, b - 1, b + 1]
    values = st.sampled_from(edges).map(str) | st.integers(-5, 40).map(str)
    if floats:
        values = values | st.sampled_from(["nan", "inf", "-inf", "0.5", "1e-9", "1e309"])
    return values | st.sampled_from(["", "x", "1.5", " 2"])


def _declared(param: Any) -> Any:
    """The Python type the option was declared with (`int`, `Path`, an Enum, ...)."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is None:  # plain click
        return {"integer": int, "float": float, "path": Path}.get(
            getattr(param.type, "name", ""), str
        )
    return getattr(annotation, "__args__", (annotation,))[0]  # list[str] -> str


def _value(param: Any) -> st.SearchStrategy[str]:
    if param.name in ("model", "name"):  # small real models most of the time, so the options matter
        return st.sampled_from(["lenet5", "resnet20", "lenet5", "resnet20", *STRINGS[:6]])
    t = _declared(param)
    if t is int:
        return _numbers(param, floats=False)
    if t is float:
        return _numbers(param, floats=True)
    if isinstance(t, type) and issubclass(t, Enum):
        return st.sampled_from([*(m.value for m in t), "bogus", ""])
    if t is Path:
        return st.sampled_from(PATHS)
    return st.sampled_from(STRINGS)


@st.composite
def _argv(draw: Any, name: str, cmd: Any) -> list[str]:
    argv = name.split()
    for param in cmd.params:
        if param.name in ("help",) or (name, param.name) in NEVER:
            continue
        if param.param_type_name == "argument":
            if param.name == cmd.params[0].name and name in STOPPED_BY:
                argv.append(draw(st.sampled_from(STOPPED_BY[name])))
            elif param.required or draw(st.booleans()):
                n = 1 if param.nargs == 1 else draw(st.integers(1, 2))
                argv += [draw(_value(param)) for _ in range(n)]
            continue
        if draw(st.integers(0, 3)) != 0:  # most options left out, a few given
            continue
        flag = param.opts[0]
        if param.is_flag:
            argv.append(draw(st.sampled_from([*param.opts, *param.secondary_opts])))
        else:
            for _ in range(draw(st.integers(1, 2)) if param.multiple else 1):
                argv += [flag, draw(_value(param))]
    return argv


def _parse_only(cmd: Any, argv: list[str]) -> int:
    try:
        cmd.make_context(argv[0], argv[1:], parent=None)
    except _CLICK_ERROR as e:
        return int(e.exit_code)
    except typer.Exit as e:  # --help
        return int(e.exit_code)
    return 0


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prop")
    (root / "file.txt").write_text("x\n")
    (root / "dir").mkdir()
    (root / "notrun").mkdir()
    (root / "notrun" / "run.json").write_text("{}")
    return root


@pytest.mark.parametrize(("name", "cmd"), LEAVES, ids=[n for n, _ in LEAVES])
def test_any_options_end_in_0_1_or_2(ws: Path, name: str, cmd: Any) -> None:
    @settings(
        max_examples=SCALE * (8 if name == "models" else 60 if name in RUNS_IN_FULL else 30),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(argv=_argv(name, cmd))
    def check(argv: list[str]) -> None:
        if name not in RUNS_IN_FULL and name not in STOPPED_BY:
            assert _parse_only(cmd, argv[len(name.split()) - 1 :]) in (0, 1, 2)
            return
        out, err = io.StringIO(), io.StringIO()
        with contextlib.chdir(ws), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)  # an exception here is the traceback a user would see
        text = out.getvalue() + err.getvalue()
        assert code in (0, 1, 2), (argv, text)
        assert "Traceback" not in text, (argv, text)

    check()


# ---- past the option checks: the commands' work on small inputs -----------------------------------
# A real tiny run, real images (good, wrong channels, not an image), class files and image folders:
# the drawn commands get as far as evaluating, attributing, occluding and describing data sets.


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np
    from PIL import Image

    from robustness_helpers import train_tiny

    root = tmp_path_factory.mktemp("work")
    train_tiny(root / "run")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / "digit.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(root / "photo.png")
    (root / "bad.png").write_bytes(b"\x89PNG not really")
    (root / "ten.txt").write_text("\n".join(f"k{i}" for i in range(10)))
    (root / "two.txt").write_text("a\nb\n")
    (root / "bin.txt").write_bytes(b"\x00\xff\xfe")
    (root / "empty.pt").write_bytes(b"")
    for c in ("cat", "dog"):
        (root / "pets" / c).mkdir(parents=True)
        for i in range(5):
            size = (20 + i, 24) if c == "cat" else (28, 28)
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                root / "pets" / c / f"{i}.png"
            )
    (root / "flat").mkdir()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "flat" / "a.png")
    return root


_IMAGE = st.sampled_from(["digit.png", "photo.png", "bad.png", "missing.png", "pets/cat/0.png"])
_METHODS = ["filters", "activations", "saliency", "guided-backprop", "gradcam", "guided-gradcam",
            "occlusion", "erf"]  # fmt: skip
_LAYERS = ["conv1", "conv2", "conv3", "pool1", "bogus", "fc1"]


@st.composite
def _work_argv(draw: Any, command: str) -> list[str]:
    maybe = st.booleans()
    if command == "evaluate":
        argv = ["evaluate", draw(st.sampled_from(["run", "run", "run", "empty.pt"]))]
        if draw(maybe):
            argv += ["--limit", str(draw(st.integers(1, 40)))]
        else:
            argv += ["--limit", "8"]
        for flag, values in (("--split", ["test", "train"]), ("--tta", ["none", "flip"]),
                             ("--classes", ["ten.txt", "two.txt", "bin.txt", "missing.txt"]),
                             ("--device", ["cpu", "auto"])):  # fmt: skip
            if draw(maybe):
                argv += [flag, draw(st.sampled_from(values))]
        return argv + (["--json"] if draw(maybe) else [])
    if command == "visualize":
        method = draw(st.sampled_from(_METHODS))
        if draw(st.integers(0, 3)) == 0:  # any model with images, instead of the run
            argv = ["visualize", "--model", draw(st.sampled_from(["lenet5", "empty.pt"])),
                    method, "--images", draw(st.sampled_from(["pets", "flat", "digit.png"]))]  # fmt: skip
        else:
            argv = ["visualize", "run", method]
        argv += ["--out", "out", "--device", "cpu"]
        if method in ("saliency", "guided-backprop", "gradcam", "guided-gradcam", "occlusion"):
            if draw(maybe):
                argv += ["--image", draw(_IMAGE)]
            if draw(maybe):
                argv += ["--target", str(draw(st.sampled_from([0, 3, 9, 10, 1000])))]
        if method in ("filters", "activations", "gradcam", "guided-gradcam", "erf") and draw(maybe):
            argv += ["--layer", draw(st.sampled_from(_LAYERS))]
        if method == "occlusion":
            argv += ["--window", str(draw(st.integers(1, 40)))]
            argv += ["--stride", str(draw(st.integers(1, 40)))]
        if method in ("filters", "activations", "erf") and draw(maybe):
            argv += ["--count", str(draw(st.integers(1, 4)))]
        return argv
    names = ["sample", "folder:pets", "folder:flat", "folder:", "folder:missing", "folder:ten.txt"]
    return ["datasets", *draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))]


@pytest.mark.parametrize("command", ["evaluate", "visualize", "datasets"])
def test_commands_at_work_end_in_0_1_or_2(work: Path, command: str) -> None:
    @settings(
        max_examples=SCALE * (12 if command == "visualize" else 8),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(argv=_work_argv(command))
    def check(argv: list[str]) -> None:
        out, err = io.StringIO(), io.StringIO()
        with (
            contextlib.chdir(work),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = main(argv)
        text = out.getvalue() + err.getvalue()
        assert code in (0, 1, 2), (argv, text)
        assert "Traceback" not in text, (argv, text)
        if code == 1:  # a refusal is one line that says why
            assert "error: " in err.getvalue(), (argv, text)

    check()
