"""Gradient ascent on the input: the two loops of activation maximisation.

* :func:`simple_ascent` — the Keras `conv_filter_visualization.py` example, batched: plain pixels,
  the gradient divided by its L2 norm, a fixed step.
* :func:`readable_ascent` — Lucid's readable defaults: Adam on a Fourier (or pixel)
  parameterisation seen through random transforms (:mod:`convlens.inspect.param`), ReLU gradients
  redirected (:func:`redirected_relus`) so that a unit that is off at the start can switch on.

Both treat each image of the batch independently (its own gradient, its own normalisation, Adam
element-wise), so a batch of K images gives the images of K separate runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from convlens.inspect.param import (
    TransformConfig,
    draw_transforms,
    fft_init,
    fft_scale,
    fft_to_image,
    gaussian_blur3,
    margin_for,
    to_valid_pixels,
    view,
)

# For the first eighth of the steps every ReLU passes gradient that pushes a unit up, off or on; after
# that only for images whose ReLU gradient is zero everywhere (Lucid's rule). Without the warm-up, a
# first-layer filter of a trained LeNet-5 that wants a dark image reached half its best data response.
REDIRECT_WARMUP = 0.125

# The best-so-far image is judged every this many steps, on the untransformed image (one forward
# pass without gradient: a third of a step's cost, so a twelfth when spread over four steps).
BEST_EVERY = 4
# The last fraction of the steps sees the image untransformed: transforms keep a trained network's
# images readable, but the returned image is judged as it is. On a random RegNet, 15 of 16 channels
# ended above the best noise image without this and the best-so-far rule, 16 of 16 with both
# (benchmarks/results/2026-12-07-inspect.md).
POLISH = 0.125

Score = Callable[[torch.Tensor, slice, bool], torch.Tensor]  # (pixels, rows, bf16) -> (B,)


class Ascent(NamedTuple):
    """What a loop returns.

    Attributes:
        images: `(K, C, S, S)` pixels in [0, 1].
        history: `(steps, K)` the objective at every step, on the image the model saw that step.
        start: `(K,)` the objective of the start image, seen without transforms.
    """

    images: torch.Tensor
    history: torch.Tensor
    start: torch.Tensor


def simple_ascent(
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
) -> Ascent:
    """The Keras example, batched: `x += step_norm * g / ||g||` per image, from grey 128 + U(0, 20).

    `score(pixels, rows, low)` gives the objective of images `rows` (under bf16 autocast if `low`);
    each chunk of rows is one forward and backward pass. Returns the last image, as Keras does.
    """
    x = torch.stack([(128.0 + 20.0 * torch.rand(shape, generator=g)) / 255.0 for g in gens])
    x = x.to(dev, dtype)  # (K, C, S, S) pixels
    with torch.no_grad():
        start = torch.cat([score(x[rows], rows, False) for rows in chunks]).cpu()
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
    return Ascent(x.clamp(0.0, 1.0), history, start)


def readable_ascent(
    score: Score,
    sign: float,
    gens: list[torch.Generator],
    shape: tuple[int, int, int],
    steps: int,
    lr: float,
    dev: torch.device,
    dtype: torch.dtype,
    bar: Callable[[], None],
    redirect: Redirect,
    chunks: list[slice],
    low: bool,
    *,
    param: str,
    color_matrix: torch.Tensor | None,
    transforms: bool,
    l2: float,
    blur: float,
) -> Ascent:
    """Adam on a Fourier (or pixel) parameterisation, seen through random transforms; best so far.

    Each chunk of images is one forward and backward pass and its own tensor in the optimiser; Adam
    is element-wise, so the chunks do not change the result. `low`: the model runs under bf16.

    The model is trained on transformed views, but what is returned is each image's best so far by
    the objective of the untransformed image (in the model's own precision), measured at the start,
    every :data:`BEST_EVERY` steps and after the last: the returned image never scores below the
    start image (`sign` says which way is better).
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
    polish = steps - round(steps * POLISH) if transforms else steps  # first untransformed step

    def plain(part: torch.Tensor) -> torch.Tensor:
        return view(to_valid_pixels(to_raw(part), color_matrix), size)  # (B, C, S, S)

    with torch.no_grad():
        best = [plain(part) for part in parts]  # the start images
        best_val = [sign * score(b, rows, False) for b, rows in zip(best, chunks, strict=True)]
        start = sign * torch.cat(best_val).cpu()
    for i in range(steps):
        redirect.mode = "always" if i < warmup else "dead"
        opt.zero_grad(set_to_none=True)
        for rows, part in zip(chunks, parts, strict=True):
            pixels = to_valid_pixels(to_raw(part), color_matrix)  # (B, C, full, full) in (0, 1)
            moved = transforms and i < polish
            seen = view(pixels, size, draws[i, rows] if moved else None, tconfig)
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
        if (i + 1) % BEST_EVERY == 0 or i + 1 == steps:
            with torch.no_grad():
                for j, (rows, part) in enumerate(zip(chunks, parts, strict=True)):
                    img = plain(part)
                    val = sign * score(img, rows, False)  # (B,), higher is better
                    better = val > best_val[j]
                    best[j] = torch.where(better.view(-1, 1, 1, 1), img, best[j])
                    best_val[j] = torch.maximum(val, best_val[j])
        bar()
    return Ascent(torch.cat(best), history, start)


@dataclass
class Redirect:
    """Which ReLU gradient :func:`_redirected_relus` gives; the optimisation loop switches it.

    `"always"`: the gradient passes wherever it pushes a unit up, on or off (a warm-up, so that
    one region switching on early cannot leave the rest of the image without gradient).
    `"dead"`: Lucid's rule: only for a batch element whose ordinary ReLU gradient is zero everywhere.
    `"off"`: the ordinary ReLU gradient.
    """

    mode: Literal["always", "dead", "off"] = "dead"


class RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient can still flow where the unit is off but the objective wants it on.

    Lucid's `redirected_relu_grad`: a start image that leaves the target unit (or everything before
    it) below zero gets no gradient through a plain ReLU and never moves. The redirected gradient
    passes the incoming one except where it would push an already negative input lower. Decisions
    are made per batch element, so batching still changes nothing.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, state: Redirect
    ) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.mode = state.mode  # type: ignore[attr-defined]
        return x.clamp_min(0.0)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        # Few passes over the (K, C, H, W) tensors: this runs at every ReLU of every step.
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
def redirected_relus(model: nn.Module) -> Iterator[Redirect]:
    """Give every `nn.ReLU` module of `model` a redirectable gradient inside the block.

    Yields the switch (:class:`Redirect`). The hooks are removed on exit. ReLUs called as functions
    (`F.relu`) are not modules and keep their ordinary gradient.
    """
    state = Redirect()
    handles = []
    stash: dict[nn.Module, torch.Tensor] = {}

    def pre(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        # An in-place ReLU overwrites its input: keep a copy (with its graph) of the pre-activation.
        stash[m] = args[0].clone() if getattr(m, "inplace", False) else args[0]

    def post(m: nn.Module, _args: object, _out: torch.Tensor) -> torch.Tensor:
        return RedirectedReLU.apply(stash.pop(m), state)

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
