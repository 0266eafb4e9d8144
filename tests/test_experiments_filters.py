"""The first-filters measures on synthetic filters whose answer is known by construction.

Oracles: an oriented edge and a Gabor (energy along one orientation) against isotropic filters (a
difference of Gaussians, smoothed white noise from scipy.ndimage); a red-green blob (colour
weights of opposite sign over one support) against a luminance edge (no colour at all), and their
sum; the spectrum-matched null's radial spectrum against the filters'.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from convlens.experiments.filter_measures import (
    colour_opponency,
    orientation_index,
    spectrum_matched_null,
)

Y, X = np.mgrid[-3:4, -3:4].astype(np.float64)  # a 7x7 grid


def _grey(f: np.ndarray) -> np.ndarray:
    return np.stack([f, f, f])[None]  # (1, 3, 7, 7)


def _gauss(s: float) -> np.ndarray:
    return np.exp(-(X**2 + Y**2) / (2 * s * s))


def test_oriented_filters_score_high_and_isotropic_ones_low() -> None:
    rng = np.random.default_rng(0)
    smooth = np.array(
        [gaussian_filter(rng.standard_normal((3, 7, 7)), (0, 1, 1)) for _ in range(300)]
    )
    smooth_scores = orientation_index(smooth)
    cut = np.percentile(smooth_scores, 95)
    for angle in (0.0, np.pi / 4, np.pi / 3, np.pi / 2):
        u = X * np.cos(angle) + Y * np.sin(angle)
        edge = orientation_index(_grey(np.tanh(2 * u)))[0]
        gabor = orientation_index(_grey(_gauss(2.0) * np.cos(1.5 * u)))[0]
        assert edge > cut and gabor > cut, (angle, edge, gabor, cut)
        assert gabor > 0.6
    dog = orientation_index(_grey(_gauss(1.0) - 0.5 * _gauss(2.0)))[0]
    assert dog < 0.01  # exactly isotropic up to the square grid, whose 4-fold part cancels
    assert np.median(smooth_scores) < 0.2  # smoothness alone does not score


def test_orientation_ignores_flat_colour_and_channel_count() -> None:
    flat = np.ones((2, 1, 5, 5))
    assert np.all(orientation_index(flat) == 0.0)
    edge1 = orientation_index(np.tanh(X)[None, None])[0]
    assert abs(edge1 - orientation_index(_grey(np.tanh(X)))[0]) < 1e-12


def test_colour_opponency_blob_edge_and_their_sum() -> None:
    blob = _gauss(1.5)
    red_green = np.stack([blob, -blob, 0 * blob])[None]
    edge = _grey(np.tanh(X))
    edge *= np.linalg.norm(red_green) / np.linalg.norm(edge)  # the same energy
    assert colour_opponency(red_green)[0] > 0.99  # all energy is one opponent component
    assert colour_opponency(edge)[0] < 1e-12  # luminance only
    both = colour_opponency(red_green + edge)[0]
    assert abs(both - 0.5) < 1e-9  # still half opponent (the old score gave 0.32, then 0)
    assert colour_opponency(red_green + 2 * edge)[0] > 0.15  # and not 0 with twice the edge


def test_null_keeps_the_radial_spectrum_and_has_no_orientation() -> None:
    rng = np.random.default_rng(1)
    u = X * np.cos(0.5) + Y * np.sin(0.5)
    oriented = np.array(
        [_grey(_gauss(2.0) * np.cos(1.2 * u + p))[0] for p in rng.uniform(0, 6, 50)]
    )
    null = spectrum_matched_null(oriented, 4000, seed=3)
    assert null.shape == (4000, 3, 7, 7)
    # radial power: mean power per ring of |f| equal (within sampling error)
    fy, fx = np.meshgrid(np.fft.fftfreq(7), np.fft.fftfreq(7), indexing="ij")
    ring = np.rint(np.hypot(fy, fx) * 7).astype(int)
    p_f = (np.abs(np.fft.fft2(oriented)) ** 2).mean(axis=(0, 1))
    p_n = (np.abs(np.fft.fft2(null)) ** 2).mean(axis=(0, 1))
    for r in np.unique(ring):
        m = ring == r
        assert abs(p_n[m].mean() - p_f[m].mean()) <= 0.1 * p_f[m].mean() + 1e-9
    assert np.median(orientation_index(null)) < np.median(orientation_index(oriented)) / 2
