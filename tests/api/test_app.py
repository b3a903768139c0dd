"""The app built in-process (no lifespan, no workers): what depends on RECON_PIPELINE=real."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from recon_service.api.app import create_app
from recon_service.kit import write_jpegs
from recon_service.settings import Settings


def real_mode_client(tmp_path: Path) -> TestClient:
    settings = Settings(
        service_token="t", pipeline="real", data_dir=tmp_path / "data", model_output_root=tmp_path / "models",
        photos_root=tmp_path / "uploads",
    )  # fmt: skip
    return TestClient(create_app(settings), headers={"Authorization": "Bearer t"})


def test_in_real_mode_the_simulate_field_is_ignored_and_nothing_claims_to_be_simulated(tmp_path: Path) -> None:
    client = real_mode_client(tmp_path)
    assert client.get("/healthz").json()["simulated"] is False
    job_id = str(uuid.uuid4())
    body = {
        "job_id": job_id, "dataset_name": "scan", "photo_count": 3, "photos_dir": str(write_jpegs(tmp_path / "uploads" / "a", 3)),
        "simulate": {"fail_at": "not-a-stage"},
    }  # fmt: skip
    assert client.post("/jobs", json=body).status_code == 202
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["simulated"], job["message"]) == ("queued", False, "queued")
    # The ignored field is not part of the idempotency key either.
    assert client.post("/jobs", json={**body, "simulate": {"stall": True}}).status_code == 202
