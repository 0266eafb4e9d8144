"""convlens: build, train and see inside convolutional neural networks.

The package is layered; imports only point down this list:

    cli      parsing, printing, the files a user asked for
    render   matplotlib figures and the HTML report
    inspect  visualisation and attribution methods (tensors in, tensors out)
    subjects a model with its preprocessing, class names and images (a run is one way to make one)
    train    fit / evaluate, run directories, checkpoints, distribution
    anatomy  shapes, parameters, MACs, receptive fields
    models   the registry and the architectures
    data     data sets as in-memory uint8 tensors, batching, augmentation
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from convlens.anatomy.summary import summary
    from convlens.subjects import Subject, open_subject, subject
    from convlens.train.run_dir import load_run

__all__ = ["Subject", "__version__", "load_run", "open_subject", "subject", "summary"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import convlens` (and `convlens --help`) stays fast: torch loads on first use.
    if name == "summary":
        from convlens.anatomy.summary import summary

        return summary
    if name == "load_run":
        from convlens.train.run_dir import load_run

        return load_run
    if name in ("subject", "Subject", "open_subject"):
        from convlens import subjects

        return getattr(subjects, name)
    raise AttributeError(f"module 'convlens' has no attribute {name!r}")
