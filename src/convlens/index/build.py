"""The index pass: every image through the model once, streamed, sharded, resumable.

One forward pass per batch (the model's own ``forward``, under ``torch.inference_mode()``) records,
through forward hooks, for every image:

- the five most probable outputs, probabilities from ``log_softmax`` of the logits in float64 (top-1
  is the arg-max of the logits; equal logits: the lower class first); the loss and whether top-1 is
  right, where the labels are the model's outputs;
- the penultimate features: the input of the classifier (:func:`convlens.models.classifier`), the
  very tensor :func:`convlens.models.forward_features` returns (checked once, on a random image; a model
  whose ``forward_features`` is something else gets a second, truncated forward for them), kept as
  float16;
- for each chosen layer, each channel's maximum over the map and where it is, merged into the
  channel's running top-k (:mod:`convlens.index.topk`).

Memory is one batch of activations plus k images per channel, whatever the number of images.

Shards: the images are cut into shards of a fixed number of images (a multiple of the batch size, so
every batch is the same whatever the number of processes). Each finished shard is written to
``building/shard-NNNNNN/`` at once (a temporary folder, then renamed), so a pass stopped by Ctrl-C or a
crash resumes from the last finished shard. Under ``torchrun --nproc-per-node N`` rank r computes the
shards s with ``s % N == r``; when all are done rank 0 merges them (top-k exactly: highest value first,
ties to the lower image index), writes the index and removes the shards. The ranks share the cache
folder (one machine, or a shared file system).

Unreadable files: an image that cannot be decoded in the middle of a folder (truncated, not an image,
vanished) is skipped: it is left out of the index, listed in the manifest under ``skipped`` and named
in one notice. A folder that changes while it is indexed (files added, removed or modified) is
refused at the end with one line, and nothing of that pass is kept.
"""

from __future__ import annotations

import errno
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens import models
from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError, Interrupted
from convlens.index.batch import BatchPass, ShardResult
from convlens.index.shards import (
    Plan,
    finalize,
    prepare_building,
    resumed_plan,
    shard_dir,
    write_shard,
)
from convlens.index.source import Source, files_digest, index_key, resolve_source
from convlens.index.store import (
    DamagedIndex,
    Index,
    building_lock,
    cache_root,
    note,
    open_index,
    read_manifest,
)
from convlens.inspect.activations import stage_ends
from convlens.models.hooks import capture, evaluating, get_layer
from convlens.progress import progress_bar
from convlens.subjects.core import Subject
from convlens.subjects.images import ImageList, StreamingImages

SHARD_IMAGES = 1024
"""Images per shard (rounded up to a multiple of the batch size): what a Ctrl-C can cost."""


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


def default_layers(model: nn.Module, input_shape: Sequence[int], max_layers: int = 12) -> list[str]:
    """The conv stages a report shows: the last convolution of each map size (at most
    `max_layers`, the deepest), plus :func:`convlens.models.default_layer`, in forward order."""
    names = [n for n in models.conv_layers(model) if "aux" not in n.lower()]
    if not names:
        raise ConvlensError(f"{type(model).__name__} has no Conv2d layer; pass layers by name")
    probe = torch.zeros(1, *tuple(input_shape), device=_device(model))
    try:
        with evaluating(model), torch.inference_mode(), capture(model, names) as acts:
            model(probe)
    except (RuntimeError, ValueError) as e:  # the model's own failure, in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConvlensError(
            f"{type(model).__name__} cannot run on {tuple(input_shape)} images ({first})"
        ) from None
    shapes = {n: tuple(a.shape[1:]) for n, a in acts.items() if a.dim() == 4}  # forward order
    keep = stage_ends(shapes, max_layers)
    default = models.default_layer(model, tuple(input_shape))
    return [n for n in shapes if n in keep or n == default]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------------------------------


def _collate(
    items: list[tuple[torch.Tensor, int, str]],
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    return (
        torch.stack([t for t, _, _ in items]),  # (B, C, H, W) uint8
        np.array([i for _, i, _ in items], dtype=np.int64),
        [p for _, _, p in items],
    )


def _batches(
    src: Source, sub: Subject, ranges: list[tuple[int, int]], num_workers: int, pin: bool
) -> Iterator[tuple[torch.Tensor, np.ndarray, list[str]]]:
    """The batches `ranges` in order: sliced from memory, or decoded in DataLoader workers."""
    if src.images is not None:
        for a, b in ranges:
            yield src.images[a:b], np.arange(a, b), [""] * (b - a)
        return
    assert src.files is not None
    loader = torch.utils.data.DataLoader(
        StreamingImages(src.files, sub.preprocess),
        batch_sampler=[list(range(a, b)) for a, b in ranges],
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin,
    )
    yield from loader


def _disk_error(e: OSError, root: Path) -> ConvlensError:
    if e.errno == errno.ENOSPC:
        return ConvlensError(
            f"no space left on the disk of the index cache {root}; free some space or pass "
            "--cache-dir (the shards finished so far are kept: the pass resumes from them)"
        )
    return ConvlensError(f"cannot write the index cache at {root}: {e.strerror or e}")


def _covers(idx: Index, layers: list[str], k: int) -> bool:
    return set(layers) <= set(idx.layers) and k <= idx.k


def _other_weightsnote(root: Path, key: str, parts: dict[str, str]) -> None:
    """One line when the cache holds an index of the same images made with other weights."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.name == key or not (folder / "manifest.json").is_file():
            continue
        try:
            digests = read_manifest(folder).get("digests", {})
        except ConvlensError:
            continue
        if digests.get("images") == parts["images"] and digests.get("weights") != parts["weights"]:
            note(
                f"the cached index {folder.name} of these images was built with other weights; "
                "building one for these weights"
            )
            return


def build_index(
    subject: Subject,
    source: Dataset | ImageList | str | Path | None = None,
    *,
    layers: Sequence[str] | None = None,
    k: int = 16,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    shard_size: int = SHARD_IMAGES,
    on_shard: Callable[[int, int], None] | None = None,
) -> Index:
    """Index `subject`'s images: one streaming pass, cached on disk, resumable, shardable.

    A cached index of the same weights, images and preprocessing that has the layers and k asked
    for is returned at once; an unfinished pass resumes from its last finished shard. Under
    ``torchrun`` every rank calls this: the shards are split between the ranks and rank 0 writes
    the index (see the module doc).

    Args:
        subject: the model and its preprocessing.
        source: the images: None for the subject's own (its streamed folder, its images, or its
            run's test split), a folder (streamed from disk), an :class:`ImageList`, or a
            :class:`~convlens.data.Dataset` in memory.
        layers: layers whose channels get top-k images; default :func:`default_layers`.
        k: images kept per channel.
        cache_dir: the cache folder; default ``$CONVLENS_CACHE/index`` or ``~/.cache/convlens/index``.
        batch_size: images per forward pass; default 256 up to 64x64 pixels (or on a GPU), else 64.
        num_workers: DataLoader processes decoding a folder; default up to 4 on the CPU (one
            core left to the model), up to 8 with a GPU.
        progress: show a progress bar with the time remaining.
        shard_size: images per shard (rounded up to a multiple of `batch_size`).
        on_shard: called with ``(shards finished, shards in all)`` after each shard is written
            (a job can report progress, or raise to stop: the pass then resumes later).

    Returns:
        The :class:`Index`.

    Raises:
        ConvlensError: no images, a layer that does not exist, a full disk, a folder that changed
            while it was read, every image unreadable.
    """
    if k < 1:
        raise ConvlensError(f"k must be at least 1, got {k}")
    rt = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from convlens.train.runtime import Runtime

        rt = Runtime.setup(str(_device(subject.model).type), threads=torch.get_num_threads())
        subject.model.to(rt.device)
    try:
        return _build(
            subject, source, layers, k, cache_dir, batch_size, num_workers, progress,
            shard_size, on_shard, rt,
        )  # fmt: skip
    finally:
        if rt is not None:
            rt.close()


def _build(
    sub: Subject,
    source: Dataset | ImageList | str | Path | None,
    layers: Sequence[str] | None,
    k: int,
    cache_dir: str | Path | None,
    batch_size: int | None,
    num_workers: int | None,
    progress: bool,
    shard_size: int,
    on_shard: Callable[[int, int], None] | None,
    rt: Any,
) -> Index:
    rank, world = (rt.rank, rt.world_size) if rt is not None else (0, 1)
    started = time.perf_counter()
    device = _device(sub.model)
    src = resolve_source(sub, source)
    files_sig = files_digest(src.files) if src.images is None and src.files is not None else None
    key, parts = index_key(sub, src, files_sig)
    if rt is not None and rt.broadcast_object(key) != key:
        raise ConvlensError(f"{src.name} changed while the ranks were reading it; run again")
    root = cache_root(cache_dir)
    folder = root / key
    if not layers:  # a cached index of the default layers answers without probing the model
        try:
            idx = open_index(folder)
            if idx.manifest.get("default_layers") and k <= idx.k:
                return idx
        except ConvlensError:
            pass
    names = list(dict.fromkeys(layers)) if layers else default_layers(sub.model, sub.image_shape)
    for name in names:
        get_layer(sub.model, name)
    # One process builds a folder at a time; a second waits, then finds the index made (the
    # check below runs again under the lock). torchrun's ranks coordinate with barriers.
    with building_lock(root, key, enabled=rt is None):
        try:
            idx = open_index(folder)
            if _covers(idx, names, k):
                return idx
            if rank == 0:
                note(
                    f"the cached index {key} has layers {', '.join(idx.layers)} and k={idx.k}; "
                    f"rebuilding it for layers {', '.join(names)} and k={k}"
                )
        except DamagedIndex as e:
            if rank == 0 and (folder / "manifest.json").is_file():
                note(f"{e}; rebuilding it")
        except ConvlensError:
            if rank == 0:
                _other_weightsnote(root, key, parts)
        h, w = sub.preprocess.size
        bs = batch_size or (256 if h * w <= 64 * 64 or device.type == "cuda" else 64)
        if bs < 1:
            raise ConvlensError(f"batch size must be at least 1, got {bs}")
        plan = Plan(
            key, len(src), names, k, bs, math.ceil(max(shard_size, 1) / bs) * bs, not layers
        )
        building = folder / "building"
        try:
            if rank == 0:
                folder.mkdir(parents=True, exist_ok=True)
                plan = resumed_plan(building, plan) if building.is_dir() else plan
                prepare_building(building, plan)
            if rt is not None:
                rt.barrier()
                plan = resumed_plan(building, plan)
            done = {s for s in range(plan.shards) if shard_dir(building, s).is_dir()}
            mine = [s for s in range(plan.shards) if s % world == rank and s not in done]
            if done and rank == 0:
                note(f"resuming the index pass: {len(done)} of {plan.shards} shards already done")
            _run(sub, src, plan, building, mine, device, num_workers, progress and rank == 0,
                 on_shard, len(done))  # fmt: skip
            if rt is not None:
                rt.barrier()
            if rank == 0:
                finalize(folder, building, plan, sub, src, parts, files_sig,
                          time.perf_counter() - started)  # fmt: skip
            if rt is not None:
                rt.barrier()
        except OSError as e:
            raise _disk_error(e, root) from None
        return open_index(folder)


def _run(
    sub: Subject, src: Source, plan: Plan, building: Path, shards: list[int],
    device: torch.device, num_workers: int | None, progress: bool,
    on_shard: Callable[[int, int], None] | None, already: int,
) -> None:  # fmt: skip
    """Compute and write `shards`, in order."""
    if not shards:
        return
    ranges = [r for s in shards for r in plan.batches(s)]
    owner = [s for s in shards for _ in plan.batches(s)]  # the shard of each batch
    if num_workers is None:
        num_workers = (
            0
            if src.images is not None or len(ranges) < 2
            # on the CPU the model needs the cores too; a GPU's pass is fed by the decoders
            else min(8 if device.type == "cuda" else 4, max(1, (os.cpu_count() or 2) - 1))
        )
    total = sum(b - a for a, b in ranges)
    worker = BatchPass(sub, src, plan, device)
    finished = already
    res = ShardResult()
    try:
        with (
            evaluating(sub.model),
            torch.inference_mode(),
            worker.recorder.hooks(),
            progress_bar(total, f"index {plan.n:,} images", enabled=progress) as advance,
        ):
            worker.check_features()
            stream = _batches(src, sub, ranges, num_workers, device.type == "cuda")
            for j, (images, index, problems) in enumerate(stream):
                worker.run_batch(images, index, problems, res)
                advance(len(index))
                if j + 1 == len(ranges) or owner[j + 1] != owner[j]:
                    write_shard(building, owner[j], res, plan)
                    res = ShardResult()
                    finished += 1
                    if on_shard is not None:
                        on_shard(finished, plan.shards)
    except Interrupted as e:
        raise Interrupted(
            e.signum,
            f"{e.message}: {finished} of {plan.shards} shards of the index are kept; run the same "
            "command again to continue",
        ) from None
