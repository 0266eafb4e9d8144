"""The web app: JSON endpoints over the views, and the page that uses them.

:func:`create_app` builds everything from its arguments (no module globals): the subjects, the result
cache, the job pool and the upload store live in one :class:`~convlens.serve.routes.ServeState` on
``app.state.serve``; the lifespan handler shuts the job pool down when the server stops. The
endpoints are APIRouters in :mod:`convlens.serve.routes`; a dependency resolves the subject named in
the path. Handlers that run a model are plain ``def`` (FastAPI runs them in its thread pool, off the
event loop) and hold their subject's lock; long work goes to the job pool.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from convlens.errors import ConvlensError
from convlens.serve.cache import ResultCache
from convlens.serve.catalog import Catalog, Served
from convlens.serve.errors import RequestError
from convlens.serve.jobs import JobPool
from convlens.serve.routes import ROUTERS, ServeState
from convlens.serve.uploads import MAX_UPLOAD_BYTES, UploadStore

STATIC = files("convlens.serve") / "static"
log = logging.getLogger("convlens.serve")


def create_app(
    subjects: Iterable[Served],
    *,
    cache_dir: str | Path,
    workers: int = 2,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The convlens web app over `subjects`.

    Args:
        subjects: what to show (see :mod:`convlens.serve.catalog`); unfinished or broken ones are
            listed with their reason.
        cache_dir: where computed results are kept between visits and restarts.
        workers: long computations running at once.
        max_upload_bytes: the largest image upload accepted.
    """
    state = ServeState(
        catalog=Catalog(subjects),
        cache=ResultCache(cache_dir),
        pool=JobPool(workers=workers),
        uploads=UploadStore(),
        max_upload_bytes=max_upload_bytes,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.pool.shutdown()  # running jobs are cancelled at their next step

    app = FastAPI(
        title="convlens", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.serve = state
    _errors(app)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html")

    @app.get("/api/{rest:path}", include_in_schema=False)
    def unknown_api(rest: str) -> None:
        raise RequestError(f"there is no endpoint /api/{rest[:100]}", 404)

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
        return reply(422, "invalid request: " + "; ".join(_sentence(err) for err in e.errors()[:5]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return reply(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        # A bug, not a bad request: the traceback goes to the server's log, never to the client.
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return reply(500, f"internal error ({type(e).__name__}); the server is still running")


def _sentence(err: dict[str, object]) -> str:
    """A pydantic validation error as a phrase: ``k must be less than or equal to 64, not 100``."""
    loc = err.get("loc", ())
    where = (
        ".".join(str(p) for p in loc if p not in ("body", "query", "path"))
        if isinstance(loc, tuple | list)
        else ""
    )
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Input should be "):
        msg = "must be " + msg.removeprefix("Input should be ")
    elif msg == "Field required":
        msg = "is required"
    value = err.get("input")
    if (
        isinstance(value, int | float | str)
        and not isinstance(value, bool)
        and msg.startswith("must")
    ):
        shown = str(value)[:40]
        msg += f", not {shown}" if _is_number(shown) else f", not {shown!r}"
    return f"{where} {msg}" if where else msg


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
