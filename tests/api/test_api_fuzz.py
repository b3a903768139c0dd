"""Property-based tests of the running service against its published contract (schemathesis).

Requests are generated from the committed ``openapi.json`` (``test_openapi.py`` proves it is
what the service serves) and sent to a real simulate-mode service on loopback. Every answer must
match the document (status code, content type, body schema), no answer may be a 5xx, and every
error must be exactly ``{"error": "<non-empty text>"}``.

Two of schemathesis' checks do not fit this API and are off: ``positive_data_acceptance`` (a
schema-valid job is still refused with 400 when its ``photos_dir`` is not a folder of photos on
the service's disk) and ``negative_data_rejection`` (unknown query parameters are ignored, as
HTTP APIs usually do, and the token these tests always send defeats its "no Authorization"
mutations; ``ignored_auth`` checks authentication instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from recon_service.kit import ReconDouble

OPENAPI_JSON = Path(__file__).resolve().parents[2] / "openapi.json"
MAX_EXAMPLES = 60
"""Per operation; seven operations stay well under 60 s on two shared cores."""

CONFIG = schemathesis.Config.from_dict(
    {"checks": {"positive_data_acceptance": {"enabled": False}, "negative_data_rejection": {"enabled": False}}}
)
schema = schemathesis.openapi.from_path(OPENAPI_JSON, config=CONFIG)


def error_body_is_the_contract_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """Every non-2xx answer is ``{"error": "<text>"}`` (the 503 of /readyz adds its readiness report)."""
    if response.status_code < 400:
        return True
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), (
        f"{case.method} {case.formatted_path} answered {response.status_code} without a non-empty 'error': {response.text[:300]}"
    )
    if response.status_code != 503:
        assert set(body) == {"error"}, f"error body has extra keys {sorted(set(body) - {'error'})}: {response.text[:300]}"
    return True


@pytest.fixture(scope="module")
def service(recon_double: ReconDouble) -> ReconDouble:
    # A few real jobs, so that listing and status answers carry full job records too.
    for _ in range(2):
        recon_double.submit(3, simulate={"stage_seconds": 0.01})
    return recon_double


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_contract_and_no_request_causes_a_5xx(case: schemathesis.Case, service: ReconDouble) -> None:
    case.call_and_validate(
        base_url=service.url,
        headers={"Authorization": f"Bearer {service.token}"},
        additional_checks=[error_body_is_the_contract_shape],
        timeout=10,
    )


def test_answers_about_real_jobs_in_every_state_match_the_contract(service: ReconDouble) -> None:
    """Generated job ids are all unknown (404), so real jobs' records are checked here: each state once."""
    client = service.client
    completed = service.submit(3, simulate={"stage_seconds": 0.01})
    failed = service.submit(3, simulate={"stage_seconds": 0.01, "fail_at": "sparse", "message": "no overlap"})
    running = service.submit(3, simulate={"stall": True, "stall_at": "ingest"})
    for job_id in (completed, failed):
        client.wait(job_id, timeout=30, poll_interval=0.05)
    auth = {"Authorization": f"Bearer {service.token}"}
    get_job, cancel = schema["/jobs/{job_id}"]["GET"], schema["/jobs/{job_id}/cancel"]["POST"]
    statuses = []
    for job_id in (completed, failed, running):
        response = get_job.Case(path_parameters={"job_id": job_id}).call_and_validate(base_url=service.url, headers=auth)
        statuses.append(response.json()["status"])
    assert statuses == ["completed", "failed", "processing"]
    answers = [
        cancel.Case(path_parameters={"job_id": job_id}).call_and_validate(
            base_url=service.url, headers=auth, additional_checks=[error_body_is_the_contract_shape]
        ).status_code
        for job_id in (running, completed)
    ]
    assert answers == [202, 409]
    assert client.wait(running, timeout=10, poll_interval=0.05).cancelled
