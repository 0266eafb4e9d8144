"""Winograd convolution for 3x3 stride-1 layers on CPU: 2-3x fewer multiplies than direct.

For occlusion, from the middle of a network on (ResNet-18's ``layer3.1`` and ``layer4``) every
occluded copy changes the whole feature map, so those layers are computed in full for every window
and take most of the time; oneDNN's direct convolution already runs them near the CPU's peak. The
minimal filtering algorithms of Winograd, in the form of Lavin and Gray ("Fast Algorithms for
Convolutional Neural Networks", CVPR 2016), compute an ``m x m`` output tile of a 3x3 correlation
from an ``(m+2) x (m+2)`` input tile with ``(m+2)^2`` multiplies instead of ``9 m^2``:

    Y = A^T [ (G g G^T) * (B^T d B) ] A

Summed over input channels, the elementwise products become one matrix product per transform point:
``(m+2)^2`` GEMMs of ``(tiles, C) @ (C, K)``, which MKL runs at ~85 % of the direct kernels'
speed. With ``m = 4`` that is 4x fewer multiplies (3x at 7x7 and 14x14 maps after rounding up to
whole tiles).

The matrices come from the Toom-Cook construction on the points ``0, 1, -1, 1/2, -2`` (plus
infinity); 1/2 instead of 2 keeps the entries small, which matters in float32: on random layers the
error is ~3e-6 of the output's largest value for ``m = 4`` (direct convolution: ~1e-6); ``m >= 5``
reaches 1e-5-5e-4 and is not offered. Transforms are applied as small Kronecker-product GEMMs on
chunks of tiles that stay in cache.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import numpy as np
import torch

# Finite interpolation points per output tile size m (infinity is the last point).
_POINTS: dict[int, tuple[float, ...]] = {
    2: (0.0, 1.0, -1.0),
    3: (0.0, 1.0, -1.0, 0.5),
    4: (0.0, 1.0, -1.0, 0.5, -2.0),
}
_CHUNK_BYTES = (
    1 << 22
)  # per-chunk transform buffers: small enough to stay in cache (measured 2-4 MiB best)


@cache
def winograd_matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(A^T, G, B^T)` of F(m, r), float64, such that `A^T [(G g) * (B^T d)]` correlates d with g.

    `A^T` is `(m, a)`, `G` is `(a, r)` and `B^T` is `(a, a)` with `a = m + r - 1`.
    """
    a = m + r - 1
    pts = np.asarray(_POINTS[m], dtype=np.float64)
    AT, G = np.zeros((m, a)), np.zeros((a, r))
    for j, p in enumerate(pts):
        AT[:, j] = p ** np.arange(m)
        G[j] = p ** np.arange(r) / np.prod([p - q for q in pts if q != p])
    AT[m - 1, a - 1] = G[a - 1, r - 1] = 1.0  # the point at infinity: leading coefficients
    # B^T follows from y_i = sum_k d_{i+k} g_k for every d and g: for each (i, k) pair,
    # sum_j AT[i, j] G[j, k] BT[j, t] = [t == i + k], a linear system with a unique solution.
    E = np.einsum("ij,jk->ikj", AT, G).reshape(m * r, a)
    T = np.zeros((m * r, a))
    for i in range(m):
        for k in range(r):
            T[i * r + k, i + k] = 1.0
    BT = np.linalg.solve(E.T @ E, E.T @ T)
    # The solution is rational (small denominators); snap away the solver's ~1e-17 residues, which
    # would otherwise turn exact zeros into denormal floats (and slow MKL down ~2x).
    BT = np.vectorize(lambda v: float(Fraction(float(v)).limit_denominator(1000)))(BT)
    assert np.abs(E @ BT - T).max() < 1e-12, "Toom-Cook system not solved"
    return AT, G, BT


def output_tile(h: int, w: int) -> int:
    """The tile size with the fewest multiplies for an `h x w` output (ties: the smaller tile)."""

    def cost(m: int) -> int:
        return (m + 2) ** 2 * (-(-h // m)) * (-(-w // m))

    return min(_POINTS, key=cost)


class Winograd3x3:
    """A 3x3, stride-1, dilation-1, ungrouped convolution computed with Winograd F(m, 3).

    Args:
        weight: `(K, C, 3, 3)`.
        bias: `(K,)` or None.
        workspace: scratch buffers, shared by the layers of one network (they run one at a time).

    Call with a channels-last `(P, C, h, w)` batch, the zeros to add on top and left, and the
    output size; bottom and right are padded with zeros as far as the output needs.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        workspace: dict[str, torch.Tensor] | None = None,
    ) -> None:
        assert weight.shape[2:] == (3, 3), weight.shape
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach().float()
        self.K, self.C = weight.shape[:2]
        self._u: dict[int, torch.Tensor] = {}
        self._work = {} if workspace is None else workspace

    def _transforms(self, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`U (a^2, C, K)`, `B (a^2, a^2)` and `A (m^2, a^2)` (Kronecker forms), float32."""
        AT, G, BT = winograd_matrices(m)
        if m not in self._u:
            g = torch.as_tensor(G)
            w = self.weight.to(torch.float64)
            u = torch.einsum("ak,bl,ockl->abco", g, g, w)  # (a, a, C, K), in float64 first
            self._u[m] = u.reshape(-1, self.C, self.K).to(torch.float32).contiguous()
        bk = torch.as_tensor(np.kron(BT, BT), dtype=torch.float32)
        ak = torch.as_tensor(np.kron(AT, AT), dtype=torch.float32)
        return self._u[m], bk, ak

    def _buffer(self, name: str, n: int) -> torch.Tensor:
        """A reusable flat float32 buffer (fresh large tensors cost page faults on every call)."""
        buf = self._work.get(name)
        if buf is None or buf.numel() < n:
            buf = self._work[name] = torch.empty(n)
        return buf[:n]

    def __call__(
        self,
        x: torch.Tensor,
        pad_top: int,
        pad_left: int,
        out_h: int,
        out_w: int,
        x_ref: torch.Tensor | None = None,
        y_ref: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The convolution of `x` `(P, C, h, w)`: `(P, K, out_h, out_w)`, channels-last.

        With a reference input `x_ref` and its exact output `y_ref` (broadcastable to `x` and to
        the output; `y_ref` includes the bias), returns `y_ref + conv(x - x_ref)`: the transform
        then only sees the difference, and its rounding error scales with that difference rather
        than with `x`. For occlusion the reference is the clean image's tensor, and the
        difference is zero or small away from the patch.
        """
        P, C, h, w = x.shape
        K, m = self.K, output_tile(out_h, out_w)
        a = m + 2
        th, tw = -(-out_h // m), -(-out_w // m)
        Hp, Wp = th * m + 2, tw * m + 2  # padded input that whole tiles need
        u, bk, ak = self._transforms(m)
        xh = x.permute(0, 2, 3, 1)  # (P, h, w, C), contiguous when x is channels-last
        if x_ref is not None or (pad_top, pad_left, h, w) != (0, 0, Hp, Wp):
            hh, ww = min(h, Hp - pad_top), min(w, Wp - pad_left)
            xp = self._buffer("pad", P * Hp * Wp * C).view(P, Hp, Wp, C)
            xp[:, :pad_top].zero_()
            xp[:, pad_top + hh :].zero_()
            xp[:, :, :pad_left].zero_()
            xp[:, :, pad_left + ww :].zero_()
            inside = xp[:, pad_top : pad_top + hh, pad_left : pad_left + ww]
            if x_ref is None:
                inside.copy_(xh[:, :hh, :ww])
            else:
                torch.sub(xh[:, :hh, :ww], x_ref.permute(0, 2, 3, 1)[:, :hh, :ww], out=inside)
            xh = xp
        tiles = xh.unfold(1, a, m).unfold(2, a, m)  # (P, th, tw, C, a, a), a view
        T = th * tw
        N = P * T
        # Input transform, a chunk of patches at a time: V[xi*a + nu, n, c] = (B^T d_n,c B)[xi, nu].
        V = self._buffer("V", a * a * N * C).view(a * a, N * C)
        step = max(1, _CHUNK_BYTES // (a * a * T * C * 4))
        for p0 in range(0, P, step):
            p1 = min(P, p0 + step)
            n0, n1 = p0 * T * C, p1 * T * C
            d = self._buffer("d", a * a * (n1 - n0)).view(a, a, p1 - p0, th, tw, C)
            d.copy_(tiles[p0:p1].permute(4, 5, 0, 1, 2, 3))
            torch.mm(bk, d.view(a * a, -1), out=V[:, n0:n1])
        # One (N, C) @ (C, K) product per transform point.
        M = self._buffer("M", a * a * N * K).view(a * a, N, K)
        torch.bmm(V.view(a * a, N, C), u, out=M)
        # Output transform and crop, again by chunks: Y = A^T M A, plus the bias or y_ref.
        out = torch.empty(P, out_h, out_w, K, dtype=x.dtype)
        exact = (out_h, out_w) == (th * m, tw * m)
        add: torch.Tensor | None = self.bias if y_ref is None else y_ref.permute(0, 2, 3, 1)
        Mf = M.view(a * a, N * K)
        step = max(1, _CHUNK_BYTES // (a * a * T * K * 4))
        for p0 in range(0, P, step):
            p1 = min(P, p0 + step)
            y = self._buffer("y", m * m * (p1 - p0) * T * K)
            torch.mm(ak, Mf[:, p0 * T * K : p1 * T * K], out=y.view(m * m, -1))
            y6 = y.view(m, m, p1 - p0, th, tw, K).permute(2, 3, 0, 4, 1, 5)  # (p, th, m, tw, m, K)
            dst, extra = out[p0:p1], add
            if extra is not None and extra.dim() == 4 and extra.shape[0] > 1:
                extra = extra[p0:p1]
            if exact:  # write tiles straight into place
                dst = dst.view(p1 - p0, th, m, tw, m, K)
                if extra is not None and extra.dim() == 4:
                    extra = extra.reshape(extra.shape[0], th, m, tw, m, K)
            else:  # the last tiles overhang the output: crop (a copy, in cache)
                y6 = y6.reshape(p1 - p0, th * m, tw * m, K)[:, :out_h, :out_w]
            if extra is None:
                dst.copy_(y6)
            else:
                torch.add(y6, extra, out=dst)
        return out.permute(0, 3, 1, 2)  # (P, K, out_h, out_w), channels-last
