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
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
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
Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")

DEFAULT_STEPS = 256  # readable mode; Lucent uses 512 for ImageNet networks
SIMPLE_STEPS = 20  # the Keras example
DEFAULT_LR = 0.05  # Adam on the spectrum, as Lucent
# For the first eighth of the steps every ReLU passes gradient that pushes a unit up, off or on; after
# that only for images whose ReLU gradient is zero everywhere (Lucid's rule). Without the warm-up, a
# first-layer filter of a trained LeNet-5 that wants a dark image reached half its best data response.
REDIRECT_WARMUP = 0.125
# On a CPU the batch is split into chunks whose largest activation holds at most this many elements
# (4 MiB in bfloat16, a core's L2 cache is 2 MiB here): measured on the 2-core Xeon (AMX), VGG-16 to
# conv3_1 at 64x64 (262,144 elements per image in its first layers) took 3.5 ms per image-step in chunks
# of 4-8 and 5.9 ms as one batch of 64, whose 33 MB activations stream from L3 in every elementwise
# op; ResNet-20 at 32x32 (16,384 per image) runs best as one batch of 64.
CPU_CHUNK_ELEMENTS = 2**21


@dataclass
class ActMaxResult:
    """Images synthesised by :func:`activation_maximization`, one per requested channel.

    Attributes:
        images: float `(K, C, S, S)` on the CPU, pixels in [0, 1] (the data set's normalisation undone).
        values: float `(K,)`, the objective's quantity for each final image, seen without transforms
            and computed in the model's dtype (also after a bf16 optimisation):
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
    precision: Precision | str = "auto",
    batch_size: int | None = None,
    fold_bn: bool = True,
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
        precision: `fp32` runs the model in its own dtype; `bf16` under bfloat16 autocast (the image,
            the optimiser and the objective stay in float32); `auto` (default) picks `bf16` on a CPU
            with AMX tiles (oneDNN's AMX kernels: 2-4x faster convolutions there) for a float32
            model whose convolutions are mostly wide enough for a tile (:func:`use_bf16`), else
            `fp32` (on a GPU bf16 measured no faster at these sizes). bf16 images differ slightly
            from float32 ones; pass `fp32` to reproduce float32 runs. On a trained LeNet-5 (where
            `auto` is fp32) forcing bf16 left one first-layer filter 0.04 % below the best test image.
        batch_size: images per forward and backward pass; default all of them on a GPU, and on a CPU
            chunks sized so that the largest activation stays near the cache
            (:data:`CPU_CHUNK_ELEMENTS`). Chunks change speed, not results: each image is optimised
            independently.
        fold_bn: run a copy of the model in which each BatchNorm that directly follows a
            convolution is folded into it (:func:`fold_batchnorm`): eval-mode BatchNorm is an affine
            map per channel, so the outputs are the same up to float rounding, with one pass over the
            activations less per BatchNorm in the forward and in the backward. The model itself is
            not changed.

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
    if precision not in PRECISIONS:
        raise ConvlensError(f"unknown precision {precision!r}; choose auto, bf16 or fp32")
    if batch_size is not None and batch_size < 1:
        raise ConvlensError(f"batch_size must be >= 1, not {batch_size}")
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
    bf16 = False  # decided after the probe below
    nhwc = False

    net = model  # what runs: the model, or a copy with BatchNorm folded into convolutions

    def forward(pixels: torch.Tensor, low: bool) -> torch.Tensor:
        x = (pixels - mean_t) / std_t  # the model sees normalised input
        if nhwc and low:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=low):
            out = _forward_to(net, layer, x)
        return out.to(dtype)

    with _frozen(model):
        with _probe(model) as stats:  # one grey image, float32
            n_out = _output_channels(partial(forward, low=False), c_in, size, dev, dtype, layer)
        bf16 = use_bf16(precision, dev, dtype, stats)
        # oneDNN's AMX convolutions run on NHWC; with NCHW input each convolution reorders its tensors.
        nhwc = bf16 and dev.type == "cpu"
        if fold_bn:
            net = fold_batchnorm(model, layer, (c_in, size, size), dev, dtype)
        bad = [c for c in chans if not 0 <= c < n_out]
        if bad:
            what = "classes" if layer is None else f"channels in layer {layer!r}"
            raise ConvlensError(
                f"channel {bad[0]} out of range: there are {n_out} {what} (0-{n_out - 1})"
            )
        targets = torch.tensor(chans, device=dev)
        gens = [torch.Generator().manual_seed(seed + c) for c in chans]
        shape = (c_in, size, size)
        if batch_size is None:
            batch_size = len(chans)
            if dev.type == "cpu":
                batch_size = max(1, min(batch_size, CPU_CHUNK_ELEMENTS // max(1, stats.largest)))
        chunks = [
            slice(a, min(a + batch_size, len(chans))) for a in range(0, len(chans), batch_size)
        ]

        def score(pixels: torch.Tensor, rows: slice, low: bool) -> torch.Tensor:
            # `low`: under bf16 autocast (only ever True when the precision is bf16)
            return objective_values(forward(pixels, low), targets[rows], objective)

        sign = -1.0 if objective == "negative" else 1.0
        with _progress(steps, progress, f"actmax {layer or 'output'}") as bar:
            if simple:
                step_norm = lr if lr is not None else math.sqrt(c_in * size * size) / 255.0
                images, history = _simple_ascent(
                    score, sign, gens, shape, steps, step_norm, dev, dtype, bar, chunks, bf16
                )
            else:
                cm = None
                if decorrelate and c_in == 3:
                    cm = normalize_color_matrix(
                        IMAGENET_COLOR_SQRT if color_matrix is None else color_matrix.float()
                    ).to(dev, dtype)
                with _redirected_relus(net) as redirect:
                    images, history = _readable_ascent(
                        score, sign, gens, shape, steps, lr if lr is not None else DEFAULT_LR,
                        dev, dtype, bar, redirect, chunks, bf16, param=str(param), color_matrix=cm,
                        transforms=transforms, l2=l2, blur=blur,
                    )  # fmt: skip
        with torch.no_grad():  # the reported values in the model's own precision
            values = torch.cat([score(images[rows], rows, False) for rows in chunks])
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


Score = Callable[[torch.Tensor, slice, bool], torch.Tensor]  # (pixels, rows, bf16) -> (B,)


def _simple_ascent(
    score: Score,
    sign: float,
    gens: list[torch.Generator],
    shape: tuple[int, int, int],
    steps: int,
    step_norm: float,
    dev: torch.device,
    dtype: torch.dtype,
    bar: Callable[[], None],
    chunks: list[slice],
    low: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Keras example, batched: `x += step_norm * g / ||g||` per image, from grey 128 + U(0, 20).

    `score(pixels, rows, low)` gives the objective of images `rows` (under bf16 autocast if `low`);
    each chunk of rows is one forward and backward pass.
    """
    x = torch.stack([(128.0 + 20.0 * torch.rand(shape, generator=g)) / 255.0 for g in gens])
    x = x.to(dev, dtype)  # (K, C, S, S) pixels
    history = torch.zeros(steps, len(gens))
    for i in range(steps):
        for rows in chunks:
            xc = x[rows].clone().requires_grad_(True)  # (B, C, S, S); x is updated below
            vals = score(xc, rows, low)  # (B,)
            (grad,) = torch.autograd.grad((sign * vals).sum(), xc)  # (B, C, S, S), each its own
            norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x[rows] += step_norm * grad / (norm + 1e-12)
            history[i, rows] = vals.detach().cpu()
        bar()
    return x.clamp(0.0, 1.0), history


def _readable_ascent(
    score: Score,
    sign: float,
    gens: list[torch.Generator],
    shape: tuple[int, int, int],
    steps: int,
    lr: float,
    dev: torch.device,
    dtype: torch.dtype,
    bar: Callable[[], None],
    redirect: _Redirect,
    chunks: list[slice],
    low: bool,
    *,
    param: str,
    color_matrix: torch.Tensor | None,
    transforms: bool,
    l2: float,
    blur: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on a Fourier (or pixel) parameterisation, seen through random transforms.

    Each chunk of images is one forward and backward pass and its own tensor in the optimiser; Adam
    is element-wise, so the chunks do not change the result. `low`: the model runs under bf16.
    """
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
    var = var.to(dev, dtype)
    parts = [var[rows].clone().requires_grad_(True) for rows in chunks]  # one leaf per chunk
    opt = torch.optim.Adam(parts, lr=lr)
    history = torch.zeros(steps, len(gens))
    warmup = round(steps * REDIRECT_WARMUP)
    for i in range(steps):
        redirect.mode = "always" if i < warmup else "dead"
        opt.zero_grad(set_to_none=True)
        for rows, part in zip(chunks, parts, strict=True):
            pixels = to_valid_pixels(to_raw(part), color_matrix)  # (B, C, full, full) in (0, 1)
            seen = view(pixels, size, draws[i, rows] if transforms else None, tconfig)
            vals = score(seen, rows, low)  # (B,), seen (B, C, S, S)
            loss = -sign * vals
            if l2:
                loss = loss + l2 * (pixels - 0.5).pow(2).flatten(1).mean(1)
            if blur:
                smooth = gaussian_blur3(pixels).detach()
                loss = loss + blur * (pixels - smooth).pow(2).flatten(1).mean(1)
            loss.sum().backward()  # image k's gradient is its own loss's gradient
            history[i, rows] = vals.detach().cpu()
        opt.step()
        bar()
    with torch.no_grad():
        raw = torch.cat([to_raw(part) for part in parts])
        return view(to_valid_pixels(raw, color_matrix), size), history


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
        # Few passes over the (K, C, H, W) tensors: this backward ran in 58 % of a readable step's
        # time on ResNet-20 when it built both gradients with `torch.where` every time.
        neg = x < 0
        if ctx.mode == "always":  # type: ignore[attr-defined]
            # grad > 0: the loss wants x lower, never push a negative unit further down
            return grad.masked_fill(neg & (grad > 0), 0.0), None
        relu_grad = grad.masked_fill(neg, 0.0)
        if ctx.mode == "off":  # type: ignore[attr-defined]
            return relu_grad, None
        alive = relu_grad.flatten(1).norm(dim=1) > 0  # (K,) per batch element
        if bool(alive.all()):  # the usual case once the warm-up is over
            return relu_grad, None
        redirected = grad.masked_fill(neg & (grad > 0), 0.0)
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

    with _frozen(model):
        return _output_channels(
            partial(_forward_to, model, layer),
            input_shape[0],
            input_shape[1],
            dev,
            _model_dtype(model),
            layer,
        )


def _forward_to(model: nn.Module, layer: str | None, x: torch.Tensor) -> torch.Tensor:
    """The output of `layer` for `x` (the model stops there), or the model's output for None."""
    return model(x) if layer is None else truncated_forward(model, layer, x)


def fold_batchnorm(
    model: nn.Module,
    layer: str | None,
    input_shape: tuple[int, int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """A copy of `model` (eval mode) with each BatchNorm2d fed directly by a Conv2d folded into it.

    Pairs are found by running one random batch: a BatchNorm whose input is the very tensor a Conv2d
    returned, each module called once. Pairs that involve `layer` are left alone (their outputs are
    the objective). The copy is checked against the model on another random batch (relative error
    1e-4 of the output's range); if anything differs, or there is nothing to fold, the model itself
    is returned. The copy shares no tensor with the model.
    """
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model  # nothing to fold: no extra forward pass
    convs: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> conv name (output kept alive)
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def hook(name: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def record(m: nn.Module, inputs: tuple[object, ...], out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(m, nn.Conv2d) and isinstance(out, torch.Tensor):
                convs[id(out)] = (name, out)
            elif isinstance(m, nn.BatchNorm2d) and inputs and id(inputs[0]) in convs:
                pairs.append((convs[id(inputs[0])][0], name))

        return record

    g = torch.Generator().manual_seed(0)
    probe, check = (torch.randn(2, *input_shape, generator=g).to(device, dtype) for _ in range(2))
    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            _forward_to(model, layer, probe)
    finally:
        for h in handles:
            h.remove()
    pairs = [
        (c, b)
        for c, b in pairs
        if calls[c] == calls[b] == 1
        and layer not in (c, b)
        and model.get_submodule(b).track_running_stats  # eval BN uses running statistics
    ]
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv = folded.get_submodule(conv_name)
        bn = folded.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        for p in fused.parameters():
            p.requires_grad_(False)
        for name, new in ((conv_name, fused), (bn_name, nn.Identity())):
            parent, _, attr = name.rpartition(".")
            setattr(folded.get_submodule(parent), attr, new)
    with torch.no_grad():
        want, got = _forward_to(model, layer, check), _forward_to(folded, layer, check)
    if want.shape != got.shape or not bool(
        ((got - want).abs().max() <= 1e-4 * want.abs().max().clamp(min=1e-12)).item()
    ):
        return model
    return folded


@dataclass
class ForwardStats:
    """What one forward pass up to the layer computes, per image (see :func:`_probe`).

    Attributes:
        largest: elements of the largest module output.
        conv_macs: multiply-accumulates in `nn.Conv2d` modules.
        wide_macs: those in convolutions with at least :data:`AMX_MIN_CHANNELS` input channels per group.
    """

    largest: int = 0
    conv_macs: int = 0
    wide_macs: int = 0


# An AMX bf16 tile multiplies 32-long rows (16 channel pairs): narrower convolutions cannot fill it.
# LeNet-5 (1 -> 6 -> 16 channels) ran no faster in bf16 (0.13 s either way for 6 channels, 64 steps).
AMX_MIN_CHANNELS = 16


def use_bf16(
    precision: str,
    device: torch.device,
    dtype: torch.dtype,
    stats: ForwardStats | None = None,
) -> bool:
    """Whether `precision` (`auto`, `bf16`, `fp32`) means bfloat16 autocast here.

    `auto` is bf16 only for a float32 model on a CPU with AMX tiles (Sapphire Rapids and later),
    where oneDNN runs bf16 convolutions on the tile unit, and (given `stats`) only when at least
    half of the convolutions' work is in convolutions wide enough to fill a tile. Elsewhere bf16
    measured no faster (an H100 at these sizes is launch-bound; LeNet-5 on the CPU), and on a
    float64 model it would change the results for nothing.
    """
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    if device.type != "cpu" or dtype != torch.float32 or not _cpu_has_amx():
        return False
    return stats is None or (stats.conv_macs > 0 and 2 * stats.wide_macs >= stats.conv_macs)


def _cpu_has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent in old versions
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


@contextlib.contextmanager
def _probe(model: nn.Module) -> Iterator[ForwardStats]:
    """Fill the yielded :class:`ForwardStats` from the forward passes run inside the block (per image
    when the batch is one image). Hooks on every module, removed on exit.
    """
    stats = ForwardStats()

    def hook(m: nn.Module, _i: object, out: object) -> None:
        if not isinstance(out, torch.Tensor):
            return
        stats.largest = max(stats.largest, out.numel())
        if isinstance(m, nn.Conv2d):
            per_out = m.in_channels // m.groups * math.prod(m.kernel_size)
            stats.conv_macs += out.numel() * per_out
            if m.in_channels // m.groups >= AMX_MIN_CHANNELS:
                stats.wide_macs += out.numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


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
