"""Cancelling jobs, and the time limit, against a real service with real worker processes."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from recon_service.kit import CallbackRecorder, ReconDouble, write_jpegs
from tests.helpers import wait_statuses, wait_until, worker_pids

STALL = {"stage_seconds": 0.02, "stall": True, "stall_at": "features"}


def photos(service: ReconDouble) -> Path:
    return write_jpegs(service.photos_root / uuid.uuid4().hex[:8], 3)


def wait_running(service: ReconDouble, job_id: str, stage: str = "features") -> None:
    wait_until(lambda: service.job(job_id)["stage"] == stage, 20, f"job {job_id} to reach {stage}")


def test_cancel_queued_and_running_jobs(start_service: Callable[..., ReconDouble], backend: CallbackRecorder) -> None:
    service = start_service(backend=backend)
    running = service.submit(photos(service), simulate=STALL)
    queued = service.submit(photos(service), simulate={"stage_seconds": 0.02})
    wait_running(service, running)

    # A queued job fails at once and never starts.
    response = service.http.post(f"/jobs/{queued}/cancel")
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["status"], job["message"], job["cancelled"], job["attempts"]) == ("failed", "cancelled", True, 0)

    # A running job writes only into its attempt's own folder; it stops within 5 s and that folder is removed.
    attempt_dir = service.models_root / ".attempts" / f"{running}.1"
    assert attempt_dir.exists() and not (service.models_root / running).exists()
    started = time.monotonic()
    response = service.http.post(f"/jobs/{running}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    job = service.wait_job(running, timeout=10)
    assert time.monotonic() - started < 5.0
    assert (job["status"], job["message"], job["cancelled"]) == ("failed", "cancelled", True)
    assert not (service.models_root / running).exists() and not attempt_dir.exists()

    # Cancelling again changes nothing; the queued job never ran, even now that a worker is free.
    again = service.http.post(f"/jobs/{running}/cancel")
    assert again.status_code == 200 and again.json()["updated_at"] == job["updated_at"]
    assert wait_statuses(backend, queued, "failed") == ["queued", "failed"]
    assert wait_statuses(backend, running, "failed") == ["queued", "processing", "failed"]
    wait_until(lambda: not worker_pids(service), 10, "the cancelled worker to exit")
    time.sleep(0.5)  # a scheduler tick or two: a free worker must still not pick up the cancelled job
    assert service.job(queued)["attempts"] == 0 and worker_pids(service) == []


def test_cancelling_a_finished_job_is_409(start_service: Callable[..., ReconDouble]) -> None:
    service = start_service()
    job_id = service.submit(photos(service), simulate={"stage_seconds": 0.02})
    assert service.wait_job(job_id)["status"] == "completed"
    response = service.http.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409 and "already completed" in response.json()["error"]


def test_a_worker_that_ignores_cancel_is_terminated(start_service: Callable[..., ReconDouble]) -> None:
    service = start_service(env={"RECON_CANCEL_GRACE_S": "1"})
    job_id = service.submit(photos(service), simulate=STALL)
    wait_running(service, job_id)
    (pid,) = worker_pids(service)
    os.kill(pid, signal.SIGSTOP)  # frozen: it cannot poll its cancel flag any more
    started = time.monotonic()
    assert service.http.post(f"/jobs/{job_id}/cancel").status_code == 202
    job = service.wait_job(job_id, timeout=10)
    assert time.monotonic() - started < 5.0
    assert (job["status"], job["message"], job["cancelled"]) == ("failed", "cancelled", True)
    assert not (service.models_root / job_id).exists()


def test_a_job_running_past_the_time_limit_fails_with_a_timeout_message(start_service: Callable[..., ReconDouble]) -> None:
    service = start_service(env={"RECON_JOB_TIMEOUT_S": "1.5"})
    job_id = service.submit(photos(service), simulate=STALL)
    job = service.wait_job(job_id, timeout=15)
    assert job["status"] == "failed" and job["cancelled"] is False
    assert "timed out after 1.5 s" in job["message"] and "RECON_JOB_TIMEOUT_S" in job["message"]
