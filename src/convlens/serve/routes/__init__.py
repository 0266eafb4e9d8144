"""The web app's endpoints, one router per concern (subjects, images, jobs, the explainer)."""

from __future__ import annotations

from convlens.serve.routes.deps import ServeState
from convlens.serve.routes.explain import router as explain
from convlens.serve.routes.images import router as images
from convlens.serve.routes.jobs import router as jobs
from convlens.serve.routes.subjects import router as subjects

ROUTERS = (subjects, images, jobs, explain)

__all__ = ["ROUTERS", "ServeState"]
