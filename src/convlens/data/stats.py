"""Per-channel statistics of uint8 images: mean/std for normalisation, PCA basis for lighting noise."""

from __future__ import annotations

import math

import torch


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 `(N, C, H, W)`, in [0, 1] units.

    Exact and cheap: a 256-bin histogram per channel, then the moments in float64 (summing 150 M
    float32 pixels directly would lose digits).
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1).to(torch.int64), minlength=256)
        p = hist.to(torch.float64) / max(1, int(hist.sum()))
        m = float((p * levels).sum())
        var = float((p * (levels - m) ** 2).sum())
        means.append(m)
        stds.append(
            math.sqrt(max(var, 0.0)) or 1.0
        )  # a constant channel: std 1, not a division by 0
    return tuple(means), tuple(stds)


def pca_lighting_basis(
    images: torch.Tensor, max_images: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the pixel colours, for AlexNet's PCA lighting noise.

    Args:
        images: training images, uint8 `(N, C, H, W)`.
        max_images: at most this many images (every k-th, deterministic) are used.

    Returns:
        `(sqrt_eigval (C,), eigvec (C, C))`, columns of `eigvec` are the components, in [0, 1] pixel
        units. As in fb.resnet.torch and torchvision's reference scripts, the noise for one image is
        `eigvec @ (alpha * sqrt_eigval)` with `alpha ~ N(0, lighting)`: the square roots of the
        eigenvalues (the standard deviation along each component), which is what AlexNet's
        "magnitudes proportional to the eigenvalues" amounts to for pixel values in [0, 1].
    """
    n = images.shape[0]
    step = max(1, math.ceil(n / max_images))
    x = images[::step].to(torch.float64).div_(255.0)  # (n', C, H, W)
    c = x.shape[1]
    pix = x.permute(1, 0, 2, 3).reshape(c, -1)  # (C, n' * H * W)
    cov = torch.cov(pix)
    cov = cov.reshape(1, 1) if c == 1 else cov
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    eigval, eigvec = eigval.flip(0), eigvec.flip(1)
    return eigval.clamp_min(0).sqrt().to(torch.float32), eigvec.to(torch.float32)
