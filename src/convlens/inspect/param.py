"""Image parameterisations and random transforms for feature visualisation.

The readable defaults of Olah et al., "Feature Visualization" (Distill, 2017), as Lucid and Lucent
implement them:

* **Fourier parameterisation.** The optimised variable is the image's 2-D real spectrum, each
  frequency scaled by `1 / f` (Lucent's `fft_image`, decay power 1). Gradient steps then change low
  frequencies as readily as high ones, instead of piling up high-frequency noise.
* **Colour decorrelation.** For three channels the optimised colours are mixed by the square root of
  the colour covariance (Lucid's fixed ImageNet matrix, or the data set's own, see
  :func:`color_correlation_sqrt`), so one step moves along natural colour directions.
* **Sigmoid to [0, 1].** The result is squashed to the valid pixel range.
* **Transformation robustness.** Each step the model sees the image jittered, scaled and rotated by a
  random amount (:func:`random_affine`), so only features that survive small transforms are kept.

Every function here works on a batch `(K, ...)` and treats each element independently, so a batch
of K images optimises exactly as K separate runs would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Lucid's `color_correlation_svd_sqrt`: the square root (U * sqrt(S) of an SVD) of the colour covariance
# of ImageNet pixels; rows are R, G, B, columns the principal colour directions (brightness first).
# Its product with its transpose is that covariance, in [0, 1] pixel units squared:
#     [[0.0761, 0.0692, 0.0627], [0.0692, 0.0754, 0.0714], [0.0627, 0.0714, 0.0819]].
IMAGENET_COLOR_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)

# Lucent divides the inverse FFT by this constant so that the initial image has a small spread.
_FFT_MAGIC = 4.0


def normalize_color_matrix(m: torch.Tensor) -> torch.Tensor:
    """Scale a colour matrix so its largest column has unit L2 norm (as Lucid does)."""
    return m / m.norm(dim=0).max()


def color_correlation_sqrt(images: torch.Tensor, max_pixels: int = 1_000_000) -> torch.Tensor:
    """The data set's own colour decorrelation matrix, normalised as Lucid's ImageNet one.

    Args:
        images: uint8 `(N, 3, H, W)` images of the data set.
        max_pixels: at most this many pixels are used (an evenly spaced subset).

    Returns:
        float32 `(3, 3)`: `U @ diag(sqrt(eigenvalues))` of the pixel colour covariance, columns
        ordered from the largest principal direction, scaled so the largest column norm is 1.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) images, got {tuple(images.shape)}")
    px = images.permute(0, 2, 3, 1).reshape(-1, 3).to(torch.float64) / 255.0  # (P, 3)
    if px.shape[0] > max_pixels:
        px = px[:: math.ceil(px.shape[0] / max_pixels)]
    cov = torch.cov(px.T)  # (3, 3)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    # An eigenvector's sign is arbitrary: make each column's largest entry positive, for stable output.
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    sqrt = evecs * signs * evals.sqrt()
    return normalize_color_matrix(sqrt).to(torch.float32)


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Frequency magnitude of each coefficient of `torch.fft.rfft2` for an `h x w` image: `(h, w//2+1)`."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def fft_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """The `1 / f` spectrum scaling, `(h, w//2+1)`; the DC term is capped at `max(h, w)` as in Lucent."""
    freqs = rfft2d_freqs(h, w)
    return torch.tensor(
        1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power, dtype=torch.float32
    )


def fft_init(
    channels: int, h: int, w: int, generator: torch.Generator, sd: float = 0.01
) -> torch.Tensor:
    """A random spectrum `(C, h, w//2+1, 2)` (real and imaginary parts), normal with std `sd`."""
    return torch.randn(channels, h, w // 2 + 1, 2, generator=generator) * sd


def fft_to_image(spectrum: torch.Tensor, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`(K, C, h, w//2+1, 2)` spectra -> `(K, C, h, w)` unbounded images (before colour and sigmoid)."""
    z = torch.view_as_complex((spectrum * scale[..., None]).contiguous())
    return torch.fft.irfft2(z, s=(h, w), norm="ortho") / _FFT_MAGIC


def to_valid_pixels(raw: torch.Tensor, color_matrix: torch.Tensor | None) -> torch.Tensor:
    """`(K, C, H, W)` unbounded -> pixels in (0, 1): colour-correlate (3 channels), then sigmoid."""
    if color_matrix is not None and raw.shape[1] == 3:
        # Each pixel's 3 decorrelated coordinates -> RGB: (K, H, W, 3) @ (3, 3)^T
        raw = torch.einsum("khwj,ij->kihw", raw.permute(0, 2, 3, 1), color_matrix)
    return torch.sigmoid(raw)


def margin_for(size: int) -> int:
    """Pixels synthesised beyond each edge of a `size` image and cropped away at the end.

    The Fourier basis is periodic: without a margin the left edge of the image is tied to the right
    one, and a step that darkens the middle rings at the borders, where sigmoid-saturated pixels then
    get stuck (on a trained LeNet-5 this cost a fifth of a first-layer filter's best response). With
    a margin the seam lies outside the picture, and the random shifts see image, not padding.
    """
    return max(2, math.ceil(size / 8))


@dataclass(frozen=True)
class TransformConfig:
    """How much each step's random transform moves the image (Lucent's `standard_transforms`, scaled).

    Attributes:
        jitter: largest shift, in whole pixels, in each direction.
        scale: largest relative zoom (0.05 = zoom drawn from [0.95, 1.05]).
        degrees: largest rotation, in degrees.
    """

    jitter: float
    scale: float = 0.05
    degrees: float = 5.0

    @classmethod
    def for_size(cls, size: int) -> TransformConfig:
        """Lucent's shift is 8 px at 224 px (and zoom 0.9-1.1, rotation +-10 deg).

        The shift is scaled with the image (8 px at 224, 2 px at 64, 1 px at 28-32) so that a 28 px
        digit moves by as large a fraction of itself as an ImageNet photo does, and rounded to whole
        pixels. Zoom and rotation are half Lucent's: they resample the image (bilinear), which blurs
        away the pixel-sized patterns a unit may want; with Lucent's full amounts and fractional
        shifts, only 14 of 32 channels of a random RegNet layer ended above the best of 64 noise
        images (benchmarks/actmax_regnet_check.py).
        """
        return cls(jitter=float(max(1, round(8.0 * size / 224.0))))


def draw_transforms(steps: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform numbers in [-1, 1], `(steps, 4)`: shift x, shift y, zoom, rotation for each step."""
    return torch.rand(steps, 4, generator=generator) * 2.0 - 1.0


def view(
    images: torch.Tensor,
    size: int,
    draws: torch.Tensor | None = None,
    config: TransformConfig | None = None,
    fill: float = 0.5,
) -> torch.Tensor:
    """The centred `size x size` window of each image, each shifted, zoomed and rotated by its own amount.

    Args:
        images: `(K, C, H, W)` pixels, `H, W >= size` (the picture plus its margin).
        size: output height and width.
        draws: `(K, 4)` in [-1, 1] (from :func:`draw_transforms`), one row per image; None for the
            plain centre crop.
        config: the largest shift, zoom and rotation (required with `draws`).
        fill: pixel value shown where a transform reaches beyond the margin (Lucent pads with 0.5).

    Returns:
        `(K, C, size, size)`, bilinearly resampled.
    """
    k, c, h, w = images.shape
    if draws is None:
        top, left = (h - size) // 2, (w - size) // 2
        return images[..., top : top + size, left : left + size]
    if config is None:
        raise ValueError("view() needs a TransformConfig with draws")
    d = draws.to(images)
    zoom = 1.0 + config.scale * d[:, 2]  # (K,)
    angle = torch.deg2rad(config.degrees * d[:, 3])
    # affine_grid maps output coordinates to input ones in [-1, 1] units: the window covers size/w of
    # the input, and dividing by the zoom enlarges.
    # Whole-pixel shifts (Lucid's jitter is a crop): a fractional shift would resample, which blurs
    # the pixel-sized patterns that many units (all of a random network's) respond to.
    shift = torch.round(d[:, :2] * config.jitter)  # (K, 2) pixels, x then y
    rx, ry = size / w, size / h
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * rx, -sin * ry, shift[:, 0] * 2.0 / w], dim=1),
            torch.stack([sin * rx, cos * ry, shift[:, 1] * 2.0 / h], dim=1),
        ],
        dim=1,
    )  # (K, 2, 3)
    grid = F.affine_grid(theta, [k, c, size, size], align_corners=False)
    # zeros padding of (image - fill) is padding the image with `fill`
    return F.grid_sample(images - fill, grid, mode="bilinear", align_corners=False) + fill


def gaussian_blur3(images: torch.Tensor) -> torch.Tensor:
    """A 3x3 binomial blur of each channel of `(K, C, H, W)`, edges replicated."""
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device) / 4.0
    kernel = (k1[:, None] * k1[None, :]).expand(images.shape[1], 1, 3, 3)
    x = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(x, kernel, groups=images.shape[1])
