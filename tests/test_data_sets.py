"""Named data sets against the published facts of ../shared/data/README.md, and bad files.

Oracles: the MD5 sums MNIST has published for its uncompressed files (we rebuild the IDX bytes from
the arrays we loaded, so every pixel and label is checked), the published first labels, pixel means
and class counts, NumPy reductions for mean/std, and Pillow/gzip for the files we corrupt on purpose.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from convlens import data
from convlens.data import mnist as mnist_mod
from convlens.data.idx import read_idx
from convlens.errors import ConvlensError

MNIST_MD5 = {
    ("train", "images"): "6bbc9ace898e44ae57da46a324031adb",
    ("train", "labels"): "a25bea736e30d166cdddb491f175f624",
    ("test", "images"): "2646ac647ad5339dbf082846283269ea",
    ("test", "labels"): "27ae3e4e09519cfbb04c329615203637",
}
FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (the oracle for the MD5 check)."""
    return (
        struct.pack(">HBB", 0, 8, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.tobytes()
    )


@pytest.fixture(scope="module")
def mnist_splits(data_root: Path) -> dict[str, data.Dataset]:
    return {s: data.load("mnist", s) for s in ("train", "test")}


def test_mnist_matches_published_md5_of_the_uncompressed_files(mnist_splits):
    for split, ds in mnist_splits.items():
        images = ds.images.numpy()[:, 0]  # (N, 28, 28)
        labels = ds.labels.numpy().astype(np.uint8)
        assert hashlib.md5(idx_bytes(images)).hexdigest() == MNIST_MD5[(split, "images")]
        assert hashlib.md5(idx_bytes(labels)).hexdigest() == MNIST_MD5[(split, "labels")]


def test_mnist_facts(mnist_splits):
    train, test = mnist_splits["train"], mnist_splits["test"]
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert train.classes == [str(i) for i in range(10)]
    assert train.images.numpy().mean(dtype=np.float64) == pytest.approx(33.318, abs=1e-3)
    # mean/std in [0, 1] units, of the train split, carried by the test split too (the NumPy oracle
    # for the formula is in the sample test; here the published values)
    assert train.mean[0] == pytest.approx(0.1307, abs=1e-4)
    assert train.std[0] == pytest.approx(0.3081, abs=1e-4)
    assert test.mean == train.mean and test.std == train.std
    assert train.source.endswith("mnist")


def test_fashion_mnist_facts(data_root):
    train = data.load("fashion-mnist", "train")
    test = data.load("fashion-mnist", "test")
    assert len(train) == 60_000 and len(test) == 10_000
    assert torch.bincount(train.labels).tolist() == [6_000] * 10
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert train.images.numpy().mean(dtype=np.float64) == pytest.approx(72.940, abs=1e-3)
    assert train.mean[0] == pytest.approx(0.2860, abs=1e-4)
    assert train.classes == FASHION
    assert test.mean == train.mean


def test_sample_is_a_fixed_stratified_split_of_the_fashion_mnist_test_set(data_root):
    tr, te = data.load("sample", "train"), data.load("sample", "test")
    assert tr.image_shape == te.image_shape == (1, 28, 28)
    assert len(tr) == 8_000 and len(te) == 2_000
    assert torch.bincount(tr.labels).tolist() == [800] * 10
    assert torch.bincount(te.labels).tolist() == [200] * 10
    assert tr.classes == te.classes == FASHION
    # oracle: the official Fashion-MNIST test split, read independently with gzip + NumPy
    raw = gzip.decompress((data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    ref = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    lab = np.frombuffer(
        gzip.decompress((data_root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()),
        np.uint8,
        offset=8,
    )
    # the rule: within each class, in file order, every 5th image is a test image
    rank = np.array([(lab[:i] == lab[i]).sum() for i in range(len(lab))])
    test_mask = rank % 5 == 4
    np.testing.assert_array_equal(te.images.numpy()[:, 0], ref[test_mask])
    np.testing.assert_array_equal(tr.images.numpy()[:, 0], ref[~test_mask])
    np.testing.assert_array_equal(te.labels.numpy(), lab[test_mask])
    pix = ref[~test_mask].astype(np.float64) / 255
    assert tr.mean[0] == pytest.approx(pix.mean(), abs=1e-9)
    assert te.std[0] == pytest.approx(pix.std(), abs=1e-9)


def test_sample_needs_no_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVLENS_DATA", raising=False)
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path))
    ds = data.load("sample", "test")
    assert len(ds) == 2_000 and "bundled" in ds.source


def test_names_and_unknown_names():
    assert data.names() == ["mnist", "fashion-mnist", "cifar10", "sample"]
    with pytest.raises(ConvlensError, match=r"unknown data set 'mnsit'.*Did you mean: mnist"):
        data.load("mnsit")
    with pytest.raises(ConvlensError, match="unknown split"):
        data.load("sample", "validation")
    with pytest.raises(ConvlensError, match="folder:PATH data sets only"):
        data.load("sample", size=32)
    with pytest.raises(ConvlensError, match="folder: needs a path"):
        data.load("folder:")


# ------------------------------------------------------------------ search order, missing files


def _copy_mnist(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.glob("*.gz"):
        shutil.copy(f, dst / f.name)
    return dst


def test_missing_data_names_every_place_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVLENS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConvlensError) as e:
        data.load("fashion-mnist", root=tmp_path / "root")
    msg = str(e.value)
    for place in [
        tmp_path / "root" / "fashion-mnist",
        tmp_path / "root",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "cache" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]:
        assert str(place) in msg
    assert "--data-dir" in msg and "CONVLENS_DATA" in msg and "--download" in msg


def test_search_order_root_first_then_env_then_cache(monkeypatch, tmp_path, data_root):
    monkeypatch.setenv("CONVLENS_DATA", str(data_root))
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    # root=DIR holding mnist/ wins over CONVLENS_DATA
    mine = _copy_mnist(data_root / "mnist", tmp_path / "root" / "mnist")
    assert data.locate("mnist", tmp_path / "root").found == mine
    # root= may also be the data set folder itself
    assert data.locate("mnist", mine).found == mine
    assert data.locate("mnist").found == data_root / "mnist"
    # the cache is looked in when CONVLENS_DATA is not set
    monkeypatch.delenv("CONVLENS_DATA")
    cached = _copy_mnist(data_root / "mnist", tmp_path / "cache" / "mnist")
    assert data.load("mnist", "test").source == str(cached)


def test_torchvision_layout_and_uncompressed_files(tmp_path, data_root):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root / "mnist").glob("t10k*.gz"):
        shutil.copy(f, raw / f.name)
    for f in (data_root / "mnist").glob(
        "train*.gz"
    ):  # stored uncompressed, as torchvision extracts
        (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    ds = data.load("mnist", "train", root=tmp_path)
    assert ds.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.source == str(raw)


def test_partial_folder_is_an_error_naming_the_missing_files(tmp_path, data_root):
    d = tmp_path / "mnist"
    d.mkdir()
    shutil.copy(data_root / "mnist" / "train-images-idx3-ubyte.gz", d)
    with pytest.raises(ConvlensError, match=r"lacks .*t10k-labels-idx1-ubyte"):
        data.load("mnist", root=tmp_path)


# ------------------------------------------------------------------ corrupt files


@pytest.fixture
def mnist_copy(tmp_path, data_root) -> Path:
    return _copy_mnist(data_root / "mnist", tmp_path / "mnist")


def test_truncated_gz_is_an_error_naming_the_file(mnist_copy):
    f = mnist_copy / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ConvlensError, match=r"t10k-images-idx3-ubyte\.gz is truncated or corrupt"):
        data.load("mnist", "test", root=mnist_copy.parent)


def test_wrong_magic_number_is_an_error_naming_the_file(mnist_copy):
    f = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    body = bytearray(gzip.decompress(f.read_bytes()))
    body[2] = 0x0D  # float type instead of unsigned byte
    f.write_bytes(gzip.compress(bytes(body)))
    with pytest.raises(ConvlensError, match=r"t10k-labels-idx1-ubyte\.gz has the wrong IDX magic"):
        data.load("mnist", "test", root=mnist_copy.parent)


def test_body_shorter_than_its_header_is_an_error(mnist_copy):
    # a well-formed gzip stream of an IDX body that lost its last image: never a shorter data set
    f = mnist_copy / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-784], compresslevel=1))
    with pytest.raises(ConvlensError, match=r"t10k-images-idx3-ubyte\.gz is truncated.*7,840,000"):
        data.load("mnist", "test", root=mnist_copy.parent)


def test_images_and_labels_disagreeing_is_an_error(mnist_copy):
    f = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    labels = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(struct.pack(">HBBI", 0, 8, 1, 9_999) + labels[8:-1]))
    with pytest.raises(ConvlensError, match=r"10,000 images but .* 9,999 labels"):
        data.load("mnist", "test", root=mnist_copy.parent)


def test_read_idx_uncompressed_matches_numpy(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(p, 3), arr)
    with pytest.raises(ConvlensError, match="wrong IDX magic"):
        read_idx(p, 1)


def test_describe_reads_headers(data_root):
    info = data.describe("mnist")
    assert info.found == str(data_root / "mnist")
    assert info.sizes == {"train": 60_000, "test": 10_000} and info.image_shape == (1, 28, 28)
    s = data.describe("sample")
    assert s.sizes == {"train": 8_000, "test": 2_000}
    assert mnist_mod.SAMPLE_TEST_EVERY == 5


def test_describe_reports_a_corrupt_file_instead_of_raising(mnist_copy):
    f = mnist_copy / "train-images-idx3-ubyte.gz"
    f.write_bytes(b"\x00\x00\x08\x01junk")  # not gzip at all
    info = data.describe("mnist", mnist_copy.parent)
    assert info.error and "train-images-idx3-ubyte.gz" in info.error


def test_download_fetches_into_the_cache(monkeypatch, tmp_path, data_root):
    """--download goes through torchvision's downloader; the mirror here is a local folder."""
    from torchvision.datasets import utils as tv_utils

    from convlens.data import download as dl

    monkeypatch.delenv("CONVLENS_DATA", raising=False)
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    files = sorted((data_root / "mnist").glob("*.gz"))
    res = [
        (["http://dead.invalid/", "local:/"], f.name, hashlib.md5(f.read_bytes()).hexdigest())
        for f in files
    ]
    monkeypatch.setattr(dl, "_resources", lambda name: res)
    calls = []

    def fake_download_url(url, root, filename=None, md5=None):
        calls.append(url)
        if url.startswith("http://dead.invalid/"):
            raise OSError("no network")
        shutil.copy(data_root / "mnist" / url.split("/")[-1], Path(root) / filename)

    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)
    with pytest.raises(ConvlensError, match="--download"):
        data.load("mnist", "test")
    ds = data.load("mnist", "test", download=True)
    assert len(ds) == 10_000 and ds.source == str(tmp_path / "cache" / "mnist")
    assert len(calls) == 8  # each file: the dead mirror, then the working one
    # all mirrors failing: one clear message
    shutil.rmtree(tmp_path / "cache")
    monkeypatch.setattr(
        dl, "_resources", lambda name: [(["http://dead.invalid/"], "x.gz", "0" * 32)]
    )
    with pytest.raises(ConvlensError, match=r"could not download mnist .*copy the files"):
        data.load("mnist", download=True)


def test_head_covers_the_classes_of_a_class_ordered_split() -> None:
    """An ImageFolder tree (CIFAR-10's JPEG copy) lists class after class: its first N images would
    be one class, so `head` takes every class in turn; data in no class order keep their first N."""
    from convlens.data.dataset import Dataset

    labels = torch.arange(4).repeat_interleave(5)  # 0 0 0 0 0 1 1 ... 3: class-ordered
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1)
    ds = Dataset("folder:x", "train", images, labels, list("abcd"), (0.5,), (0.5,))
    got_images, got_labels = ds.head(6)
    assert got_labels.tolist() == [0, 1, 2, 3, 0, 1]
    assert got_images.flatten().tolist() == [0, 5, 10, 15, 1, 6]  # in order within a class
    assert ds.head(None)[0] is images and ds.head(50)[1] is labels
    shuffled = Dataset(
        "x", "train", images, labels[torch.randperm(20)], list("abcd"), (0.5,), (0.5,)
    )
    assert torch.equal(shuffled.head(6)[1], shuffled.labels[:6])  # no class order: the first 6
