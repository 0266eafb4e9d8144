"""Winograd's tile transforms as small C kernels, compiled once per machine and loaded with ctypes.

In :mod:`convlens.inspect.winograd` the product of each transform point is one MKL ``bmm`` near the
CPU's peak; the input and output transforms around it are memory-bound reshuffles that torch runs
as a gather copy, a Kronecker-product GEMM and a permuted add, about a third of a layer's time.
Here each transform is one pass: the input kernel reads each tile of ``x - x_ref`` (zero outside
the input, so no padded copy is made) and writes its ``B^T d B`` straight into the ``(points,
tiles, C)`` layout the ``bmm`` reads; the output kernel reads the ``bmm`` result, computes
``A^T M A``, adds the bias or the reference output and writes the valid pixels into place.

The C source is generated for every tile shape ``(mr, mc)`` in {2, 3, 4}^2 with the transform
coefficients as constants (zeros and ones vanish), on vectors of 16 floats (GCC/Clang vector
extensions: AVX-512 where the CPU has it, split into narrower instructions otherwise), and
parallel over images with OpenMP. :mod:`convlens.native` compiles it the first time it is needed
(about 6 s, once per machine); without a C compiler, or with ``CONVLENS_C_KERNELS=0``, Winograd
uses its torch transforms instead (same results up to float rounding, slower).
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import numpy as np
import torch

from convlens.native import compile_library

TILES = (2, 3, 4)  # output tile sizes m with kernels (F(m, 3) needs m + 2 input points)
VECTOR = 16  # floats per vector: the channel counts the kernels accept are multiples of this


def _combination(coefs: np.ndarray, names: list[str]) -> str:
    """C expression for `sum(c * name)`, skipping zero coefficients and writing +-1 as signs."""
    terms = []
    for c, n in zip(coefs, names, strict=True):
        if c == 0:
            continue
        sign = "-" if c < 0 else "+"
        terms.append(f"{sign} {n}" if abs(c) == 1 else f"{sign} {abs(float(c))!r}f * {n}")
    if not terms:
        return "Z"
    expr = " ".join(terms)
    return expr[2:] if expr.startswith("+ ") else expr


def _tile_loop(mr: int, mc: int) -> list[str]:
    """Both kernels' loop over tiles `n = (p, tr, tc)`, images shared out over OpenMP threads;
    `(yb, xb)` is the tile's first row and column (input for `in_`, output for `out_`)."""
    return [
        "  const v16 Z = {0};",
        "  #pragma omp parallel for num_threads(nt) schedule(static)",
        "  for (int p = 0; p < P; p++) for (int tr = 0; tr < qr; tr++) for (int tc = 0; tc < qc; tc++) {",
        "    long n = ((long)p * qr + tr) * qc + tc;",
        f"    int yb = y0 + tr * {mr}, xb = x0 + tc * {mc};",
    ]


def _input_kernel(mr: int, mc: int) -> str:
    from convlens.inspect.winograd import winograd_matrices

    BTr, BTc = winograd_matrices(mr)[2], winograd_matrices(mc)[2]
    ar, ac = mr + 2, mc + 2
    lines = [
        f"static void in_{mr}{mc}(const float *x, long sp, long sh, long sw, int hs, int ws,",
        "    const int *oy, const int *ox, const float *xr, long rp, long rh, long rw,",
        "    int H, int W, int C, int y0, int x0, int qr, int qc,",
        "    float *V, long N, int P, int nt) {",
        *_tile_loop(mr, mc),
        f"    const float *s[{ar}][{ac}], *r[{ar}][{ac}];",
        "    /* Window pixel (yy, xx) is x's pixel (sy, sx) when x sits at (oy[p], ox[p]) in the",
        "       window; pixels outside the window or outside x read as zero (the padding). */",
        "    int dy = oy ? oy[p] : 0, dx = ox ? ox[p] : 0;",
        f"    for (int i = 0; i < {ar}; i++) for (int j = 0; j < {ac}; j++) {{",
        "      int yy = yb + i, xx = xb + j, sy = yy - dy, sx = xx - dx;",
        "      int in = yy >= 0 && yy < H && xx >= 0 && xx < W && sy >= 0 && sy < hs",
        "          && sx >= 0 && sx < ws;",
        "      s[i][j] = in ? x + p * sp + sy * sh + sx * sw : 0;",
        "      r[i][j] = in && xr ? xr + p * rp + sy * rh + sx * rw : 0;",
        "    }",
        f"    for (int c = 0; c < C; c += {VECTOR}) {{",
    ]
    for i in range(ar):
        for j in range(ac):
            sij, rij = f"s[{i}][{j}]", f"r[{i}][{j}]"
            lines.append(
                f"      v16 d{i}{j} = !{sij} ? Z : {rij} ? ld({sij} + c) - ld({rij} + c)"
                f" : ld({sij} + c);"
            )
    for a in range(ar):  # rows: t = B^T d
        for j in range(ac):
            lines.append(
                f"      v16 t{a}{j} = {_combination(BTr[a], [f'd{i}{j}' for i in range(ar)])};"
            )
    for a in range(ar):  # columns: V = t B, point (a, b) at V[(a*ac + b), n, :]
        for b in range(ac):
            expr = _combination(BTc[b], [f"t{a}{j}" for j in range(ac)])
            lines.append(f"      st(V + ((long){a * ac + b} * N + n) * C + c, {expr});")
    lines += ["    }", "  }", "}"]
    return "\n".join(lines)


def _output_kernel(mr: int, mc: int) -> str:
    from convlens.inspect.winograd import winograd_matrices

    ATr, ATc = winograd_matrices(mr)[0], winograd_matrices(mc)[0]
    ar, ac = mr + 2, mc + 2
    lines = [
        f"static void out_{mr}{mc}(const float *M, long N, int K, int qr, int qc, float *o,",
        "    long op, long oh, long ow, int oH, int oW, int y0, int x0, const float *a,",
        "    long ap, long ah, long aw, const float *bias, int P, int nt) {",
        *_tile_loop(mr, mc),
        f"    for (int k = 0; k < K; k += {VECTOR}) {{",
        "      v16 b = bias ? ld(bias + k) : Z;",
    ]
    for i in range(ar):
        for j in range(ac):
            lines.append(f"      v16 m{i}{j} = ld(M + ((long){i * ac + j} * N + n) * K + k);")
    for i in range(mr):  # rows: t = A^T m
        for j in range(ac):
            lines.append(
                f"      v16 t{i}{j} = {_combination(ATr[i], [f'm{a}{j}' for a in range(ar)])};"
            )
    for i in range(mr):  # columns: y = t A; tiles overhanging the output write only what is in it
        for j in range(mc):
            expr = _combination(ATc[j], [f"t{i}{b}" for b in range(ac)])
            lines += [
                f"      if (yb + {i} < oH && xb + {j} < oW) {{",
                f"        v16 y = {expr} + b;",
                f"        long yy = yb + {i}, xx = xb + {j};",
                "        if (a) y += ld(a + p * ap + yy * ah + xx * aw + k);",
                "        st(o + p * op + yy * oh + xx * ow + k, y);",
                "      }",
            ]
    lines += ["    }", "  }", "}"]
    return "\n".join(lines)


_HEAD = f"""/* Generated by convlens.inspect.ckernels: Winograd F(m, 3) tile transforms. */
#include <string.h>
typedef float v16 __attribute__((vector_size({4 * VECTOR})));
static inline v16 ld(const float *p) {{ v16 v; memcpy(&v, p, sizeof v); return v; }}
static inline void st(float *p, v16 v) {{ memcpy(p, &v, sizeof v); }}
"""


@cache
def source() -> str:
    """The C source of every tile shape's kernels and the two dispatching entry points."""
    parts = [_HEAD]
    shapes = [(mr, mc) for mr in TILES for mc in TILES]
    for mr, mc in shapes:
        parts += [_input_kernel(mr, mc), _output_kernel(mr, mc)]
    in_cases = "\n".join(
        f"  case {mr * 10 + mc}: in_{mr}{mc}(x, sp, sh, sw, hs, ws, oy, ox, xr, rp, rh, rw, H, W, C,"
        " y0, x0, qr, qc,"
        " V, N, P, nt); return 0;"
        for mr, mc in shapes
    )
    out_cases = "\n".join(
        f"  case {mr * 10 + mc}: out_{mr}{mc}(M, N, K, qr, qc, o, op, oh, ow, oH, oW, y0, x0, a,"
        " ap, ah, aw, bias, P, nt); return 0;"
        for mr, mc in shapes
    )
    parts.append(
        "int wino_in(int mr, int mc, const float *x, long sp, long sh, long sw, int hs, int ws,\n"
        "    const int *oy, const int *ox, const float *xr, long rp, long rh, long rw,\n"
        "    int H, int W, int C, int y0, int x0, int qr, int qc,\n"
        "    float *V, long N, int P, int nt) {\n"
        f"  switch (mr * 10 + mc) {{\n{in_cases}\n  }}\n  return -1;\n}}"
    )
    parts.append(
        "int wino_out(int mr, int mc, const float *M, long N, int K, int qr, int qc, float *o,\n"
        "    long op, long oh, long ow, int oH, int oW, int y0, int x0, const float *a,\n"
        "    long ap, long ah, long aw, const float *bias, int P, int nt) {\n"
        f"  switch (mr * 10 + mc) {{\n{out_cases}\n  }}\n  return -1;\n}}"
    )
    return "\n\n".join(parts) + "\n"


@cache
def load() -> ctypes.CDLL | None:
    """The compiled kernels (compiling them on first use), or None where they are unavailable."""
    lib = compile_library("winograd", source())
    if lib is None:
        return None
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    # The C signatures of wino_in and wino_out (see `source`).
    ins: list[Any] = [i32, i32, ptr, i64, i64, i64, i32, i32, ptr, ptr, ptr, i64, i64, i64]
    ins += [*[i32] * 7, ptr, i64]
    outs: list[Any] = [i32, i32, ptr, i64, i32, i32, i32, ptr, i64, i64, i64, *[i32] * 4, ptr]
    lib.wino_in.argtypes = [*ins, i32, i32]
    lib.wino_out.argtypes = [*outs, i64, i64, i64, ptr, i32, i32]
    lib.wino_in.restype = lib.wino_out.restype = i32
    return lib


def _rows(t: torch.Tensor | None) -> tuple[int, int, int]:
    """Element strides (image, row, column) of a channels-last `(B, H, W, C)` view; 0 for B = 1."""
    if t is None:
        return 0, 0, 0
    sp, sh, sw, sc = t.stride()
    assert sc == 1, "channels must be contiguous"
    return (0 if t.shape[0] == 1 else sp), sh, sw


def input_transform(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    x_ref: torch.Tensor | None,
    y0: int,
    x0: int,
    tiles: tuple[int, int, int, int],
    V: torch.Tensor,
    window: tuple[int, int] | None = None,
    at: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """`V[(a, b), n, :] = (B^T d_n B)[a, b]` for the tiles of `x - x_ref`, `(P, h, w, C)` views.

    `tiles = (qr, qc, mr, mc)`: a `qr x qc` grid of `mr x mc` output tiles whose first input
    tile starts at row `y0`, column `x0` of the input (negative: inside the zero padding). Tile
    `n` is `(p, tr, tc)` in row-major order; `V` is `((mr + 2) * (mc + 2), P * qr * qc, C)`,
    contiguous. The input is `x` itself, or with `window = (H, W)` and `at = (rows, cols)`
    (int32, one per copy) an `H x W` window of zeros holding copy p's `x` at `(rows[p], cols[p])`.
    """
    qr, qc, mr, mc = tiles
    P, h, w, C = x.shape
    H, W = window or (h, w)
    assert V.is_contiguous() and C % VECTOR == 0
    oy, ox = (None, None) if at is None else (t.contiguous() for t in at)
    assert oy is None or (oy.dtype == torch.int32 and oy.shape == (P,))
    err = lib.wino_in(
        mr, mc, x.data_ptr(), *_rows(x), h, w,
        None if oy is None else oy.data_ptr(), None if ox is None else ox.data_ptr(),
        None if x_ref is None else x_ref.data_ptr(), *_rows(x_ref), H, W, C, y0, x0, qr, qc,
        V.data_ptr(), V.shape[1], P, torch.get_num_threads(),
    )  # fmt: skip
    assert err == 0, (mr, mc)


def output_transform(
    lib: ctypes.CDLL,
    M: torch.Tensor,
    tiles: tuple[int, int, int, int],
    out: torch.Tensor,
    y0: int,
    x0: int,
    add: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> None:
    """Write `A^T M_n A` (+ `add` at the same pixels, + `bias`) into `out` `(P, oH, oW, K)`.

    `M` is `((mr + 2) * (mc + 2), P * qr * qc, K)`, contiguous; tile `(p, tr, tc)` lands at row
    `y0 + tr * mr`, column `x0 + tc * mc`, and only its pixels inside `out` are written. `add`
    is a `(1 or P, oH, oW, K)` view, `bias` a contiguous `(K,)`.
    """
    qr, qc, mr, mc = tiles
    P, oH, oW, K = out.shape
    assert M.is_contiguous() and K % VECTOR == 0
    assert bias is None or bias.is_contiguous()
    err = lib.wino_out(
        mr, mc, M.data_ptr(), M.shape[1], K, qr, qc, out.data_ptr(), *_rows(out), oH, oW, y0, x0,
        None if add is None else add.data_ptr(), *_rows(add),
        None if bias is None else bias.data_ptr(), P, torch.get_num_threads(),
    )  # fmt: skip
    assert err == 0, (mr, mc)
