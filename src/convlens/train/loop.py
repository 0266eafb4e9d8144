"""`fit`: train a model (a registry name or your own module) on a data set into a run directory.

The whole algorithm is in :func:`_train` and reads top to bottom; it calls the model's own
``forward`` (``torch.compile`` of it with ``--compile``, the one speed switch).
:class:`~convlens.train.runtime.Runtime` owns device, precision and distribution,
:mod:`~convlens.train.setup` the model, data and optimiser, :mod:`~convlens.train.resume` the checks
before continuing a run, :mod:`~convlens.train.checkpoint` the resumable state.

Resuming is exact on CPU: the batches of epoch `e` from batch `b` on depend only on `(seed, e, b)`
(see :class:`convlens.data.loader.BatchLoader`), the schedule only on the step, and the checkpoint
holds the weights, optimiser state and RNG states at a batch boundary. So a run killed with
`kill -9` and resumed with `--resume` ends with bit-identical weights.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from convlens import interrupts
from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError, Interrupted
from convlens.fileio import atomic_write_json
from convlens.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from convlens.train.config import RESUMABLE_CHANGES, TrainConfig
from convlens.train.evaluate import test_pass
from convlens.train.lock import run_lock
from convlens.train.progress import Reporter
from convlens.train.recipes import recipe
from convlens.train.resume import check_resumable, resume_config
from convlens.train.run_dir import (
    CHECKPOINT,
    RUN_JSON,
    WEIGHTS,
    Run,
    load_run,
    write_final,
    write_metrics,
)
from convlens.train.runtime import Runtime
from convlens.train.schedules import lr_factor
from convlens.train.setup import (
    build_model,
    check_classes,
    describe_run,
    load_splits,
    model_name,
    optimizer,
)


class TrainingDiverged(ConvlensError):
    """The loss became NaN or infinite; the run is marked failed, its last good checkpoint kept."""


@dataclass
class _Position:
    """Where the loop is, and the running sums of the unfinished epoch (what a checkpoint restores)."""

    epoch: int = 0  # 0-based epoch in progress
    batch: int = 0  # next batch of that epoch
    step: int = 0  # optimiser steps taken since the run began
    loss_sum: float = 0.0  # sum over the epoch's images so far (all ranks)
    correct: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0  # training seconds spent in this epoch before the last checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)


def fit(
    model: str | nn.Module,
    data: str | Dataset,
    *,
    out: str | Path,
    test_data: Dataset | None = None,
    config: TrainConfig | None = None,
    overrides: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    data_root: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> Run:
    """Train `model` on `data` and write the run directory `out`; return it loaded.

    Example (your own module and data)::

        run = fit(MyNet(), train_split, test_data=test_split, out="runs/mine")
        run = fit(MyNet(), train_split, test_data=test_split, out="runs/mine", resume=True)

    Args:
        model: registry name (`lenet5`, `resnet20`, `torchvision:resnet18`, ...), or your own
            ``nn.Module`` taking normalised `(N, C, H, W)` images and returning `(N, classes)`
            scores; it is trained in place and run.json records it as `user:ClassName`. Such a
            run cannot be rebuilt from its directory: resume it, or load it, by passing the same
            module again (`load_run(out, model=MyNet())`).
        data: data set name (`mnist`, `fashion-mnist`, `cifar10`, `sample`, `folder:PATH`), or
            your own :class:`~convlens.data.Dataset` (uint8 images in memory, its mean and std).
        test_data: the held-out split, with a Dataset as `data` (required then).
        out: the run directory to write (created; must not hold another run unless `resume`).
        config: hyper-parameters; None = :func:`convlens.train.recipes.recipe` for this model and data.
            With `resume`, None continues with the saved configuration; a given one must agree
            with it (except device and checkpoint interval).
        overrides: TrainConfig fields to change on top of `config` (or of the recipe / the saved
            configuration); what the CLI's explicit options become.
        model_options: extra keyword arguments for `convlens.models.create` (`num_classes` and
            `in_channels` default to the data set's); only with a registry name.
        data_root: folder holding the data sets (default: CONVLENS_DATA or the data module's default).
        resume: continue the run in `out` from its last complete checkpoint.
        progress: show the progress bar and per-epoch lines (rank 0 only in any case).
        console: where to print (default: stderr).

    Returns:
        The finished run, as :func:`convlens.train.run_dir.load_run` reads it (model in eval mode).

    Raises:
        ConvlensError: bad options, data that does not fit the model, a directory holding another
            run (or being written by another process), a missing or corrupt checkpoint, a resume
            with another module's architecture; :class:`TrainingDiverged` on a NaN/inf loss.
        Interrupted: Ctrl-C (or the CLI's SIGTERM) stopped the run at a batch boundary after writing
            a checkpoint there; the message says how to resume.
    """
    out = Path(out)
    if isinstance(model, nn.Module) and model_options:
        raise ConvlensError("model_options are for a registry name; build your module with them")
    user_model = model if isinstance(model, nn.Module) else None
    data_name = data if isinstance(data, str) else (data.name or "user")
    saved: dict[str, Any] | None = None
    if resume:
        saved = check_resumable(out, model, data, model_options)
        if saved["raw"].get("status") == "complete" and (out / WEIGHTS).is_file():
            old = saved["config"].to_dict()
            changed = sorted(
                k
                for k, v in (overrides or {}).items()
                if k not in RESUMABLE_CHANGES and old.get(k) != v
            )
            if changed:
                raise ConvlensError(
                    f"{out} is a finished run; --resume cannot change "
                    f"{', '.join(k.replace('_', '-') for k in changed)}. "
                    "Train a new run into another --out instead"
                )
            if progress:
                (console or Console(stderr=True)).print(f"{out} is already complete; nothing to do")
            return load_run(out, model=user_model)
        if overrides:
            config = (config or saved["config"]).replace(**overrides)
        cfg = resume_config(saved["config"], config)
        model_options = saved["raw"]["model"].get("options", {})
        data_root = data_root if data_root is not None else saved["raw"]["data"].get("root")
    else:
        # A run that stopped before its first checkpoint has nothing to resume: start it again.
        # (Only rank 0 looks: under torchrun the others might see the run.json it has just written.)
        started = (out / CHECKPOINT).exists() or (out / WEIGHTS).exists()
        if (out / RUN_JSON).exists() and started and _env_rank() == 0:
            raise ConvlensError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        cfg = config if config is not None else recipe(model_name(model), data_name)
        if overrides:
            cfg = cfg.replace(**overrides)

    rt = Runtime.setup(
        cfg.device, amp=cfg.amp, channels_last=cfg.channels_last, threads=cfg.threads
    )
    devices = [rt.device.index or 0] if rt.device.type == "cuda" else []
    try:
        # One writer per run directory; a signal stops the loop at the next batch boundary. The
        # run seeds and draws from torch's global generators (its checkpoints save their states
        # for an exact resume); the caller's generators are as before afterwards.
        lock = run_lock(out) if rt.is_main else contextlib.nullcontext()
        with lock, interrupts.deferred(), torch.random.fork_rng(devices=devices):
            _train(
                rt,
                model,
                data,
                test_data,
                out=out,
                cfg=cfg,
                model_options=dict(model_options or {}),
                data_root=None if data_root is None else str(data_root),
                checkpoint=saved["checkpoint"] if saved else None,
                reporter_args={"enabled": progress and rt.is_main, "console": console},
            )
        rt.barrier()  # the other ranks read what rank 0 wrote
    finally:
        rt.close()
    return load_run(out, model=user_model)


def _env_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _train(
    rt: Runtime,
    model_arg: str | nn.Module,
    data_arg: str | Dataset,
    test_arg: Dataset | None,
    *,
    out: Path,
    cfg: TrainConfig,
    model_options: dict[str, Any],
    data_root: str | None,
    checkpoint: dict[str, Any] | None,
    reporter_args: dict[str, Any],
) -> None:
    from convlens.data.loader import Augment, BatchLoader

    # ---- data: uint8 tensors in memory, on the device --------------------------------------------
    splits = load_splits(data_arg, test_arg, data_root)
    train, test, data_name = splits.train, splits.test, splits.name
    # A resumed run keeps its name (a user's module is recognised by its architecture, not class).
    name = str(checkpoint["model_name"]) if checkpoint is not None else model_name(model_arg)
    # Limits take images from every class (class-ordered folders such as CIFAR-10's JPEG tree).
    train_x, train_y = train.head(cfg.limit_train)
    check_classes(data_name, train.classes, train_y, cfg.limit_train)
    # Each rank measures test accuracy on its own disjoint slice; the sums are added over ranks.
    test_x, test_y = (t[rt.rank :: rt.world_size] for t in test.head(cfg.limit_test))
    if cfg.batch_size % rt.world_size:
        raise ConvlensError(
            f"batch size {cfg.batch_size} does not split evenly over {rt.world_size} processes"
        )
    aug = cfg.augmentations
    train_loader = BatchLoader(
        train_x,
        train_y,
        batch_size=cfg.batch_size // rt.world_size,  # same global batch whatever the world size
        mean=train.mean,
        std=train.std,
        shuffle=True,
        augment=Augment(
            crop_padding=cfg.crop_padding if "crop" in aug else 0,
            flip="flip" in aug,
            lighting=cfg.lighting if "lighting" in aug else 0.0,
            cutout=cfg.cutout if "cutout" in aug else 0,
        ),
        device=rt.device,
        seed=cfg.seed,
        rank=rt.rank,
        world_size=rt.world_size,
    )
    test_loader = BatchLoader(
        test_x,
        test_y,
        batch_size=cfg.eval_batch_size,
        mean=train.mean,
        std=train.std,
        shuffle=False,
        device=rt.device,
    )

    # ---- model and optimiser ------------------------------------------------------------------------
    given_channels = model_options.get("in_channels")
    if given_channels is not None and given_channels != train.image_shape[0]:
        raise ConvlensError(
            f"{data_name} has {train.image_shape[0]}-channel images {train.image_shape}, "
            f"but the model was asked for in_channels={given_channels}"
        )
    options = {
        "num_classes": train.num_classes,
        "in_channels": train.image_shape[0],
        **model_options,
    }
    model = build_model(model_arg, options, train.image_shape, data_name, cfg.seed)
    pos = _Position()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    net = rt.prepare(model, compile=cfg.compile)  # what we call; `model` is what we save
    opt = optimizer(model, cfg)
    if checkpoint is not None:
        opt.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
        part = checkpoint["partial"]
        pos = _Position(
            epoch=int(checkpoint["epoch"]),
            batch=int(checkpoint["batch"]),
            step=int(checkpoint["step"]),
            loss_sum=float(part["loss"]) if rt.is_main else 0.0,
            correct=float(part["correct"]) if rt.is_main else 0.0,
            seen=float(part["seen"]) if rt.is_main else 0.0,
            seconds=float(part["seconds"]),
            history=list(checkpoint["history"]),
        )

    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup * steps_per_epoch)
    global_batch = cfg.batch_size

    run_json = describe_run(name, options, model, splits, data_root, cfg, rt.device, rt.world_size)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RUN_JSON, run_json)
        write_metrics(out, pos.history)

    def state_dict() -> dict[str, Any]:
        """Everything needed to continue from `pos` (rank 0 writes it)."""
        return {
            "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": {"name": cfg.schedule, "step": pos.step},
            "epoch": pos.epoch,
            "batch": pos.batch,
            "step": pos.step,
            "partial": {
                "loss": pos.loss_sum,
                "correct": pos.correct,
                "seen": pos.seen,
                "seconds": pos.seconds,
            },
            "history": pos.history,
            "rng": rng_state(),
            "config": cfg.to_dict(),
            "model_name": name,
            "data_name": data_name,
        }

    def diverged(where: str) -> TrainingDiverged:
        msg = (
            f"the loss became NaN or infinite {where} (peak lr {cfg.lr:g}); training stopped. "
            + (
                f"The last good checkpoint is kept in {out / CHECKPOINT}. "
                if (out / CHECKPOINT).is_file()
                else ""
            )
            + "Try a smaller --lr (or a longer --warmup)."
        )
        if rt.is_main:
            atomic_write_json(out / RUN_JSON, {**run_json, "status": "failed", "error": msg})
        return TrainingDiverged(msg)

    def interrupted(where: str) -> Interrupted:
        """Mark the run interrupted; the exception says where it stopped and how to go on."""
        if rt.is_main:
            atomic_write_json(out / RUN_JSON, {**run_json, "status": "interrupted"})
        return interrupts.stop(
            f"{where}; checkpoint saved. Resume with: "
            + (
                f"convlens train {name} --data {data_name} --out {out} --resume"
                if not isinstance(model_arg, nn.Module) and isinstance(data_arg, str)
                else "fit(<the same module and data>, ..., resume=True)"
            )
        )

    reporter = Reporter(
        epochs=cfg.epochs,
        tensorboard_dir=out / "tensorboard" if rt.is_main else None,
        **reporter_args,
    )
    if checkpoint is not None:
        reporter.print(f"resuming {out} at epoch {pos.epoch + 1}, batch {pos.batch}")
    reporter.print(
        f"training {name} on {data_name}: {len(train_x):,} images, "
        f"{_plural(cfg.epochs, 'epoch')}, "
        f"batch {global_batch}, {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, "
        f"augment {cfg.augment}, {rt.device}"
        + (f" x {rt.world_size} processes" if rt.world_size > 1 else "")
        + (", bf16" if rt.amp else "")
    )
    # Every `check_every` steps the loss is checked for NaN/inf and a mid-epoch checkpoint may be
    # written (under DDP the ranks agree on both by one tiny all-reduce). On CPU that costs nothing;
    # on a GPU it waits for the queued work, so it happens only every 25 steps there.
    check_every = 1 if rt.device.type == "cpu" else 25
    lr = cfg.lr * lr_factor(cfg.schedule, pos.step, total_steps, warmup_steps)
    last_checkpoint = time.monotonic()
    try:
        for epoch in range(pos.epoch, cfg.epochs):
            train_loader.set_epoch(epoch, start_batch=pos.batch)
            net.train()
            reporter.start_epoch(epoch, steps_per_epoch, done=pos.batch)
            # Running sums of this epoch, on the device so that the loop never waits for it.
            sums = torch.tensor(
                [pos.loss_sum, pos.correct, pos.seen], dtype=torch.float64, device=rt.device
            )
            t0 = time.perf_counter()
            seconds_before = pos.seconds
            seen_before = pos.seen
            last_refresh = t0
            for x, y in train_loader:
                lr = cfg.lr * lr_factor(cfg.schedule, pos.step, total_steps, warmup_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                with rt.autocast():
                    logits = net(rt.to_input(x))  # (B, classes)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                pos.step += 1
                pos.batch += 1
                with torch.no_grad():
                    # In place, with the count as a Python number: a host-to-device tensor copy
                    # here would wait for the GPU on every step.
                    sums[0] += loss.detach().double() * y.shape[0]
                    sums[1] += (logits.argmax(1) == y).sum()
                    sums[2] += y.shape[0]

                if pos.step % check_every == 0:
                    # Ranks agree on whether a loss went bad and whether a checkpoint is due.
                    local_loss = sums[0]
                    due = time.monotonic() - last_checkpoint >= cfg.checkpoint_every_s
                    stop = interrupts.requested() is not None
                    flags = torch.stack(
                        [
                            (~torch.isfinite(local_loss)).double(),
                            local_loss.new_tensor(float(due)),
                            local_loss.new_tensor(float(stop)),
                        ]
                    )
                    bad, due, stop = (bool(v > 0) for v in rt.sum(flags).tolist())
                    if bad:
                        raise diverged(f"in epoch {epoch + 1}, step {pos.step}")
                    if (due or stop) and pos.batch < steps_per_epoch:
                        # The checkpoint holds global sums; a resume restores them on rank 0 only.
                        total = rt.sum(sums)
                        _check_finite(total, model, diverged, f"in epoch {epoch + 1}")
                        pos.loss_sum, pos.correct, pos.seen = total.tolist()
                        pos.seconds = seconds_before + time.perf_counter() - t0
                        if rt.is_main:
                            save_checkpoint(out / CHECKPOINT, state_dict())
                        last_checkpoint = time.monotonic()
                        if stop:
                            raise interrupted(
                                f"in epoch {epoch + 1}/{cfg.epochs} after batch "
                                f"{pos.batch}/{steps_per_epoch}"
                            )
                now = time.perf_counter()
                if reporter.enabled and now - last_refresh > 0.25:
                    last_refresh = now
                    loss_sum, correct, seen = sums.tolist()  # this rank's share
                    reporter.update(
                        pos.batch,
                        loss=loss_sum / max(seen, 1),
                        acc=correct / max(seen, 1),
                        images_per_s=(seen - seen_before) * rt.world_size / max(now - t0, 1e-9),
                    )

            # ---- end of epoch: sums over ranks, test accuracy, checkpoint, metrics ---------------
            train_seconds = time.perf_counter() - t0
            total = rt.sum(torch.cat([sums, sums.new_tensor([seen_before])]))
            _check_finite(total, model, diverged, f"in epoch {epoch + 1}")
            loss_sum, correct, seen, seen_before_all = total.tolist()
            test_loss, test_acc = test_pass(rt, model, test_loader)
            epoch_seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch,
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1),
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr,
                "images_per_s": (seen - seen_before_all) / max(train_seconds, 1e-9),
                "seconds": seconds_before + epoch_seconds,
                "elapsed_s": (pos.history[-1]["elapsed_s"] if pos.history else 0.0)
                + seconds_before
                + epoch_seconds,
                "step": pos.step,
            }
            pos.history.append(row)
            pos = _Position(epoch=epoch + 1, batch=0, step=pos.step, history=pos.history)
            if rt.is_main:
                save_checkpoint(out / CHECKPOINT, state_dict())
                write_metrics(out, pos.history)
            last_checkpoint = time.monotonic()
            reporter.end_epoch(row)
            asked = torch.tensor([float(interrupts.requested() is not None)], device=rt.device)
            if epoch + 1 < cfg.epochs and bool(rt.sum(asked)[0] > 0):
                raise interrupted(f"after epoch {epoch + 1}/{cfg.epochs}")
    finally:
        reporter.close()

    if rt.is_main:
        write_final(out, model, run_json, pos.history)
        last = pos.history[-1] if pos.history else {}
        reporter.print(
            f"done: {_plural(len(pos.history), 'epoch')} in {last.get('elapsed_s', 0.0):.0f} s"
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _check_finite(sums: torch.Tensor, model: nn.Module, diverged: Any, where: str) -> None:
    """Raise (through `diverged`) unless the running loss and every parameter are finite."""
    ok = bool(torch.isfinite(sums).all()) and all(
        bool(torch.isfinite(p).all()) for p in model.parameters()
    )
    if not ok:
        raise diverged(where)
