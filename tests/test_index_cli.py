"""`convlens index build|list|delete`, `evaluate` streaming a folder through the index, and the
index pass split between two gloo processes under torchrun.

Oracles: torchvision's ImageFolder and the plain model over the same folder (loaded whole), and the one-process
index of the same command (two ranks must give the same arrays, bit for bit).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convlens import models
from convlens.index import open_index
from index_data import extract_cifar
from robustness_helpers import run_cli, subprocess_env

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def setup(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """40 CIFAR-10 test JPEGs in class folders, and ResNet-20 weights (seed 0) as safetensors."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("cli")
    images = extract_cifar(data_root, root / "images", 4)
    torch.manual_seed(0)
    net = models.create("resnet20", num_classes=10, in_channels=3)
    save_file(net.state_dict(), str(root / "w.safetensors"))
    return images, root / "w.safetensors"


def _args(images: Path, weights: Path, cache: Path) -> list[str]:
    return ["--model", "resnet20", "--weights", str(weights), "--images", str(images),
            "--cache-dir", str(cache)]  # fmt: skip


def test_build_list_delete(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, weights = setup
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, ["index", "build", *_args(images, weights, cache), "-k", "4"])
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    idx = open_index(path)
    assert idx.n == 40 and idx.k == 4 and idx.labels_are_outputs
    # The same folder loaded in memory (as `serve` and `report` open it) finds the same index.
    from convlens.index import find_index
    from convlens.subjects import open_subject

    loaded = open_subject("resnet20", weights=str(weights), images=images)
    found = find_index(loaded, cache_dir=cache)
    assert found is not None and found.path == path
    code, out, _ = run_cli(capsys, ["index", "list", "--cache-dir", str(cache), "--json"])
    rows = json.loads(out)
    assert [(x["key"], x["status"], x["images"]) for x in rows] == [(idx.key, "ok", 40)]
    code, out, _ = run_cli(capsys, ["index", "list", "--cache-dir", str(cache)])
    assert code == 0 and idx.key[:8] in out
    code, _, _ = run_cli(capsys, ["index", "delete", idx.key[:6], "--cache-dir", str(cache)])
    assert code == 0 and not path.exists()
    code, _, err = run_cli(capsys, ["index", "delete", "nosuchkey", "--cache-dir", str(cache)])
    assert code == 1 and "no index 'nosuchkey'" in err and "Traceback" not in err
    code, _, err = run_cli(
        capsys, ["index", "build", *_args(images, weights, cache), "--layers", "nope"]
    )
    assert code == 1 and "no layer named 'nope'" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, ["index", "build", *_args(tmp_path / "gone", weights, cache)])
    assert code == 1 and "no image file or folder" in err


def test_evaluate_streams_the_folder_through_the_index(
    setup: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from safetensors.torch import load_file
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import normalize, pil_to_tensor

    from convlens.subjects import open_subject

    images, weights = setup
    # Oracle: torchvision's ImageFolder and the plain model, every image in memory at once.
    pre = open_subject("resnet20").preprocess  # the zoo's mean/std (what is tested is the pass)
    folder = ImageFolder(str(images), transform=lambda im: pil_to_tensor(im.convert("RGB")))
    x = torch.stack([t for t, _ in folder]).float().div(255)  # (40, 3, 32, 32)
    y = torch.tensor(folder.targets)
    net = models.create("resnet20", num_classes=10, in_channels=3)
    net.load_state_dict(load_file(str(weights)))
    with torch.no_grad():
        logits = net.eval()(normalize(x, list(pre.mean), list(pre.std)))
    want_confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(want_confusion, (y.numpy(), logits.argmax(1).numpy()), 1)
    want_loss = float(torch.nn.functional.cross_entropy(logits.double(), y))
    # A folder far above the in-memory limit would be refused if evaluate loaded it whole.
    monkeypatch.setattr("convlens.subjects.images.MAX_FOLDER_BYTES", 1000)
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path))
    code, out, err = run_cli(
        capsys, ["evaluate", "--model", "resnet20", "--weights", str(weights), "--images",
                 str(images), "--json"],
    )  # fmt: skip
    assert code == 0, err
    got = json.loads(out)
    assert got["count"] == 40
    assert got["confusion"] == want_confusion.tolist()
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    folders = [p for p in (tmp_path / "index").iterdir() if p.is_dir()]
    assert len(folders) == 1  # the index it streamed through (beside it: its lock file)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_equal_one_process(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    images, weights = setup
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    common = ["index", "build", "--batch-size", "8", "--shard-size", "8", "-k", "3", "-q"]
    one = subprocess.run(
        [str(BIN / "convlens"), *common, *_args(images, weights, tmp_path / "one")],
        capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    two = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "-m", "convlens.cli.main",
         *common, *_args(images, weights, tmp_path / "two")],
        capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr.decode()[-3000:]
    assert two.stdout.decode().count("index of") == 1  # rank 0 alone prints
    a = open_index(Path(one.stdout.decode().strip().splitlines()[-1]))
    b = open_index(Path(two.stdout.decode().strip().splitlines()[-1]))
    assert a.key == b.key and a.n == b.n == 40 and a.manifest["shard_size"] == 8
    for name in ("labels.npy", "top_classes.npy", "top_probs.npy", "loss.npy", "correct.npy",
                 "features.npy"):  # fmt: skip
        np.testing.assert_array_equal(np.load(a.path / name), np.load(b.path / name))
    for layer in a.layers:
        ua, ub = a.units(layer), b.units(layer)
        np.testing.assert_array_equal(ua.values, ub.values)
        np.testing.assert_array_equal(ua.images, ub.images)
        np.testing.assert_array_equal(ua.positions, ub.positions)


def test_a_streamed_subject_decodes_its_folder_when_asked(setup: tuple[Path, Path]) -> None:
    from convlens.subjects import open_subject

    images, weights = setup
    streamed = open_subject("resnet20", weights=str(weights), images=images, in_memory=False)
    loaded = open_subject("resnet20", weights=str(weights), images=images)
    assert streamed.images is None and streamed.image_list is not None
    assert streamed.classes == loaded.classes
    ds = streamed.data()  # decoded on demand, labels matched to the outputs as when loaded
    assert torch.equal(ds.images, loaded.data().images)
    assert torch.equal(ds.labels, loaded.data().labels) and ds.classes == loaded.data().classes
