"""Small C kernels, compiled once per machine with the system C compiler and loaded with ctypes.

A few hot spots are memory-bound reshuffles or tiny convolutions that torch runs as several
passes or through kernels made for wide layers: Winograd's tile transforms in the occlusion engine
(:mod:`convlens.inspect.ckernels`) and LeNet-5's single-channel first block in training
(:mod:`convlens.models.lenet_kernels`). Their C sources live next to their Python callers;
this module builds them with ``$CC`` (else ``cc``) and ``-O3 -march=native -fopenmp`` (without
OpenMP if the compiler lacks it) into ``cache_dir()/kernels/NAME-HASH.so``, once per source and
CPU, and loads them. The OpenMP runtime is the process's own: torch has already loaded libgomp.

Every caller has a torch fallback: without a compiler, or with ``CONVLENS_C_KERNELS=0``,
:func:`compile_library` returns None and the same results come from torch (up to float rounding).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from convlens.data.paths import cache_dir

# Called with a library's name before it is compiled (the CLI prints a line: it takes seconds).
_notice: Callable[[str], None] | None = None


def set_compile_notice(notice: Callable[[str], None] | None) -> None:
    """Have `notice(name)` called before a library is compiled (None: compile silently)."""
    global _notice
    _notice = notice


def enabled() -> bool:
    """False when ``CONVLENS_C_KERNELS=0`` asks for the torch code everywhere."""
    return os.environ.get("CONVLENS_C_KERNELS", "1") != "0"


def _cpu_signature() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags (Linux), else the arch."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    keep = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return platform.machine() + "\n" + "\n".join(sorted(set(keep)))


def compiler() -> str | None:
    """The C compiler builds use: `$CC`, else `cc` or `gcc` on the PATH; None if there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _compile(src: str, out: Path) -> bool:
    """Compile `src` into the shared library `out` (atomically); False if no compiler managed."""
    cc = compiler()
    if cc is None:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        c_file, so_file = Path(tmp) / "kernels.c", Path(tmp) / out.name
        c_file.write_text(src)
        base = [cc, "-O3", "-march=native", "-shared", "-fPIC", str(c_file), "-o", str(so_file)]
        # With OpenMP first; a compiler without it still gives (single-threaded) kernels.
        for flags in (["-fopenmp"], []):
            try:
                done = subprocess.run(base + flags, capture_output=True, timeout=300)
            except (OSError, subprocess.SubprocessError):
                return False
            if done.returncode == 0:
                digest = Path(tmp) / "digest"
                digest.write_text(hashlib.sha256(so_file.read_bytes()).hexdigest())
                os.replace(so_file, out)
                os.replace(digest, out.with_suffix(".sha256"))
                return True
    return False


def _intact(lib: Path) -> bool:
    """Whether `lib` exists and matches the digest written when it was compiled."""
    try:
        digest = lib.with_suffix(".sha256").read_text().strip()
        return hashlib.sha256(lib.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def compile_library(name: str, source: str) -> ctypes.CDLL | None:
    """The library built from C `source` (compiling it on first use), or None where unavailable.

    Callers cache the result and declare the functions' `argtypes`.
    """
    if not enabled():
        return None
    key = hashlib.sha256((source + _cpu_signature()).encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"{name}-{key}.so"
    try:
        # A damaged library could crash the process in dlopen: check it against its digest.
        if not _intact(path):
            if _notice is not None:
                _notice(name)
            if not _compile(source, path):
                return None
        return ctypes.CDLL(str(path))
    except OSError:
        return None
