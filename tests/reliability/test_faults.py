"""Faults: the service and its workers killed with SIGKILL, the backend down, the disk full.

After each: every job is in a correct final state, every callback was delivered in order, no
worker process is left behind, and no half-written model exists (no ``*.tmp``; ``model.glb``
absent or loadable).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.run import PHASE_OF_STAGE, STAGE_NAMES
from recon_service.kit import CallbackRecorder, ReconDouble, free_port
from tests.helpers import CALLBACK_TOKEN, delivered, wait_statuses, wait_until
from tests.reliability import hostile
from tests.reliability.conftest import (
    RANK,
    SUCCESS,
    Observe,
    collapse,
    is_root,
    metric,
    service_processes,
    wait_gone,
    worker_pid_of,
)

Stack = tuple[ReconDouble, CallbackRecorder]


def photos(service: ReconDouble, size: tuple[int, int] = (320, 240)) -> Path:
    return hostile.valid_photos(service.photos_root / uuid.uuid4().hex[:8], 3, size=size)


def assert_no_half_written_models(models: Path) -> int:
    """No ``*.tmp`` anywhere under ``models``; every ``model.glb`` loads. Returns how many models were checked."""
    import trimesh

    leftovers = [str(p) for p in models.rglob("*.tmp")] if models.exists() else []
    assert not leftovers, f"half-written files left behind: {leftovers}"
    glbs = list(models.rglob("model.glb")) if models.exists() else []
    for glb in glbs:
        assert len(trimesh.load(glb, force="scene").geometry) > 0, f"{glb} does not load"
    return len(glbs)


def assert_database_consistent(db: Path) -> None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM stage_runs WHERE ended_at IS NULL").fetchone()[0] == 0, "a stage run never ended"


def test_the_service_killed_with_jobs_queued_running_and_completing_restarts_and_finishes_every_job(
    start_service: Callable[..., ReconDouble], backend: CallbackRecorder, observe: Observe
) -> None:
    """Two workers: one job writing its model (export), one in an early stage, two queued; SIGKILL the server, restart it."""
    service = start_service(env={"RECON_MAX_WORKERS": "2"}, backend=backend)
    data_dir = service.root / "data"
    completing = service.submit(photos(service), simulate={"stage_seconds": 0.2})
    running = service.submit(photos(service), simulate={"stage_seconds": 0.4})
    queued = [service.submit(photos(service), simulate={"stage_seconds": 0.02}) for _ in range(2)]
    wait_until(lambda: service.job(completing)["stage"] == "export" or service.job(completing)["status"] == "completed", 20,
               "the first job to be writing its model", interval=0.01)  # fmt: skip
    at_kill = {name: service.job(j)["status"] for name, j in (("completing", completing), ("running", running), ("queued", queued[-1]))}
    # Its children: the two workers and multiprocessing's resource tracker; all must go away without the server.
    workers = [p.pid for p in service_processes(data_dir) if p.pid != service.pid]  # type: ignore[union-attr]
    service.kill()
    assert len(workers) >= 2, workers
    assert wait_gone(workers, 5) == [], "worker processes outlived the killed service by more than 5 s"
    checked_at_kill = assert_no_half_written_models_or_tmp_only(service.models_root)

    service.start()
    final = {job_id: service.wait_job(job_id, timeout=40) for job_id in (completing, running, *queued)}
    assert all(job["status"] == "completed" for job in final.values()), final
    assert final[running]["attempts"] == 2 and all(final[q]["attempts"] == 1 for q in queued)
    for job_id in final:
        statuses = collapse(wait_statuses(backend, job_id, "completed"))
        if final[job_id]["attempts"] == 2:  # interrupted: reported as queued again, then every status of the re-run
            again = statuses.index("queued", 1)
            statuses = statuses[again:] if statuses[:again] == SUCCESS[:again] else statuses
        assert statuses == SUCCESS, (job_id, statuses)
        progress = [b["progress"] for b in delivered(backend, job_id)]
        assert progress == sorted(progress), f"progress callbacks of {job_id} went backwards: {progress}"
    assert assert_no_half_written_models(service.models_root) == 4
    service.stop()
    assert service_processes(data_dir) == [], "processes of the service are still running after it stopped"
    assert_database_consistent(data_dir / "jobs.sqlite3")
    observe("status just before the kill", at_kill)
    observe("attempts", {"completing": final[completing]["attempts"], "running": 2, "queued": [1, 1]})
    observe("at the kill", f"{len(workers)} child processes (2 workers, resource tracker) exited by themselves within 5 s; {checked_at_kill}")


def assert_no_half_written_models_or_tmp_only(models: Path) -> str:
    """Right after a kill: a ``*.tmp`` may exist (the re-run removes it), but every ``model.glb`` present loads."""
    import trimesh

    glbs = list(models.rglob("model.glb"))
    for glb in glbs:
        assert len(trimesh.load(glb, force="scene").geometry) > 0, f"{glb} does not load"
    return f"{len(glbs)} model.glb present and loadable, {len(list(models.rglob('*.tmp')))} *.tmp (removed by the re-run)"


def test_callbacks_survive_a_backend_that_refuses_then_answers_503_then_times_out(
    start_service: Callable[..., ReconDouble], observe: Observe
) -> None:
    """Backend port closed (connection refused), then 8 answers 503, then 3 answers 1.5 s late (client timeout 0.5 s), then healthy."""
    port = free_port()
    recorder = CallbackRecorder(token=CALLBACK_TOKEN)  # its recording logic, served on `port` only once the backend "comes back"
    service = start_service(
        env={"RECON_CALLBACK_URL": f"http://127.0.0.1:{port}", "RECON_CALLBACK_TOKEN": CALLBACK_TOKEN, "RECON_CALLBACK_TIMEOUT_S": "0.5"}
    )
    jobs = [service.submit(photos(service), simulate={"stage_seconds": 0.02}) for _ in range(3)]
    for job_id in jobs:
        assert service.wait_job(job_id)["status"] == "completed"
    wait_until(lambda: metric(service, "recon_callback_retries_total") >= 6, 20, "callbacks to be retried against a closed port")
    refused = metric(service, "recon_callback_retries_total")
    assert metric(service, "recon_callback_deliveries_total") == 0

    recorder.fail_next(8, 503)
    recorder.delay_next(3, 1.5)
    server = ThreadingHTTPServer(("127.0.0.1", port), recorder._handler_class())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for job_id in jobs:
            # By arrival: a delayed answer is recorded when it is sent, after calls that arrived later.
            recorder.wait_until(lambda calls, j=job_id: collapse([c.status for c in sorted(calls, key=lambda c: c.received_at)
                                                                  if c.job_id == j and c.kind == "status" and c.delivered]) == SUCCESS,
                                30, f"every status callback of {job_id}")  # fmt: skip
        wait_until(lambda: service.http.get("/readyz").json()["pending_callbacks"] == 0, 20, "the outbox to drain")
        calls = recorder.calls
        for job_id in jobs:
            mine = sorted((c for c in calls if c.job_id == job_id and c.delivered), key=lambda c: c.received_at)
            ranks = [RANK[c.status or ""] for c in mine]
            assert ranks == sorted(ranks), f"callbacks of {job_id} arrived out of order: {[(c.kind, c.status) for c in mine]}"
        answered = [c.answered for c in calls]
        assert answered.count(503) == 8 and all(c.problem in (None, "injected failure (503)") for c in calls)
        retries = metric(service, "recon_callback_retries_total")
        assert retries >= refused + 8 + 3, (refused, retries)
        assert metric(service, "recon_callback_give_ups_total") == 0
    finally:
        server.shutdown()
        server.server_close()
        recorder.close()
    observe("retries", {"connection refused": refused, "total": retries, "answers 503": 8, "timed out": 3})
    observe("delivered", f"{len(calls)} requests, every job's statuses complete and in order by arrival")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs (root only): too small for a model with a 512 px noise texture, big enough for a tiny one."""
    if not is_root():
        pytest.skip("mounting a tmpfs needs root (CI runs as root); the disk-full case is not run here")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the disk-full case is not run")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_full_disk_fails_the_job_with_a_clear_message_and_the_next_job_completes(
    small_disk: Path, start_service: Callable[..., ReconDouble], backend: CallbackRecorder, observe: Observe
) -> None:
    """MODEL_OUTPUT_ROOT on a 256 kB tmpfs: a job with 1600x1200 photos cannot write its model; then a job with 128x96 photos."""
    service = start_service(env={"MODEL_OUTPUT_ROOT": str(small_disk)}, backend=backend)
    big = service.submit(photos(service, size=(1600, 1200)), simulate={"stage_seconds": 0.02})
    job = service.wait_job(big)
    assert job["status"] == "failed" and job["message"].startswith(f"no space left on device while writing {small_disk}/"), job["message"]
    assert "MODEL_OUTPUT_ROOT" in job["message"] and not (small_disk / big).exists()
    assert collapse(wait_statuses(backend, big, "failed"))[-1] == "failed"
    ready = service.http.get("/readyz").json()
    assert ready["ready"] is True, ready

    small = service.submit(photos(service, size=(128, 96)), simulate={"stage_seconds": 0.02})
    done = service.wait_job(small)
    assert done["status"] == "completed" and done["model_uri"] == (small_disk / small / "model.glb").as_uri()
    assert wait_statuses(backend, small, "completed") == SUCCESS
    assert assert_no_half_written_models(small_disk) == 1
    assert 0 < done["disk_bytes"] <= 256 * 1024
    assert_database_consistent(service.root / "data" / "jobs.sqlite3")
    observe("message", job["message"])
    observe("next job", f"completed on the same tmpfs, {done['disk_bytes']} bytes")


def test_a_worker_killed_in_each_stage_fails_only_its_job_and_keeps_its_last_log_lines(busy_stack: Stack, observe: Observe) -> None:
    """One job stalls in each of the 8 stages; its worker gets SIGKILL there. A ninth job runs meanwhile and completes."""
    service, fake = busy_stack
    victims = {stage: service.submit(photos(service), simulate={"stage_seconds": 0.02, "stall": True, "stall_at": stage})
               for stage in STAGE_NAMES}  # fmt: skip
    survivor = service.submit(photos(service), simulate={"stage_seconds": 0.05})
    messages = {}
    try:
        for stage, job_id in victims.items():
            messages[stage] = kill_in_stage(service, fake, job_id, stage)
    finally:  # a failure must not leave stalled jobs holding the shared service's workers
        for job_id in victims.values():
            service.http.post(f"/jobs/{job_id}/cancel")
    assert service.wait_job(survivor)["status"] == "completed"
    observe("stages killed", list(messages))
    observe("message", next(iter(messages.values())))


def kill_in_stage(service: ReconDouble, fake: CallbackRecorder, job_id: str, stage: str) -> str:
    """SIGKILL the job's worker once it stalls in ``stage``; check the job's end; return its message."""
    job_log = service.root / "data" / "logs" / f"{job_id}.log"
    wait_until(lambda: job_log.exists() and f"simulated stall at {stage}" in job_log.read_text(), 30, f"job {job_id} to stall in {stage}")
    os.kill(worker_pid_of(service, job_id), signal.SIGKILL)
    job = service.wait_job(job_id)
    assert job["status"] == "failed" and job["message"].startswith("worker was killed, probably out of memory"), job
    assert job["stage"] == stage and not (service.models_root / job_id).exists()
    tail = job["log_tail"] or []
    assert any(f"simulated stall at {stage}" in line for line in tail), tail
    assert any("ended with exit code -9" in line for line in tail), tail
    phases = ["queued", "processing", *(["meshing"] if RANK[PHASE_OF_STAGE[stage]] >= 2 else []),
              *(["texturing"] if RANK[PHASE_OF_STAGE[stage]] >= 3 else []), "failed"]  # fmt: skip
    assert wait_statuses(fake, job_id, "failed") == phases
    return job["message"]
