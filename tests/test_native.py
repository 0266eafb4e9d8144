"""`convlens.native`: C sources compiled once per machine into the cache, loaded with ctypes."""

from __future__ import annotations

from pathlib import Path

import pytest

from convlens import native

SOURCE = "int probe(int x) { return 6 * x + 1; }\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path))
    return tmp_path


def test_compiles_once_tells_the_notice_and_loads_the_cached_library(cache: Path) -> None:
    told: list[str] = []
    native.set_compile_notice(told.append)
    try:
        lib = native.compile_library("probe", SOURCE)
        assert lib is not None and lib.probe(7) == 43
        again = native.compile_library("probe", SOURCE)  # from the cache: no second notice
        assert again is not None and again.probe(1) == 7
    finally:
        native.set_compile_notice(None)
    assert told == ["probe"]
    (so,) = (cache / "kernels").glob("probe-*.so")
    assert so.with_suffix(".sha256").exists()


def test_a_source_that_does_not_compile_gives_none(cache: Path) -> None:
    assert native.compile_library("broken", "this is not C") is None
    assert not list((cache / "kernels").glob("broken-*.so"))


def test_switched_off_gives_none(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLENS_C_KERNELS", "0")
    assert not native.enabled()
    assert native.compile_library("probe", SOURCE) is None
