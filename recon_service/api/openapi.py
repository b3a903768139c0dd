"""The published contract: the service's OpenAPI 3.1 document, as served at ``GET /openapi.json``.

FastAPI generates the paths and models from the routes and ``schemas.py``; :func:`contract_openapi`
then makes the document say what the service really does:

* the bearer token (``bearer`` security) on every endpoint but ``/healthz`` and ``/readyz``;
* ``{"error": "..."}`` (``ErrorBody``) responses instead of FastAPI's 422: 400 where a body or
  query is validated, 401 where a token is needed, 404 where a job id is looked up, 413 on every
  POST (the body limit), 500 everywhere (an unexpected error), plus those the routes declare (409);
* the real bodies of ``GET /options`` (``OptionsCatalog``) and of a not-ready ``/readyz`` (503);
* the two callbacks the service sends to the backend, as ``webhooks``, with their bearer token.

``python -m recon_service.api.openapi`` prints it; ``make openapi`` writes the committed
``openapi.json``, which ``tests/service/test_openapi.py`` compares with the served document.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from recon_service.api.auth import PUBLIC_PATHS
from recon_service.contract import CallbackBody, ErrorBody, OptionsCatalog

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.routing import APIRoute

SERVICE_SECURITY = "bearer"
CALLBACK_SECURITY = "callbackBearer"
ERROR_DESCRIPTIONS: dict[str, str] = {
    "400": "Invalid request: the message names the field and what is wrong",
    "401": "Missing or wrong bearer token (RECON_SERVICE_TOKEN)",
    "404": "No job with this id",
    "409": "Conflict with the job's current state",
    "413": "Request body larger than RECON_MAX_BODY_BYTES",
    "500": "Unexpected error; the service log has the details",
}
CALLBACK_RETRIES = (
    "Delivery is at least once and in order per job: the next callback of a job is sent only after the "
    "previous one was delivered or given up. Network errors, 408, 429 and 5xx answers are retried with "
    "exponential backoff (RECON_CALLBACK_RETRY_INITIAL_S doubling up to RECON_CALLBACK_RETRY_MAX_S) until "
    "RECON_CALLBACK_MAX_AGE_S after the callback was queued; any other non-2xx answer is a permanent "
    "refusal (logged, not retried). The backend must accept the same body twice."
)
JOB_EXAMPLE: dict[str, Any] = {
    "job_id": "3f2c1a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f",
    "dataset_name": "Living room chair",
    "photo_count": 42,
    "photos_dir": "/srv/data/uploads/3f2c1a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f",
    "notes": "shot in daylight",
    "options": {"preset": "preview"},
}


def contract_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app`` (built once, then cached on the app); install as ``app.openapi``."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, webhooks=_webhook_routes()
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _add_model(schemas, ErrorBody)
    components["securitySchemes"] = {
        SERVICE_SECURITY: {"type": "http", "scheme": "bearer", "description": "RECON_SERVICE_TOKEN, sent by the backend."},
        CALLBACK_SECURITY: {"type": "http", "scheme": "bearer", "description": "RECON_CALLBACK_TOKEN, sent by this service."},
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_operation(path, method, operation)
    _document_special_bodies(schema)
    for operation in (op for item in schema.get("webhooks", {}).values() for op in item.values()):
        operation["security"] = [{CALLBACK_SECURITY: []}]
        operation["responses"] = {  # the service looks at the status code only
            "2XX": {"description": "Delivered (the body of the answer is ignored)"},
            "default": {"description": "Not delivered: retried or given up, see above"},
        }
    app.openapi_schema = schema
    return schema


def _complete_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    """Error responses and security of one operation, from what the middleware and handlers do."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    validated = responses.pop("422", None) is not None
    has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
    has_job_id = any(p.get("in") == "path" and p.get("name") == "job_id" for p in operation.get("parameters", []))
    codes = ["500"]
    if validated and ("requestBody" in operation or has_query):
        codes.append("400")
    if path not in PUBLIC_PATHS:
        operation["security"] = [{SERVICE_SECURITY: []}]
        codes.append("401")
    if has_job_id:
        codes.append("404")
    if method == "post":
        codes.append("413")
    for code in codes:
        responses.setdefault(code, _error_response(ERROR_DESCRIPTIONS[code]))
    for code, response in responses.items():  # a route-declared error without a body schema gets ErrorBody
        if code[0] in "45" and "content" not in response:
            response.update(_error_response(response.get("description") or ERROR_DESCRIPTIONS.get(code, "Error")))
    operation["responses"] = dict(sorted(responses.items()))
    if "requestBody" in operation and path == "/jobs" and method == "post":
        operation["requestBody"]["content"]["application/json"]["example"] = JOB_EXAMPLE


def _document_special_bodies(schema: dict[str, Any]) -> None:
    """Bodies the routes return as plain dicts or JSONResponses, which FastAPI cannot see."""
    schemas = schema["components"]["schemas"]
    paths = schema.get("paths", {})
    if "/options" in paths:
        ref = _add_model(schemas, OptionsCatalog)
        paths["/options"]["get"]["responses"]["200"]["content"] = {"application/json": {"schema": {"$ref": ref}}}
    if "/readyz" in paths and "Ready" in schemas:
        schemas["NotReady"] = {
            "title": "NotReady",
            "description": "``GET /readyz`` when not ready (503): the readiness report plus ``error`` saying what is wrong.",
            "allOf": [{"$ref": "#/components/schemas/Ready"}, {"$ref": "#/components/schemas/ErrorBody"}],
        }
        paths["/readyz"]["get"]["responses"]["503"] = {
            "description": "Not ready; `error` says why",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NotReady"}}},
        }


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


def _add_model(schemas: dict[str, Any], model: type[BaseModel]) -> str:
    """Put ``model`` (and the models it uses) into ``components.schemas``; return its ``$ref``."""
    generated = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    for name, definition in generated.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault(model.__name__, generated)
    return f"#/components/schemas/{model.__name__}"


def _webhook_routes() -> list[APIRoute]:
    """The backend endpoints the service calls, as FastAPI routes (only their documentation is used)."""
    from fastapi import APIRouter

    hooks = APIRouter()

    @hooks.post("/internal/reconstruction/status", summary="Job status changed (sent to the backend)")
    def reconstruction_status(body: CallbackBody) -> None:
        """Sent to ``{RECON_CALLBACK_URL}/internal/reconstruction/status`` whenever a job's ``status``
        changes (queued, processing, meshing, texturing, then completed or failed) with
        ``Authorization: Bearer {RECON_CALLBACK_TOKEN}``. A completed job's ``model_uri`` is the
        ``file://`` URI of its model.glb; a cancelled job ends ``failed`` with message ``cancelled``.
        """

    @hooks.post("/internal/reconstruction/progress", summary="Job progress advanced (sent to the backend)")
    def reconstruction_progress(body: CallbackBody) -> None:
        """Sent to ``{RECON_CALLBACK_URL}/internal/reconstruction/progress`` when ``progress`` grows
        without a status change, at most once per RECON_PROGRESS_CALLBACK_INTERVAL_S per job; an
        undelivered progress callback is replaced by a newer one. Same body as the status callback.
        """

    for route in hooks.routes:
        route.description = f"{route.description}\n\n{CALLBACK_RETRIES}"  # type: ignore[attr-defined]
    return hooks.routes  # type: ignore[return-value]


@contextmanager
def throwaway_app() -> Iterator[FastAPI]:
    """A service app built with throw-away settings and folders; nothing is started."""
    from recon_service.api.app import create_app
    from recon_service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="recon-openapi-") as tmp:
        root = Path(tmp)
        settings = Settings(  # type: ignore[call-arg]
            service_token="openapi", data_dir=root / "data", model_output_root=root / "models", photos_root=root
        )
        app = create_app(settings)
        try:
            yield app
        finally:
            app.state.service.store.close()


def build_spec() -> dict[str, Any]:
    """The served document, without serving it (it does not depend on the settings)."""
    with throwaway_app() as app:
        return app.openapi()


def render(spec: dict[str, Any]) -> str:
    """The committed file's exact text."""
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    sys.stdout.buffer.write(render(build_spec()).encode())  # UTF-8 whatever the locale
    return 0


if __name__ == "__main__":
    sys.exit(main())
