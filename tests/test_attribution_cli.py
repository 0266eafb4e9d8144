"""`convlens visualize RUN_DIR occlusion|saliency|guided-backprop|gradcam|guided-gradcam` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli.main import main

METHODS = ["occlusion", "saliency", "guided-backprop", "gradcam", "guided-gradcam"]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RGBA 40x30 picture: converted to 1x28x28 grey for the LeNet-5 run."""
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("img") / "query.png"
    Image.fromarray(rng.integers(0, 255, (30, 40, 4), dtype=np.uint8), "RGBA").save(p)
    return p


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_png_and_data(
    method: str,
    trained_run: Path,
    image_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / method
    args = [
        "visualize",
        str(trained_run),
        method,
        "--image",
        str(image_file),
        "--out",
        str(out),
        "--save-data",
    ]
    if method == "occlusion":
        args += ["--window", "6", "--stride", "3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "resized 40x30 to 28x28" in captured.err
    png = out / f"{method.replace('-', '_')}.png"
    data = np.load(png.with_suffix(".npy"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data.shape[0] == 1 and data.shape[-2:] == (28, 28)
    assert np.isfinite(data).all() and np.abs(data).max() > 0


def test_test_images_by_default_with_target_and_layer(trained_run: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "visualize",
                str(trained_run),
                "gradcam",
                "--layer",
                "conv1",
                "--target",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "gradcam.png").is_file()
    assert (
        main(["visualize", str(trained_run), "occlusion", "--out", str(tmp_path), "--save-data"])
        == 0
    )
    drop = np.load(tmp_path / "occlusion_prob_drop.npy")
    assert drop.shape == (
        4,
        13,
        13,
    )  # default window 4, stride 2 on 28x28: ceil(24 / 2) + 1 positions


def test_bad_options_are_one_line_errors(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["occlusion", "--window", "40"], "larger than the image"),
        (["occlusion", "--window", "4", "--stride", "9"], "larger than the window"),
        (["saliency", "--target", "12"], "out of range"),
        (["gradcam", "--layer", "conv7"], "no layer named"),
    ]
    for extra, message in cases:
        code = main(["visualize", str(trained_run), extra[0], "--out", str(tmp_path), *extra[1:]])
        err = capsys.readouterr().err
        assert code == 1 and message in err and "Traceback" not in err
