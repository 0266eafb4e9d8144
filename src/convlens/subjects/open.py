"""`open_subject(spec, ...)`: every way of naming a model, as one :class:`Subject`.

`spec` is one of:

- a run directory written by ``convlens train`` (its weights, normalisation, classes, history);
- a registry name (``resnet20``, ``alexnet``): random weights, or ``weights=FILE``;
- ``torchvision:NAME``: random weights; ``weights="DEFAULT"`` or an enum name (``IMAGENET1K_V1``)
  for torchvision's pretrained weights (see :mod:`convlens.subjects.hub`); or ``weights=FILE``;
- ``timm:NAME`` likewise, when timm is installed;
- a TorchScript file (``torch.jit.save``), which holds its own architecture;
- a user's code: ``path/to/file.py:build_fn`` or ``package.module:build_fn``. **This runs the user's
  code**: the file is imported and ``build_fn()`` called with no arguments. It returns an
  ``nn.Module`` (then ``weights=FILE`` may load a state dict into it) or a :class:`Subject` (which
  also says its preprocessing and classes).

A state dict (``weights=FILE``: safetensors or ``torch.save(model.state_dict())``) is loaded strictly;
its classifier size and input channels are read from the file. When a model does not say its input
size (user code returning a module, TorchScript), the size most of the given images share is used,
else 224x224; three-channel input is normalised with ImageNet's statistics, one-channel with 0.5/0.5.

`images` (a file or folder, see :mod:`convlens.subjects.images`) become ``subject.images``. Class
folders named as the model's classes are labels of its outputs (accuracy and a confusion matrix
apply); a model without class names takes the folder names when their number matches its outputs.
`classes` (a file: one name per line, or a JSON list) overrides the names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError, InputError, did_you_mean
from convlens.models.weights import (
    classifier_and_input_sizes,
    is_torchscript,
    load_into,
    load_torchscript,
    read_state_dict,
)
from convlens.subjects import hub, user_code
from convlens.subjects.core import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    Subject,
    from_run,
    num_outputs,
)
from convlens.subjects.images import image_sizes, is_labelled, load_image_set, scan_image_list


def open_subject(
    spec: str,
    *,
    weights: str | None = None,
    images: str | Path | None = None,
    classes: str | Path | None = None,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    download: bool = False,
    in_memory: bool = True,
) -> Subject:
    """The subject named by `spec` (see the module doc), on `device`, with the given images.

    Args:
        spec: a run directory, registry name, ``torchvision:NAME``, ``timm:NAME``, a TorchScript
            file, or ``file.py:build_fn`` / ``package.module:build_fn`` (runs that code).
        weights: a weights file, or for torchvision/timm ``DEFAULT`` or a weights name.
        images: a file or folder of images to look at.
        classes: a file of class names (one per line, or a JSON list).
        device: where the model runs.
        data_dir: where a run's data set lives, when not where it was trained.
        download: fetch pretrained torchvision/timm weights that are not cached (only when asked).
        in_memory: decode `images` now into ``subject.images`` (a folder up to
            :data:`~convlens.subjects.images.MAX_FOLDER_BYTES` decoded); False scans the files into
            ``subject.image_list`` only, for a streaming pass (:mod:`convlens.index`) over any size.

    Raises:
        ConvlensError: anything that cannot be opened, with what to do about it.
    """
    spec = str(spec)
    names = read_class_names(classes) if classes is not None else None
    path = Path(spec).expanduser()
    if path.is_dir():
        sub = _run_subject(path, weights, device, data_dir)
    elif spec.startswith("torchvision:"):
        sub = _torchvision_subject(spec.removeprefix("torchvision:"), weights, download, names)
    elif spec.startswith("timm:"):
        sub = _timm_subject(spec.removeprefix("timm:"), weights, download, names)
    elif user_code.is_spec(spec) and not path.is_file():
        sub = _user_code_subject(spec, weights, images, names)
    elif path.is_file() and path.suffix == ".py":
        raise InputError(user_code.name_the_function(path))
    elif path.is_file():
        sub = _file_subject(path, weights, images, device)
    else:
        sub = _registry_subject(spec, weights, names)
    sub.model.to(device).eval()
    notices: list[str] = list(sub.info.pop("notices", []))
    if sub.info.get("weights") == "random":
        pretrained = spec.startswith(("torchvision:", "timm:"))
        notices.append(
            f"{spec} has random weights (no --weights given; seed {RANDOM_SEED}): what it shows "
            "is untrained; pass "
            + ("--weights DEFAULT for the pretrained ones" if pretrained else "--weights FILE")
        )
    if names is not None:
        k = num_outputs(sub.model, sub.preprocess)
        if len(names) != k:
            raise InputError(f"{classes} names {len(names)} classes but the model has {k} outputs")
        sub.classes = names
    if images is not None and in_memory:
        sub.images = load_image_set(images, sub.preprocess)
        notices += list(sub.images.extra.get("notices", []))  # type: ignore[call-overload]
        notices += _match_labels(sub, names is not None)
    elif images is not None:
        sub.image_list = scan_image_list(images)
        notices += sub.image_list.notices
        notices += _match_list_labels(sub, names is not None)
    sub.info["notices"] = notices
    return sub


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a file: a JSON list, or one name per line (blank lines ignored).

    Raises:
        InputError: no file, or no names in it.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no class names file at {p}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{p} is not a text file (byte {e.start} is not UTF-8); class names are one name per "
            "line, or a JSON list"
        ) from None
    if "\0" in text:
        raise InputError(
            f"{p} is a binary file, not class names (one name per line, or a JSON list)"
        )
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{p} starts like JSON but is not valid JSON ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
            raise InputError(f"{p} must hold a JSON list of names")
        out = [str(n) for n in names]
    else:
        out = [line.strip() for line in text.splitlines() if line.strip()]
    if not out:
        raise InputError(f"{p} holds no class names")
    return out


# --------------------------------------------------------------------------------------------------
# One function per kind of spec
# --------------------------------------------------------------------------------------------------


def _run_subject(
    path: Path, weights: str | None, device: str, data_dir: str | Path | None
) -> Subject:
    from convlens.train.run_dir import load_run

    if weights is not None:
        raise InputError(
            f"{path} is a run directory with its own weights; --weights is for a model name "
            "(pass --model ARCH --weights FILE)"
        )
    root = str(data_dir) if data_dir is not None else None
    return from_run(load_run(path, device=device), data_root=root)


def _is_file_weights(weights: str) -> bool:
    return Path(weights).expanduser().is_file() or Path(weights).suffix in (
        ".pt", ".pth", ".bin", ".safetensors", ".ckpt",
    )  # fmt: skip


def _torchvision_subject(
    arch: str, weights: str | None, download: bool, names: list[str] | None
) -> Subject:
    hub.check_torchvision_arch(arch)
    spec = f"torchvision:{arch}"
    if weights is not None and not _is_file_weights(weights):
        model, pre, classes, info = hub.torchvision_pretrained(arch, weights, download=download)
        return Subject(model, pre, classes, name=spec, info={"model": spec, **info})
    pre, categories = hub.default_preprocess(arch)
    if weights is None:
        from convlens.models import create

        k = len(names) if names else 1000
        model = _random(create, spec, num_classes=k)
        classes = categories if categories and k == len(categories) else _numbered(k)
        return Subject(model, pre, classes, name=spec, info={"model": spec, "weights": "random"})
    model = _load_checkpoint(spec, weights, names)
    k = num_outputs(model, pre)
    classes = categories if categories and k == len(categories) else _numbered(k)
    return Subject(model, pre, classes, name=spec, info={"model": spec, "weights": weights})


def _timm_subject(
    arch: str, weights: str | None, download: bool, names: list[str] | None
) -> Subject:
    spec = f"timm:{arch}"
    if weights is not None and not _is_file_weights(weights):
        model, pre, classes, info = hub.timm_pretrained(arch, weights, download=download)
        k = num_outputs(model, pre)
        return Subject(model, pre, classes or _numbered(k), name=spec, info={"model": spec, **info})
    hub.timm_module()
    if weights is None:
        from convlens.models import create

        model = _random(create, spec, num_classes=len(names) if names else 1000)
        info = {"model": spec, "weights": "random"}
    else:
        model = _load_checkpoint(spec, weights, names)
        info = {"model": spec, "weights": weights}
    pre = hub.timm_preprocess(model)
    return Subject(model, pre, _numbered(num_outputs(model, pre)), name=spec, info=info)


RANDOM_SEED = 0
"""The seed of a model opened without weights: the same random network in every process, so that
`convlens index build` and a later `report` or `serve` of it look at one network (and one index)."""


def _random(create: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """`create(*args, **kwargs)` with its random initialisation seeded by :data:`RANDOM_SEED`; the
    caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return create(*args, **kwargs)


def _registry_subject(name: str, weights: str | None, names: list[str] | None) -> Subject:
    from convlens import models

    if name not in models.names() and ("/" in name or Path(name).suffix):
        raise InputError(f"no run directory or file at {name}")
    if name not in models.names():
        raise InputError(
            f"{name!r} is not a run directory, a file, or a model name.{did_you_mean(name, models.names())} "
            "A model is a registry name (`convlens models`), torchvision:NAME, timm:NAME, a "
            "TorchScript file, or your code as file.py:build_fn"
        )
    info = models.info(name)
    if weights is None:
        k = len(names) if names else info.num_classes
        model = _random(models.create, name, num_classes=k, in_channels=info.input_size[0])
        w_info = "random"
    else:
        model = _load_checkpoint(name, weights, names)
        w_info = weights
    c = _first_conv_channels(model) or info.input_size[0]
    pre = _default_preprocess(c, info.input_size[1:])
    k = num_outputs(model, pre)
    return Subject(model, pre, _numbered(k), name=name, info={"model": name, "weights": w_info})


def _load_checkpoint(arch: str, weights: str, names: list[str] | None) -> nn.Module:
    """The registry/torchvision/timm model `arch` with a state dict file loaded strictly; its
    classifier size and input channels are read from the file (or the class names' count)."""
    from convlens import models

    state = read_state_dict(weights)
    info = models.info(arch)
    k, c = len(names) if names else info.num_classes, info.input_size[0]
    probe = models.create(arch, num_classes=k, in_channels=c)
    k_file, c_file = classifier_and_input_sizes(probe, state)
    if (k_file or k, c_file or c) != (k, c):
        k, c = k_file or k, c_file or c
        probe = models.create(arch, num_classes=k, in_channels=c)
    load_into(probe, state, source=weights, what=arch)
    return probe


def _file_subject(
    path: Path, weights: str | None, images: str | Path | None, device: str
) -> Subject:
    if not is_torchscript(path):
        read_state_dict(path)  # refuses pickled modules and damaged files with their reason
        raise InputError(
            f"{path} holds weights but no architecture; name the architecture and pass the file "
            f"as its weights: --model ARCH --weights {path} (ARCH: a registry name, "
            "torchvision:NAME, timm:NAME or file.py:build_fn)"
        )
    if weights is not None:
        raise InputError(f"{path} is a TorchScript file with its own weights; drop --weights")
    model = load_torchscript(path, device)
    notices: list[str] = []
    pre = _guess_preprocess(model, images, notices)
    k = _outputs_of_guess(model, pre, images, f"TorchScript file {path.name}")
    info = {"model": f"TorchScript {path.name}", "weights": str(path), "notices": notices}
    return Subject(model, pre, _numbered(k), name=path.name, info=info)


def _user_code_subject(
    spec: str, weights: str | None, images: str | Path | None, names: list[str] | None
) -> Subject:
    result = user_code.build(spec)
    if isinstance(result, Subject):
        if weights is not None:
            load_into(result.model, read_state_dict(weights), source=weights, what=spec)
        result.info.setdefault("model", spec)
        return result
    if not isinstance(result, nn.Module):
        raise InputError(
            f"{spec} returned {type(result).__name__}; it must return an nn.Module "
            "(or a convlens Subject)"
        )
    info: dict[str, Any] = {"model": spec, "weights": "as built"}
    if weights is not None:
        load_into(result, read_state_dict(weights), source=weights, what=f"the model of {spec}")
        info["weights"] = weights
    notices: list[str] = []
    info["notices"] = notices
    pre = _guess_preprocess(result, images, notices)
    k = _outputs_of_guess(result, pre, images, f"the model of {spec}")
    return Subject(result, pre, _numbered(k), name=spec, info=info)


# --------------------------------------------------------------------------------------------------
# Preprocessing and labels
# --------------------------------------------------------------------------------------------------


def _numbered(k: int) -> list[str]:
    return [str(i) for i in range(k)]


def _default_preprocess(channels: int, size: tuple[int, ...]) -> Preprocess:
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    return Preprocess(channels, (int(size[0]), int(size[1])), mean, std)


def _first_conv_channels(model: nn.Module) -> int | None:
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    for p in model.parameters():  # TorchScript hides the module types: the first 4-D weight
        if p.ndim == 4:
            return int(p.shape[1])
    return None


def _guess_preprocess(
    model: nn.Module, images: str | Path | None, notices: list[str]
) -> Preprocess:
    """For a model that does not say its input: its first conv's channels, and the size more than
    half of the images share; else 224x224, each image's shorter side resized to 256 and the
    centre cropped (ImageNet's evaluation), with a notice: squashing every image to the shape of
    one of them would distort the others."""
    c = _first_conv_channels(model) or 3
    c = c if c in (1, 3) else 3
    sizes = image_sizes(images) if images is not None else {}
    if sizes:
        size, n = max(sizes.items(), key=lambda kv: (kv[1], kv[0]))
        total = sum(sizes.values())
        if 2 * n > total:
            return _default_preprocess(c, size)
        notices.append(
            f"the {total} images of {images} have {len(sizes)} different sizes, none shared by "
            "more than half, and the model does not say its input size: 224x224, each image's "
            "shorter side resized to 256 and its centre cropped"
        )
        return replace(_default_preprocess(c, (224, 224)), resize=256)
    return _default_preprocess(c, (224, 224))


def _outputs_of_guess(
    model: nn.Module, pre: Preprocess, images: str | Path | None, what: str
) -> int:
    """:func:`num_outputs` for a model whose input size was guessed; a failure says so, and how
    to give the size (the images')."""
    try:
        return num_outputs(model, pre)
    except ConvlensError as e:
        c, h, w = pre.image_shape
        source = (
            f"the size most of {images} share" if images is not None else "a guess (no --images)"
        )
        raise InputError(
            f"{e}. The {what} does not say its input size: {c}x{h}x{w} was {source}; pass "
            "--images with images of the size it takes (a folder of them, or one file)"
        ) from None


def _label_lookup(classes: list[str]) -> dict[str, int]:
    """Folder name (lower case) -> output index. A class named by several comma-separated names
    (timm's ImageNet "tench, Tinca tinca") is also found by its first name ("tench"); a full name
    wins over another class's first name."""
    lookup: dict[str, int] = {}
    for i, c in enumerate(classes):
        first = c.split(",")[0].strip().lower()
        if first:
            lookup.setdefault(first, i)
    for i, c in enumerate(classes):
        lookup[c.strip().lower()] = i
    return lookup


def _match_labels(sub: Subject, names_given: bool) -> list[str]:
    """Make class folders label the model's outputs when their names allow; return notices."""
    ds = sub.images
    if ds is None or not is_labelled(ds):
        return []
    index, notices = _folder_outputs(sub, list(ds.classes), ds.source, names_given)
    if index is not None:
        ds.labels = torch.tensor(index, dtype=torch.int64)[ds.labels]
        ds.classes = list(sub.classes)
    return notices


def _match_list_labels(sub: Subject, names_given: bool) -> list[str]:
    """:func:`_match_labels` for a streamed folder (``subject.image_list``)."""
    images = sub.image_list
    if images is None or images.classes is None:
        return []
    index, notices = _folder_outputs(sub, list(images.classes), images.source, names_given)
    if index is not None:
        images.labels = np.asarray(index, dtype=np.int64)[images.labels]
        images.classes = list(sub.classes)
    return notices


def _folder_outputs(
    sub: Subject, folders: list[str], source: str, names_given: bool
) -> tuple[list[int] | None, list[str]]:
    """The model output of each class folder (None: the names do not match), and notices.

    A model without class names takes the folder names when their number matches its outputs.
    """
    numbered = sub.classes == _numbered(len(sub.classes))
    if numbered and not names_given and len(folders) == len(sub.classes):
        sub.classes = folders
        return list(range(len(folders))), [
            f"class names from the folders of {source}: {', '.join(folders[:5])}"
            + (", ..." if len(folders) > 5 else "")
        ]
    lookup = _label_lookup(sub.classes)
    index = [lookup.get(f.strip().lower()) for f in folders]
    if all(i is not None for i in index):
        return [int(i) for i in index if i is not None], []
    unknown = [f for f, i in zip(folders, index, strict=True) if i is None]
    return None, [
        f"the folder names of {source} ({', '.join(unknown[:3])}"
        + (", ..." if len(unknown) > 3 else "")
        + ") are not the model's class names: no accuracy or confusion matrix; the folders "
        "still colour the t-SNE map and mark neighbours"
    ]
