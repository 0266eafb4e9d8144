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
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens import __version__, models
from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError, Interrupted
from convlens.index import topk as tk
from convlens.index.arrays import save_array
from convlens.index.source import Source, files_digest, index_key, resolve_source
from convlens.index.store import (
    INDEX_FORMAT,
    DamagedIndex,
    Index,
    cache_root,
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
TOP_CLASSES = 5


class IndexNote(UserWarning):
    """Something the user should know about an index pass (a rebuild, skipped files)."""


def _note(message: str) -> None:
    warnings.warn(message, IndexNote, stacklevel=3)


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
    with evaluating(model), torch.inference_mode(), capture(model, names) as acts:
        model(probe)
    shapes = {n: tuple(a.shape[1:]) for n, a in acts.items() if a.dim() == 4}  # forward order
    keep = stage_ends(shapes, max_layers)
    default = models.default_layer(model, tuple(input_shape))
    return [n for n in shapes if n in keep or n == default]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# The plan: shards and batches
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one pass computes and how it is cut (``building/state.json``)."""

    key: str
    n: int
    layers: list[str]
    k: int
    batch_size: int
    shard_size: int  # a multiple of batch_size
    default_layers: bool = True  # the layers were chosen by default_layers()
    format: int = INDEX_FORMAT

    @property
    def shards(self) -> int:
        """Number of shards."""
        return math.ceil(self.n / self.shard_size)

    def shard_range(self, s: int) -> tuple[int, int]:
        """``[start, stop)`` image indices of shard `s`."""
        return s * self.shard_size, min(self.n, (s + 1) * self.shard_size)

    def batches(self, s: int) -> list[tuple[int, int]]:
        """``[start, stop)`` of each batch of shard `s`."""
        a, b = self.shard_range(s)
        return [(i, min(i + self.batch_size, b)) for i in range(a, b, self.batch_size)]


def _shard_dir(building: Path, s: int) -> Path:
    return building / f"shard-{s:06d}"


# --------------------------------------------------------------------------------------------------
# One batch
# --------------------------------------------------------------------------------------------------


@dataclass
class _Recorder:
    """Forward hooks: each layer's per-channel maximum and arg-max, and the classifier's input."""

    model: nn.Module
    layers: list[str]
    maxima: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]] = field(
        default_factory=dict
    )
    features: torch.Tensor | None = None

    @contextmanager
    def hooks(self) -> Iterator[_Recorder]:
        handles = []
        try:
            for name in self.layers:
                handles.append(get_layer(self.model, name).register_forward_hook(self._layer(name)))
            handles.append(models.classifier(self.model).register_forward_pre_hook(self._head))
            yield self
        finally:
            for h in handles:
                h.remove()

    def _layer(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, tuple | list) and out:
                out = out[0]
            if not isinstance(out, torch.Tensor):
                return
            a = out[:, :, None, None] if out.dim() == 2 else out  # a flat layer: one position
            if a.dim() != 4:
                raise ConvlensError(f"layer {name!r} outputs {tuple(out.shape)}, not (N, C, H, W)")
            # Reduced here, before an in-place op that follows (VGG's ReLU) can change the output.
            best, arg = (
                a.flatten(2).float().max(dim=2)
            )  # (B, C): maximum over the map, first arg-max
            self.maxima[name] = (best, arg, (int(a.shape[2]), int(a.shape[3])))

        return hook

    def _head(self, _m: nn.Module, args: tuple[object, ...]) -> None:
        if self.features is None and args and isinstance(args[0], torch.Tensor):
            self.features = args[0].flatten(1)  # (B, D): the classifier's input

    def reset(self) -> None:
        self.maxima, self.features = {}, None


@dataclass
class _ShardResult:
    """What a shard keeps: per image rows and each layer's running top-k."""

    top_classes: list[np.ndarray] = field(default_factory=list)
    top_probs: list[np.ndarray] = field(default_factory=list)
    loss: list[np.ndarray] = field(default_factory=list)
    correct: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    units: dict[str, tk.UnitTopK] = field(default_factory=dict)
    map_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


class _Pass:
    """The model, its hooks and the rules of one index pass, applied batch by batch."""

    def __init__(self, sub: Subject, src: Source, plan: Plan, device: torch.device) -> None:
        self.sub, self.src, self.plan, self.device = sub, src, plan, device
        self.recorder = _Recorder(sub.model, plan.layers)
        self.features_by_hook = True  # decided by check_features() before the pass

    def run_batch(
        self, images: torch.Tensor, index: np.ndarray, problems: list[str], out: _ShardResult
    ) -> None:
        """Forward one uint8 batch ``(B, C, H, W)`` of images `index` and add it to `out`."""
        rec = self.recorder
        rec.reset()
        x = self.sub.preprocess.normalize(images.to(self.device, non_blocking=True))
        logits = self.sub.model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ConvlensError(
                f"{type(self.sub.model).__name__} does not return logits (N, classes); it cannot "
                "be indexed"
            )
        maxima, feats = rec.maxima, rec.features
        if not self.features_by_hook:
            feats = models.forward_features(self.sub.model, x).flatten(1)
        assert feats is not None
        ok = np.array([not p for p in problems])
        for i, p in zip(index, problems, strict=True):
            if p:
                out.problems.append((int(i), p))

        # Top-5 from the logits in float64; a stable sort puts the lower class first on ties.
        log_p = F.log_softmax(logits.double(), dim=1)  # (B, K)
        vals, cls = log_p.sort(dim=1, descending=True, stable=True)
        m = min(TOP_CLASSES, log_p.shape[1])
        top_c = np.full((len(index), TOP_CLASSES), -1, dtype=np.int64)
        top_p = np.zeros((len(index), TOP_CLASSES), dtype=np.float32)
        top_c[:, :m] = cls[:, :m].cpu().numpy()
        top_p[:, :m] = vals[:, :m].exp().float().cpu().numpy()
        out.top_classes.append(top_c)
        out.top_probs.append(top_p)
        if self.src.labels_are_outputs:
            y = torch.from_numpy(self.src.labels[index]).to(log_p.device)  # (B,)
            out.loss.append((-log_p.gather(1, y[:, None])[:, 0]).float().cpu().numpy())
            out.correct.append((cls[:, 0] == y).cpu().numpy())
        out.features.append(feats.to(torch.float16).cpu().numpy())

        for name in self.plan.layers:
            if name not in maxima:
                raise ConvlensError(f"layer {name!r} did not run in the forward pass")
            best, arg, (_, w) = maxima[name]
            values = best.T.cpu().numpy()  # (C, B)
            flat = arg.T.cpu().numpy()
            values[:, ~ok] = -np.inf  # an unreadable image never ranks
            images_ = np.broadcast_to(np.where(ok, index, -1), values.shape)
            pos = np.stack([flat // w, flat % w], axis=-1)  # (C, B, 2) as (row, col)
            run = out.units.get(name) or tk.empty(values.shape[0], self.plan.k)
            out.units[name] = tk.merge(run, tk.UnitTopK(values, images_, pos), self.plan.k)
            out.map_sizes[name] = maxima[name][2]

    def check_features(self) -> None:
        """Is the classifier's input what `forward_features` returns? Decided once before the
        pass, on one random image (the batch-1 shapes the layer probe has already run)."""
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(1, *self.sub.image_shape, generator=g).to(self.device)
        self.recorder.reset()
        self.sub.model(probe)
        feats = self.recorder.features
        ref = models.forward_features(self.sub.model, probe).flatten(1)
        same = feats is not None and feats.shape == ref.shape
        if feats is not None and same:
            scale = max(float(ref.abs().max()), 1e-12)
            same = torch.allclose(feats.float(), ref.float(), rtol=1e-4, atol=1e-6 * scale)
        self.features_by_hook = same
        if not same:
            _note(
                f"the classifier's input of {type(self.sub.model).__name__} is not what its "
                "forward_features returns; the features take a second (truncated) forward per "
                "batch"
            )


# --------------------------------------------------------------------------------------------------
# Writing and reading shards
# --------------------------------------------------------------------------------------------------


def _write_shard(building: Path, s: int, res: _ShardResult, plan: Plan) -> None:
    tmp = building / f".shard-{s:06d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        arrays = {
            "top_classes": np.concatenate(res.top_classes),
            "top_probs": np.concatenate(res.top_probs),
            "features": np.concatenate(res.features),
        }
        if res.loss:
            arrays["loss"] = np.concatenate(res.loss)
            arrays["correct"] = np.concatenate(res.correct)
        for i, name in enumerate(plan.layers):
            u = res.units[name]
            arrays[f"{i}.values"], arrays[f"{i}.images"] = u.values, u.images
            arrays[f"{i}.positions"] = u.positions
        for name, a in arrays.items():
            save_array(tmp / f"{name}.npy", a)
        meta = {
            "problems": res.problems,
            "map_sizes": {k: list(v) for k, v in res.map_sizes.items()},
        }
        (tmp / "shard.json").write_text(json.dumps(meta))
        os.replace(tmp, _shard_dir(building, s))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _shard_ok(folder: Path, plan: Plan, s: int) -> bool:
    """A finished shard whose files are all there and whole."""
    a, b = plan.shard_range(s)
    try:
        json.loads((folder / "shard.json").read_text())
        for name in ("top_classes", "top_probs", "features"):
            if np.load(folder / f"{name}.npy", mmap_mode="r").shape[0] != b - a:
                return False
        return all(
            np.load(folder / f"{i}.values.npy", mmap_mode="r").shape[1] == plan.k
            for i in range(len(plan.layers))
        )
    except (OSError, ValueError):
        return False


def _prepare_building(building: Path, plan: Plan) -> None:
    """Keep the finished shards of an earlier pass with the same plan, else start afresh."""
    state = building / "state.json"
    if building.is_dir():
        try:
            old = json.loads(state.read_text())
        except (OSError, ValueError):
            old = None
        same = old is not None and all(
            old.get(f) == v
            for f, v in asdict(plan).items()
            if f not in ("batch_size", "shard_size")
        )
        if not same:
            shutil.rmtree(building)
        else:
            for d in building.iterdir():  # leftovers of a crash mid-write, damaged shards
                if d.name.startswith(".") or (
                    d.name.startswith("shard-") and not _shard_ok(d, plan, int(d.name[6:]))
                ):
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink()
            return
    building.mkdir(parents=True, exist_ok=True)
    (building / "state.json").write_text(json.dumps(asdict(plan)))


def _resumed_plan(building: Path, plan: Plan) -> Plan:
    """An earlier pass's batch and shard sizes win, so that its shards and the new ones agree."""
    try:
        old = json.loads((building / "state.json").read_text())
        return Plan(
            **{**asdict(plan), "batch_size": old["batch_size"], "shard_size": old["shard_size"]}
        )
    except (OSError, ValueError, KeyError, TypeError):
        return plan


# --------------------------------------------------------------------------------------------------
# Merging the shards into the index
# --------------------------------------------------------------------------------------------------


def _finalize(
    folder: Path, building: Path, plan: Plan, sub: Subject, src: Source, parts: dict[str, str],
    files_sig: str | None, seconds: float,
) -> None:  # fmt: skip
    if files_sig is not None and src.files is not None:
        try:
            changed = files_digest(src.files) != files_sig
        except ConvlensError:
            changed = True
        if changed:
            shutil.rmtree(building, ignore_errors=True)
            raise ConvlensError(
                f"{src.name} changed while it was being indexed (files added, removed or "
                "modified); nothing of this pass is kept: run the command again"
            )
    (folder / "manifest.json").unlink(
        missing_ok=True
    )  # an index being replaced is never read half-new
    shards = [_shard_dir(building, s) for s in range(plan.shards)]
    problems: list[tuple[int, str]] = []
    map_sizes: dict[str, list[int]] = {}
    for d in shards:
        meta = json.loads((d / "shard.json").read_text())
        problems += [(int(i), str(r)) for i, r in meta["problems"]]
        map_sizes.update(meta["map_sizes"])
    good = np.ones(plan.n, dtype=bool)
    good[[i for i, _ in problems]] = False
    n = int(good.sum())
    if n == 0:
        raise ConvlensError(f"none of the {plan.n:,} images of {src.name} could be read")
    new_index = np.cumsum(good) - 1  # old image index -> index among the good ones

    def cat(name: str) -> np.ndarray:
        return np.concatenate([np.load(d / f"{name}.npy") for d in shards])[good]

    save_array(folder / "labels.npy", src.labels[good])
    save_array(folder / "top_classes.npy", cat("top_classes"))
    save_array(folder / "top_probs.npy", cat("top_probs"))
    if src.labels_are_outputs:
        save_array(folder / "loss.npy", cat("loss"))
        save_array(folder / "correct.npy", cat("correct"))
    # Features: copied shard by shard into a memory-mapped file (never all in memory).
    first = np.load(shards[0] / "features.npy", mmap_mode="r")
    dim = int(first.shape[1])
    tmp = folder / f".features.npy.{os.getpid()}.tmp"
    try:
        feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
        row = 0
        for s, d in enumerate(shards):
            a, b = plan.shard_range(s)
            block = np.load(d / "features.npy", mmap_mode="r")[good[a:b]]
            feats[row : row + len(block)] = block
            row += len(block)
        feats.flush()
        del feats
        os.replace(tmp, folder / "features.npy")
    finally:
        tmp.unlink(missing_ok=True)
    if src.images is not None:
        save_array(folder / "images.npy", src.images.numpy()[good])
    (folder / "units").mkdir(exist_ok=True)
    layers = []
    for i, name in enumerate(plan.layers):
        u: tk.UnitTopK | None = None
        for d in shards:
            part = tk.UnitTopK(
                np.load(d / f"{i}.values.npy"),
                np.load(d / f"{i}.images.npy"),
                np.load(d / f"{i}.positions.npy"),
            )
            u = part if u is None else tk.merge(u, part, plan.k)
        assert u is not None
        images = np.where(u.images >= 0, new_index[np.maximum(u.images, 0)], -1)
        save_array(folder / f"units/{i}.values.npy", u.values)
        save_array(folder / f"units/{i}.images.npy", images.astype(np.int64))
        save_array(folder / f"units/{i}.positions.npy", u.positions)
        layers.append(
            {"name": name, "channels": int(u.values.shape[0]), "map_size": map_sizes[name]}
        )
    if src.files is not None:
        files = [str(f) for f, g in zip(src.files, good, strict=True) if g]
        tmp_files = folder / ".files.json.tmp"
        tmp_files.write_text(json.dumps(files))
        os.replace(tmp_files, folder / "files.json")
    skipped = [
        {"file": str(src.files[i]) if src.files is not None else str(i), "reason": r}
        for i, r in problems
    ]
    manifest: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "convlens_version": __version__,
        "key": plan.key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "subject": sub.name,
        "model": type(sub.model).__name__,
        "digests": parts,
        "preprocess": asdict(sub.preprocess),
        "preprocess_shape": list(sub.image_shape),
        "source": {"name": src.name, "in_memory": src.images is not None, "images": plan.n},
        "n": n,
        "classes": src.classes,
        "labels_are_outputs": src.labels_are_outputs,
        "model_classes": len(sub.classes),
        "feature_dim": dim,
        "layers": layers,
        "k": plan.k,
        "batch_size": plan.batch_size,
        "shard_size": plan.shard_size,
        "default_layers": plan.default_layers,
        "skipped": skipped,
        "notices": src.notices,
        "seconds": round(seconds, 3),
        "embeddings": [],
    }
    tmp_manifest = folder / ".manifest.json.tmp"
    with open(tmp_manifest, "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_manifest, folder / "manifest.json")
    shutil.rmtree(building, ignore_errors=True)
    if skipped:
        names = ", ".join(f"{Path(s['file']).name} ({s['reason']})" for s in skipped[:3])
        _note(
            f"skipped {len(skipped)} unreadable image(s) of {src.name}: {names}"
            + (", ..." if len(skipped) > 3 else "")
            + "; they are not in the index (its manifest lists them)"
        )


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


def _other_weights_note(root: Path, key: str, parts: dict[str, str]) -> None:
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
            _note(
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
        num_workers: DataLoader processes decoding a folder; default up to 4, one core left to
            the model.
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
    key, parts = index_key(sub, src)
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
    try:
        idx = open_index(folder)
        if _covers(idx, names, k):
            return idx
        if rank == 0:
            _note(
                f"the cached index {key} has layers {', '.join(idx.layers)} and k={idx.k}; "
                f"rebuilding it for layers {', '.join(names)} and k={k}"
            )
    except DamagedIndex as e:
        if rank == 0 and (folder / "manifest.json").is_file():
            _note(f"{e}; rebuilding it")
    except ConvlensError:
        if rank == 0:
            _other_weights_note(root, key, parts)
    h, w = sub.preprocess.size
    bs = batch_size or (256 if h * w <= 64 * 64 or device.type == "cuda" else 64)
    if bs < 1:
        raise ConvlensError(f"batch size must be at least 1, got {bs}")
    plan = Plan(key, len(src), names, k, bs, math.ceil(max(shard_size, 1) / bs) * bs, not layers)
    building = folder / "building"
    try:
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            plan = _resumed_plan(building, plan) if building.is_dir() else plan
            _prepare_building(building, plan)
        if rt is not None:
            rt.barrier()
            plan = _resumed_plan(building, plan)
        done = {s for s in range(plan.shards) if _shard_dir(building, s).is_dir()}
        mine = [s for s in range(plan.shards) if s % world == rank and s not in done]
        if done and rank == 0:
            _note(f"resuming the index pass: {len(done)} of {plan.shards} shards already done")
        _run(sub, src, plan, building, mine, device, num_workers, progress and rank == 0,
             on_shard, len(done))  # fmt: skip
        if rt is not None:
            rt.barrier()
        if rank == 0:
            _finalize(folder, building, plan, sub, src, parts, files_sig,
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
            else min(4, max(1, (os.cpu_count() or 2) - 1))
        )
    total = sum(b - a for a, b in ranges)
    worker = _Pass(sub, src, plan, device)
    finished = already
    res = _ShardResult()
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
                    _write_shard(building, owner[j], res, plan)
                    res = _ShardResult()
                    finished += 1
                    if on_shard is not None:
                        on_shard(finished, plan.shards)
    except Interrupted as e:
        raise Interrupted(
            e.signum,
            f"{e.message}: {finished} of {plan.shards} shards of the index are kept; run the same "
            "command again to continue",
        ) from None
