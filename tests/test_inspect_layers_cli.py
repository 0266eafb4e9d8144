"""`convlens visualize RUN_DIR {filters, activations, neighbors, tsne, top-patches, erf}` through the
real entry point: exit codes, files written, raw numbers checked against the model, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens import load_run, models
from convlens.cli.main import main
from convlens.data import load as load_data


@pytest.fixture(scope="module")
def run_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared trained LeNet-5 run when conftest provides it, else a run directory built here
    (random weights, the run-directory schema of `convlens.train.run_dir`)."""
    try:
        return Path(request.getfixturevalue("trained_run"))
    except pytest.FixtureLookupError:
        pass
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = models.create("lenet5", num_classes=10, in_channels=1)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors")
    )
    ds = load_data("sample", "train")
    raw = {
        "format": 1, "status": "complete",
        "model": {"name": "lenet5", "options": {"num_classes": 10, "in_channels": 1}},
        "data": {"name": "sample", "classes": ds.classes, "mean": list(ds.mean), "std": list(ds.std),
                 "image_shape": [1, 28, 28], "root": None},
        "train": {}, "seed": 0, "versions": {},
    }  # fmt: skip
    (path / "run.json").write_text(json.dumps(raw))
    return path


def err_of(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr with Rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def viz(run_dir: Path, out: Path, *args: str) -> int:
    return main(["visualize", str(run_dir), *args, "--out", str(out)])


def test_filters_png_and_weights(run_dir: Path, tmp_path: Path) -> None:
    assert viz(run_dir, tmp_path, "filters", "--save-data") == 0
    assert (tmp_path / "filters_conv1.png").stat().st_size > 1000
    w = np.load(tmp_path / "filters_conv1.npy")
    np.testing.assert_array_equal(w, load_run(run_dir).model.conv1.weight.detach().numpy())  # type: ignore[union-attr]


def test_bad_layer_names_are_one_line_errors(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert viz(run_dir, tmp_path, "filters", "--layer", "conv7") == 1
    err = err_of(capsys)
    assert "no layer named 'conv7'" in err and "conv1" in err and "Traceback" not in err
    assert viz(run_dir, tmp_path, "filters", "--layer", "fc1") == 1
    assert "not a convolution" in err_of(capsys)
    assert viz(run_dir, tmp_path, "top-patches", "--layer", "conv2", "--channels", "99") == 1
    assert "has 16 channels (0-15); no channel 99" in err_of(capsys)
    assert viz(run_dir, tmp_path, "neighbors", "--metric", "cos") == 1
    assert "--metric 'cos'" in err_of(capsys)


def test_activations_of_a_user_image(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
        img
    )
    assert viz(run_dir, tmp_path / "o", "activations", "--image", str(img), "--save-data") == 0
    err = err_of(capsys)
    assert "converted RGB to L" in err and "resized 40x30 to 28x28" in err
    assert (tmp_path / "o" / "activations_0.png").is_file()
    assert np.load(tmp_path / "o" / "activations_0_conv2.npy").shape == (16, 10, 10)
    assert np.load(tmp_path / "o" / "activations_0_pool2.npy").shape == (16, 5, 5)


def test_non_image_file_is_a_clear_error(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a picture")
    assert viz(run_dir, tmp_path, "activations", "--image", str(bad)) == 1
    err = err_of(capsys)
    assert "notes.txt is not an image" in err and "Traceback" not in err


def test_neighbors_json(run_dir: Path, tmp_path: Path) -> None:
    assert (
        viz(
            run_dir,
            tmp_path,
            "neighbors",
            "--k",
            "3",
            "--count",
            "2",
            "--metric",
            "l2",
            "--save-data",
        )
        == 0
    )
    assert (tmp_path / "neighbors.png").is_file()
    data = json.loads((tmp_path / "neighbors.json").read_text())
    assert data["metric"] == "l2" and np.array(data["feature_indices"]).shape == (2, 3)
    # Pixel neighbours: an independent full search over the training split.
    train = load_data("sample", "train").images.flatten(1).double() / 255
    query = load_data("sample", "test").images[:2].flatten(1).double() / 255
    d = torch.cdist(query, train)
    assert data["pixel_indices"] == d.topk(3, largest=False).indices.tolist()


def test_tsne_writes_map_grid_and_coordinates(run_dir: Path, tmp_path: Path) -> None:
    assert viz(run_dir, tmp_path, "tsne", "--count", "150", "--save-data") == 0
    assert (tmp_path / "tsne.png").is_file() and (tmp_path / "tsne_grid.png").is_file()
    coords = np.load(tmp_path / "tsne.npy")
    meta = json.loads((tmp_path / "tsne.json").read_text())
    assert coords.shape == (150, 2) and len(meta["labels"]) == 150 and meta["split"] == "test"


def test_top_patches_json_against_direct_forward(run_dir: Path, tmp_path: Path) -> None:
    args = ["top-patches", "--layer", "conv2", "--channels", "0-3", "--k", "4", "--limit", "100000"]
    args.append("--save-data")  # every training image searched: the oracle is a full forward
    assert viz(run_dir, tmp_path, *args) == 0
    assert (tmp_path / "top_patches_conv2.png").is_file() and (
        tmp_path / "top_images_conv2.png"
    ).is_file()
    meta = json.loads((tmp_path / "top_patches_conv2.json").read_text())
    assert meta["channels"] == [0, 1, 2, 3] and meta["rf_size"] == [14, 14]
    run = load_run(run_dir)
    train = load_data("sample", "train")
    m = run.model
    with torch.no_grad():
        x = run.normalize(train.images)
        acts = m.conv2(m.pool1(m.act1(m.conv1(x))))  # type: ignore[operator]
    best = acts.flatten(2).amax(2)  # (N, 16)
    for c in range(4):
        expected = best[:, c].topk(4).values
        np.testing.assert_allclose(meta["values"][c], expected.numpy(), rtol=1e-5)


def test_erf_map_lies_inside_the_theoretical_field(run_dir: Path, tmp_path: Path) -> None:
    assert viz(run_dir, tmp_path, "erf", "--layer", "conv2", "--count", "8", "--save-data") == 0
    assert (tmp_path / "erf_conv2.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "erf_conv2.json").read_text())
    erf = np.load(tmp_path / "erf_conv2.npy")
    # conv2 of LeNet-5: 5x5 conv, 2x2 pool, 5x5 conv -> 5 + 4 + 4 * 2 = 14 pixels (textbook arithmetic).
    assert meta["theoretical"]["size"] == [14, 14] and meta["unit"] == [5, 5]
    t, left, b, r = meta["theoretical_box"]
    assert (b - t, r - left) == (14, 14)
    outside = erf.copy()
    outside[max(t, 0) : b, max(left, 0) : r] = 0
    assert erf.sum() == pytest.approx(1.0) and outside.sum() == 0
    assert erf[max(t, 0) : b, max(left, 0) : r].min() >= 0 and (erf > 0).sum() > 100


def test_erf_figure_theoretical_panel_is_the_box() -> None:
    from convlens.render.layers import erf_figure

    erf = np.random.default_rng(0).random((20, 20))
    fig = erf_figure(
        erf, (-3, 5, 9, 17), layer="x", rf_size=(12, 12), center=(3.0, 11.0), radius=4.0
    )
    theory = np.asarray(fig.axes[1].images[0].get_array())
    expected = np.zeros((20, 20))
    expected[0:9, 5:17] = 1
    np.testing.assert_array_equal(theory, expected)
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), erf / erf.max())


def test_projector_export_when_tensorboard_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from convlens.cli.methods.layers import _projector

    feats = torch.randn(10, 4)
    imgs = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    path = _projector(tmp_path / "projector", feats, torch.arange(10) % 2, ["a", "b"], imgs)
    assert path is not None and (path / "projector_config.pbtxt").is_file()
    tsv = next(path.rglob("tensors.tsv")).read_text().splitlines()
    np.testing.assert_allclose(
        np.array([line.split("\t") for line in tsv], dtype=float), feats.numpy(), rtol=1e-5
    )
