"""Crashes: a worker killed by SIGKILL (the OOM killer's signal), and the service itself killed mid-job."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from recon_service.kit import CallbackRecorder, ReconDouble, write_jpegs
from tests.helpers import delivered, wait_statuses, wait_until, worker_pids

SUCCESS = ["queued", "processing", "meshing", "texturing", "completed"]


def photos(service: ReconDouble) -> Path:
    return write_jpegs(service.photos_root / uuid.uuid4().hex[:8], 3)


def collapse(statuses: list[str]) -> list[str]:
    """Statuses without immediate repeats (delivery is at least once: a crash may resend one)."""
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


def test_a_worker_killed_by_sigkill_fails_its_job_as_out_of_memory_and_the_next_job_runs(
    start_service: Callable[..., ReconDouble],
) -> None:
    service = start_service()
    victim = service.submit(photos(service), simulate={"stage_seconds": 0.02, "stall": True, "stall_at": "dense"})
    after = service.submit(photos(service), simulate={"stage_seconds": 0.02})
    wait_until(lambda: service.job(victim)["stage"] == "dense", 20, "the first job to reach dense")
    (pid,) = worker_pids(service)
    os.kill(pid, signal.SIGKILL)
    job = service.wait_job(victim)
    assert job["status"] == "failed" and job["cancelled"] is False
    assert job["message"].startswith("worker was killed, probably out of memory")
    assert not (service.models_root / victim).exists()
    assert service.wait_job(after)["status"] == "completed"
    assert service.http.get("/readyz").json()["ready"] is True


def test_service_killed_mid_job_restarts_and_completes_it_with_every_callback(
    start_service: Callable[..., ReconDouble], backend: CallbackRecorder
) -> None:
    service = start_service(backend=backend)
    first = service.submit(photos(service), simulate={"stage_seconds": 0.25})
    second = service.submit(photos(service), simulate={"stage_seconds": 0.02})
    wait_until(lambda: backend.statuses(first) == ["queued", "processing"], 20, "the first job to be processing")
    backend.fail_next(10**6, 503)  # the backend goes down: callbacks pile up in the outbox
    wait_until(lambda: service.job(first)["status"] == "meshing", 20, "the first job to reach meshing")
    (worker,) = worker_pids(service)
    service.kill()
    psutil.Process(worker).wait(timeout=5)  # the orphaned worker notices and stops by itself

    backend.heal()
    service.start()  # same data dir, same port
    rerun = wait_until(lambda: (j := service.job(first))["attempts"] == 2 and j["stage"] is not None and j, 20, "the re-run to start")
    if rerun["stage"] in ("ingest", "features", "matching", "sparse", "dense"):  # before the point the first attempt reached
        from pipelines.run import STAGES

        meshing_starts_at = sum(s.weight for s in STAGES[: [s.name for s in STAGES].index("mesh")]) / sum(s.weight for s in STAGES)
        assert rerun["status"] == "processing" and rerun["progress"] >= meshing_starts_at, rerun  # its own phase; progress held
        assert rerun["message"].startswith("restarted after a service restart, attempt 2 of 3: "), rerun
    done = service.wait_job(first)
    assert (done["status"], done["attempts"]) == ("completed", 2)
    assert service.wait_job(second)["status"] == "completed" and service.job(second)["attempts"] == 1
    wait_until(lambda: "completed" in backend.statuses(second), 20, "the second job's callbacks")
    # Every status of both attempts, in order: the interruption is reported as queued again.
    seen = collapse(wait_statuses(backend, first, "completed"))
    again = seen.index("queued", 1)
    assert seen[:again] == SUCCESS[:again] and again >= 3, seen  # the first attempt got to meshing (or further)...
    assert seen[again:] == SUCCESS, seen  # ...then the job was queued again and went through every status
    assert collapse(backend.statuses(second)) == SUCCESS
    progress = [b["progress"] for b in delivered(backend, first)]
    assert progress == sorted(progress), "progress went backwards across the restart"


def test_a_clean_shutdown_requeues_the_running_job_and_a_restart_finishes_it(start_service: Callable[..., ReconDouble]) -> None:
    service = start_service()
    job_id = service.submit(photos(service), simulate={"stage_seconds": 0.1})
    wait_until(lambda: service.job(job_id)["stage"] == "dense", 20, "the job to reach dense")
    service.stop()  # SIGTERM: uvicorn's graceful shutdown stops the workers
    assert "interrupted by shutdown; re-queued" in service.log()
    service.start()
    job = service.wait_job(job_id)
    assert (job["status"], job["attempts"]) == ("completed", 2)
