"""Long computations as jobs: start one (layer grid, occlusion, embedding), follow it (JSON or
server-sent events), cancel it. A result already on disk comes back as a finished job at once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from convlens.serve import compute
from convlens.serve.cache import digest
from convlens.serve.catalog import Served
from convlens.serve.errors import RequestError
from convlens.serve.jobs import Job
from convlens.serve.routes.deps import ServedSubject, ServeState, State

router = APIRouter(prefix="/api", tags=["jobs"])


class LayerGridRequest(BaseModel):
    """Channels `start` .. `start + count` of `layer`; None: the view's default."""

    layer: str = Field(max_length=256)
    start: int = Field(default=0, ge=0)
    count: int = Field(default=64, ge=1, le=512)
    steps: int | None = Field(default=None, ge=1, le=1024)
    patches: int | None = Field(default=None, ge=1, le=32)
    limit: int | None = Field(default=None, ge=1, le=100_000)
    parts: list[Literal["filters", "actmax", "patches"]] | None = Field(
        default=None, min_length=1, max_length=3
    )  # None: all three
    # what the synthesised images maximise; None: the method's rule for the layer
    objective: Literal["channel", "neuron"] | None = None


class OcclusionRequest(BaseModel):
    """The occlusion map of one image; window and stride in pixels (None: the subject's default)."""

    image: str = Field(max_length=64)
    target: int | None = None
    window: int | None = Field(default=None, ge=1, le=512)
    stride: int | None = Field(default=None, ge=1, le=512)


class EmbeddingRequest(BaseModel):
    """t-SNE of up to `limit` of the subject's images (all when None)."""

    limit: int | None = Field(default=None, ge=10, le=200_000)


Compute = Callable[[Callable[[int, int, str], None]], Any]


def cached_job(
    state: ServeState, served: Served, kind: str, params: dict[str, Any], work: Compute
) -> dict[str, Any]:
    """A finished job when the result is on disk, else a job computing and storing it."""
    hit = state.cache.get(served.key, kind, params)
    if hit is not None:
        return state.pool.done(kind, hit).snapshot()

    def run(job: Job) -> Any:
        result = work(job.report)  # takes the subject's lock around each model computation
        state.cache.put(served.key, kind, params, result)
        return result

    return state.pool.submit(f"{served.key}-{kind}-{digest(params)}", kind, run).snapshot()


@router.post("/subjects/{name}/jobs/layer")
def layer_job(served: ServedSubject, state: State, req: LayerGridRequest) -> dict[str, Any]:
    """Filters, synthesised images and top patches of a layer's channels."""
    compute.conv_layer(served, req.layer)
    channels = served.layer(req.layer).output_shape[0]
    if req.start >= channels:
        raise RequestError(
            f"layer {req.layer!r} has {channels} channels (0-{channels - 1}); "
            f"there is no channel {req.start}",
            404,
        )
    # None: the view chooses (and records its choice in the result)
    params = {**req.model_dump(), "count": min(req.count, channels - req.start)}
    return cached_job(
        state,
        served,
        "layer",
        params,
        lambda report: compute.layer_grid(served, report=report, **params),
    )


@router.post("/subjects/{name}/jobs/occlusion")
def occlusion_job(served: ServedSubject, state: State, req: OcclusionRequest) -> dict[str, Any]:
    """The occlusion map of one image."""
    image = state.image(served, req.image)
    compute.check_target(served, req.target)
    if req.window is not None and req.stride is not None and req.stride > req.window:
        raise RequestError(f"the stride {req.stride} is larger than the window {req.window}")
    params = req.model_dump()  # window and stride None: the view chooses (a seventh of the side)
    return cached_job(
        state,
        served,
        "occlusion",
        params,
        lambda report: compute.occlusion(served, image, req.target, req.window, req.stride),
    )


@router.post("/subjects/{name}/jobs/embedding")
def embedding_job(served: ServedSubject, state: State, req: EmbeddingRequest) -> dict[str, Any]:
    """The t-SNE map of the subject's images."""
    params = req.model_dump()
    return cached_job(
        state,
        served,
        "embedding",
        params,
        lambda report: compute.embedding(served, req.limit, report),
    )


@router.get("/jobs/{job_id}")
def job(job_id: str, state: State) -> dict[str, Any]:
    """A job's state, with its result when done."""
    j = state.pool.get(job_id)
    return {**j.snapshot(), "result": j.result if j.status == "done" else None}


@router.delete("/jobs/{job_id}")
def cancel_job(job_id: str, state: State) -> dict[str, Any]:
    """Cancel a job: it stops at its next step (status ``cancelled``); a finished job stays as is."""
    return state.pool.cancel(job_id).snapshot()


@router.get("/jobs/{job_id}/events")
def job_events(job_id: str, state: State) -> StreamingResponse:
    """Server-sent events: a snapshot each time the job changes, until it ends.

    When the last page following a job goes away (the browser closes the stream), the job is
    cancelled: nobody is waiting for it.
    """
    j = state.pool.get(job_id)

    async def stream() -> AsyncIterator[str]:
        j.watchers += 1
        try:
            async for snap in j.events():
                yield f"data: {json.dumps(snap)}\n\n"
        finally:  # also when the client disconnects: the stream is cancelled here
            j.watchers -= 1
            if j.watchers == 0 and not j.finished:
                j.cancel()

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
