"""The backend's side of the callbacks: authenticate and validate what recon-service sends.

:class:`CallbackReceiver` checks the bearer token (RECON_CALLBACK_TOKEN) in constant time and
validates a status or progress callback body against the contract, whatever the web framework:
it takes the request headers and the raw body bytes. Also importable as
``recon_service.kit.client.CallbackReceiver``, next to the client.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from recon_service.contract import CallbackBody, ContractStatus


class ProgressCallbackBody(BaseModel):
    """A ``POST .../internal/reconstruction/progress`` body: the contract makes ``status`` and ``progress`` optional.

    (This service always sends all five fields, exactly as in a status callback.)
    """

    job_id: str
    status: ContractStatus | None = None
    progress: float | None = Field(None, ge=0.0, le=1.0)
    message: str | None = None
    model_uri: str | None = None


CallbackKind = Literal["status", "progress"]


@dataclass
class CallbackRejected(Exception):
    """A callback the backend must refuse: answer ``status_code`` with :meth:`body`.

    401 for a missing or wrong token, 400 for a body that breaks the contract. Both are
    permanent for the service (it does not retry 4xx other than 408/429).
    """

    status_code: int
    error: str

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.error}"

    def body(self) -> dict[str, str]:
        return {"error": self.error}


@dataclass(frozen=True)
class CallbackReceiver:
    """Checks and parses the service's callbacks, framework-agnostic (headers + raw body bytes).

    ``token`` is the backend's RECON_CALLBACK_TOKEN. In a FastAPI backend::

        receiver = CallbackReceiver(settings.recon_callback_token)

        async def status_callback(request: Request) -> CallbackBody:
            try:
                return receiver.receive("status", request.headers, await request.body())
            except CallbackRejected as exc:
                raise HTTPException(exc.status_code, exc.error) from None

        @app.post("/internal/reconstruction/status")
        def on_status(cb: Annotated[CallbackBody, Depends(status_callback)]) -> dict[str, bool]:
            store.update_job(cb.job_id, status=cb.status, progress=cb.progress, ...)  # idempotent
            return {"ok": True}

    Delivery is at least once and in order per job; a handler must accept the same body twice.
    """

    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("CallbackReceiver needs the callback token (RECON_CALLBACK_TOKEN); an empty one would accept anybody")

    def check_token(self, authorization: str | None) -> None:
        """Raise 401 unless ``authorization`` is ``Bearer <token>`` (compared in constant time)."""
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise CallbackRejected(401, "missing 'Authorization: Bearer <token>' header")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise CallbackRejected(401, "invalid bearer token")

    def parse(self, kind: CallbackKind, body: bytes | str) -> CallbackBody | ProgressCallbackBody:
        """Validate a callback body (UTF-8 JSON) of ``kind``; raise 400 naming the problem."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CallbackRejected(400, f"callback body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CallbackRejected(400, "callback body must be a JSON object")
        model: type[CallbackBody | ProgressCallbackBody] = CallbackBody if kind == "status" else ProgressCallbackBody
        try:
            parsed = model.model_validate(data)
        except ValidationError as exc:
            raise CallbackRejected(400, "invalid callback body: " + _describe(exc)) from None
        _check_contract(parsed)
        return parsed

    def receive(self, kind: CallbackKind, headers: Mapping[str, str], body: bytes | str) -> CallbackBody | ProgressCallbackBody:
        """:meth:`check_token` on the ``Authorization`` header, then :meth:`parse`; the token is checked first."""
        self.check_token(next((v for k, v in headers.items() if k.lower() == "authorization"), None))
        return self.parse(kind, body)


def _check_contract(cb: CallbackBody | ProgressCallbackBody) -> None:
    """What the models alone do not say: a UUID job id, progress in 0..1, a model URI once completed."""
    try:
        uuid.UUID(cb.job_id)
    except ValueError:
        raise CallbackRejected(400, f"invalid callback body: job_id: must be a UUID, not {cb.job_id!r}") from None
    if cb.progress is not None and not 0.0 <= cb.progress <= 1.0:
        raise CallbackRejected(400, f"invalid callback body: progress: must be between 0 and 1, not {cb.progress}")
    if cb.status is ContractStatus.COMPLETED and not cb.model_uri:
        raise CallbackRejected(400, "invalid callback body: model_uri: must be set when status is completed")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {'is required' if err['type'] == 'missing' else err['msg']}")
    return "; ".join(parts)
