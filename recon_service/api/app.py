"""``create_app(settings)``: the FastAPI app with its store, executor and callback sender.

Every error answers ``{"error": "..."}``: validation problems and malformed JSON are 400 (never
FastAPI's 422 ``detail``), unknown paths 404, wrong methods 405, oversize bodies 413, bugs 500.
Nothing here is global: tests and the testing kit build as many independent apps as they like.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recon_service import __version__, jobs, logs, metrics, routes
from recon_service.auth import BearerAuthMiddleware
from recon_service.callbacks import CallbackDispatcher
from recon_service.errors import ApiError
from recon_service.openapi import contract_openapi
from recon_service.retention import DiskUsage, RetentionSweeper
from recon_service.settings import Settings
from recon_service.workers import Executor, LocalProcessExecutor

logger = logging.getLogger(__name__)

DESCRIPTION = """Turns a folder of photos into a textured GLB model. See
`shared/contract/reconstruction-service-interface.md`; every error body is `{"error": "..."}`."""


def create_app(settings: Settings, *, executor: Executor | None = None) -> FastAPI:
    """The service's ASGI app. Background work (workers, callbacks) starts with the app's lifespan.

    ``settings.service_token`` must be set (``auth.ensure_token`` generates one). ``executor``
    replaces the local worker processes (e.g. with a distributed engine).
    """
    if settings.service_token is None:
        raise ValueError("create_app needs settings.service_token; call recon_service.auth.ensure_token(settings) first")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.model_output_root.mkdir(parents=True, exist_ok=True)
    if not settings.photos_root.is_dir():
        logger.warning("RECON_PHOTOS_ROOT=%s does not exist; every submission will be refused until it does", settings.photos_root)
    store = jobs.open_store(settings)
    executor = executor or LocalProcessExecutor(settings, store)
    service_metrics = metrics.ServiceMetrics(settings, store, executor)
    disk = DiskUsage(settings)
    service = routes.Service(
        settings=settings,
        store=store,
        executor=executor,
        callbacks=CallbackDispatcher(settings, store, service_metrics.callbacks) if settings.callback_url else None,
        disk=disk,
    )
    sweeper = RetentionSweeper(settings, store, disk) if settings.retention_s is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lock = _lock_data_dir(settings.data_dir)
        requeued = store.recover(max_attempts=jobs.MAX_ATTEMPTS, give_up_message=jobs.GIVE_UP_MESSAGE)
        if requeued:
            logger.info("re-queued %d job(s) interrupted by the last shutdown: %s", len(requeued), ", ".join(requeued))
        logs.set_stage_lookup(store.stage_of)
        service.executor.start()
        if service.callbacks is not None:
            service.callbacks.start()
        if sweeper is not None:
            sweeper.start()
        logger.info(
            "recon-service %s ready: pipeline=%s%s max_workers=%d data_dir=%s callbacks=%s",
            __version__, settings.pipeline, " (SIMULATED, not a real reconstruction)" if settings.simulated else "",
            settings.max_workers, settings.data_dir, settings.callback_url or "off",
        )  # fmt: skip
        try:
            yield
        finally:
            await asyncio.to_thread(service.executor.shutdown)
            if service.callbacks is not None:
                await asyncio.to_thread(service.callbacks.stop)
            if sweeper is not None:
                await asyncio.to_thread(sweeper.stop)
            logs.set_stage_lookup(None)
            os.close(lock)
            logger.info("recon-service stopped")

    app = FastAPI(
        title="recon-service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.metrics = service_metrics
    app.include_router(routes.router)
    app.include_router(metrics.router)
    _install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, token=settings.service_token.get_secret_value())  # outermost: first
    app.openapi = lambda: contract_openapi(app)  # type: ignore[method-assign]
    return app


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir: two services on one job store would run jobs twice."""
    fd = os.open(data_dir / "service.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another recon-service already uses RECON_DATA_DIR={data_dir}; stop it or use another directory") from None
    return fd


# -- errors ----------------------------------------------------------------------------------
MAX_ECHO_CHARS = 300
"""Longest validation message returned; longer ones (quoting a huge value) are cut."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def describe_validation_errors(errors: Any) -> str:
    """One sentence per problem, each naming the field: ``photo_count: must be at least 1, not 0``."""
    parts = []
    for err in list(errors)[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        where, field = (loc[0], ".".join(loc[1:])) if loc else ("body", "")
        kind = err.get("type", "")
        if kind == "json_invalid":
            parts.append(f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            continue
        if where == "body" and not field:
            parts.append("request body is required" if kind == "missing" else "request body must be a JSON object")
            continue
        message = "is required" if kind == "missing" else str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if len(message) > MAX_ECHO_CHARS:  # messages quote the value: never echo a megabyte back
            message = message[:MAX_ECHO_CHARS] + f"... ({len(message)} characters)"
        name = field if where == "body" else f"{field} ({where} parameter)"
        parts.append(f"{name}: {message}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = describe_validation_errors(exc.errors())
        content_type = request.headers.get("content-type", "")
        if message.startswith("request body") and content_type and "json" not in content_type:
            message += f"; send it as JSON with 'Content-Type: application/json', not {content_type!r}"
        return error_response(400, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette lists only the first matching route's methods (GET /jobs and POST /jobs are two)
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, message, headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error; see the service log")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route answers on this path (for the ``Allow`` header of a 405)."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in request.app.router.routes)
    ]


class BodyLimitMiddleware:
    """Answers 413 ``{"error"}`` for bodies over ``max_bytes``, declared or streamed (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
            elif int(declared) > self.max_bytes:
                await self._too_large(int(declared), scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:  # no length declared: read it here, within the limit, then replay it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(len(body), scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, size: int, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body too large: {size} bytes or more; at most {self.max_bytes} bytes are accepted (RECON_MAX_BODY_BYTES)"
        await error_response(413, message, {"Connection": "close"})(scope, receive, send)
