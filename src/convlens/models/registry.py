"""The model registry: one dict from name to builder, filled by a decorator that refuses duplicates.

Every family module (``lenet.py``, ``cifar_resnet.py``, ...) decorates its public builders with
:func:`register_model`; :func:`create` looks a name up, checks the options against the builder's
keyword-only parameters and builds the model. Two prefixes reach outside the registry:
``torchvision:<name>`` (any torchvision classifier) and ``timm:<name>`` (when timm is installed).

Builders take keyword-only arguments and always receive ``num_classes`` and ``in_channels``; every
other parameter is an *option* with a default, listed by :func:`info` and ``convlens models NAME``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.overrides import TorchFunctionMode

from convlens.errors import ConvlensError, did_you_mean
from convlens.models.external import timm_info, timm_model, torchvision_info, torchvision_model
from convlens.models.info import ModelInfo
from convlens.models.weights import load_weights

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"

# Parameters every builder receives from `create`; all other keyword-only parameters are options.
_COMMON = ("num_classes", "in_channels")


_REGISTRY: dict[str, ModelInfo] = {}

B = TypeVar("B", bound=Callable[..., nn.Module])


def register_model(
    name: str,
    *,
    family: str,
    paper: str,
    title: str,
    input_size: tuple[int, int, int],
    num_classes: int,
    description: str,
) -> Callable[[B], B]:
    """Decorator registering a builder under `name`.

    The builder must take only keyword-only parameters, among them ``num_classes`` and
    ``in_channels``; every other parameter needs a default and becomes an option.

    Raises:
        ValueError: `name` is already registered (two families must not silently shadow each other).
        TypeError: the builder has a positional parameter, or lacks ``num_classes``/``in_channels``.
    """

    def decorate(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        params = inspect.signature(builder).parameters
        options: dict[str, Any] = {}
        for p in params.values():
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"builder of {name!r}: parameter {p.name!r} must be keyword-only")
            if p.name not in _COMMON:
                if p.default is inspect.Parameter.empty:
                    raise TypeError(f"builder of {name!r}: option {p.name!r} needs a default")
                options[p.name] = p.default
        missing = [c for c in _COMMON if c not in params]
        if missing:
            raise TypeError(f"builder of {name!r} lacks {', '.join(missing)}")
        _REGISTRY[name] = ModelInfo(
            name=name,
            family=family,
            paper=paper,
            title=title,
            input_size=input_size,
            num_classes=num_classes,
            description=description,
            options=options,
            builder=builder,
        )
        return builder

    return decorate


def names(family: str | None = None) -> list[str]:
    """Registered model names in registration order (family by family), optionally of one family.

    ``torchvision:<name>`` and ``timm:<name>`` are accepted by :func:`create` but not listed here;
    :func:`torchvision_names` lists the former.
    """
    return [n for n, i in _REGISTRY.items() if family is None or i.family == family]


def families() -> list[str]:
    """The families in registration order."""
    return list(dict.fromkeys(i.family for i in _REGISTRY.values()))


def torchvision_names() -> list[str]:
    """Every torchvision classification model, as ``torchvision:<name>``."""
    import torchvision

    return [
        TORCHVISION_PREFIX + n for n in torchvision.models.list_models(module=torchvision.models)
    ]


def _unknown(name: str) -> ConvlensError:
    return ConvlensError(
        f"unknown model {name!r}.{did_you_mean(name, names())} "
        "List them with `convlens models`; any torchvision classifier works as torchvision:<name>."
    )


def info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model or of ``torchvision:<name>``/``timm:<name>``.

    Raises:
        ConvlensError: unknown name (the message lists close names).
    """
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_info(name[len(TORCHVISION_PREFIX) :])
    if name.startswith(TIMM_PREFIX):
        return timm_info(name[len(TIMM_PREFIX) :])
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(model: str, key: str, value: Any, default: Any) -> Any:
    """Convert a string option (from the command line) to the type of its default."""
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        kind = (
            "true or false"
            if isinstance(default, bool)
            else "an integer"
            if isinstance(default, int)
            else "a number"
        )
        raise ConvlensError(f"option {key!r} of {model} takes {kind}, not {value!r}") from None
    return value


def _check_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConvlensError(f"{what} must be a positive integer, not {value!r}")
    return value


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate the options of a registered model; return them converted to their defaults' types.

    Raises:
        ConvlensError: unknown model, unknown option (with close names), or a value of a wrong type.
    """
    spec = info(name)
    for key in options:
        if key not in spec.options:
            valid = ", ".join(spec.options) or "none"
            raise ConvlensError(
                f"{name} has no option {key!r}.{did_you_mean(key, spec.options)} "
                f"Its options: {valid} (and weights_path)."
            )
    return {k: _coerce(name, k, v, spec.options[k]) for k, v in options.items()}


def create(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    **options: Any,
) -> nn.Module:
    """Build a model by name.

    Example::

        model = create("resnet20", num_classes=10, in_channels=1)
        model = create("lenet5", in_channels=1, pool="avg", activation="tanh")
        model = create("torchvision:mobilenet_v3_small", num_classes=10)

    Args:
        name: a registered name (see :func:`names`), ``torchvision:<name>`` or ``timm:<name>``.
        num_classes: outputs of the final layer.
        in_channels: channels of the input image (1 for MNIST, 3 for CIFAR-10).
        **options: the model's options (see ``info(name).options``); strings are converted to the
            type of the option's default, so command-line values can be passed as they come.
            ``weights_path`` (every model) loads a local state dict file (safetensors, or a
            ``torch.save`` file read with ``weights_only=True``) after building; never a download.

    Raises:
        ConvlensError: unknown name (with close names), unknown option, or a bad option value.
    """
    num_classes = _check_int("num_classes", num_classes)
    in_channels = _check_int("in_channels", in_channels)
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_model(
            name[len(TORCHVISION_PREFIX) :],
            num_classes=num_classes,
            in_channels=in_channels,
            **options,
        )
    if name.startswith(TIMM_PREFIX):
        return timm_model(
            name[len(TIMM_PREFIX) :], num_classes=num_classes, in_channels=in_channels, **options
        )
    spec = info(name)
    weights_path = options.pop("weights_path", None)
    kwargs = check_options(name, options)
    assert spec.builder is not None
    model = spec.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if weights_path is not None:
        load_weights(model, weights_path, strict=True)
    return model


def num_parameters(
    name: str, *, num_classes: int | None = None, in_channels: int | None = None, **options: Any
) -> int:
    """Parameters of a model, counted on the meta device (nothing is allocated or initialised).

    `num_classes` and `in_channels` default to the paper's (``info(name)``), so the counts are the
    published ones (ResNet-50 25,557,032 for 1000 classes).
    """
    spec = info(name)
    options.pop("weights_path", None)
    kwargs: dict[str, Any] = {
        "num_classes": spec.num_classes if num_classes is None else num_classes,
        "in_channels": spec.input_size[0] if in_channels is None else in_channels,
        **options,
    }
    try:
        with torch.device("meta"), _SkipInitOnMeta():
            model = create(name, **kwargs)
    except (NotImplementedError, RuntimeError):
        # A constructor that computes with tensors (torchvision's RegNet rounds its widths with
        # torch ops) cannot run on the meta device: build on the CPU, moving each parameter to
        # meta as it registers, so that nothing big is allocated or initialised.
        with _parameters_on_meta():
            model = create(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


# In-place initialisers: on a meta tensor they change nothing, but a few of them (normal_, erfinv_,
# clamp_) route through PyTorch's reference decompositions, whose first use imports torch._dynamo
# (seconds). Skipping them keeps `convlens models` instant.
_INIT_OPS = frozenset(
    {
        # Tensor methods
        *("normal_", "uniform_", "erfinv_", "clamp_", "clamp_min_", "clamp_max_", "exponential_"),
        *("log_normal_", "cauchy_", "geometric_", "random_", "bernoulli_", "fill_", "zero_"),
        *("copy_", "mul_", "add_", "sub_", "div_"),
        # torch.nn.init's functions, dispatched under their own names
        *("trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "orthogonal_"),
        *("xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "sparse_"),
    }
)


class _SkipInitOnMeta(TorchFunctionMode):
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        # nn.init functions pass the tensor by keyword (`tensor=`), Tensor methods as `self`
        target = args[0] if args else kwargs.get("tensor")
        if (
            getattr(func, "__name__", "") in _INIT_OPS
            and isinstance(target, torch.Tensor)
            and target.is_meta
        ):
            return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered meanwhile moves to the meta device (torch's public global hook)."""

    def to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> Any:
        if param is None or param.device.type == "meta":
            return None  # keep it as it is (a returned Parameter replaces the one registered)
        return nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    handle = register_module_parameter_registration_hook(to_meta)
    try:
        yield
    finally:
        handle.remove()
