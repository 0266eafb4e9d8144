"""No private torch or third-party API and no run-time compiled C in `src/` (issue 15).

Every module's code (comments stripped; strings kept, so a compiler flag or a `ctypes` call in a
string counts) is searched for the patterns below. A pattern is an oracle of its own: a few lines of
each kind are checked to be caught (so a typo in a pattern cannot make the test pass vacuously).
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "convlens"

FORBIDDEN = {
    "torch.ops (private kernels such as torch.ops.mkldnn)": r"\btorch\.ops\.",
    "an underscore module or attribute of torch (torch._C, torch._dynamo, ...)": r"\btorch\._(?!_)\w",
    "torch.fx.experimental (no stability promise; may change or go in any release)": r"\btorch\.fx\.experimental\b",
    "AMX probing": r"_is_amx",
    "openTSNE internals": r"\bopenTSNE\._|\bfrom openTSNE import _|\._tsne\b",
    "an underscore module of another package": r"^\s*(from\s+(?!convlens\b)[\w.]*\._\w+\s+import|import\s+(?!convlens\b)[\w.]*\._\w+)",
    "ctypes (loading compiled code)": r"\bctypes\b",
    "a C compiler call": r"-march=native|\bgcc\b|\bclang\b|-shared\b.*-fPIC",
}

# Known exceptions, each to be removed (any other use anywhere in src/ fails): the occlusion
# engine's shape-aware tracer subclasses torch.fx.experimental's MetaTracer (issue 25's review).
KNOWN: set[tuple[str, str]] = {
    ("inspect/occlusion/tracing.py", next(w for w in FORBIDDEN if "fx.experimental" in w)),
}


def _code(text: str) -> str:
    """`text` with its comments blanked out (line numbers kept)."""
    lines = text.splitlines(keepends=True)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            (row, col), (_, end) = tok.start, tok.end
            line = lines[row - 1]
            lines[row - 1] = line[:col] + " " * (end - col) + line[end:]
    return "".join(lines)


def _hits(text: str) -> set[str]:
    code = _code(text)
    return {what for what, pattern in FORBIDDEN.items() if re.search(pattern, code, re.M)}


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("y = torch.ops.mkldnn._convolution_pointwise(x)", "torch.ops"),
        ("with torch._C.DisableTorchFunction():", "underscore module or attribute of torch"),
        ("ok = torch.cpu._is_amx_tile_supported()", "AMX"),
        ("from openTSNE import _tsne", "openTSNE"),
        ("import openTSNE._tsne as t", "openTSNE"),
        ("from typer._click import ClickException", "another package"),
        ("lib = ctypes.CDLL(path)", "ctypes"),
        ('flags = ["-O3", "-march=native"]', "compiler"),
        ("from torch.fx.experimental.meta_tracer import MetaTracer", "fx.experimental"),
        ("t = torch.fx.experimental.proxy_tensor.make_fx(f)", "fx.experimental"),
    ],
)
def test_each_pattern_catches_its_kind(line: str, what: str) -> None:
    assert any(what in hit for hit in _hits(line + "\n")), line


def test_comments_and_our_own_modules_are_not_hits() -> None:
    assert not _hits("x = 1  # not torch.ops.mkldnn, see torch._refs\n")
    assert not _hits("from convlens.inspect.occlusion.ops import pad_nhwc\n")
    assert not _hits("from convlens import __version__\n")
    assert not _hits('versions = {"torch": torch.__version__}\n')


def test_src_uses_no_private_api_and_compiles_nothing() -> None:
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        found |= {(rel, what) for what in _hits(path.read_text(encoding="utf-8"))}
    new = found - KNOWN
    assert not new, "private API or compiled code in src/: " + "; ".join(
        f"{rel}: {what}" for rel, what in sorted(new)
    )
