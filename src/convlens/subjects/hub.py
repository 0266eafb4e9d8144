"""Pretrained weights of torchvision and timm, read from their local caches; fetched only when asked.

torchvision: ``--weights DEFAULT`` or an enum member (``IMAGENET1K_V1``) of the model's weights enum.
The preprocessing (resize, centre crop, mean/std, filter) comes from the enum's ``transforms()`` and
the class names from ``meta["categories"]``. The file is torch hub's:
``$TORCH_HOME/hub/checkpoints/<file name of the enum's URL>`` (``torch.hub.get_dir()``). It is first
read with ``torch.load(weights_only=True)`` (tensors only), then torchvision's own builder loads it
from the same place, so every model's loading quirks (DenseNet's renamed keys, Inception's
auxiliary heads) stay torchvision's. A missing file is an error saying which file to put where,
unless ``download=True``.

timm (when installed): ``--weights DEFAULT`` (the model's default pretrained tag) or a tag; the files
are Hugging Face hub's cache; the preprocessing comes from ``timm.data.resolve_data_config``.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from convlens.errors import ConvlensError, InputError, did_you_mean
from convlens.models.weights import read_state_dict
from convlens.subjects.core import IMAGENET_MEAN, IMAGENET_STD, Preprocess


def _torchvision() -> Any:
    import torchvision

    return torchvision


def check_torchvision_arch(arch: str) -> None:
    """Raise a clear error when torchvision has no classifier `arch`."""
    tv = _torchvision()
    available = list(tv.models.list_models(module=tv.models))
    if arch not in available:
        raise InputError(
            f"torchvision has no classification model {arch!r}.{did_you_mean(arch, available)} "
            "List them with `convlens models --torchvision`."
        )


def torchvision_weights(arch: str, weights: str) -> Any:
    """The member of `arch`'s weights enum named by `weights` (``DEFAULT``, ``IMAGENET1K_V1``, or
    ``ResNet50_Weights.IMAGENET1K_V1``)."""
    tv = _torchvision()
    check_torchvision_arch(arch)
    enum = tv.models.get_model_weights(arch)
    name = weights.rpartition(".")[2]
    members = list(enum.__members__)
    if name.upper() == "DEFAULT":
        return enum.DEFAULT
    if name not in members:
        raise InputError(
            f"torchvision's {arch} has no weights {weights!r}; its weights: DEFAULT, "
            f"{', '.join(members)} (or pass a weights file)"
        )
    return enum[name]


def hub_file(w: Any) -> Path:
    """Where torch hub keeps the file of weights enum member `w`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(w.url).path).name


def preprocess_of(w: Any) -> Preprocess:
    """The :class:`Preprocess` equal to ``w.transforms()`` (torchvision's ImageClassification)."""
    t = w.transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0]) if t.resize_size else None
    return Preprocess(
        channels=3,
        size=(crop, crop),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        resize=resize,
        interpolation=str(t.interpolation.value),
    )


def torchvision_pretrained(
    arch: str, weights: str, *, download: bool = False
) -> tuple[nn.Module, Preprocess, list[str], dict[str, Any]]:
    """torchvision's `arch` with its pretrained `weights` from the hub cache.

    Returns:
        The model, its preprocessing, the class names and facts for reports.

    Raises:
        ConvlensError: unknown model or weights; the file is missing (and `download` is False),
            truncated, or not a state dict.
    """
    tv = _torchvision()
    w = torchvision_weights(arch, weights)
    path = hub_file(w)
    if not path.is_file():
        if not download:
            size = w.meta.get("_file_size")
            raise InputError(
                f"torchvision:{arch} --weights {weights} needs the file {path.name} in "
                f"{path.parent} (torch hub's cache; set TORCH_HOME to use another folder). This "
                f"machine does not fetch it unless asked: pass --download (download=True) to "
                f"fetch it{f' ({size:.0f} MB)' if size else ''}, or copy it there from {w.url}"
            )
        try:
            torch.hub.load_state_dict_from_url(w.url, check_hash=True, weights_only=True)
        except Exception as e:  # URLError, hash mismatch, disk full: all mean "not fetched"
            raise ConvlensError(f"could not download {w.url} to {path} ({e})") from None
    state = read_state_dict(path)  # tensors only: proves torchvision's own load below runs no code
    try:
        model = tv.models.get_model(arch, weights=w)
    except RuntimeError as e:
        raise InputError(
            f"{path} does not hold the weights of torchvision's {arch} {w.name} "
            f"({_first_difference(tv, arch, w, state) or str(e).splitlines()[0]}); delete it and "
            "put the right file there"
        ) from None
    info = {"weights": f"{type(w).__name__}.{w.name}", "weights file": str(path)}
    return model, preprocess_of(w), list(w.meta["categories"]), info


def _first_difference(tv: Any, arch: str, w: Any, state: dict[str, torch.Tensor]) -> str | None:
    """The first key where the cached file differs from torchvision's `arch` as `w` builds it
    (None when the keys match and torchvision refused for another reason)."""
    from convlens.models.weights import first_mismatch

    try:
        bare = tv.models.get_model(arch, weights=None, num_classes=len(w.meta["categories"]))
    except Exception:  # an option the builder refuses: no comparison, torchvision's line stays
        return None
    return first_mismatch(bare, state)


def default_preprocess(arch: str) -> tuple[Preprocess, list[str] | None]:
    """The preprocessing and class names of `arch`'s DEFAULT weights (no file needed)."""
    tv = _torchvision()
    try:
        w = tv.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return Preprocess(3, (224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256), None
    return preprocess_of(w), list(w.meta.get("categories", [])) or None


def timm_module() -> Any:
    """timm, or a clear error saying how to get it."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise InputError(
            "timm is not installed; `pip install timm` to use timm:<name> models "
            "(torchvision:<name> works without it)"
        ) from None


def timm_preprocess(model: nn.Module) -> Preprocess:
    """The evaluation preprocessing timm resolves for `model` (input size, crop_pct, mean/std)."""
    timm = timm_module()
    cfg = timm.data.resolve_data_config({}, model=model)
    c, h, w = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    interpolation = str(cfg.get("interpolation", "bilinear"))
    return Preprocess(
        channels=int(c),
        size=(int(h), int(w)),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        resize=math.floor(min(h, w) / crop_pct),  # timm's scale_size for crop_mode "center"
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
    )


def _timm_cached(cfg: Any) -> Path | None:
    """The Hugging Face hub cache's file of the weights of pretrained config `cfg`, else None.

    Read from the cache's folders only (``huggingface_hub.try_to_load_from_cache``): no network.
    """
    hub_id = getattr(cfg, "hf_hub_id", None) or (
        cfg.get("hf_hub_id") if isinstance(cfg, dict) else None
    )
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, _, _ = str(hub_id).partition("@")
    for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, f)
        if isinstance(found, str):
            return Path(found)
    return None


def timm_pretrained(
    arch: str, weights: str, *, download: bool = False
) -> tuple[nn.Module, Preprocess, list[str] | None, dict[str, Any]]:
    """timm's `arch` with pretrained weights (``DEFAULT`` = its default tag) from the HF cache.

    Without `download` no network access is attempted: the cached file is found in the cache's
    folders, read here (tensors only) and handed to timm as an in-memory state dict (timm's own
    key filters and classifier handling still apply), so timm never asks the hub whether a newer
    file exists (five requests and ~40 s without a network).

    Raises:
        ConvlensError: timm missing, unknown model, or weights neither cached nor allowed to download.
    """
    timm = timm_module()
    name = arch if weights.upper() == "DEFAULT" else f"{arch}.{weights}"
    if not timm.is_model(arch):
        raise InputError(f"timm has no model {arch!r}.{did_you_mean(arch, timm.list_models())}")
    try:
        probe = timm.create_model(name, pretrained=False)
    except RuntimeError as e:  # an unknown tag: timm's "Invalid pretrained tag"
        raise InputError(f"timm:{arch} has no weights {weights!r} ({e})") from None
    cfg = getattr(probe, "pretrained_cfg", {})
    overlay: dict[str, Any] | None = None
    if not download:
        cached = _timm_cached(cfg)
        if cached is None:
            hub_id = cfg.get("hf_hub_id") if isinstance(cfg, dict) else None
            raise InputError(
                f"timm:{arch} --weights {weights} needs the weights of {hub_id or name} in the "
                "Hugging Face cache (HF_HOME, default ~/.cache/huggingface); this machine does not "
                "fetch them unless asked: pass --download (download=True)"
            )
        overlay = {"state_dict": read_state_dict(cached), "custom_load": False}
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except RuntimeError as e:  # the cached file holds another model's weights
        raise InputError(
            f"the cached weights of timm:{arch} do not fit it ({str(e).splitlines()[0]}); "
            "delete them from the Hugging Face cache, or pass --download"
        ) from None
    classes = None
    if getattr(model, "num_classes", 0) == 1000 and hasattr(timm.data, "ImageNetInfo"):
        classes = list(timm.data.ImageNetInfo().label_descriptions())
    return model, timm_preprocess(model), classes, {"weights": f"timm {name} (pretrained)"}
