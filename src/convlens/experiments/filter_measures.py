"""Measures of first-layer filters: orientation and colour opponency, and their null.

Per filter ``w`` of shape (3, k, k) (any channel count for orientation):

- **orientation index** (doubled angle): remove each channel's mean, take the power spectrum
  ``P(f)`` of each channel on a zero-padded grid and add the channels; with ``θ(f)`` the angle of
  the frequency ``f``, ``OI = |Σ P e^{2iθ}| / Σ P`` over the non-zero frequencies. Doubling the
  angle makes ``f`` and ``-f`` (the same orientation) add up and opposite orientations 90° apart
  cancel: 1 for a filter whose energy lies along one orientation (an edge, a grating, a Gabor),
  near 0 for an isotropic filter (a blob, a difference of Gaussians, smoothed noise on average).
  Unlike the largest band's share, it does not reward smoothness.
- **colour opponency**: split ``w`` into its achromatic part (the mean over the colour channels,
  the projection on the (1, 1, 1) axis) and its chromatic rest ``c``; the index is the energy of
  the best rank-one chromatic component (one colour vector times one spatial map: colour weights
  of opposite sign over a shared spatial support, since a chromatic colour vector sums to zero)
  as a fraction of the filter's energy, ``σ₁(c)² / |w|²``. 1 for a red-green blob, 0 for any
  luminance filter, 0.5 for a red-green blob plus a luminance edge of the same energy.
- **spectrum-matched null**: random filters whose per-channel *radial* power spectrum equals the
  mean of the given filters' (random phases, isotropic): what a filter with the same smoothness
  but no orientation or colour structure scores.
"""

from __future__ import annotations

import numpy as np

FFT_SIZE = 16


def _freqs(size: int) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(size)[:, None] * np.ones((1, size))
    fx = np.fft.fftfreq(size)[None, :] * np.ones((size, 1))
    return fy, fx  # (size, size) each


def orientation_index(w: np.ndarray, *, size: int = FFT_SIZE) -> np.ndarray:
    """Doubled-angle orientation index of each filter (module docstring).

    Args:
        w: filters ``(F, C, k, k)``.

    Returns:
        ``(F,)`` values in [0, 1]; 0 for a filter with no energy off DC.
    """
    w = np.asarray(w, dtype=np.float64)
    w = w - w.mean(axis=(2, 3), keepdims=True)  # a flat colour has no orientation
    power = (np.abs(np.fft.fft2(w, s=(size, size))) ** 2).sum(axis=1)  # (F, size, size)
    fy, fx = _freqs(size)
    phase = np.exp(2j * np.arctan2(fy, fx))  # (size, size); DC has no power after the mean
    total = power.sum(axis=(1, 2))
    num = np.abs((power * phase).sum(axis=(1, 2)))
    return np.where(total > 1e-20, num / np.where(total > 1e-20, total, 1.0), 0.0)


def colour_opponency(w: np.ndarray) -> np.ndarray:
    """Chromatic rank-one energy fraction of each filter (module docstring).

    Args:
        w: filters ``(F, 3, k, k)``.

    Returns:
        ``(F,)`` values in [0, 1].
    """
    w = np.asarray(w, dtype=np.float64).reshape(len(w), w.shape[1], -1)  # (F, 3, k*k)
    chroma = w - w.mean(axis=1, keepdims=True)  # (F, 3, k*k): achromatic axis projected out
    s1 = np.linalg.svd(chroma, compute_uv=False)[:, 0]  # (F,) largest singular value
    total = (w**2).sum(axis=(1, 2))
    return np.where(total > 1e-20, s1**2 / np.where(total > 1e-20, total, 1.0), 0.0)


def spectrum_matched_null(w: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """`n` random filters with the mean radial power spectrum of `w` per channel (module docstring).

    Args:
        w: filters ``(F, C, k, k)``.
        n: how many null filters.

    Returns:
        ``(n, C, k, k)`` float64.
    """
    w = np.asarray(w, dtype=np.float64)
    _, c, k, _ = w.shape
    fy, fx = _freqs(k)
    radius = np.rint(np.hypot(fy, fx) * k).astype(int)  # (k, k) radial bin of each frequency
    power = (np.abs(np.fft.fft2(w)) ** 2).mean(axis=0)  # (C, k, k)
    amp = np.zeros_like(power)
    for r in np.unique(radius):
        ring = radius == r
        amp[:, ring] = np.sqrt(power[:, ring].mean(axis=1, keepdims=True))  # isotropic
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, c, k, k))
    spec = np.fft.fft2(noise) / k  # unit expected power per frequency
    return np.real(np.fft.ifft2(spec * amp[None]))
