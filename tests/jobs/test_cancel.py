"""Cancelling jobs, and the time limit, against a real service with real worker processes."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.conftest import write_photos
from tests.service.harness import FakeBackend, ServiceProcess, wait_until

STALL = {"stage_seconds": 0.02, "stall": True, "stall_at": "features"}


def photos(service: ServiceProcess) -> Path:
    return write_photos(service.photos_root / uuid.uuid4().hex[:8], 3)


def wait_running(service: ServiceProcess, job_id: str, stage: str = "features") -> None:
    wait_until(lambda: service.job(job_id)["stage"] == stage, 20, f"job {job_id} to reach {stage}")


def test_cancel_queued_and_running_jobs(start_service: Callable[..., ServiceProcess], backend: FakeBackend) -> None:
    service = start_service(backend=backend)
    running = service.submit(photos(service), simulate=STALL)
    queued = service.submit(photos(service), simulate={"stage_seconds": 0.02})
    wait_running(service, running)

    # A queued job fails at once and never starts.
    response = service.client.post(f"/jobs/{queued}/cancel")
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["status"], job["message"], job["cancelled"], job["attempts"]) == ("failed", "cancelled", True, 0)

    # A running job stops within 5 s; its partial output is removed.
    assert (service.models / running).exists()
    started = time.monotonic()
    response = service.client.post(f"/jobs/{running}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    job = service.wait_job(running, timeout=10)
    assert time.monotonic() - started < 5.0
    assert (job["status"], job["message"], job["cancelled"]) == ("failed", "cancelled", True)
    assert not (service.models / running).exists()

    # Cancelling again changes nothing; the queued job never ran, even now that a worker is free.
    again = service.client.post(f"/jobs/{running}/cancel")
    assert again.status_code == 200 and again.json()["updated_at"] == job["updated_at"]
    assert backend.wait_for_status(queued, "failed") == ["queued", "failed"]
    assert backend.wait_for_status(running, "failed") == ["queued", "processing", "failed"]
    wait_until(lambda: not service.worker_pids(), 10, "the cancelled worker to exit")
    time.sleep(0.5)  # a scheduler tick or two: a free worker must still not pick up the cancelled job
    assert service.job(queued)["attempts"] == 0 and service.worker_pids() == []


def test_cancelling_a_finished_job_is_409(start_service: Callable[..., ServiceProcess]) -> None:
    service = start_service()
    job_id = service.submit(photos(service), simulate={"stage_seconds": 0.02})
    assert service.wait_job(job_id)["status"] == "completed"
    response = service.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409 and "already completed" in response.json()["error"]


def test_a_worker_that_ignores_cancel_is_terminated(start_service: Callable[..., ServiceProcess]) -> None:
    service = start_service(env={"RECON_CANCEL_GRACE_S": "1"})
    job_id = service.submit(photos(service), simulate=STALL)
    wait_running(service, job_id)
    (pid,) = service.worker_pids()
    os.kill(pid, signal.SIGSTOP)  # frozen: it cannot poll its cancel flag any more
    started = time.monotonic()
    assert service.client.post(f"/jobs/{job_id}/cancel").status_code == 202
    job = service.wait_job(job_id, timeout=10)
    assert time.monotonic() - started < 5.0
    assert (job["status"], job["message"], job["cancelled"]) == ("failed", "cancelled", True)
    assert not (service.models / job_id).exists()


def test_a_job_running_past_the_time_limit_fails_with_a_timeout_message(start_service: Callable[..., ServiceProcess]) -> None:
    service = start_service(env={"RECON_JOB_TIMEOUT_S": "1.5"})
    job_id = service.submit(photos(service), simulate=STALL)
    job = service.wait_job(job_id, timeout=15)
    assert job["status"] == "failed" and job["cancelled"] is False
    assert "timed out after 1.5 s" in job["message"] and "RECON_JOB_TIMEOUT_S" in job["message"]
