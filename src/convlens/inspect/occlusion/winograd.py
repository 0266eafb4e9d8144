"""Winograd convolution for 3x3 stride-1 layers on CPU: ~3x fewer multiplies than direct.

For occlusion, from the middle of a network on (ResNet-18's ``layer3.1`` and ``layer4``) every
occluded copy changes the whole feature map, so those layers are computed in full for every window
and take most of the time; oneDNN's direct convolution already runs them near the CPU's peak. The
minimal filtering algorithms of Winograd, in the form of Lavin and Gray ("Fast Algorithms for
Convolutional Neural Networks", CVPR 2016), compute an ``m x m`` output tile of a 3x3 correlation
from an ``(m+2) x (m+2)`` input tile with ``(m+2)^2`` multiplies instead of ``9 m^2``:

    Y = A^T [ (G g G^T) * (B^T d B) ] A

Summed over input channels, the elementwise products become one matrix product per transform point:
``(m+2)^2`` GEMMs of ``(tiles, C) @ (C, K)``, which MKL runs near the CPU's peak. Tiles of 4 and 3
can cover each axis exactly (14 = 4+4+3+3: 1764 multiplies per input and output channel become
484; see :func:`tiling`), but each tile shape needs its own transformed weights, so :func:`plan`
weighs multiplies against weight reads (7x7 maps at ~100 copies: 2x2 tiles of 4, 144 multiplies
against 441, one 36-point weight set).

The matrices come from the Toom-Cook construction on the points ``0, 1, -1, 1/2, -2`` (plus
infinity); 1/2 instead of 2 keeps the entries small, which matters in float32: on random layers the
error is ~4e-6 of the output's largest value (direct convolution: ~1e-6); tiles of 5 or more
reach 1e-5-5e-4 and are not offered.

The tile transforms run as small Kronecker-product GEMMs on chunks of tiles that stay in cache;
buffers are reused across calls (fresh large tensors page-fault).
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
# Per-chunk transform buffers: small enough to stay in cache (2-4 MiB measured best).
_CHUNK_BYTES = 1 << 22


@cache
def winograd_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(A^T, G, B^T)` of F(m, 3), float64, such that `A^T [(G g) * (B^T d)]` correlates d with g.

    `A^T` is `(m, a)`, `G` is `(a, 3)` and `B^T` is `(a, a)` with `a = m + 2`.
    """
    r = 3
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


Runs = tuple[tuple[int, int, int], ...]  # (start, count, m) per run of equal tiles along an axis


def tiling(n: int, mixed: bool = True) -> Runs:
    """How to cover `n` outputs along one axis: runs `(start, count, m)` of tiles of size m.

    Each tile of size m needs m + 2 transform points, so the fewest tiles is best. Mixed: ceil(n/4)
    tiles, sizes 4 then 3 so that they cover n exactly (14 = 4+4+3+3: 22 points per axis instead
    of the 24 of four 4-tiles overhanging by 2). Otherwise (and for n = 1, 2, 5, which cannot be
    split so) one size, the last tile overhanging.
    """
    s = -(-n // 4)
    k3 = 4 * s - n
    runs: Runs
    if mixed and k3 <= s:
        runs = ((0, s - k3, 4), (4 * (s - k3), k3, 3))
    else:
        m = min(_POINTS, key=lambda m: (m + 2) * -(-n // m))
        runs = ((0, -(-n // m), m),)
    return tuple(r for r in runs if r[1] > 0)


# One transform point's weights (C x K floats) are read from memory once per call; relative to its
# (N x C) @ (C x K) product that costs about as much as this many more rows N (a ~130 GMAC/s
# product against ~10 GB/s of memory on the 2-core machine this was measured on).
_WEIGHT_ROWS = 52


def plan(out_h: int, out_w: int, batch: int) -> tuple[Runs, Runs]:
    """Row and column tilings for `batch` outputs of `out_h x out_w`, mixed tiles or one size.

    Mixed tiles need fewer multiplies but one weight matrix per tile shape: 121 points' weights
    instead of 36 for a 7x7 map, which end to end cost more than they save at ~100 copies (all
    512-channel layers' weights no longer fit in cache). Cost: per tile shape, points x (rows +
    `_WEIGHT_ROWS`).
    """

    def cost(rr: Runs, cc: Runs) -> int:
        return sum(
            (mr + 2) * (mc + 2) * (batch * qr * qc + _WEIGHT_ROWS)
            for _, qr, mr in rr
            for _, qc, mc in cc
        )

    options = [(tiling(out_h, mixed), tiling(out_w, mixed)) for mixed in (True, False)]
    return min(options, key=lambda o: cost(*o))


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
        # (mr, mc) -> (U, B, A) of that tile shape, see _transforms
        self._u: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._work = {} if workspace is None else workspace

    def _transforms(self, mr: int, mc: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For `mr x mc` tiles: `U (ar*ac, C, K)`, `B (ar*ac, ar*ac)`, `A (mr*mc, ar*ac)`, float32.

        `B` and `A` are Kronecker products of the 1-D transforms of the two axes.
        """
        if (mr, mc) not in self._u:  # once per tile shape: every batch reuses them
            ATr, Gr, BTr = winograd_matrices(mr)
            ATc, Gc, BTc = winograd_matrices(mc)
            # U[xi*ac + nu, c, o] = sum_kl Gr[xi, k] Gc[nu, l] w[o, c, k, l]: one GEMM of the
            # Kronecker product with the taps-first weights, in float64 (computed in float32, U
            # moved ResNet-18's attributions from 3.5e-5 to 5.0e-5 of Captum's scale).
            # By column chunks, so the float64 intermediate stays in cache (2-5x faster).
            w = self.weight.permute(2, 3, 1, 0).reshape(9, self.C * self.K)  # (kl, c*o)
            gk = torch.as_tensor(np.kron(Gr, Gc))  # (ar*ac, 9), float64
            u = torch.empty(gk.shape[0], self.C * self.K, dtype=torch.float32)
            for s in range(0, u.shape[1], 1 << 15):
                u[:, s : s + (1 << 15)] = gk @ w[:, s : s + (1 << 15)].double()
            bk = torch.as_tensor(np.kron(BTr, BTc), dtype=torch.float32)
            ak = torch.as_tensor(np.kron(ATr, ATc), dtype=torch.float32)
            self._u[mr, mc] = (u.view(-1, self.C, self.K), bk, ak)
        return self._u[mr, mc]

    def _buffer(self, name: str, n: int) -> torch.Tensor:
        """A reusable flat float32 buffer (fresh large tensors cost page faults on every call)."""
        buf = self._work.get(name)
        if buf is None or buf.numel() < n:
            buf = self._work[name] = torch.empty(n, dtype=torch.float32)
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
        K = self.K
        runs_r, runs_c = plan(out_h, out_w, P)
        Hc = runs_r[-1][0] + runs_r[-1][1] * runs_r[-1][2]  # outputs the tiles cover (>= out_h)
        Wc = runs_c[-1][0] + runs_c[-1][1] * runs_c[-1][2]
        Hp, Wp = Hc + 2, Wc + 2  # padded input that whole tiles need
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
        exact = (Hc, Wc) == (out_h, out_w)
        add: torch.Tensor | None = self.bias if y_ref is None else y_ref.permute(0, 2, 3, 1)
        out = torch.empty(P, Hc, Wc, K, dtype=x.dtype)
        for r0, qr, mr in runs_r:
            for c0, qc, mc in runs_c:
                # Tiles of one size: a regular grid over a sub-rectangle of the padded input.
                sub = xh[:, r0 : r0 + qr * mr + 2, c0 : c0 + qc * mc + 2]
                dst = out[:, r0 : r0 + qr * mr, c0 : c0 + qc * mc]
                extra = add
                if exact and add is not None and add.dim() == 4:
                    extra = add[:, r0 : r0 + qr * mr, c0 : c0 + qc * mc]
                self._tiles(sub, dst, mr, mc, extra if exact else None)
        if exact:
            return out.permute(0, 3, 1, 2)  # (P, K, out_h, out_w), channels-last
        # The last tiles overhang the output (tiny maps only): crop, then add the bias or y_ref.
        cropped = out[:, :out_h, :out_w]
        res = cropped.clone() if add is None else cropped + add
        return res.permute(0, 3, 1, 2)

    def _tiles(
        self,
        xs: torch.Tensor,
        dst: torch.Tensor,
        mr: int,
        mc: int,
        add: torch.Tensor | None,
    ) -> None:
        """Convolve `xs` `(P, qr*mr + 2, qc*mc + 2, C)` into `dst` `(P, qr*mr, qc*mc, K)` (+ `add`)."""
        P, C, K = xs.shape[0], self.C, self.K
        ar, ac = mr + 2, mc + 2
        A = ar * ac
        qr, qc = dst.shape[1] // mr, dst.shape[2] // mc
        u, bk, ak = self._transforms(mr, mc)
        tiles = xs.unfold(1, ar, mr).unfold(2, ac, mc)  # (P, qr, qc, C, ar, ac), a view
        T = qr * qc
        N = P * T
        # Input transform, a chunk of patches at a time: V[xi*ac + nu, n, c] = (B^T d_n,c B)[xi, nu].
        V = self._buffer("V", A * N * C).view(A, N * C)
        step = max(1, _CHUNK_BYTES // (A * T * C * 4))
        for p0 in range(0, P, step):
            p1 = min(P, p0 + step)
            d = self._buffer("d", A * (p1 - p0) * T * C).view(ar, ac, p1 - p0, qr, qc, C)
            d.copy_(tiles[p0:p1].permute(4, 5, 0, 1, 2, 3))
            torch.mm(bk, d.view(A, -1), out=V[:, p0 * T * C : p1 * T * C])
        # One (N, C) @ (C, K) product per transform point.
        M = self._buffer("M", A * N * K).view(A, N, K)
        torch.bmm(V.view(A, N, C), u, out=M)
        # Output transform, again by chunks, written straight into place: Y = A^T M A (+ add).
        Mf = M.view(A, N * K)
        step = max(1, _CHUNK_BYTES // (A * T * K * 4))
        for p0 in range(0, P, step):
            p1 = min(P, p0 + step)
            y = self._buffer("y", mr * mc * (p1 - p0) * T * K)
            torch.mm(ak, Mf[:, p0 * T * K : p1 * T * K], out=y.view(mr * mc, -1))
            # (mr, mc, p, qr, qc, K) -> (p, qr, mr, qc, mc, K): tiles back in image order
            y6 = y.view(mr, mc, p1 - p0, qr, qc, K).permute(2, 3, 0, 4, 1, 5)
            place = dst[p0:p1].unflatten(1, (qr, mr)).unflatten(3, (qc, mc))
            if add is None:
                place.copy_(y6)
            else:
                if add.dim() == 4:
                    add_p = add if add.shape[0] == 1 else add[p0:p1]
                    torch.add(y6, add_p.unflatten(1, (qr, mr)).unflatten(3, (qc, mc)), out=place)
                else:
                    torch.add(y6, add, out=place)
