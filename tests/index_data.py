"""Real images for the index tests: CIFAR-10 test JPEGs extracted from the shared tar.gz."""

from __future__ import annotations

import tarfile
from pathlib import Path

CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def extract_cifar(data_root: Path, out: Path, per_class: int) -> Path:
    """`out/<class>/NNNN.jpg`: the first `per_class` test JPEGs of each class (an ImageFolder)."""
    counts: dict[str, int] = {}
    with tarfile.open(data_root / "cifar10" / "cifar10-jpeg.tar.gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3:
                continue
            if parts[0] != "test":
                if counts:
                    break  # the test split comes first in the archive
                continue
            if counts.get(parts[1], 0) >= per_class:
                continue
            counts[parts[1]] = counts.get(parts[1], 0) + 1
            dst = out / parts[1] / parts[2]
            dst.parent.mkdir(parents=True, exist_ok=True)
            f = tf.extractfile(m)
            assert f is not None
            dst.write_bytes(f.read())
    return out
