"""CIFAR-10 (placeholder; filled in next)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError

CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
EXPECTED = "cifar-10-batches-py/ or train/<class>/*, test/<class>/* (a folder or a .tar.gz)"


def find_cifar10(place: Path) -> Any:
    return None


def load_cifar10(found: Any, split: str) -> Dataset:
    raise ConvlensError("cifar10 is not supported yet")


def describe_cifar10(found: Any) -> dict[str, tuple[int, tuple[int, int, int]]]:
    return {}
