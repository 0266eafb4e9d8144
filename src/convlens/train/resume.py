"""Continuing a run: is this directory the same run, and what configuration does it continue with?

A run of a registry model is rebuilt from its name. A run of a user's own module cannot be: the
user passes the same module again (``fit(MyNet(), ..., resume=True)``), and it must have the
architecture the checkpoint holds (the same state-dict keys and shapes); a user's own Dataset is
passed again too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError
from convlens.train.checkpoint import load_checkpoint
from convlens.train.config import RESUMABLE_CHANGES, TrainConfig
from convlens.train.run_dir import CHECKPOINT, read_run_json
from convlens.train.setup import USER_MODEL_PREFIX, is_user_model, model_name


def check_resumable(
    out: Path,
    model: str | nn.Module,
    data: str | Dataset,
    model_options: dict[str, Any] | None,
) -> dict[str, Any]:
    """Read run.json and checkpoint.pt of `out`; refuse a directory of another model or data set.

    Returns:
        `{"raw": run.json, "checkpoint": the checkpoint, "config": its TrainConfig}`.
    """
    raw = read_run_json(out)
    have_model, have_data = raw["model"]["name"], raw["data"]["name"]
    name = model_name(model)
    if is_user_model(have_model) and isinstance(model, str):
        raise ConvlensError(
            f"{out} holds a run of your own module ({have_model.removeprefix(USER_MODEL_PREFIX)}); it cannot be rebuilt from "
            f"a name: resume it in Python with fit(model=<the same module>, ..., resume=True)"
        )
    data_is_user = bool(raw["data"].get("user_supplied"))
    if data_is_user and isinstance(data, str):
        raise ConvlensError(
            f"{out} was trained on your own Dataset ({have_data}); resume it in Python with "
            "fit(..., data=<the same Dataset>, test_data=<its test split>, resume=True)"
        )
    given_data = data if isinstance(data, str) else (data.name or "user")
    if isinstance(model, nn.Module) and is_user_model(have_model):
        name = have_model  # a user's module is recognised by its architecture (checked below)
    if (have_model, have_data) != (name, given_data):
        hint = (
            f"resume it with `convlens train {have_model} --data {have_data} --out {out} --resume`"
            if not is_user_model(have_model) and not data_is_user
            else "pass the module and data it was trained with"
        )
        raise ConvlensError(
            f"{out} holds a run of {have_model} on {have_data}, not {name} on {given_data}; "
            f"{hint}, or choose another --out"
        )
    if model_options:
        saved_opts = raw["model"].get("options", {})
        diff = {k: v for k, v in model_options.items() if saved_opts.get(k) != v}
        if diff:
            raise ConvlensError(
                f"{out} holds {have_model} with options {saved_opts}; these differ: {diff}"
            )
    ckpt = load_checkpoint(out / CHECKPOINT)
    if ckpt.get("model_name") != name or ckpt.get("data_name") != given_data:
        raise ConvlensError(
            f"{out / CHECKPOINT} belongs to {ckpt.get('model_name')} on {ckpt.get('data_name')}, "
            f"but run.json names {have_model} on {have_data}; the directory is inconsistent"
        )
    if isinstance(model, nn.Module):
        check_same_architecture(model, ckpt["model"], out)
    return {"raw": raw, "checkpoint": ckpt, "config": TrainConfig.from_dict(ckpt["config"])}


def check_same_architecture(model: nn.Module, state: dict[str, torch.Tensor], out: Path) -> None:
    """Refuse a module whose state-dict keys or shapes differ from the checkpoint's."""
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    if mine == saved:
        return
    missing = sorted(saved.keys() - mine.keys())
    extra = sorted(mine.keys() - saved.keys())
    shapes = [
        f"{k} {mine[k]} (saved {saved[k]})"
        for k in sorted(mine.keys() & saved.keys())
        if mine[k] != saved[k]
    ]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:5])}")
    if extra:
        parts.append(f"unexpected {', '.join(extra[:5])}")
    if shapes:
        parts.append(f"other shapes: {', '.join(shapes[:5])}")
    raise ConvlensError(
        f"the module passed to resume {out} is not the architecture it was trained with "
        f"({'; '.join(parts)}); pass the same module class with the same options"
    )


def resume_config(saved: TrainConfig, given: TrainConfig | None) -> TrainConfig:
    """The saved configuration, with the given one's harmless changes (device, ...) applied."""
    if given is None:
        return saved
    a, b = saved.to_dict(), given.to_dict()
    bad = {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES}
    if bad:
        listed = ", ".join(f"{k} {new!r} (saved {old!r})" for k, (old, new) in bad.items())
        raise ConvlensError(
            "--resume continues a run exactly as it was configured, but these options differ: "
            f"{listed}; drop them, or start a new run in another --out"
        )
    return saved.replace(**{k: b[k] for k in RESUMABLE_CHANGES})
