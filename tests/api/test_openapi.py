"""The published contract: the committed openapi.json is what the service serves, and it is complete."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis

from recon_service.api.openapi import build_spec, render, throwaway_app
from recon_service.kit import CallbackRecorder, ReconDouble

OPENAPI_JSON = Path(__file__).resolve().parents[2] / "openapi.json"
REGENERATE = "run `make openapi` and commit openapi.json"


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return json.loads(OPENAPI_JSON.read_text())


def _diff(expected: dict[str, Any], actual: dict[str, Any], limit: int = 40) -> str:
    lines = difflib.unified_diff(
        render(expected).splitlines(), render(actual).splitlines(), "openapi.json (committed)", "served", lineterm="", n=1
    )
    return "\n".join(list(lines)[:limit])


def _api_routes(app: Any) -> set[tuple[str, str]]:
    """(path, method) of every route in the app's schema (FastAPI >= 0.160 nests included routers)."""
    from fastapi import routing

    contexts = getattr(routing, "iter_route_contexts", None)
    items = list(contexts(app.routes)) if contexts else app.routes
    return {
        (getattr(item, "path_format", None) or item.path, method.lower())
        for item in items
        if getattr(getattr(item, "route", item), "include_in_schema", False)
        for method in getattr(item, "methods", None) or ()
    }


def test_the_served_spec_is_the_committed_openapi_json(recon_double: ReconDouble, committed: dict[str, Any]) -> None:
    response = httpx.get(recon_double.url + "/openapi.json", headers={"Authorization": f"Bearer {recon_double.token}"}, timeout=10)
    assert response.status_code == 200, response.text
    served = response.json()
    assert served == committed, f"GET /openapi.json differs from the committed openapi.json; {REGENERATE}.\n{_diff(committed, served)}"


def test_make_openapi_reproduces_the_committed_file_byte_for_byte() -> None:
    assert render(build_spec()) == OPENAPI_JSON.read_text(encoding="utf-8"), f"openapi.json is stale or hand-edited; {REGENERATE}"


def test_the_spec_is_valid_openapi_3_1(committed: dict[str, Any]) -> None:
    assert committed["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(committed).validate()


def test_every_endpoint_is_documented_with_its_error_responses(committed: dict[str, Any]) -> None:
    with throwaway_app() as app:
        served_routes = _api_routes(app)
    documented = {(path, method) for path, ops in committed["paths"].items() for method in ops}
    assert documented == served_routes

    def error_ref(operation: dict[str, Any], code: str) -> str:
        return operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]

    for path, method in documented:
        operation = committed["paths"][path][method]
        codes = set(operation["responses"])
        assert "422" not in codes, f"{method} {path} documents FastAPI's 422; the service answers 400"
        expected = {"500"} | ({"401"} if path not in ("/healthz", "/readyz") else set())
        expected |= {"404"} if "{job_id}" in path else set()
        expected |= {"413"} if method == "post" else set()
        assert expected <= codes, f"{method.upper()} {path} lacks {sorted(expected - codes)}"
        for code in codes - {"200", "202", "503"}:
            assert error_ref(operation, code) == "#/components/schemas/ErrorBody", f"{method.upper()} {path} {code}"
        assert ("security" in operation) == (path not in ("/healthz", "/readyz"))
    assert {"400", "409"} <= set(committed["paths"]["/jobs"]["post"]["responses"])
    assert "409" in committed["paths"]["/jobs/{job_id}/cancel"]["post"]["responses"]
    assert "400" in committed["paths"]["/jobs"]["get"]["responses"]
    assert committed["components"]["schemas"]["ErrorBody"]["required"] == ["error"]


def test_the_callbacks_are_documented_as_webhooks_with_their_token(committed: dict[str, Any]) -> None:
    hooks = committed["webhooks"]
    assert set(hooks) == {"/internal/reconstruction/status", "/internal/reconstruction/progress"}
    for hook in hooks.values():
        post = hook["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CallbackBody"}
        assert post["security"] == [{"callbackBearer": []}]
        assert "408, 429 and 5xx" in post["description"]
    body = committed["components"]["schemas"]["CallbackBody"]
    assert set(body["required"]) == {"job_id", "status", "progress", "message", "model_uri"}


def test_the_callbacks_the_service_sends_match_the_documented_webhook_body(
    recon_double: ReconDouble, callback_recorder: CallbackRecorder, committed: dict[str, Any]
) -> None:
    job_id = recon_double.submit(3, simulate={"stage_seconds": 0.05})
    callback_recorder.wait_for(job_id, "completed", timeout=30)
    calls = callback_recorder.calls_for(job_id)
    assert {c.kind for c in calls} == {"status", "progress"}
    body_schema = {"$ref": "#/components/schemas/CallbackBody", "components": committed["components"]}
    for call in calls:
        jsonschema.validate(call.body, body_schema, cls=jsonschema.Draft202012Validator)
        # With local storage the contract's five fields, and for completed the additive list of files and sizes;
        # the additive download links come only with S3 (tests/storage).
        additive = {"artifacts", "artifact_bytes"} if call.body["status"] == "completed" else set()
        assert set(call.body) == set(committed["components"]["schemas"]["CallbackBody"]["required"]) | additive
