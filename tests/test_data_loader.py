"""BatchLoader: coverage, determinism, resume, sharding, and augmentation against references.

Oracles: torchvision's functional transforms (`pad`, `crop`, `hflip`, `normalize`) applied image by
image to the draw the loader made; NumPy's covariance/eigendecomposition for the PCA lighting basis.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from convlens.data import Augment, BatchLoader, default_augment, load
from convlens.data.loader import draw_augment, mix_seed, seeded_generator
from convlens.data.stats import channel_stats, pca_lighting_basis

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def toy(n: int = 103, c: int = 3, h: int = 8, w: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    labels = torch.arange(n, dtype=torch.int64)  # label = index: lets tests read back the order
    return images, labels


def batches(loader: BatchLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_an_epoch_sees_every_image_once_normalised_like_torchvision():
    images, labels = toy()
    bl = BatchLoader(images, labels, batch_size=16, mean=MEAN3, std=STD3, seed=3)
    out = batches(bl)
    assert len(out) == len(bl) == 7  # ceil(103 / 16)
    assert [len(y) for _, y in out] == [16] * 6 + [7]
    ys = torch.cat([y for _, y in out])
    assert sorted(ys.tolist()) == list(range(103))
    assert ys.tolist() != list(range(103))  # shuffled
    x = torch.cat([x for x, _ in out])
    assert x.dtype == torch.float32 and x.shape == (103, 3, 8, 6)
    ref = TF.normalize(images[ys].float() / 255.0, MEAN3, STD3)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


def test_no_shuffle_keeps_order_and_drop_last_drops():
    images, labels = toy()
    bl = BatchLoader(
        images, labels, batch_size=16, mean=MEAN3, std=STD3, shuffle=False, drop_last=True
    )
    ys = [y for _, y in bl]
    assert len(bl) == len(ys) == 6
    assert torch.cat(ys).tolist() == list(range(96))


def test_same_seed_same_batches_other_seed_or_epoch_other_batches():
    images, labels = toy()
    aug = Augment(crop_padding=2, flip=True, lighting=0.1)
    kw = dict(batch_size=10, mean=MEAN3, std=STD3, augment=aug)
    a = batches(BatchLoader(images, labels, seed=1, **kw))
    b = batches(BatchLoader(images, labels, seed=1, **kw))
    c = batches(BatchLoader(images, labels, seed=2, **kw))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    bl = BatchLoader(images, labels, seed=1, **kw)
    e0 = torch.cat([y for _, y in bl])
    e1 = torch.cat([y for _, y in bl])  # a complete pass advances the epoch by itself
    assert bl.epoch == 2 and not torch.equal(e0, e1)


def test_set_epoch_with_start_batch_reproduces_an_uninterrupted_run():
    images, labels = toy()
    kw = dict(batch_size=8, mean=MEAN3, std=STD3, augment=Augment(2, True, 0.1), seed=7)
    full = BatchLoader(images, labels, **kw)
    epochs = []
    for e in range(3):
        full.set_epoch(e)
        epochs.append(batches(full))
    resumed = BatchLoader(images, labels, **kw)  # a fresh process resuming at epoch 1, batch 5
    resumed.set_epoch(1, start_batch=5)
    rest = batches(resumed)
    assert len(rest) == len(epochs[1]) - 5
    for (xr, yr), (xf, yf) in zip(rest, epochs[1][5:], strict=True):
        assert torch.equal(yr, yf) and torch.equal(xr, xf)
    assert resumed.epoch == 2  # and then it goes on with epoch 2, as the uninterrupted run did
    for (xr, yr), (xf, yf) in zip(batches(resumed), epochs[2], strict=True):
        assert torch.equal(yr, yf) and torch.equal(xr, xf)


@pytest.mark.parametrize(
    ("n", "world", "drop_last"), [(96, 4, False), (103, 4, False), (103, 3, True)]
)
def test_ranks_take_disjoint_equal_shards(n, world, drop_last):
    images, labels = toy(n)
    loaders = [
        BatchLoader(
            images,
            labels,
            batch_size=5,
            mean=MEAN3,
            std=STD3,
            rank=r,
            world_size=world,
            drop_last=drop_last,
        )
        for r in range(world)
    ]
    for bl in loaders:
        bl.set_epoch(4)
    shards = [torch.cat([y for _, y in bl]).tolist() for bl in loaders]
    assert len({len(bl) for bl in loaders}) == 1  # same number of batches on every rank
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for i in s]
    if n % world == 0:
        assert sorted(seen) == list(range(n))  # disjoint and complete
    elif drop_last:
        # disjoint; trimmed to equal shards, then each shard's last partial batch dropped
        assert len(set(seen)) == len(seen) == (n // world) // 5 * 5 * world
    else:
        assert set(seen) == set(range(n))  # complete; padding repeats only the first few
        assert len(seen) - len(set(seen)) == world - n % world
    # the union of the shards is the single-process permutation of the epoch
    single = BatchLoader(images, labels, batch_size=5, mean=MEAN3, std=STD3)
    perm = single.epoch_indices(4).tolist()
    assert set(seen) <= set(perm)


def test_crop_and_flip_match_torchvision_on_the_same_draw():
    images, labels = toy(n=37, h=9, w=7)
    aug = Augment(crop_padding=3, flip=True)
    bl = BatchLoader(images, labels, batch_size=16, mean=MEAN3, std=STD3, augment=aug, seed=11)
    bl.set_epoch(2)
    got = batches(bl)
    for b, (x, y) in enumerate(got):
        draw = draw_augment(aug, len(y), 3, seeded_generator(11, 2, b), (9, 7))  # loader's draw
        assert draw.offsets is not None and draw.flips is not None
        for i, idx in enumerate(y.tolist()):
            img = TF.pad(images[idx], [3, 3, 3, 3], fill=0)  # zero = black in pixel space
            top, left = draw.offsets[i].tolist()
            img = TF.crop(img, top, left, 9, 7)
            if draw.flips[i]:
                img = TF.hflip(img)
            ref = TF.normalize(img.float() / 255.0, MEAN3, STD3)
            torch.testing.assert_close(x[i], ref, rtol=1e-5, atol=1e-5)
    flips = torch.cat(
        [
            draw_augment(aug, 16, 3, seeded_generator(11, 2, b), (32, 32)).flips
            for b in range(len(got))
        ]
    )
    assert 0 < int(flips.sum()) < len(flips)
    offs = draw_augment(aug, 1000, 3, seeded_generator(0, 0, 0), (32, 32)).offsets
    assert (
        offs is not None and int(offs.min()) == 0 and int(offs.max()) == 6
    )  # the full range 0..2p


def test_pca_basis_matches_numpy_and_lighting_shifts_each_image_by_one_colour():
    images, labels = toy(n=50, h=5, w=5)
    images[:, 1] = (images[:, 0] // 2 + images[:, 1] // 2).to(torch.uint8)  # correlated channels
    sqrt_eig, vec = pca_lighting_basis(images)
    pix = images.numpy().transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255
    cov = np.cov(pix)
    ref_val = np.linalg.eigvalsh(cov)[::-1]
    np.testing.assert_allclose(sqrt_eig.numpy() ** 2, ref_val, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        vec.numpy() @ np.diag(sqrt_eig.numpy() ** 2) @ vec.numpy().T, cov, rtol=1e-4, atol=1e-7
    )
    aug = Augment(lighting=0.1)
    kw = dict(batch_size=50, mean=MEAN3, std=STD3, shuffle=False, seed=5)
    (x_lit, _), (x_plain, _) = (
        next(iter(BatchLoader(images, labels, augment=aug, **kw))),
        next(iter(BatchLoader(images, labels, **kw))),
    )
    alphas = draw_augment(aug, 50, 3, seeded_generator(5, 0, 0), (32, 32)).alphas
    assert alphas is not None
    # AlexNet: add V @ (alpha * sqrt(lambda)) to every pixel (here in normalised units: / std)
    delta = (alphas.numpy() * sqrt_eig.numpy()) @ vec.numpy().T / np.array(STD3)  # (B, 3)
    diff = (x_lit - x_plain).numpy()
    np.testing.assert_allclose(
        diff, np.broadcast_to(delta[:, :, None, None], diff.shape), atol=1e-5
    )


def test_cutout_matches_the_reference_mask_and_keeps_the_other_draws():
    images, labels = toy(n=40, h=12, w=10)
    kw = dict(batch_size=40, mean=MEAN3, std=STD3, shuffle=False, seed=3)
    aug = Augment(crop_padding=2, flip=True, cutout=6)
    (x_cut, _), (x_plain, _) = (
        next(iter(BatchLoader(images, labels, augment=aug, **kw))),
        next(iter(BatchLoader(images, labels, augment=Augment(2, True), **kw))),
    )
    draw = draw_augment(aug, 40, 3, seeded_generator(3, 0, 0), (12, 10))
    plain = draw_augment(Augment(2, True), 40, 3, seeded_generator(3, 0, 0), (12, 10))
    assert draw.centres is not None and plain.offsets is not None and draw.offsets is not None
    assert torch.equal(draw.offsets, plain.offsets)  # adding Cutout leaves crops and flips alone
    # DeVries & Taylor's reference: mask[clip(y - L/2) : clip(y + L/2), clip(x - L/2) : clip(x + L/2)] = 0
    mask = np.ones((40, 1, 12, 10), np.float32)
    for i, (r, c) in enumerate(draw.centres.tolist()):
        mask[i, :, max(r - 3, 0) : min(r + 3, 12), max(c - 3, 0) : min(c + 3, 10)] = 0
    np.testing.assert_allclose(x_cut.numpy(), x_plain.numpy() * mask, atol=1e-6)
    assert 0 < (mask == 0).mean() < 6 * 6 / (12 * 10)  # squares cut by the border are smaller


def test_channel_stats_matches_numpy():
    images, _ = toy(n=20)
    mean, std = channel_stats(images)
    ref = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), atol=1e-12)


def test_default_augment():
    assert default_augment("cifar10") == Augment(crop_padding=4, flip=True)
    assert not default_augment("mnist").flip and not default_augment("sample").flip
    assert default_augment("folder:/x").flip


def test_bad_arguments_are_refused():
    images, labels = toy()
    with pytest.raises(ValueError, match="uint8"):
        BatchLoader(images.float(), labels, batch_size=4, mean=MEAN3, std=STD3)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(images, labels, batch_size=4, mean=MEAN3, std=STD3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="channels"):
        BatchLoader(images, labels, batch_size=4, mean=(0.5,), std=(0.5,))


def test_seed_mixing_separates_neighbouring_tuples():
    seeds = {mix_seed(s, e, b) for s in range(3) for e in range(10) for b in range(50)}
    assert len(seeds) == 1500 and all(0 <= s < 2**63 for s in seeds)


def test_sample_batches_end_to_end():
    ds = load("sample", "train")
    bl = BatchLoader(
        ds.images,
        ds.labels,
        batch_size=512,
        mean=ds.mean,
        std=ds.std,
        augment=default_augment("sample"),
    )
    x, y = next(iter(bl))
    assert x.shape == (512, 1, 28, 28) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2  # standardised
