"""`convlens serve`: the local web app (network, layer, image, embedding and arithmetic views).

:func:`create_app` builds a FastAPI app over served subjects (:mod:`~convlens.serve.catalog`); the
page under ``static/`` is plain ES modules, one per view, with no build step and nothing fetched from
the network.
"""

from __future__ import annotations

from convlens.serve.app import create_app
from convlens.serve.catalog import Catalog, Served, from_run_dir, from_subject, run_dirs

__all__ = ["Catalog", "Served", "create_app", "from_run_dir", "from_subject", "run_dirs"]
