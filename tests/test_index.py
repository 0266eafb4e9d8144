"""The index pass over a folder of real JPEGs against independent computations on the same images.

Oracles: the in-memory methods of `convlens.inspect` (`top_patches`, `extract_features`) run over
the folder loaded whole, a brute-force NumPy top-k over every activation map, torch's own softmax and
cross-entropy of the model's logits, and a brute-force NumPy nearest-neighbour search. The index
must equal them exactly (top-k values, image indices, positions; features to float16 precision).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convlens import models
from convlens.errors import ConvlensError, InputError, Interrupted
from convlens.index import (
    DamagedIndex,
    IndexNote,
    build_index,
    delete_index,
    find_index,
    list_indexes,
    open_index,
    store,
)
from convlens.inspect import activations, extract_features, top_patches
from convlens.subjects import Preprocess, Subject, load_image_set, subject
from convlens.subjects.images import scan_image_list
from index_data import CIFAR_CLASSES, CIFAR_MEAN, CIFAR_STD, extract_cifar

BATCH, SHARD, K = 16, 16, 5
PRE = Preprocess(3, (32, 32), CIFAR_MEAN, CIFAR_STD)


@pytest.fixture(scope="module")
def folder(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 CIFAR-10 test JPEGs, 6 per class, as class folders."""
    return extract_cifar(data_root, tmp_path_factory.mktemp("cifar") / "images", 6)


def _model(seed: int = 0) -> torch.nn.Module:
    """ResNet-20 with random weights and non-trivial BatchNorm statistics (no two channels alike)."""
    torch.manual_seed(seed)
    net = models.create("resnet20", num_classes=10, in_channels=3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net.eval()


def _subject(folder: Path, seed: int = 0) -> Subject:
    sub = subject(_model(seed), preprocess=PRE, classes=CIFAR_CLASSES, name="resnet20")
    sub.image_list = scan_image_list(folder)  # class folders named as the model's classes
    return sub


def _build(sub: Subject, cache: Path, **kw: object) -> object:
    return build_index(
        sub, cache_dir=cache, k=K, batch_size=BATCH, shard_size=SHARD, progress=False, **kw
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def built(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Subject, object]:
    cache = tmp_path_factory.mktemp("cache")
    sub = _subject(folder)
    return sub, _build(sub, cache)


def test_index_equals_the_in_memory_methods(folder: Path, built: tuple[Subject, object]) -> None:
    sub, idx = built
    ds = load_image_set(folder, PRE)  # the same decoder, every image in memory
    assert idx.n == len(ds) == 60 and idx.files == ds.extra["files"]
    np.testing.assert_array_equal(idx.labels, ds.labels.numpy())
    assert idx.layers == ["layer1.2.conv2", "layer2.2.conv2", "layer3.2.conv2"]

    for layer in idx.layers:
        units = idx.units(layer)
        c = units.values.shape[0]
        ref = top_patches(
            sub.model, layer, ds.images, c, K, mean=PRE.mean, std=PRE.std, batch_size=BATCH
        )
        np.testing.assert_array_equal(units.values, ref.values.numpy())
        np.testing.assert_array_equal(units.images, ref.indices.numpy())
        np.testing.assert_array_equal(units.positions, ref.positions.numpy())
        assert idx.map_size(layer) == ref.map_size

    # Brute force in NumPy: every map in one forward, max per channel, lexsort (value desc, image).
    acts = activations(sub.model, sub.normalize(ds.images), idx.layers)
    for layer, a in acts.items():
        a = a.numpy()  # (N, C, H, W)
        n, c, h, w = a.shape
        flat = a.reshape(n, c, h * w)
        best, arg = flat.max(2), flat.argmax(2)  # (N, C)
        units = idx.units(layer)
        for ch in range(c):
            order = np.lexsort((np.arange(n), -best[:, ch]))[:K]
            np.testing.assert_array_equal(units.images[ch], order)
            np.testing.assert_allclose(units.values[ch], best[order, ch], rtol=1e-5, atol=1e-5)
            rows, cols = np.divmod(arg[order, ch], w)
            np.testing.assert_array_equal(units.positions[ch], np.stack([rows, cols], 1))

    feats = extract_features(sub.model, ds.images, mean=PRE.mean, std=PRE.std, batch_size=BATCH)
    assert idx.features().dtype == np.float16 and idx.features().shape == (60, 64)
    np.testing.assert_array_equal(idx.features(), feats.numpy().astype(np.float16))

    with torch.inference_mode():
        logits = sub.model(sub.normalize(ds.images)).double()  # (N, 10)
    probs = torch.softmax(logits, 1)
    np.testing.assert_array_equal(idx.top_classes[:, 0], logits.argmax(1).numpy())
    top = probs.topk(5, dim=1)
    np.testing.assert_array_equal(idx.top_classes, top.indices.numpy())
    np.testing.assert_allclose(idx.top_probs, top.values.numpy(), rtol=1e-5, atol=1e-7)
    ce = F.cross_entropy(logits, ds.labels, reduction="none").numpy()
    np.testing.assert_allclose(idx.loss, ce, rtol=1e-5)
    np.testing.assert_array_equal(idx.correct, logits.argmax(1).numpy() == ds.labels.numpy())
    assert torch.equal(idx.image(7), ds.images[7])


def test_neighbours_equal_brute_force(built: tuple[Subject, object]) -> None:
    _, idx = built
    x = idx.features().astype(np.float64)  # (N, D)
    for q in (0, 37, 59):
        for metric in ("cosine", "euclidean"):
            got_i, got_d = idx.neighbours(q, 6, metric=metric)
            if metric == "cosine":
                xn = x / np.linalg.norm(x, axis=1, keepdims=True)
                d = 1.0 - xn @ xn[q]
            else:
                d = np.linalg.norm(x - x[q], axis=1)
            d[q] = np.inf  # an image is not its own neighbour
            want = np.lexsort((np.arange(len(d)), d))[:6]
            np.testing.assert_array_equal(got_i, want)
            np.testing.assert_allclose(got_d, d[want], rtol=1e-9, atol=1e-12)
    vec = x[3] + 0.01
    got_i, got_d = idx.neighbours(vec, 4, metric="l2")
    d = np.linalg.norm(x - vec, axis=1)
    np.testing.assert_array_equal(got_i, np.argsort(d, kind="stable")[:4])
    with pytest.raises(ConvlensError, match="unknown metric"):
        idx.neighbours(0, 3, metric="manhattan")


def test_embedding_is_stored_in_the_index(built: tuple[Subject, object]) -> None:
    _, idx = built
    chosen, coords = idx.embedding(limit=40, seed=1)
    want = np.sort(np.random.default_rng(1).choice(60, 40, replace=False))
    np.testing.assert_array_equal(chosen, want)  # the stated sample: default_rng(seed), sorted
    assert coords.shape == (40, 2) and np.isfinite(coords).all()
    reopened = open_index(idx.path)
    _, again_c = reopened.embedding(limit=40, seed=1)  # read back, not recomputed
    np.testing.assert_array_equal(again_c, coords)
    assert any(e["name"] == "embedding-m40-s1" for e in reopened.manifest["embeddings"])


def test_interrupted_then_resumed_equals_uninterrupted(
    folder: Path, built: tuple[Subject, object], tmp_path: Path
) -> None:
    _, whole = built
    sub = _subject(folder)

    def ctrl_c(done: int, total: int) -> None:
        if done == 2:
            raise Interrupted(2, "interrupted")  # what Ctrl-C raises under the CLI

    with pytest.raises(Interrupted) as stopped:
        _build(sub, tmp_path, on_shard=ctrl_c)
    assert (
        "2 of 4 shards of the index are kept; run the same command again" in stopped.value.message
    )
    building = tmp_path / whole.key / "building"
    assert sorted(p.name for p in building.iterdir() if p.is_dir()) == [
        "shard-000000",
        "shard-000001",
    ]
    assert find_index(sub, cache_dir=tmp_path) is None  # nothing half-written is used
    assert [e.status for e in list_indexes(tmp_path)] == ["unfinished"]
    seen: list[int] = []
    with pytest.warns(IndexNote, match="resuming the index pass: 2 of 4 shards"):
        resumed = _build(sub, tmp_path, on_shard=lambda d, t: seen.append(d))
    assert seen == [3, 4]  # only the two missing shards ran
    assert not building.exists()
    for name in ("top_classes.npy", "top_probs.npy", "loss.npy", "features.npy", "labels.npy"):
        np.testing.assert_array_equal(np.load(resumed.path / name), np.load(whole.path / name))
    for layer in whole.layers:
        a, b = resumed.units(layer), whole.units(layer)
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.positions, b.positions)


def test_two_builders_of_one_index_take_turns(
    folder: Path, built: tuple[Subject, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second pass over the same key waits for the first, then reads its index (runs no pass);
    while the first runs, `list` says "building" and `delete` refuses it."""
    _, whole = built
    paused, release = threading.Event(), threading.Event()
    got: dict[str, object] = {}
    second_shards: list[int] = []
    notes: list[str] = []
    monkeypatch.setattr(store, "note", notes.append)  # warnings are not thread-safe to record

    def pause(done: int, total: int) -> None:
        if done == 1:
            paused.set()
            release.wait(60)

    def first() -> None:
        got["first"] = _build(_subject(folder), tmp_path, on_shard=pause)

    def second() -> None:  # same weights (same seed), another model object: the same key
        got["second"] = _build(_subject(folder), tmp_path, on_shard=second_shards.append)

    a = threading.Thread(target=first)
    a.start()
    assert paused.wait(60)
    b = threading.Thread(target=second)
    b.start()
    deadline = time.monotonic() + 60
    while not notes and time.monotonic() < deadline:  # B reaches the lock, then says it waits
        time.sleep(0.05)
    assert notes == [f"another process is building the index {whole.key}; waiting for it to finish"]  # type: ignore[attr-defined]
    assert b.is_alive()
    assert [e.status for e in list_indexes(tmp_path)] == ["building"]
    with pytest.raises(InputError, match="being built by another process"):
        delete_index(whole.key, cache_dir=tmp_path)
    release.set()
    a.join(60)
    b.join(60)
    assert second_shards == []  # it ran no pass: it read the first one's index
    for name in ("top_classes.npy", "features.npy"):
        np.testing.assert_array_equal(
            np.load(got["second"].path / name),  # type: ignore[attr-defined]
            np.load(whole.path / name),  # type: ignore[attr-defined]
        )
    assert [e.status for e in list_indexes(tmp_path)] == ["ok"]


def test_cached_index_is_reused_and_bad_caches_rebuilt(folder: Path, tmp_path: Path) -> None:
    sub = _subject(folder)
    first = _build(sub, tmp_path)
    assert find_index(sub, cache_dir=tmp_path).path == first.path
    calls: list[int] = []
    assert _build(sub, tmp_path, on_shard=lambda d, t: calls.append(d)).path == first.path
    assert calls == []  # a cache hit runs no pass

    # Another version's format: one line, rebuilt.
    manifest = json.loads((first.path / "manifest.json").read_text())
    (first.path / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    with pytest.raises(DamagedIndex, match="index format 0"):
        open_index(first.path)
    with pytest.warns(IndexNote, match="index format 0.*rebuilding"):
        again = _build(sub, tmp_path)
    assert again.manifest["format"] == 1

    # A truncated array: one line, rebuilt.
    feats = again.path / "features.npy"
    feats.write_bytes(feats.read_bytes()[:1000])
    with pytest.raises(DamagedIndex, match=r"features\.npy is truncated"):
        open_index(again.path)
    with pytest.warns(IndexNote, match=r"features\.npy is truncated.*rebuilding"):
        fixed = _build(sub, tmp_path)
    np.testing.assert_array_equal(fixed.features(), np.load(first.path / "features.npy"))

    # Other weights: another key, and one line saying why the cached one is not used.
    other = _subject(folder, seed=1)
    assert find_index(other, cache_dir=tmp_path) is None
    with pytest.warns(IndexNote, match="built with other weights"):
        assert _build(other, tmp_path).key != first.key
    assert len(list_indexes(tmp_path)) == 2


def test_unreadable_file_in_the_middle_is_skipped_and_recorded(
    folder: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    (images / "cat" / "0005.jpg").write_bytes(b"not a jpeg at all")  # the 24th of 60 files
    sub = _subject(images)
    with pytest.warns(IndexNote, match=r"skipped 1 unreadable image.*0005\.jpg"):
        idx = _build(sub, tmp_path / "cache")
    assert idx.n == 59 and len(idx.files) == 59
    assert [Path(s["file"]).name for s in idx.skipped] == ["0005.jpg"]
    assert str(images / "cat" / "0005.jpg") not in idx.files
    for layer in idx.layers:
        assert idx.units(layer).images.max() < 59  # indices renumbered past the skipped file


def test_folder_that_vanishes_or_changes_gives_one_line(folder: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    sub = _subject(images)

    def touch(done: int, total: int) -> None:
        if done == 1:
            (images / "dog" / "0001.jpg").write_bytes((images / "dog" / "0002.jpg").read_bytes())

    with pytest.raises(ConvlensError, match="changed while it was being indexed"):
        _build(sub, tmp_path / "cache", on_shard=touch)
    assert list_indexes(tmp_path / "cache")[0].status == "damaged"  # no manifest: never read
    shutil.rmtree(images)
    with pytest.raises(ConvlensError, match="no image file or folder"):
        build_index(sub, images, cache_dir=tmp_path / "cache", progress=False)


def test_full_disk_gives_one_line(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from convlens.index import build as build_module

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(build_module.np, "save", full)
    with pytest.raises(ConvlensError, match="no space left on the disk of the index cache"):
        _build(_subject(folder), tmp_path)


class _Features:
    """What `nearest` reads from an index: its features (and a dict for derived values)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.derived = x, {}  # type: dict[str, object]

    def features(self) -> np.ndarray:
        return self.x


def test_neighbours_ties_and_close_calls_against_brute_force() -> None:
    from convlens.index.search import nearest

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 64)).astype(np.float16)
    x[100:110] = x[7]  # exact duplicates of image 7: ties broken by the lower index
    x[200] = x[7] * np.float16(2)  # same direction: cosine distance 0, Euclidean not
    x[300] = x[7] + np.float16(0.001)  # a near tie, that float32 rounding must not reorder
    feats = _Features(x)
    x64 = x.astype(np.float64)
    for metric in ("cosine", "euclidean"):
        got_i, got_d = nearest(feats, 7, 15, metric)  # type: ignore[arg-type]
        if metric == "cosine":
            xn = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
            d = 1.0 - xn @ xn[7]
        else:
            d = np.linalg.norm(x64 - x64[7], axis=1)
        d[7] = np.inf
        want = np.lexsort((np.arange(len(d)), d))[:15]
        np.testing.assert_array_equal(got_i, want)
        np.testing.assert_allclose(got_d, d[want], atol=1e-12)


def test_a_data_set_in_memory_and_a_flat_folder(folder: Path, tmp_path: Path) -> None:
    from convlens.data.dataset import Dataset

    sub = _subject(folder)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    ds = Dataset("noise", "test", pixels, torch.arange(20) % 10, CIFAR_CLASSES, PRE.mean, PRE.std)
    idx = _build(sub, tmp_path, source=ds)
    assert idx.files is None and idx.labels_are_outputs and idx.n == 20
    assert torch.equal(idx.image(3), pixels[3])  # the pixels are kept in the index
    layer = idx.layers[-1]
    ref = top_patches(sub.model, layer, ds, 64, K, batch_size=BATCH)
    np.testing.assert_array_equal(idx.units(layer).images, ref.indices.numpy())
    np.testing.assert_array_equal(idx.units(layer).values, ref.values.numpy())

    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(folder.rglob("*.jpg"))[:10]:
        shutil.copy(p, flat / f"{p.parent.name}-{p.name}")
    unlabelled = _build(sub, tmp_path, source=flat)
    assert unlabelled.classes is None and unlabelled.loss is None and unlabelled.correct is None
    np.testing.assert_array_equal(unlabelled.labels, np.full(10, -1))
