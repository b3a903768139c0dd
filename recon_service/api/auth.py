"""Bearer-token authentication of every request but the health checks.

Done as ASGI middleware, before routing and body parsing, so no endpoint can forget it and an
unauthenticated client learns nothing (not even whether its JSON was valid). Tokens are compared
in constant time.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from pydantic import SecretStr
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from recon_service.settings import Settings

logger = logging.getLogger(__name__)

PUBLIC_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})
"""Paths answered without a token (load balancers and orchestrators probe them)."""


def ensure_token(settings: Settings) -> tuple[Settings, str | None]:
    """``settings`` with a service token; generates a random one when none is configured.

    Returns the settings and the generated token (``None`` if one was configured), which the
    caller shows once: the service is never open.
    """
    if settings.service_token is not None:
        return settings, None
    token = secrets.token_urlsafe(32)
    return settings.model_copy(update={"service_token": SecretStr(token)}), token


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuthMiddleware:
    """Answers 401 ``{"error"}`` with ``WWW-Authenticate: Bearer`` unless the token matches."""

    def __init__(self, app: ASGIApp, token: str, public_paths: frozenset[str] = PUBLIC_PATHS) -> None:
        self.app = app
        self._token = token.encode()
        self._public = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._public:
            await self.app(scope, receive, send)
            return
        given = bearer_token(scope["headers"])
        if given is None:
            problem = "missing 'Authorization: Bearer <token>' header; send the service's RECON_SERVICE_TOKEN"
        elif not hmac.compare_digest(given.encode(), self._token):
            problem = "invalid bearer token; send the service's RECON_SERVICE_TOKEN"
        else:
            await self.app(scope, receive, send)
            return
        logger.info("rejected %s %s: %s", scope["method"], scope["path"], "no token" if given is None else "wrong token")
        response = JSONResponse({"error": problem}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
