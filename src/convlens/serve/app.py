"""The web app: JSON endpoints over :mod:`convlens.serve.compute`, and the page that uses them.

:func:`create_app` builds everything from its arguments (no module globals): the subjects, the result
cache, the job pool and the upload store live on ``app.state``. Handlers only validate and look up;
anything that runs a model holds its subject's lock, and long work goes to the job pool.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from convlens.errors import ConvlensError
from convlens.serve import compute
from convlens.serve.cache import ResultCache, digest
from convlens.serve.catalog import Catalog, Served
from convlens.serve.encode import image_png as encode_png
from convlens.serve.errors import RequestError
from convlens.serve.jobs import Job, JobPool
from convlens.serve.uploads import MAX_UPLOAD_BYTES, UploadStore, decode_image

STATIC = files("convlens.serve") / "static"
log = logging.getLogger("convlens.serve")
_IMAGE = re.compile(r"^(test):(\d{1,9})$|^(upload):([0-9a-f]{32})$")


class ImageRequest(BaseModel):
    """An image to look at: ``test:INDEX`` or ``upload:ID``."""

    image: str = Field(max_length=64)


class AttributionRequest(ImageRequest):
    method: str = Field(max_length=32)
    target: int | None = None
    layer: str | None = Field(default=None, max_length=256)


class OcclusionRequest(ImageRequest):
    target: int | None = None
    window: int | None = Field(default=None, ge=1, le=512)  # None: the views' default
    stride: int | None = Field(default=None, ge=1, le=512)


class LayerGridRequest(BaseModel):
    layer: str = Field(max_length=256)
    start: int = Field(default=0, ge=0)
    count: int = Field(default=64, ge=1, le=512)
    steps: int | None = Field(default=None, ge=1, le=1024)  # None: the views' defaults
    patches: int | None = Field(default=None, ge=1, le=32)
    limit: int | None = Field(default=None, ge=1, le=100_000)


class EmbeddingRequest(BaseModel):
    limit: int | None = Field(default=None, ge=10, le=200_000)


def create_app(
    subjects: Iterable[Served],
    *,
    cache_dir: str | Path,
    workers: int = 2,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The convlens web app over `subjects`.

    Args:
        subjects: what to show (see :mod:`convlens.serve.catalog`).
        cache_dir: where computed results are kept between visits and restarts.
        workers: long computations running at once.
        max_upload_bytes: the largest image upload accepted.
    """
    app = FastAPI(title="convlens", docs_url=None, redoc_url=None, openapi_url=None)
    catalog = Catalog(subjects)
    cache = ResultCache(cache_dir)
    pool = JobPool(workers=workers)
    uploads = UploadStore()
    app.state.catalog, app.state.cache, app.state.pool = catalog, cache, pool
    app.router.add_event_handler("shutdown", pool.shutdown)
    _errors(app)

    def image_of(served: Served, spec: str) -> torch.Tensor:
        m = _IMAGE.match(spec)
        if m is None:
            raise RequestError(f"image must be 'test:INDEX' or 'upload:ID', not {spec[:64]!r}")
        if m.group(1):
            return served.image(int(m.group(2)))
        return uploads.get(served.name, m.group(4))

    def cached_job(served: Served, kind: str, params: dict[str, Any], work: Any) -> dict[str, Any]:
        """A finished job when the result is on disk, else a job computing and storing it."""
        hit = cache.get(served.key, kind, params)
        if hit is not None:
            return pool.done(kind, hit).snapshot()

        def run(job: Job) -> Any:
            result = work(job.report)  # takes the subject's lock around each model computation
            cache.put(served.key, kind, params, result)
            return result

        return pool.submit(f"{served.key}-{kind}-{digest(params)}", kind, run).snapshot()

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html")

    @app.get("/api/subjects")
    def subjects_list() -> list[dict[str, Any]]:
        return [compute.subject_info(s) for s in catalog]

    @app.get("/api/subjects/{name}")
    def subject_info(name: str) -> dict[str, Any]:
        return compute.subject_info(catalog[name])

    @app.get("/api/subjects/{name}/network")
    def network(name: str) -> dict[str, Any]:
        return compute.network(catalog[name])

    @app.get("/api/subjects/{name}/images/{index}.png")
    def image_png(name: str, index: int) -> Response:
        return Response(
            encode_png(catalog[name].image(index)),
            media_type="image/png",
            headers={"Cache-Control": "max-age=3600"},
        )

    @app.post("/api/subjects/{name}/uploads")
    async def upload(name: str, file: UploadFile) -> dict[str, Any]:
        served = catalog[name]
        data = await file.read(max_upload_bytes + 1)
        image = decode_image(data, served.subject.preprocess, max_bytes=max_upload_bytes)
        return {
            "image": "upload:" + uploads.add(served.name, data, image),
            "shape": list(image.shape),
        }

    @app.post("/api/subjects/{name}/predict")
    def predict(name: str, req: ImageRequest) -> dict[str, Any]:
        served = catalog[name]
        image = image_of(served, req.image)
        m = _IMAGE.match(req.image)
        index = int(m.group(2)) if m is not None and m.group(1) else None  # test:INDEX has a label
        with served.lock:
            return {"image": req.image, **compute.predict(served, image, image_index=index)}

    @app.post("/api/subjects/{name}/attribution")
    def attribution(name: str, req: AttributionRequest) -> dict[str, Any]:
        served = catalog[name]
        image = image_of(served, req.image)
        compute.check_target(served, req.target)
        layer = compute.conv_layer(served, req.layer)
        if req.method not in compute.METHODS or req.method == "occlusion":
            raise RequestError(
                f"no method {req.method!r} here; choose gradcam, guided_gradcam or "
                "saliency (occlusion is a job: POST .../jobs/occlusion)"
            )
        with served.lock:
            return {
                "image": req.image,
                "target": req.target,
                **compute.attribution(served, image, req.method, req.target, layer),
            }

    @app.get("/api/subjects/{name}/rf")
    def receptive_field(name: str, layer: str, row: int, col: int) -> dict[str, Any]:
        served = catalog[name]
        params = {"layer": layer, "row": row, "col": col}
        served.layer(layer)
        hit = cache.get(served.key, "rf", params)
        if hit is not None:
            return dict(hit)
        with served.lock:
            result = compute.unit_fields(served, layer, row, col)
        cache.put(served.key, "rf", params, result)
        return result

    @app.get("/api/subjects/{name}/neighbors")
    def neighbors(name: str, index: int, k: int = 8) -> dict[str, Any]:
        served = catalog[name]
        served.image(index)
        if not 1 <= k <= 64:
            raise RequestError(f"k must be between 1 and 64, not {k}")
        params = {"index": index, "k": k}
        hit = cache.get(served.key, "neighbors", params)
        if hit is not None:
            return dict(hit)
        with served.lock:
            result = compute.neighbours(served, index, k)
        cache.put(served.key, "neighbors", params, result)
        return result

    @app.get("/api/subjects/{name}/projector.zip")
    def projector(name: str, limit: int | None = None) -> Response:
        served = catalog[name]
        with served.lock:
            data = compute.projector_zip(served, limit)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{served.name}-projector.zip"'},
        )

    @app.post("/api/subjects/{name}/jobs/layer")
    def layer_job(name: str, req: LayerGridRequest) -> dict[str, Any]:
        served = catalog[name]
        compute.conv_layer(served, req.layer)
        channels = served.layer(req.layer).output_shape[0]
        if req.start >= channels:
            raise RequestError(
                f"layer {req.layer!r} has {channels} channels (0-{channels - 1}); "
                f"no channel {req.start}",
                404,
            )
        params = {**req.model_dump(), "count": min(req.count, channels - req.start)}
        return cached_job(
            served,
            "layer",
            params,
            lambda report: compute.layer_grid(served, report=report, **params),
        )

    @app.post("/api/subjects/{name}/jobs/occlusion")
    def occlusion_job(name: str, req: OcclusionRequest) -> dict[str, Any]:
        served = catalog[name]
        image = image_of(served, req.image)
        compute.check_target(served, req.target)
        if req.stride is not None and req.window is not None and req.stride > req.window:
            raise RequestError(f"stride {req.stride} is larger than the window {req.window}")
        params = req.model_dump()
        return cached_job(
            served,
            "occlusion",
            params,
            lambda report: compute.occlusion(served, image, req.target, req.window, req.stride),
        )

    @app.post("/api/subjects/{name}/jobs/embedding")
    def embedding_job(name: str, req: EmbeddingRequest) -> dict[str, Any]:
        served = catalog[name]
        params = req.model_dump()
        return cached_job(
            served, "embedding", params, lambda report: compute.embedding(served, req.limit, report)
        )

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        j = pool.get(job_id)
        return {**j.snapshot(), "result": j.result if j.status == "done" else None}

    @app.get("/api/jobs/{job_id}/events")
    def job_events(job_id: str) -> StreamingResponse:
        j = pool.get(job_id)

        async def stream() -> Any:
            async for snap in j.events():
                yield f"data: {json.dumps(snap)}\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/api/explain/conv")
    def explain(
        size: int = 7,
        kernel: int = 3,
        stride: int = 1,
        padding: int = 0,
        filters: int = 2,
        depth: int = 3,
    ) -> dict[str, Any]:
        return compute.arithmetic(size, kernel, stride, padding, filters, depth)

    @app.get("/api/{rest:path}", include_in_schema=False)
    def unknown_api(rest: str) -> None:
        raise RequestError(f"no endpoint /api/{rest[:100]}", 404)

    # StaticFiles resolves names inside its folder and refuses anything outside it.
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.get("/favicon.ico", include_in_schema=False)(
        lambda: FileResponse(str(STATIC / "favicon.svg"), media_type="image/svg+xml")
    )
    return app


def _errors(app: FastAPI) -> None:
    """Every failure answers JSON ``{"error": message}``; no traceback ever reaches the client."""

    def reply(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, e: RequestError) -> JSONResponse:
        return reply(e.status, str(e))

    @app.exception_handler(ConvlensError)
    async def convlens_error(_: Request, e: ConvlensError) -> JSONResponse:
        return reply(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
        return reply(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return reply(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        # A bug, not a bad request: the traceback goes to the server's log, never to the client.
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return reply(500, f"internal error ({type(e).__name__}); the server is still running")
