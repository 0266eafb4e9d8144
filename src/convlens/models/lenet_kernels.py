"""LeNet-5's C1 and C3 blocks (conv -> 2x2 max pool -> ReLU) as C kernels, for training on CPU.

At batch 64 these two blocks took most of a LeNet-5 training step, although they are a small part
of its arithmetic: oneDNN's convolution kernels are built for many channels (a one-channel 5x5
convolution runs at a few GFLOP/s), and max pooling and its backward (which first zero-fills a
64 x 6 x 28 x 28 gradient) are separate passes over the largest tensors of the network.

* C1 (one input channel): one pass per image computes, for 16 pooled columns at once, the four
  convolution values of each 2x2 window (the padded image is split into even and odd columns, so
  every tap is one contiguous vector load), keeps the window's maximum and which of the four won,
  and applies the ReLU. Backward: the output gradient scattered to the winners and correlated with
  the split image for the weight and bias gradients; the image needs no gradient.
* C3 (up to 6 input channels, unpadded): vectors over 16 output channels. Backward: each window's
  gradient reaches one convolution output per channel, so the input and weight gradients change
  by rows of 5 x C floats at the winners only, with the channels listed by winner without
  branches (their order is random).

Measured on the 2-core development CPU, batch 64, two threads: C1 0.20 ms forward and 0.32 ms
backward, C3 0.21 ms and 0.27 ms, against about 2.1 ms and 1.6 ms for oneDNN's convolutions,
torch's pooling and their backward passes (``benchmarks/RESULTS.md``).

Same function and gradients as ``relu(max_pool2d(conv2d(x, w, b, padding=pad), 2))`` to float
rounding, including the first maximum winning a tie (zero backgrounds make many). Parallel over
images with OpenMP; the threads' partial weight gradients are summed in thread order, so results
are deterministic for a given thread count (resumed training repeats an uninterrupted run). Built
by :mod:`convlens.native`; :func:`conv_pool_relu` returns None wherever neither applies.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import torch
from torch import nn

from convlens.native import compile_library

_SOURCE = r"""
/* convlens.models.lenet_kernels. C1: conv (one input channel, 5 x 5, zero padding) -> 2x2 max
   pool -> ReLU, forward and weight/bias backward, on vectors of 16 pooled columns. Images (N, H, W)
   float; outputs channels-last (N, Hp, Wp, K). */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
#endif
typedef float v16 __attribute__((vector_size(64)));
typedef int i16 __attribute__((vector_size(64)));
static inline v16 ld(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 sel(i16 m, v16 a, v16 b) { return (v16)(((i16)a & m) | ((i16)b & ~m)); }
enum { R = 5, L = 16, MAXK = 64 };  /* kernel side; pooled columns per vector; channels */
/* Padded image split by column parity: E[y][c] = plane[y][2c], O[y][c] = plane[y][2c + 1], rows of
   PW floats so that vectors at offsets 0..2 stay inside. */
enum { PW = L + 4 };
static void split(const float *x, int H, int W, int pad, int ph, float *E, float *O) {
    memset(E, 0, sizeof(float) * PW * ph);
    memset(O, 0, sizeof(float) * PW * ph);
    for (int y = 0; y < H; y++)
        for (int c = 0; c < W; c++) {
            int cc = c + pad;
            ((cc & 1) ? O : E)[(y + pad) * PW + (cc >> 1)] = x[y * W + c];
        }
}
/* conv row y at columns 2c + d, for c = 0..15: taps j read parity (d + j) & 1 at offset (d + j) >> 1 */
static inline v16 conv_row(const float *E, const float *O, int y, int d, const float *wk, float b) {
    v16 acc = {0};
    acc += b;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < R; j++) {
            const float *pl = ((d + j) & 1) ? O : E;
            acc += wk[i * R + j] * ld(pl + (y + i) * PW + ((d + j) >> 1));
        }
    return acc;
}
/* out[n, py, px, k] = relu(max of the 2x2 window of conv), idx = the window's winner (0-3). */
int c1_forward(const float *x, int N, int H, int W, const float *w, const float *b, int K, int pad,
               float *out, unsigned char *idx, int nt) {
    int Hp = (H + 2 * pad - R + 1) / 2, Wp = (W + 2 * pad - R + 1) / 2, ph = H + 2 * pad;
    if (Wp > L || K > MAXK || Hp < 1 || Wp < 1 || W + 2 * pad > 2 * PW) return -1;
    #pragma omp parallel num_threads(nt)
    {
        float *E = malloc(sizeof(float) * PW * ph * 2), *O = E + PW * ph;
        float mo[MAXK][L]; int ma[MAXK][L];
        #pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            split(x + (long)n * H * W, H, W, pad, ph, E, O);
            for (int py = 0; py < Hp; py++) {
                for (int k = 0; k < K; k++) {
                    const float *wk = w + k * R * R;
                    v16 v0 = conv_row(E, O, 2 * py, 0, wk, b[k]), v1 = conv_row(E, O, 2 * py, 1, wk, b[k]);
                    v16 v2 = conv_row(E, O, 2 * py + 1, 0, wk, b[k]), v3 = conv_row(E, O, 2 * py + 1, 1, wk, b[k]);
                    /* the first maximum in row-major order wins, as in max_pool2d */
                    v16 m = v0; i16 a = {0}, c;
                    c = v1 > m; m = sel(c, v1, m); a = (a & ~c) | (c & 1);
                    c = v2 > m; m = sel(c, v2, m); a = (a & ~c) | (c & 2);
                    c = v3 > m; m = sel(c, v3, m); a = (a & ~c) | (c & 3);
                    c = m > 0; m = sel(c, m, (v16){0});
                    st(mo[k], m); memcpy(ma[k], &a, sizeof a);
                }
                float *o = out + ((long)n * Hp + py) * Wp * K;
                unsigned char *ix = idx + ((long)n * Hp + py) * Wp * K;
                for (int px = 0; px < Wp; px++)
                    for (int k = 0; k < K; k++) { o[px * K + k] = mo[k][px]; ix[px * K + k] = (unsigned char)ma[k][px]; }
            }
        }
        free(E);
    }
    return 0;
}
/* dw (K, 5, 5) and db (K) from g (N, Hp, Wp, K), the gradient at the block's output. */
int c1_backward(const float *x, int N, int H, int W, int K, int pad, const float *out,
                const unsigned char *idx, const float *g, float *dw, float *db, int nt) {
    int Ho = H + 2 * pad - R + 1, Hp = Ho / 2, Wp = (W + 2 * pad - R + 1) / 2, ph = H + 2 * pad;
    int KRR = K * R * R;
    if (Wp > L || K > MAXK || Hp < 1 || Wp < 1 || W + 2 * pad > 2 * PW) return -1;
    float *part = calloc((size_t)nt * (KRR + K), sizeof(float));
    if (!part) return -2;
    #pragma omp parallel num_threads(nt)
    {
        float *E = malloc(sizeof(float) * PW * ph * 2), *O = E + PW * ph;
        /* G[k][y][d][c]: gradient at conv row y, column 2c + d */
        float *G = malloc(sizeof(float) * K * Ho * 2 * L);
        v16 *acc = aligned_alloc(64, sizeof(v16) * KRR);
        float *mine = part + (size_t)omp_get_thread_num() * (KRR + K);
        memset(acc, 0, sizeof(v16) * KRR);
        #pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            split(x + (long)n * H * W, H, W, pad, ph, E, O);
            memset(G, 0, sizeof(float) * K * Ho * 2 * L);
            long base = (long)n * Hp * Wp * K;
            for (int py = 0; py < Hp; py++)
                for (int px = 0; px < Wp; px++)
                    for (int k = 0; k < K; k++) {
                        long q = base + (py * Wp + px) * K + k;
                        float v = out[q] > 0 ? g[q] : 0;  /* through the ReLU */
                        int a = idx[q];
                        G[((k * Ho + 2 * py + (a >> 1)) * 2 + (a & 1)) * L + px] = v;
                        mine[KRR + k] += v;
                    }
            for (int k = 0; k < K; k++)
                for (int i = 0; i < R; i++) {
                    v16 s[R] = {{0}};
                    for (int y = 0; y < Ho; y++)
                        for (int d = 0; d < 2; d++) {
                            v16 gv = ld(G + ((k * Ho + y) * 2 + d) * L);
                            for (int j = 0; j < R; j++) {
                                const float *pl = ((d + j) & 1) ? O : E;
                                s[j] += gv * ld(pl + (y + i) * PW + ((d + j) >> 1));
                            }
                        }
                    for (int j = 0; j < R; j++) acc[(k * R + i) * R + j] += s[j];
                }
        }
        for (int t = 0; t < KRR; t++) {
            float sum = 0;
            for (int l = 0; l < L; l++) sum += acc[t][l];
            mine[t] = sum;
        }
        free(E); free(G); free(acc);
    }
    /* the threads' partial sums in thread order: deterministic for a given thread count */
    memset(dw, 0, sizeof(float) * KRR);
    memset(db, 0, sizeof(float) * K);
    for (int t = 0; t < nt; t++) {
        for (int e = 0; e < KRR; e++) dw[e] += part[(size_t)t * (KRR + K) + e];
        for (int k = 0; k < K; k++) db[k] += part[(size_t)t * (KRR + K) + KRR + k];
    }
    free(part);
    return 0;
}

/* ---- C3: conv (C <= 6 input channels, 5 x 5, no padding) -> 2x2 max pool -> ReLU, on vectors of
   16 output channels; the backward pass also gives the input's gradient. ---- */
enum { NV = 2, SP = NV * L };  /* a row segment of R * C <= 32 floats: 2 vectors */

/* x (N, H, W, C) channels-last; wt (R, R, C, K); b (K); out, idx (N, Hp, Wp, K); K % 16 == 0. */
int c3_forward(const float *x, int N, int H, int W, int C, const float *wt, const float *b, int K,
               float *out, unsigned char *idx, int nt) {
    int Hp = (H - R + 1) / 2, Wp = (W - R + 1) / 2;
    if (K % L || Hp < 1 || Wp < 1) return -1;
    #pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (long)n * H * W * C;
        for (int py = 0; py < Hp; py++)
            for (int px = 0; px < Wp; px++)
                for (int kb = 0; kb < K; kb += L) {
                    v16 a0 = ld(b + kb), a1 = a0, a2 = a0, a3 = a0;
                    for (int i = 0; i < R; i++)
                        for (int j = 0; j < R; j++) {
                            const float *p0 = xn + ((2 * py + i) * W + 2 * px + j) * C;
                            const float *p2 = p0 + W * C;  /* one conv row down */
                            const float *wij = wt + ((i * R + j) * C) * K + kb;
                            for (int c = 0; c < C; c++) {
                                v16 w = ld(wij + c * K);
                                a0 += p0[c] * w; a1 += p0[C + c] * w;
                                a2 += p2[c] * w; a3 += p2[C + c] * w;
                            }
                        }
                    v16 m = a0; i16 a = {0}, t;  /* first maximum in row-major order wins */
                    t = a1 > m; m = sel(t, a1, m); a = (a & ~t) | (t & 1);
                    t = a2 > m; m = sel(t, a2, m); a = (a & ~t) | (t & 2);
                    t = a3 > m; m = sel(t, a3, m); a = (a & ~t) | (t & 3);
                    t = m > 0; m = sel(t, m, (v16){0});
                    long o = (((long)n * Hp + py) * Wp + px) * K + kb;
                    st(out + o, m);
                    for (int l = 0; l < L; l++) idx[o + l] = (unsigned char)a[l];
                }
    }
    return 0;
}

/* From g (N, Hp, Wp, K): dx (N, H, W, C), dw (K, R, SP) and db (K), with wr (K, R, SP): rows of
   R * C floats zero-padded to SP = a whole number of vectors. Each window's gradient reaches one
   conv output per channel k, so dx and dw change by row segments of R * C floats. */
int c3_backward(const float *x, int N, int H, int W, int C, const float *wr, int K,
                const float *out, const unsigned char *idx, const float *g, float *dx, float *dw,
                float *db, int nt) {
    int Hp = (H - R + 1) / 2, Wp = (W - R + 1) / 2, KRS = K * R * SP, Q = Hp * Wp;
    if (K % L || Hp < 1 || Wp < 1 || R * C > SP || K > 64) return -1;
    float *part = calloc((size_t)nt * (KRS + K), sizeof(float));
    if (!part) return -2;
    #pragma omp parallel num_threads(nt)
    {
        /* padded copies of the image and its gradient: vectors may run past a row segment */
        float *xi = malloc(sizeof(float) * (H * W * C + SP));
        float *gx = malloc(sizeof(float) * (H * W * C + SP));
        float *v = malloc(sizeof(float) * Q * K);  /* the gradient through the ReLU */
        float *mine = part + (size_t)omp_get_thread_num() * (KRS + K);
        #pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            memcpy(xi, x + (long)n * H * W * C, sizeof(float) * H * W * C);
            memset(xi + H * W * C, 0, sizeof(float) * SP);
            memset(gx, 0, sizeof(float) * (H * W * C + SP));
            const float *on = out + (long)n * Q * K, *gn = g + (long)n * Q * K;
            const unsigned char *an = idx + (long)n * Q * K;
            for (int e = 0; e < Q * K; e++) v[e] = on[e] > 0 ? gn[e] : 0;
            /* dw[k] += v * (the input rows under k's winner), summed in registers per channel */
            for (int k = 0; k < K; k++) {
                v16 s[R][NV];
                float *dk = mine + k * R * SP;
                for (int i = 0; i < R; i++) for (int u = 0; u < NV; u++) s[i][u] = ld(dk + i * SP + u * L);
                for (int q = 0; q < Q; q++) {  /* no branch on vk: a zero adds nothing */
                    float vk = v[q * K + k];
                    int a = an[q * K + k], y = 2 * (q / Wp) + (a >> 1), x0 = 2 * (q % Wp) + (a & 1);
                    mine[KRS + k] += vk;
                    for (int i = 0; i < R; i++) {
                        const float *xs = xi + ((y + i) * W + x0) * C;
                        for (int u = 0; u < NV; u++) s[i][u] += vk * ld(xs + u * L);
                    }
                }
                for (int i = 0; i < R; i++) for (int u = 0; u < NV; u++) st(dk + i * SP + u * L, s[i][u]);
            }
            /* dx: per window and winning position, the rows it reaches summed over its channels */
            for (int q = 0; q < Q; q++) {
                /* the window's channels with a nonzero gradient, listed by winning position
                   (without branches: their order is random, and mispredictions cost most) */
                int list[4][64], cnt[4] = {0, 0, 0, 0};
                for (int k = 0; k < K; k++) {
                    int a = an[q * K + k];
                    list[a][cnt[a]] = k;
                    cnt[a] += v[q * K + k] != 0;
                }
                for (int a = 0; a < 4; a++) {
                    if (!cnt[a]) continue;
                    int y = 2 * (q / Wp) + (a >> 1), x0 = 2 * (q % Wp) + (a & 1);
                    v16 s[R][NV];
                    for (int i = 0; i < R; i++) for (int u = 0; u < NV; u++) s[i][u] = (v16){0};
                    for (int e = 0; e < cnt[a]; e++) {
                        int k = list[a][e];
                        float vk = v[q * K + k];
                        const float *wk = wr + k * R * SP;
                        for (int i = 0; i < R; i++)
                            for (int u = 0; u < NV; u++) s[i][u] += vk * ld(wk + i * SP + u * L);
                    }
                    for (int i = 0; i < R; i++) {
                        float *gs = gx + ((y + i) * W + x0) * C;  /* padded weights: 0 past S */
                        for (int u = 0; u < NV; u++) st(gs + u * L, ld(gs + u * L) + s[i][u]);
                    }
                }
            }
            memcpy(dx + (long)n * H * W * C, gx, sizeof(float) * H * W * C);
        }
        free(xi);
        free(gx);
        free(v);
    }
    /* the threads' partial sums in thread order: deterministic for a given thread count */
    memset(dw, 0, sizeof(float) * KRS);
    memset(db, 0, sizeof(float) * K);
    for (int t = 0; t < nt; t++) {
        const float *p = part + (size_t)t * (KRS + K);
        for (int e = 0; e < KRS; e++) dw[e] += p[e];
        for (int k = 0; k < K; k++) db[k] += p[KRS + k];
    }
    free(part);
    return 0;
}
"""


@cache
def load() -> ctypes.CDLL | None:
    """The compiled kernels, or None where there is no C compiler (or `CONVLENS_C_KERNELS=0`)."""
    lib = compile_library("lenet", _SOURCE)
    if lib is None:
        return None
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    fwd: list[Any] = [ptr, i32, i32, i32, ptr, ptr, i32, i32, ptr, ptr, i32]
    bwd: list[Any] = [ptr, i32, i32, i32, i32, i32, ptr, ptr, ptr, ptr, ptr, i32]
    lib.c1_forward.argtypes, lib.c1_backward.argtypes = fwd, bwd
    fwd = [ptr, i32, i32, i32, i32, ptr, ptr, i32, ptr, ptr, i32]
    bwd = [ptr, i32, i32, i32, i32, ptr, i32, ptr, ptr, ptr, ptr, ptr, ptr, i32]
    lib.c3_forward.argtypes, lib.c3_backward.argtypes = fwd, bwd
    for f in (lib.c1_forward, lib.c1_backward, lib.c3_forward, lib.c3_backward):
        f.restype = i32
    return lib


class _ConvPoolReLU(torch.autograd.Function):
    """`relu(max_pool2d(conv2d(x, w, b, padding=pad), 2))` for one-channel images, 5x5 kernels."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pad: int
    ) -> torch.Tensor:
        lib = load()
        assert lib is not None
        N, _, H, W = x.shape
        K = weight.shape[0]
        Hp, Wp = (H + 2 * pad - 4) // 2, (W + 2 * pad - 4) // 2
        img = x.reshape(N, H, W).contiguous()  # one channel: NCHW and channels-last alike
        w, b = weight.detach().contiguous(), bias.detach().contiguous()
        out = torch.empty(N, Hp, Wp, K)  # channels-last
        idx = torch.empty(N, Hp, Wp, K, dtype=torch.uint8)  # each window's winner, 0-3
        err = lib.c1_forward(
            img.data_ptr(), N, H, W, w.data_ptr(), b.data_ptr(), K, pad, out.data_ptr(),
            idx.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        assert err == 0, err
        ctx.save_for_backward(img, out, idx)
        ctx.geometry = (K, pad)
        return out.permute(0, 3, 1, 2)  # (N, K, Hp, Wp), channels-last

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, None]:
        lib = load()
        assert lib is not None
        img, out, idx = ctx.saved_tensors
        K, pad = ctx.geometry
        N, H, W = img.shape
        g = grad.permute(0, 2, 3, 1).contiguous()  # free when the gradient is channels-last
        dw, db = torch.empty(K, 1, 5, 5), torch.empty(K)
        err = lib.c1_backward(
            img.data_ptr(), N, H, W, K, pad, out.data_ptr(), idx.data_ptr(), g.data_ptr(),
            dw.data_ptr(), db.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        assert err == 0, err
        return None, dw, db, None


class _WideConvPoolReLU(torch.autograd.Function):
    """`relu(max_pool2d(conv2d(x, w, b), 2))`, 5x5 unpadded, `C <= 6` in, `16k <= 64` out."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        lib = load()
        assert lib is not None
        N, C, H, W = x.shape
        K = weight.shape[0]
        Hp, Wp = (H - 4) // 2, (W - 4) // 2
        xh = x.detach().permute(0, 2, 3, 1).contiguous()  # (N, H, W, C): free if channels-last
        wt = weight.detach().permute(2, 3, 1, 0).contiguous()  # (5, 5, C, K): vectors over K
        out = torch.empty(N, Hp, Wp, K)  # channels-last
        idx = torch.empty(N, Hp, Wp, K, dtype=torch.uint8)  # each window's winner, 0-3
        err = lib.c3_forward(
            xh.data_ptr(), N, H, W, C, wt.data_ptr(), bias.detach().contiguous().data_ptr(), K,
            out.data_ptr(), idx.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        assert err == 0, err
        ctx.save_for_backward(xh, weight, out, idx)
        return out.permute(0, 3, 1, 2)  # (N, K, Hp, Wp), channels-last

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        lib = load()
        assert lib is not None
        xh, weight, out, idx = ctx.saved_tensors
        N, H, W, C = xh.shape
        K, S = weight.shape[0], 5 * C
        # Rows (k, i) of the kernel, 5 * C floats each, zero-padded to two vectors (32 floats).
        wr = torch.zeros(K, 5, 32)
        wr[:, :, :S] = weight.detach().permute(0, 2, 3, 1).reshape(K, 5, S)
        g = grad.permute(0, 2, 3, 1).contiguous()  # free when the gradient is channels-last
        dx, dw, db = torch.empty(N, H, W, C), torch.empty(K, 5, 32), torch.empty(K)
        err = lib.c3_backward(
            xh.data_ptr(), N, H, W, C, wr.data_ptr(), K, out.data_ptr(), idx.data_ptr(),
            g.data_ptr(), dx.data_ptr(), dw.data_ptr(), db.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        assert err == 0, err
        dweight = dw[:, :, :S].reshape(K, 5, 5, C).permute(0, 3, 1, 2)  # channels-last
        dinput = dx.permute(0, 3, 1, 2) if ctx.needs_input_grad[0] else None
        return dinput, dweight, db


def _max_pool_2x2(pool: nn.Module) -> bool:
    return (
        isinstance(pool, nn.MaxPool2d)
        and pool.kernel_size in (2, (2, 2))
        and pool.stride in (2, (2, 2))
        and pool.padding in (0, (0, 0))
        and pool.dilation in (1, (1, 1))
        and not pool.ceil_mode
    )


def conv_pool_relu(x: torch.Tensor, conv: nn.Conv2d, pool: nn.Module) -> torch.Tensor | None:
    """`relu(pool(conv(x)))` by a C kernel, or None where none applies.

    Both need a float32 CPU batch, a 5x5 stride-1 undilated convolution with zero padding and a
    bias, 2x2 stride-2 max pooling, and kernels that could be built. Then either LeNet-5's C1:
    one input channel that needs no gradient, at most 64 output channels and 32 output columns
    (28x28 images padded by 2, or 32x32 unpadded); or its C3: at most 6 input channels, no
    padding, a multiple of 16 output channels up to 64.
    """
    square = isinstance(conv.padding, tuple) and conv.padding[0] == conv.padding[1]
    pad = int(conv.padding[0]) if square else -1
    plain = (
        square
        and _max_pool_2x2(pool)
        and x.device.type == "cpu"
        and x.dtype == conv.weight.dtype == torch.float32
        and x.dim() == 4
        and conv.bias is not None
        and conv.kernel_size == (5, 5)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(x.shape[2:]) + 2 * pad >= 6
    )
    if not plain or load() is None:
        return None
    out: torch.Tensor
    if (
        x.shape[1] == conv.in_channels == 1
        and not x.requires_grad
        and conv.out_channels <= 64
        and x.shape[3] + 2 * pad <= 36
    ):
        out = _ConvPoolReLU.apply(x, conv.weight, conv.bias, pad)
        return out
    if (
        x.shape[1] == conv.in_channels <= 6
        and pad == 0
        and conv.out_channels % 16 == 0
        and conv.out_channels <= 64
    ):
        out = _WideConvPoolReLU.apply(x, conv.weight, conv.bias)
        return out
    return None
