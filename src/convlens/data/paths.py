"""Where data sets are looked for, and where decoded arrays are cached.

Search order for a data set `NAME` (the first place that holds its files wins):

1. `root=` (the CLI's `--data-dir`): `ROOT/NAME/`, then `ROOT` itself;
2. `$CONVLENS_DATA/NAME/` (a folder holding one sub-folder per data set);
3. `~/.cache/convlens/NAME/` (where `--download` puts files; `$CONVLENS_CACHE` moves it);
4. `/usr/share/datasets/NAME/` (Debian's data set packages, e.g. `dataset-fashion-mnist`);
5. only with `download=True`: torchvision's checksummed downloader, into place 3.
"""

from __future__ import annotations

import os
from pathlib import Path

DEBIAN_DATASETS = Path("/usr/share/datasets")


def cache_dir() -> Path:
    """`$CONVLENS_CACHE`, else `$XDG_CACHE_HOME/convlens`, else `~/.cache/convlens`."""
    env = os.environ.get("CONVLENS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "convlens"


def search_places(name: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders looked in for data set `name`, in order (they need not exist)."""
    places: list[Path] = []
    if root is not None and str(root) != "":
        r = Path(root).expanduser()
        places += [r / name, r]
    env = os.environ.get("CONVLENS_DATA")
    if env:
        places.append(Path(env).expanduser() / name)
    places.append(cache_dir() / name)
    places.append(DEBIAN_DATASETS / name)
    seen: set[Path] = set()
    unique = []
    for p in places:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique
