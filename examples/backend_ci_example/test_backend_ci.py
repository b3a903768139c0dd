"""How a backend's CI uses recon-service's testing kit: no conftest, no imports of fixtures.

``pip install recon-service`` registers the pytest plugin; ``recon_double`` is the service in
simulate mode and ``callback_recorder`` records the callbacks it sends.
"""

from __future__ import annotations

from backend_app import create_app
from fastapi.testclient import TestClient


def test_the_double_reconstructs_and_calls_back(recon_double, callback_recorder):
    job_id = recon_double.submit(photo_count=5)  # 5 generated JPEGs, a new job id
    calls = callback_recorder.wait_for(job_id, "completed", timeout=30)
    assert [c.status for c in calls] == ["queued", "processing", "meshing", "texturing", "completed"]
    assert calls[-1].body["model_uri"].endswith("/model.glb")


def test_the_backend_handles_the_real_callbacks_idempotently(recon_double, callback_recorder):
    backend = TestClient(create_app(recon_double.client, callback_recorder.token))
    photos = recon_double.make_photos(4)
    upload = {"dataset_name": "chair", "photo_count": 4, "photos_dir": str(photos)}
    job_id = backend.post("/uploads", json=upload).json()["job_id"]
    callback_recorder.wait_for(job_id, "completed", timeout=30)

    for call in callback_recorder.calls_for(job_id):  # replay what the service sent, twice
        for _ in range(2):
            answer = backend.post(
                f"/internal/reconstruction/{call.kind}",
                content=call.raw,
                headers={"Authorization": call.headers["authorization"], "Content-Type": "application/json"},
            )
            assert answer.status_code == 200, answer.text
    job = backend.get(f"/jobs/{job_id}/status").json()
    assert (job["status"], job["progress"]) == ("completed", 1.0) and job["model_uri"].startswith("file://")

    forged = backend.post("/internal/reconstruction/status", content=call.raw, headers={"Authorization": "Bearer guess"})
    assert forged.status_code == 401


def test_a_refused_submission_fails_the_upload(recon_double):
    backend = TestClient(create_app(recon_double.client, "unused-callback-token"))
    empty = recon_double.make_photos(0)
    job_id = backend.post("/uploads", json={"dataset_name": "x", "photo_count": 3, "photos_dir": str(empty)}).json()["job_id"]
    job = backend.get(f"/jobs/{job_id}/status").json()
    assert job["status"] == "failed" and "photos_dir" in job["message"]
