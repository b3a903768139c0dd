"""Every error the service answers, in the contract's shape: ``{"error": "..."}``.

Routes raise :class:`ApiError`; :func:`install_error_handlers` renders it, and every other failure
(validation, unknown route, wrong method, crash), as ``{"error": "..."}`` -- 400 for bad input
(never FastAPI's 422 ``detail``), 404, 405, 500. :class:`BodyLimitMiddleware` answers 413 before a
body is read to its end.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 2xx, rendered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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
        if where == "body" and not field and kind != "value_error":
            parts.append("request body is required" if kind == "missing" else "request body must be a JSON object")
            continue
        if where == "body" and not field:  # a check across fields: its message names them
            parts.append(str(err.get("msg", "is invalid")).removeprefix("Value error, "))
            continue
        message = "is required" if kind == "missing" else str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if len(message) > MAX_ECHO_CHARS:  # messages quote the value: never echo a megabyte back
            message = message[:MAX_ECHO_CHARS] + f"... ({len(message)} characters)"
        name = field if where == "body" else f"{field} ({where} parameter)"
        parts.append(f"{name}: {message}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
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
