"""`convlens visualize tsne|neighbors` read the subject's cached index (`convlens index build`).

Oracles: a brute-force NumPy cosine search over the index's float16 features (the neighbours), a
full pixel-space L2 search over the folder decoded whole (the pixel neighbours), and the map the
index stores (`Index.embedding`, openTSNE) for the t-SNE coordinates. Neither command may run the
model over the images: the in-memory feature paths are replaced by ones that fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convlens import models
from convlens.index import open_index
from convlens.subjects import load_image_set
from index_data import CIFAR_CLASSES, extract_cifar
from robustness_helpers import run_cli

PER_CLASS = 20  # 200 images


@pytest.fixture(scope="module")
def indexed(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """200 CIFAR-10 test JPEGs in class folders, ResNet-20 weights, and their index built by the
    CLI into a cache folder: the subject's arguments and that index's folder."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("vis_index")
    images = extract_cifar(data_root, root / "images", PER_CLASS)
    torch.manual_seed(0)
    net = models.create("resnet20", num_classes=10, in_channels=3)
    save_file(net.state_dict(), str(root / "w.safetensors"))
    args = [
        "--model",
        "resnet20",
        "--weights",
        str(root / "w.safetensors"),
        "--images",
        str(images),
    ]
    from convlens.cli.main import main

    cache = root / "cache"
    assert main(["index", "build", *args, "--cache-dir", str(cache / "index"), "-q"]) == 0
    (path,) = [p.parent for p in (cache / "index").glob("*/manifest.json")]
    return args, path


@pytest.fixture
def no_forward_over_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-memory paths that run the model over the pool fail if taken."""

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the model ran over the images: the index was not read")

    monkeypatch.setattr("convlens.inspect.extract_features", refuse)
    monkeypatch.setattr("convlens.inspect.neighbors", refuse)
    monkeypatch.setattr("convlens.views.prediction.predictions_view", refuse)


def _visualize(
    indexed: tuple[list[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    out: Path,
    *argv: str,
) -> None:
    """`convlens visualize SUBJECT ARGV --save-data --out OUT` with the index in the cache: it must
    succeed and say that it read the index."""
    args, path = indexed
    monkeypatch.setenv("CONVLENS_CACHE", str(path.parent.parent))
    code, _, err = run_cli(capsys, ["visualize", *args, *argv, "--save-data", "--out", str(out)])
    assert code == 0, err
    assert "reading the index of 200 images" in " ".join(err.split())


def test_neighbors_come_from_the_index(
    indexed: tuple[list[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_forward_over_images: None,
) -> None:
    path, out = indexed[1], tmp_path / "vis"
    _visualize(indexed, monkeypatch, capsys, out, "neighbors", "--k", "4", "--count", "3")
    assert (out / "neighbors.png").is_file()
    data = json.loads((out / "neighbors.json").read_text())
    assert data["split"] == "images" and data["k"] == 4 and data["metric"] == "cosine"
    # The queries: the first image of each of the first three classes (20 per class folder).
    assert data["query_indices"] == [0, 20, 40]
    assert data["queries"] == ["airplane", "automobile", "bird"]

    x = open_index(path).features().astype(np.float64)  # (200, D) the stored float16 features
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ds = load_image_set(path.parent.parent.parent / "images", open_index(path).preprocess)
    px = ds.images.flatten(1).double() / 255  # (200, P)
    for q, fi, fd, pi in zip(data["query_indices"], data["feature_indices"],
                             data["feature_distances"], data["pixel_indices"], strict=True):  # fmt: skip
        d = 1.0 - xn @ xn[q]
        d[q] = np.inf  # an image is not its own neighbour
        want = np.lexsort((np.arange(len(d)), d))[:4]
        assert fi == want.tolist()
        np.testing.assert_allclose(fd, d[want], rtol=1e-9, atol=1e-12)
        dp = torch.cdist(px[q : q + 1], px)[0]
        dp[q] = float("inf")
        assert pi == dp.topk(4, largest=False).indices.tolist()


def test_tsne_comes_from_the_index(
    indexed: tuple[list[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_forward_over_images: None,
) -> None:
    path, out = indexed[1], tmp_path / "vis"
    # Loading the folder whole would be refused: only the images drawn are decoded.
    monkeypatch.setattr("convlens.subjects.images.MAX_FOLDER_BYTES", 1000)
    _visualize(indexed, monkeypatch, capsys, out, "tsne", "--count", "150", "--seed", "3")
    assert (out / "tsne.png").is_file() and (out / "tsne_grid.png").is_file()
    meta = json.loads((out / "tsne.json").read_text())
    assert set(meta) == {"split", "indices", "labels", "classes", "layer", "kl_divergence",
                         "perplexity", "coords"}  # fmt: skip
    assert meta["kl_divergence"] is None and meta["perplexity"] is None
    index = open_index(path)
    want_i, want_c = index.embedding(limit=150, seed=3)
    assert meta["indices"] == want_i.tolist()
    np.testing.assert_array_equal(np.load(out / "tsne.npy"), want_c)
    assert meta["labels"] == index.labels[want_i].tolist() and meta["classes"] == CIFAR_CLASSES
    assert len(set(meta["indices"])) == 150 and meta["split"] == "images"
    if (out / "projector").is_dir():  # tensorboard installed: the index's rows, as float32
        tsv = next((out / "projector").rglob("tensors.tsv")).read_text().splitlines()
        got = np.array([line.split("\t") for line in tsv], dtype=np.float64)
        want = index.features()[want_i].astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_top_patches_come_from_the_index(
    indexed: tuple[list[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_forward_over_images: None,
) -> None:
    """The folder is never decoded whole (it would be refused): the patches are the index's
    per-channel top-k (tested against brute force in test_index.py), images decoded one by one."""
    monkeypatch.setattr("convlens.subjects.images.MAX_FOLDER_BYTES", 1000)
    monkeypatch.setattr("convlens.inspect.top_patches", lambda *a, **k: pytest.fail("searched"))
    index = open_index(indexed[1])
    layer, out = index.layers[-1], tmp_path / "vis"
    _visualize(
        indexed,
        monkeypatch,
        capsys,
        out,
        "top-patches",
        "--layer",
        layer,
        "--count",
        "4",
        "--k",
        "3",
    )
    meta = json.loads((out / f"top_patches_{layer.replace('/', '_')}.json").read_text())
    units = index.units(layer)
    assert meta["indices"] == units.images[:4, :3].tolist()
    np.testing.assert_allclose(meta["values"], units.values[:4, :3], rtol=1e-6)
    assert meta["split"] == "images" and meta["searched"] == 200


def test_without_an_index_nothing_changes(
    indexed: tuple[list[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An empty cache: the features come from the model (and no index is built)."""
    args, _ = indexed
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "empty"))
    out = tmp_path / "vis"
    code, _, err = run_cli(
        capsys, ["visualize", *args, "neighbors", "--k", "2", "--count", "2", "--save-data",
                 "--out", str(out)],
    )  # fmt: skip
    assert code == 0, err
    assert "reading the index" not in err and not (tmp_path / "empty").exists()
    data = json.loads((out / "neighbors.json").read_text())
    assert data["split"] == "train" and "query_indices" not in data


def test_a_runs_index_covers_its_test_split(
    trained_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_forward_over_images: None,
) -> None:
    """A run's index holds its test split: neighbors searches it (and says so), not the training
    split it searches without an index."""
    from convlens.data.dataset import spread_by_class
    from convlens.train.run_dir import load_run

    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(capsys, ["index", "build", str(trained_run), "-q"])
    assert code == 0, err
    index = open_index(Path(out.strip().splitlines()[-1]))
    code, _, err = run_cli(
        capsys, ["visualize", str(trained_run), "neighbors", "--k", "3", "--count", "2",
                 "--metric", "l2", "--save-data", "--out", str(tmp_path / "vis")],
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "vis" / "neighbors.json").read_text())
    test = load_run(trained_run).load_data("test")
    assert data["split"] == "test" and index.n == len(test)
    labels = test.labels
    sorted_labels = bool((labels[1:] >= labels[:-1]).all())
    want_q = spread_by_class(labels)[:2].tolist() if sorted_labels else [0, 1]
    assert data["query_indices"] == want_q
    x = index.features().astype(np.float64)
    for q, fi in zip(data["query_indices"], data["feature_indices"], strict=True):
        d = np.linalg.norm(x - x[q], axis=1)
        d[q] = np.inf
        assert fi == np.lexsort((np.arange(len(d)), d))[:3].tolist()
