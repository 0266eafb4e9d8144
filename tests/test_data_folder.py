"""`folder:PATH`, streaming, and CIFAR-10 in its three forms (python batches, tree, tar.gz).

Images are generated in tmp_path with Pillow. Oracles: Pillow's own conversions (`convert("RGB")`
for CMYK and palette images), the alpha-compositing arithmetic, torchvision's `datasets.CIFAR10`
reading the same python batches, and PNG round trips (lossless) for decoded pixels.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens import data
from convlens.data import BatchLoader, DataNotice, folder
from convlens.data import cifar as cifar_mod
from convlens.data.images import scan_tar
from convlens.errors import ConvlensError


def rng_image(seed: int, size=(10, 12), mode="RGB") -> Image.Image:
    """A random image of (H, W) `size` in `mode`."""
    r = np.random.default_rng(seed)
    h, w = size
    if mode == "L":
        return Image.fromarray(r.integers(0, 256, (h, w), dtype=np.uint8), "L")
    rgb = Image.fromarray(r.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "RGB":
        return rgb
    if mode == "RGBA":
        a = Image.fromarray(r.integers(0, 256, (h, w), dtype=np.uint8), "L")
        rgba = rgb.copy()
        rgba.putalpha(a)
        return rgba
    return rgb.convert(mode)  # CMYK, P


def save(img: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


@pytest.fixture
def mixed(tmp_path) -> Path:
    """train/ and test/ with greyscale, RGBA, CMYK and palette images, plus a non-image file."""
    root = tmp_path / "mixed"
    save(rng_image(1, mode="L"), root / "train" / "cat" / "a.png")
    save(rng_image(2, mode="RGBA"), root / "train" / "cat" / "b.png")
    save(rng_image(3, mode="CMYK"), root / "train" / "dog" / "c.jpg", "JPEG")
    save(rng_image(4, mode="P"), root / "train" / "dog" / "d.png")
    save(rng_image(5, mode="RGB"), root / "test" / "cat" / "e.png")
    save(rng_image(6, mode="L"), root / "test" / "dog" / "f.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def test_mixed_modes_become_rgb_and_non_images_are_skipped_with_a_warning(mixed):
    with pytest.warns(DataNotice, match=r"skipped 1 non-image file.*notes\.txt"):
        tr = data.load(f"folder:{mixed}", "train")
    assert tr.classes == ["cat", "dog"]
    assert tr.images.shape == (4, 3, 10, 12) and tr.images.dtype == torch.uint8
    assert tr.labels.tolist() == [0, 0, 1, 1]
    assert tr.name == f"folder:{mixed.resolve()}"
    x = tr.images.numpy().transpose(0, 2, 3, 1)  # (N, H, W, 3)
    grey = np.asarray(rng_image(1, mode="L"))
    np.testing.assert_array_equal(x[0], np.stack([grey] * 3, axis=-1))
    # RGBA composited on black: round(rgb * alpha / 255)
    rgba = np.asarray(rng_image(2, mode="RGBA")).astype(np.float64)
    ref = rgba[..., :3] * rgba[..., 3:] / 255.0
    assert np.abs(x[1].astype(np.float64) - ref).max() <= 1.0
    # CMYK (a JPEG, so compare against Pillow decoding the same file) and palette: Pillow's conversion
    np.testing.assert_array_equal(
        x[2], np.asarray(Image.open(mixed / "train/dog/c.jpg").convert("RGB"))
    )
    np.testing.assert_array_equal(x[3], np.asarray(rng_image(4, mode="P").convert("RGB")))
    # mean/std of the train split; the test split carries them
    with pytest.warns(DataNotice):
        te = data.load(f"folder:{mixed}", "test")
    assert te.labels.tolist() == [0, 1] and te.mean == tr.mean and te.std == tr.std
    ref_pix = tr.images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(tr.mean, ref_pix.mean(axis=(0, 2, 3)), atol=1e-12)


def test_all_greyscale_gives_one_channel_and_a_flat_tree_is_split_every_fifth(tmp_path):
    root = tmp_path / "digits"
    for c in ("a", "b"):
        for i in range(10):
            save(
                rng_image(i + (100 if c == "b" else 0), size=(6, 6), mode="L"),
                root / c / f"{i:02d}.png",
            )
    with pytest.warns(DataNotice, match="every 5th image"):
        tr = data.load(f"folder:{root}", "train")
        te = data.load(f"folder:{root}", "test")
    assert tr.image_shape == (1, 6, 6) and tr.classes == ["a", "b"]
    assert len(tr) == 16 and len(te) == 4 and te.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(te.images[0, 0].numpy(), np.asarray(rng_image(4, (6, 6), "L")))
    # a train/ folder without test/ is the same tree, not one class called "train"
    (tmp_path / "only").mkdir()
    root.rename(tmp_path / "only" / "train")
    with pytest.warns(DataNotice, match="every 5th image"):
        again = data.load(f"folder:{tmp_path / 'only'}", "test")
    assert again.classes == ["a", "b"] and torch.equal(again.images, te.images)


def test_common_size_is_inferred_or_given(tmp_path):
    root = tmp_path / "sizes"
    for i in range(3):
        save(rng_image(i, size=(8, 8)), root / "train" / "x" / f"{i}.png")
    save(rng_image(9, size=(16, 4)), root / "train" / "x" / "odd.png")
    save(rng_image(10, size=(8, 8)), root / "test" / "x" / "t.png")
    with pytest.warns(DataNotice, match=r"1 of 5 images resized to 8x8 \(the most common size\)"):
        ds = data.load(f"folder:{root}", "train")
    ref = np.asarray(rng_image(9, size=(16, 4)).resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(ds.images[3].numpy().transpose(1, 2, 0), ref)
    with pytest.warns(DataNotice, match="5 of 5 images resized to 4x6"):
        ds = data.load(f"folder:{root}", "test", size=(4, 6))
    assert ds.image_shape == (3, 4, 6)


def test_large_jpegs_shrink_to_the_size_asked_for(tmp_path):
    # a smooth picture (random 8x8 blown up), like a photo at this scale; noise would alias
    big = np.asarray(rng_image(0, size=(8, 8)).resize((256, 256), Image.Resampling.BICUBIC))
    for c in ("a", "b"):
        save(Image.fromarray(big), tmp_path / "p" / "train" / c / "x.jpg", "JPEG")
        save(Image.fromarray(big), tmp_path / "p" / "test" / c / "x.jpg", "JPEG")
    with pytest.warns(DataNotice, match="4 of 4 images resized to 32x32"):
        ds = data.load(f"folder:{tmp_path / 'p'}", "train", size=32)
    assert ds.image_shape == (3, 32, 32)
    # reference: Pillow's full-size decode, then the same bilinear resize
    ref = np.asarray(
        Image.open(tmp_path / "p/train/a/x.jpg")
        .convert("RGB")
        .resize((32, 32), Image.Resampling.BILINEAR)
    ).astype(np.float64)
    got = ds.images[0].numpy().transpose(1, 2, 0).astype(np.float64)
    assert np.abs(got - ref).mean() < 3  # the reduced-scale JPEG decode differs only slightly (~1)


@pytest.mark.filterwarnings("ignore::convlens.data.images.DataNotice")
@pytest.mark.parametrize("layout", ["missing", "empty", "no_images", "files_only"])
def test_empty_or_missing_folders_are_clear_errors(tmp_path, layout):
    root = tmp_path / "f"
    if layout != "missing":
        root.mkdir()
    if layout == "no_images":
        (root / "cat").mkdir()
        (root / "cat" / "readme.md").write_text("x")
    if layout == "files_only":
        save(rng_image(0), root / "a.png")
    match = {
        "missing": "no folder at",
        "empty": "holds no class folders",
        "no_images": "holds no images",
        "files_only": "holds no class folders",
    }[layout]
    with pytest.raises(ConvlensError, match=match):
        data.load(f"folder:{root}")


@pytest.mark.filterwarnings("ignore::convlens.data.images.DataNotice")
def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path):
    root = tmp_path / "bad"
    save(rng_image(0), root / "x" / "good.png")
    good = (root / "x" / "good.png").read_bytes()
    (root / "x" / "broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ConvlensError, match=r"broken\.png"):
        data.load(f"folder:{root}")
    (root / "x" / "broken.png").write_bytes(b"this is text")
    with pytest.raises(ConvlensError, match=r"broken\.png is not an image"):
        data.load(f"folder:{root}")


def test_a_folder_too_large_for_memory_points_at_streaming(mixed, monkeypatch):
    monkeypatch.setattr(folder, "MAX_IN_MEMORY_BYTES", 100)
    with pytest.warns(DataNotice), pytest.raises(ConvlensError, match="stream_folder"):
        data.load(f"folder:{mixed}")


@pytest.fixture
def many(tmp_path) -> Path:
    root = tmp_path / "many"
    for c in range(3):
        for i in range(7):
            save(rng_image(10 * c + i, size=(6, 5)), root / "train" / f"c{c}" / f"{i}.png")
            save(rng_image(100 + 10 * c + i, size=(6, 5)), root / "test" / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.filterwarnings("ignore::convlens.data.images.DataNotice")
@pytest.mark.parametrize("workers", [0, 2])
def test_stream_folder_yields_the_batches_of_the_in_memory_loader(many, workers):
    ds = data.load(f"folder:{many}", "train")
    aug = data.Augment(crop_padding=1, flip=True)
    kw = dict(batch_size=4, mean=ds.mean, std=ds.std, augment=aug, seed=3)
    mem = BatchLoader(ds.images, ds.labels, **kw)
    st = data.stream_folder(many, "train", shuffle=True, num_workers=workers, **kw)
    assert len(st) == len(mem) == 6
    for e in (0, 1):
        mem.set_epoch(e, start_batch=2)
        st.set_epoch(e, start_batch=2)
        pairs = list(zip(mem, st, strict=True))
        assert len(pairs) == 4
        for (xm, ym), (xs, ys) in pairs:
            assert torch.equal(ym, ys)
            torch.testing.assert_close(xm, xs)


def test_stream_folder_estimates_mean_and_std_from_training_images(many):
    st = data.stream_folder(many, "test", batch_size=8, num_workers=0)
    ds = data.load(f"folder:{many}", "train")
    np.testing.assert_allclose(st.mean, ds.mean, atol=1e-12)  # 21 images: all of them are used
    assert [len(y) for _, y in st] == [8, 8, 5]


# ------------------------------------------------------------------ CIFAR-10 forms

CLASSES = cifar_mod.CLASSES


def make_tree_tar(path: Path, per_class: dict[str, int], top: str = "cifar10") -> dict[str, list]:
    """A .tar.gz ImageFolder tree of 32x32 PNGs; returns split -> [(label, array)] in file order."""
    ref: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(path, "w:gz") as tf:
        for split, n in per_class.items():
            for label, cls in enumerate(CLASSES):
                for i in range(n):
                    arr = np.asarray(
                        rng_image(1000 * label + i + 500 * (split == "test"), size=(32, 32))
                    )
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, "PNG")
                    info = tarfile.TarInfo(f"{top}/{split}/{cls}/{i:04d}.png")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))
                    ref[split].append((label, arr))
        info = tarfile.TarInfo(f"{top}/README.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    return ref


def test_cifar_tree_inside_a_tar_gz_decodes_exactly_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    tar = tmp_path / "cifar10" / "tiny.tar.gz"
    tar.parent.mkdir()
    ref = make_tree_tar(tar, {"train": 3, "test": 2})
    tree = scan_tar(tar)
    assert tree.classes == CLASSES
    arrays = cifar_mod.decode_tree(tree)
    for split in ("train", "test"):
        images, labels = arrays[split]
        assert images.shape == (len(ref[split]), 3, 32, 32)
        assert labels.tolist() == [lab for lab, _ in ref[split]]
        for got, (_, want) in zip(images, ref[split], strict=True):
            np.testing.assert_array_equal(got.transpose(1, 2, 0), want)
    # through load(): a 30-image "CIFAR-10" is refused, never served as a short data set
    with pytest.raises(ConvlensError, match=r"holds 30 train images; CIFAR-10 has 50,000"):
        data.load("cifar10", root=tmp_path)
    info = data.describe("cifar10", tmp_path)
    assert info.sizes == {"train": 30, "test": 20} and info.found == str(tmp_path / "cifar10")


def test_cifar_load_uses_the_decode_cache(tmp_path, monkeypatch):
    """With the expected counts patched down, load() decodes once, then reads the .npy cache."""
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar_mod, "COUNTS", {"train": 20, "test": 10})
    tar = tmp_path / "cifar10" / "tiny.tar.gz"
    tar.parent.mkdir()
    ref = make_tree_tar(tar, {"train": 2, "test": 1})
    tr = data.load("cifar10", "train", root=tmp_path)
    cached = list((tmp_path / "cache" / "decoded").glob("cifar10-tiny.tar.gz-*/meta.json"))
    assert len(cached) == 1
    calls = []
    real = cifar_mod.decode_tree
    monkeypatch.setattr(cifar_mod, "decode_tree", lambda t: calls.append(t) or real(t))
    te = data.load("cifar10", "test", root=tmp_path)
    assert calls == []  # served from the cache
    assert te.mean == tr.mean and te.classes == CLASSES
    np.testing.assert_array_equal(te.images[0].numpy().transpose(1, 2, 0), ref["test"][0][1])
    os.utime(tar, ns=(0, 0))  # a changed archive (mtime) is decoded again
    again = data.load("cifar10", "test", root=tmp_path)
    assert len(calls) == 1 and torch.equal(again.images, te.images)


def test_truncated_tar_gz_is_an_error_naming_the_file(tmp_path):
    tar = tmp_path / "cifar10" / "t.tar.gz"
    tar.parent.mkdir()
    make_tree_tar(tar, {"train": 2, "test": 1})
    tar.write_bytes(tar.read_bytes()[:-200])
    with pytest.raises(ConvlensError, match=r"t\.tar\.gz is truncated or corrupt"):
        scan_tar(tar)


def write_batches(folder: Path, n: int) -> None:
    """Fake python batches with the official keys (str keys, as Python 3 re-pickles them)."""
    folder.mkdir(parents=True)
    r = np.random.default_rng(0)
    names = [*cifar_mod.TRAIN_BATCHES, cifar_mod.TEST_BATCH]
    for name in names:
        d = {
            "batch_label": name,
            "labels": r.integers(0, 10, n).tolist(),
            "data": r.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": ["x.png"] * n,
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {"label_names": CLASSES, "num_cases_per_batch": n}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_python_batches_match_torchvision(tmp_path, monkeypatch):
    import torchvision

    write_batches(tmp_path / "cifar10" / "cifar-10-batches-py", 20)
    monkeypatch.setattr(cifar_mod, "COUNTS", {"train": 100, "test": 20})
    # our fake files cannot have the official MD5 sums torchvision checks
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    for split in ("train", "test"):
        ours = data.load("cifar10", split, root=tmp_path)
        tv = torchvision.datasets.CIFAR10(str(tmp_path / "cifar10"), train=split == "train")
        np.testing.assert_array_equal(ours.images.numpy().transpose(0, 2, 3, 1), tv.data)
        assert ours.labels.tolist() == list(tv.targets)
        assert tv.classes == ours.classes


def test_python_batches_refuse_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    raw = pickle.dumps({b"data": Evil(), b"labels": []})
    with pytest.raises(ConvlensError, match=r"not a CIFAR-10 python batch .*refusing to load"):
        cifar_mod._read_batch(raw, "evil_batch")
    # bytes keys (how the official Python 2 files read with encoding="bytes") are fine
    ok = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 4]}
    images, labels = cifar_mod._read_batch(pickle.dumps(ok, protocol=2), "b")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 4]


@pytest.mark.slow
def test_real_cifar10_decodes_once_then_loads_from_the_cache(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path))
    tr = data.load("cifar10", "train")
    assert tr.images.shape == (50_000, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert torch.bincount(tr.labels).tolist() == [5_000] * 10
    assert tr.classes == CLASSES
    # the published per-channel means of CIFAR-10 (lossless); this JPEG copy is within 0.002
    np.testing.assert_allclose(tr.mean, (0.4914, 0.4822, 0.4465), atol=2e-3)
    te = data.load("cifar10", "test")  # from the cache written by the first load
    assert torch.bincount(te.labels).tolist() == [1_000] * 10 and te.mean == tr.mean
    assert len(list(tmp_path.glob("decoded/cifar10-cifar10-jpeg.tar.gz-*/train_images.npy"))) == 1
