"""Activation maximisation: synthesise the image a filter, a unit or a class responds to most.

Gradient ascent on the input image (Erhan et al. 2009; Simonyan et al. 2013 for class models), in two
flavours:

* **readable** (default): the image is parameterised in Fourier space with `1 / f` scaling and
  decorrelated colours, squashed to [0, 1] with a sigmoid, and seen by the model through a random
  shift, zoom and rotation at every step; Adam climbs the objective (Olah et al., "Feature
  Visualization", Distill 2017; Lucid/Lucent's defaults, see :mod:`convlens.inspect.param`).
* **simple** (`simple=True`): the Keras `conv_filter_visualization.py` example: plain pixels starting
  from grey plus a little noise, the gradient divided by its L2 norm, 20 steps of plain ascent.

All requested channels are optimised as one batch: image `k` is scored only on channel
`channels[k]`, so the gradient of the summed objective with respect to image `k` is exactly that
channel's own gradient. The model runs in eval mode (BatchNorm must not mix the batch), each image's
random start and transforms come from its own generator seeded with `seed + channel`, and Adam is
element-wise, so a batch of K channels produces the same images as K runs of one channel each; only
the speed differs. (In float64 they agree to 1e-9. In float32 the convolution kernels round
differently for batch sizes 1 and K; the images agree within 1e-3 in the tests, but over many steps a
ReLU sitting exactly on its threshold can flip in one run and not the other.)

Two details beyond Lucid's defaults, both measured on a trained LeNet-5 (see the constants below and
:func:`convlens.inspect.param.margin_for`): the image is synthesised with a margin that is cropped
away, and ReLU modules get Lucid's redirected gradient, with a short warm-up in which it always
applies, so that a unit that is off for the grey start image can still be switched on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.inspect.hooks import get_layer, truncated_forward
from convlens.inspect.param import (
    IMAGENET_COLOR_SQRT,
    TransformConfig,
    draw_transforms,
    fft_init,
    fft_scale,
    fft_to_image,
    gaussian_blur3,
    margin_for,
    normalize_color_matrix,
    to_valid_pixels,
    view,
)

Objective = Literal["channel", "neuron", "logit", "negative"]
OBJECTIVES: tuple[str, ...] = ("channel", "neuron", "logit", "negative")
PARAMS: tuple[str, ...] = ("fft", "pixel")

DEFAULT_STEPS = 256  # readable mode; Lucent uses 512 for ImageNet networks
SIMPLE_STEPS = 20  # the Keras example
DEFAULT_LR = 0.05  # Adam on the spectrum, as Lucent
# For the first eighth of the steps every ReLU passes gradient that pushes a unit up, off or on; after
# that only for images whose ReLU gradient is zero everywhere (Lucid's rule). Without the warm-up, a
# first-layer filter of a trained LeNet-5 that wants a dark image reached half its best data response.
REDIRECT_WARMUP = 0.125


@dataclass
class ActMaxResult:
    """Images synthesised by :func:`activation_maximization`, one per requested channel.

    Attributes:
        images: float `(K, C, S, S)` on the CPU, pixels in [0, 1] (the data set's normalisation undone).
        values: float `(K,)`, the objective's quantity for each final image, seen without transforms:
            the channel's mean activation (`channel` and `negative`; the latter minimised it), the
            centre unit's activation (`neuron`) or the class logit (`logit`).
        history: float `(steps, K)`, the same quantity at every step (on the transformed image).
        channels: the requested channels (class indices for `logit`), in order.
        layer: the layer name, or None for the model's output.
        objective: `channel`, `neuron`, `logit` or `negative`.
        simple: True for the Keras-style plain gradient ascent.
    """

    images: torch.Tensor
    values: torch.Tensor
    history: torch.Tensor
    channels: list[int]
    layer: str | None
    objective: str
    simple: bool


def activation_maximization(
    model: nn.Module,
    layer: str | None,
    channels: Sequence[int],
    *,
    size: int,
    steps: int | None = None,
    objective: Objective | str = "channel",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    in_channels: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    param: Literal["fft", "pixel"] | str = "fft",
    decorrelate: bool = True,
    color_matrix: torch.Tensor | None = None,
    transforms: bool = True,
    l2: float = 0.0,
    blur: float = 0.0,
    simple: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
    bf16: bool = False,
) -> ActMaxResult:
    """Synthesise, for each channel, an input image that maximises it; all channels in one batch.

    Example::

        res = activation_maximization(model, "layer3", range(64), size=32,
                                      mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
        res.images  # (64, 3, 32, 32) in [0, 1]

    Args:
        model: any module taking `(N, C, S, S)` normalised images. Its parameters, `requires_grad`
            flags, train/eval modes and hooks are as before when this returns or raises.
        layer: a name from `model.named_modules()`; the forward pass stops there. None (only for
            `logit`) uses the model's output.
        channels: channel indices of `layer` (class indices for `logit`); one image each.
        size: image height and width in pixels.
        steps: optimisation steps; default 256 (readable) or 20 (simple).
        objective: `channel` (mean activation of the channel), `neuron` (its centre unit), `logit`
            (a class score, Simonyan et al. 2013; use the output layer) or `negative` (minimise the
            channel's mean: what the filter does not want to see).
        mean: per-channel mean of the data set in [0, 1] units, applied inside (default 0).
        std: per-channel standard deviation (default 1).
        in_channels: image channels; default `len(mean)`, else the first convolution's input channels.
        lr: step size; default 0.05 (Adam, readable) or an L2 step norm of `sqrt(C*S*S) / 255` (simple:
            every pixel moves one grey level per step in root-mean-square, the Keras example's step).
        seed: image `k` draws its start and its transforms from a generator seeded `seed + channels[k]`.
        param: `fft` (1/f-scaled spectrum) or `pixel` (plain pixels before the sigmoid).
        decorrelate: mix the colours of 3-channel images with `color_matrix`.
        color_matrix: `(3, 3)` colour square root; default Lucid's ImageNet matrix. Pass
            :func:`convlens.inspect.param.color_correlation_sqrt` of the data set for its own colours.
        transforms: random shift, zoom and rotation each step (sized by `TransformConfig.for_size`).
        l2: weight of an L2 penalty on the pixels' distance to grey (0.5), per image mean.
        blur: weight of a penalty on the difference between the image and its 3x3 blur (Lucid's
            `blur_input_each_step`), per image mean.
        simple: the Keras example instead (plain pixels, L2-normalised gradient, no transforms).
        device: where to optimise; default the model's device (the model is not moved).
        progress: show a Rich progress bar on stderr.
        bf16: run the model under bfloat16 autocast (a GPU, or a CPU with AVX512-BF16/AMX): about
            twice as fast for convolutions, images differ slightly from float32 ones. Off by default.

    Returns:
        An :class:`ActMaxResult`.

    Raises:
        ConvlensError: unknown layer or objective, a channel out of range, an input the model
            cannot take.
    """
    if objective not in OBJECTIVES:
        raise ConvlensError(
            f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}"
        )
    if param not in PARAMS:
        raise ConvlensError(f"unknown parameterisation {param!r}; choose fft or pixel")
    chans = [int(c) for c in channels]
    if not chans:
        raise ConvlensError("no channels requested; pass e.g. channels=[0, 1, 2]")
    if layer is None and objective != "logit":
        raise ConvlensError(f"objective {objective!r} needs a layer name")
    if layer is not None:
        get_layer(model, layer)  # a clear error for a wrong name, before any work
    if size < 1:
        raise ConvlensError(f"size must be a positive number of pixels, not {size}")
    steps = (SIMPLE_STEPS if simple else DEFAULT_STEPS) if steps is None else int(steps)
    if steps < 0:
        raise ConvlensError(f"steps must be >= 0, not {steps}")

    dev = torch.device(device) if device is not None else _model_device(model)
    c_in = in_channels or (len(mean) if mean is not None else None) or _first_conv_in(model) or 3
    # Optimise in the model's precision (float32 usually; a float64 model gets float64 images).
    dtype = _model_dtype(model)
    mean_t = _per_channel(mean, 0.0, c_in, "mean", dev).to(dtype)  # (1, C, 1, 1)
    std_t = _per_channel(std, 1.0, c_in, "std", dev).to(dtype)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - mean_t) / std_t  # the model sees normalised input
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x) if layer is None else truncated_forward(model, layer, x)
        return out.to(dtype)

    with _frozen(model):
        n_out = _output_channels(forward, c_in, size, dev, dtype, layer)
        bad = [c for c in chans if not 0 <= c < n_out]
        if bad:
            what = "classes" if layer is None else f"channels in layer {layer!r}"
            raise ConvlensError(
                f"channel {bad[0]} out of range: there are {n_out} {what} (0-{n_out - 1})"
            )
        targets = torch.tensor(chans, device=dev)
        gens = [torch.Generator().manual_seed(seed + c) for c in chans]
        shape = (c_in, size, size)

        def score(pixels: torch.Tensor) -> torch.Tensor:
            return objective_values(forward(pixels), targets, objective)

        sign = -1.0 if objective == "negative" else 1.0
        with _progress(steps, progress, f"actmax {layer or 'output'}") as bar:
            if simple:
                step_norm = lr if lr is not None else math.sqrt(c_in * size * size) / 255.0
                images, history = _simple_ascent(
                    score, sign, gens, shape, steps, step_norm, dev, dtype, bar
                )
            else:
                cm = None
                if decorrelate and c_in == 3:
                    cm = normalize_color_matrix(
                        IMAGENET_COLOR_SQRT if color_matrix is None else color_matrix.float()
                    ).to(dev, dtype)
                with _redirected_relus(model) as redirect:
                    images, history = _readable_ascent(
                        score, sign, gens, shape, steps, lr if lr is not None else DEFAULT_LR,
                        dev, dtype, bar, redirect, param=str(param), color_matrix=cm,
                        transforms=transforms, l2=l2, blur=blur,
                    )  # fmt: skip
        with torch.no_grad():
            values = score(images)
    return ActMaxResult(
        images=images.detach().cpu(),
        values=values.detach().cpu(),
        history=history.cpu(),
        channels=chans,
        layer=layer,
        objective=str(objective),
        simple=simple,
    )


def objective_values(out: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """Each batch element's own objective: `out` `(K, C, ...)`, `targets` `(K,)` -> `(K,)`.

    Element `k` reads only channel `targets[k]` of its own output, which is what makes one batched
    backward pass equal to K separate ones.
    """
    if out.dim() < 2:
        raise ConvlensError(
            f"the layer's output has shape {tuple(out.shape)}; expected (N, C, ...)"
        )
    sel = out[torch.arange(out.shape[0], device=out.device), targets]  # (K, ...) own channel
    if sel.dim() == 1:
        return sel
    if objective == "neuron":
        flat = 0  # row-major index of the centre unit, e.g. (H // 2) * W + W // 2
        for n in sel.shape[1:]:
            flat = flat * n + n // 2
        return sel.flatten(1)[:, flat]
    return sel.flatten(1).mean(1)


def _simple_ascent(
    score: Callable[[torch.Tensor], torch.Tensor],
    sign: float,
    gens: list[torch.Generator],
    shape: tuple[int, int, int],
    steps: int,
    step_norm: float,
    dev: torch.device,
    dtype: torch.dtype,
    bar: Callable[[], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Keras example, batched: `x += step_norm * g / ||g||` per image, from grey 128 + U(0, 20)."""
    x = torch.stack([(128.0 + 20.0 * torch.rand(shape, generator=g)) / 255.0 for g in gens])
    x = x.to(dev, dtype).requires_grad_(True)  # (K, C, S, S) pixels
    history = torch.zeros(steps, len(gens))
    for i in range(steps):
        vals = score(x)  # (K,)
        (grad,) = torch.autograd.grad((sign * vals).sum(), x)  # (K, C, S, S), each its own
        norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        with torch.no_grad():
            x += step_norm * grad / (norm + 1e-12)
        history[i] = vals.detach().cpu()
        bar()
    return x.detach().clamp(0.0, 1.0), history


def _readable_ascent(
    score: Callable[[torch.Tensor], torch.Tensor],
    sign: float,
    gens: list[torch.Generator],
    shape: tuple[int, int, int],
    steps: int,
    lr: float,
    dev: torch.device,
    dtype: torch.dtype,
    bar: Callable[[], None],
    redirect: _Redirect,
    *,
    param: str,
    color_matrix: torch.Tensor | None,
    transforms: bool,
    l2: float,
    blur: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on a Fourier (or pixel) parameterisation, seen through random transforms."""
    c, size, _ = shape
    full = size + 2 * margin_for(size)  # synthesised with a margin, cropped at the end
    if param == "fft":
        scale = fft_scale(full, full).to(dev, dtype)  # (full, full//2+1)
        var = torch.stack([fft_init(c, full, full, g) for g in gens])  # (K, C, full, full//2+1, 2)

        def to_raw(v: torch.Tensor) -> torch.Tensor:
            return fft_to_image(v, scale, full, full)
    else:
        var = torch.stack([torch.randn(c, full, full, generator=g) * 0.01 for g in gens])

        def to_raw(v: torch.Tensor) -> torch.Tensor:
            return v

    # Every step's transform, drawn up front from each image's own generator: (steps, K, 4)
    draws = torch.stack([draw_transforms(steps, g) for g in gens], dim=1).to(dev, dtype)
    tconfig = TransformConfig.for_size(size)
    var = var.to(dev, dtype).requires_grad_(True)
    opt = torch.optim.Adam([var], lr=lr)
    history = torch.zeros(steps, len(gens))
    warmup = round(steps * REDIRECT_WARMUP)
    for i in range(steps):
        redirect.mode = "always" if i < warmup else "dead"
        pixels = to_valid_pixels(to_raw(var), color_matrix)  # (K, C, full, full) in (0, 1)
        seen = view(pixels, size, draws[i] if transforms else None, tconfig)  # (K, C, S, S)
        vals = score(seen)  # (K,)
        loss = -sign * vals
        if l2:
            loss = loss + l2 * (pixels - 0.5).pow(2).flatten(1).mean(1)
        if blur:
            loss = loss + blur * (pixels - gaussian_blur3(pixels).detach()).pow(2).flatten(1).mean(
                1
            )
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # image k's gradient is its own loss's gradient
        opt.step()
        history[i] = vals.detach().cpu()
        bar()
    with torch.no_grad():
        return view(to_valid_pixels(to_raw(var), color_matrix), size), history


@dataclass
class _Redirect:
    """Which ReLU gradient :func:`_redirected_relus` gives; the optimisation loop switches it.

    `"always"`: the gradient passes wherever it pushes a unit up, on or off (a warm-up, so that
    one region switching on early cannot leave the rest of the image without gradient).
    `"dead"`: Lucid's rule: only for a batch element whose ordinary ReLU gradient is zero everywhere.
    `"off"`: the ordinary ReLU gradient.
    """

    mode: Literal["always", "dead", "off"] = "dead"


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient can still flow where the unit is off but the objective wants it on.

    Lucid's `redirected_relu_grad`: a start image that leaves the target unit (or everything before
    it) below zero gets no gradient through a plain ReLU and never moves. The redirected gradient
    passes the incoming one except where it would push an already negative input lower. Decisions
    are made per batch element, so batching still changes nothing.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, state: _Redirect
    ) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.mode = state.mode  # type: ignore[attr-defined]
        return x.clamp_min(0.0)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        zero = torch.zeros_like(grad)
        relu_grad = torch.where(x < 0, zero, grad)
        if ctx.mode == "off":  # type: ignore[attr-defined]
            return relu_grad, None
        # grad > 0: the loss wants x lower, never push a negative unit further down
        redirected = torch.where((x < 0) & (grad > 0), zero, grad)
        if ctx.mode == "always":  # type: ignore[attr-defined]
            return redirected, None
        alive = relu_grad.flatten(1).norm(dim=1) > 0  # (K,) per batch element
        return torch.where(alive.view(-1, *([1] * (grad.dim() - 1))), relu_grad, redirected), None


@contextlib.contextmanager
def _redirected_relus(model: nn.Module) -> Iterator[_Redirect]:
    """Give every `nn.ReLU` module of `model` a redirectable gradient inside the block.

    Yields the switch (:class:`_Redirect`). The hooks are removed on exit. ReLUs called as functions
    (`F.relu`) are not modules and keep their ordinary gradient.
    """
    state = _Redirect()
    handles = []
    stash: dict[nn.Module, torch.Tensor] = {}

    def pre(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        # An in-place ReLU overwrites its input: keep a copy (with its graph) of the pre-activation.
        stash[m] = args[0].clone() if getattr(m, "inplace", False) else args[0]

    def post(m: nn.Module, _args: object, _out: torch.Tensor) -> torch.Tensor:
        return _RedirectedReLU.apply(stash.pop(m), state)

    try:
        for m in model.modules():
            if type(m) is nn.ReLU:
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
        yield state
    finally:
        for h in handles:
            h.remove()
        stash.clear()


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; every module's mode and flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()  # BatchNorm with running statistics: batch elements stay independent
        for p, _ in flags:
            p.requires_grad_(
                False
            )  # gradients for the image only: weight gradients are wasted work
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def output_channels(
    model: nn.Module,
    layer: str | None,
    input_shape: tuple[int, int, int],
    *,
    device: str | torch.device | None = None,
) -> int:
    """How many channels (classes, for `layer=None`) :func:`activation_maximization` can choose from.

    Runs one grey `(1, *input_shape)` image up to `layer` in eval mode; the model is left as it was.

    Raises:
        ConvlensError: unknown layer, or an input the model cannot take.
    """
    if layer is not None:
        get_layer(model, layer)
    dev = torch.device(device) if device is not None else _model_device(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x) if layer is None else truncated_forward(model, layer, x)

    with _frozen(model):
        return _output_channels(
            forward, input_shape[0], input_shape[1], dev, _model_dtype(model), layer
        )


def _output_channels(
    forward: Callable[[torch.Tensor], torch.Tensor],
    c_in: int,
    size: int,
    dev: torch.device,
    dtype: torch.dtype,
    layer: str | None,
) -> int:
    """Channels of the target output, from one grey image; a clear error if the model cannot run it."""
    try:
        with torch.no_grad():
            out = forward(torch.full((1, c_in, size, size), 0.5, device=dev, dtype=dtype))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvlensError(
            f"the model cannot run on {c_in}x{size}x{size} images"
            f"{'' if layer is None else f' up to layer {layer!r}'}: {first}"
        ) from None
    if out.dim() < 2:
        raise ConvlensError(
            f"output of {layer or 'the model'} has shape {tuple(out.shape)}; expected (N, C, ...)"
        )
    return int(out.shape[1])


def _per_channel(
    values: Sequence[float] | None, default: float, c: int, what: str, dev: torch.device
) -> torch.Tensor:
    v = [default] * c if values is None else [float(a) for a in values]
    if len(v) == 1 and c > 1:
        v = v * c
    if len(v) != c:
        raise ConvlensError(f"{what} has {len(v)} values but the images have {c} channels")
    return torch.tensor(v, dtype=torch.float32, device=dev).view(1, c, 1, 1)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def _first_conv_in(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


@contextlib.contextmanager
def _progress(total: int, show: bool, description: str) -> Iterator[Callable[[], None]]:
    """Yield a callable advancing a Rich progress bar on stderr (a no-op when `show` is False)."""
    if not show or total == 0:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
