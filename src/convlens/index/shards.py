"""Shards: the unit of resuming and of splitting a pass between processes, and their merge.

The images are cut into shards of a fixed number of images (a multiple of the batch size, so every
batch is the same whatever the number of processes). A finished shard is written to
``building/shard-NNNNNN/`` at once (a temporary folder, then renamed); ``building/state.json`` holds the
:class:`Plan`. :func:`finalize` merges the shards into the index (top-k exactly), writes the manifest
last and removes the shards.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convlens import __version__
from convlens.errors import ConvlensError
from convlens.index import topk as tk
from convlens.index.arrays import save_array
from convlens.index.batch import ShardResult
from convlens.index.source import Source, files_digest
from convlens.index.store import (
    INDEX_FORMAT,
    note,
)
from convlens.subjects.core import Subject

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


def shard_dir(building: Path, s: int) -> Path:
    return building / f"shard-{s:06d}"


# --------------------------------------------------------------------------------------------------
# Writing and reading shards
# --------------------------------------------------------------------------------------------------


def write_shard(building: Path, s: int, res: ShardResult, plan: Plan) -> None:
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
        os.replace(tmp, shard_dir(building, s))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shard_ok(folder: Path, plan: Plan, s: int) -> bool:
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


def prepare_building(building: Path, plan: Plan) -> None:
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
                    d.name.startswith("shard-") and not shard_ok(d, plan, int(d.name[6:]))
                ):
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink()
            return
    building.mkdir(parents=True, exist_ok=True)
    (building / "state.json").write_text(json.dumps(asdict(plan)))


def resumed_plan(building: Path, plan: Plan) -> Plan:
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


def finalize(
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
    shards = [shard_dir(building, s) for s in range(plan.shards)]
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
        note(
            f"skipped {len(skipped)} unreadable image(s) of {src.name}: {names}"
            + (", ..." if len(skipped) > 3 else "")
            + "; they are not in the index (its manifest lists them)"
        )
