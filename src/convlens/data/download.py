"""`--download`: fetch a data set with torchvision's checksummed downloader into the cache.

Only when the user asks for it (`load(..., download=True)`, the CLI's `--download`). The URLs and MD5
sums are torchvision's own (`torchvision.datasets.MNIST.resources`, ...), so a changed or truncated
file is refused by the checksum. Files land in `~/.cache/convlens/NAME/` (see `paths.cache_dir`),
which is on the search path: the next load finds them without `--download`.
"""

from __future__ import annotations

from pathlib import Path

from convlens.data.paths import cache_dir
from convlens.errors import ConvlensError


def _resources(name: str) -> list[tuple[list[str], str, str]]:
    """(mirror URLs, file name, md5) of each file of `name`."""
    import torchvision.datasets as tvd

    if name in ("mnist", "fashion-mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        return [(list(cls.mirrors), fn, md5) for fn, md5 in cls.resources]
    if name == "cifar10":
        base, fn = tvd.CIFAR10.url.rsplit("/", 1)
        return [([base + "/"], fn, tvd.CIFAR10.tgz_md5)]
    raise ConvlensError(f"{name} cannot be downloaded")


def download_dataset(name: str, target: Path | None = None) -> Path:
    """Download `name` into `target` (default `~/.cache/convlens/NAME`) and return that folder.

    Raises:
        ConvlensError: every mirror failed (no internet, a checksum mismatch), with what to do instead.
    """
    from torchvision.datasets.utils import check_integrity, download_url

    target = target or cache_dir() / name
    target.mkdir(parents=True, exist_ok=True)
    for mirrors, filename, md5 in _resources(name):
        if check_integrity(str(target / filename), md5):
            continue
        errors = []
        for mirror in mirrors:
            try:
                download_url(mirror + filename, str(target), filename=filename, md5=md5)
            except Exception as e:  # URLError, HTTPError, RuntimeError(checksum), OSError
                errors.append(f"{mirror}{filename}: {e}")
                continue
            if check_integrity(str(target / filename), md5):
                break
            errors.append(f"{mirror}{filename}: checksum mismatch")
        else:
            raise ConvlensError(
                f"could not download {name} ({'; '.join(errors)}). Without internet, copy the files "
                f"into {target} by hand, or point --data-dir / CONVLENS_DATA at a folder holding {name}/"
            )
    return target
