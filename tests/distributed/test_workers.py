"""Jobs on Celery workers through Redis: spread, lost workers, cancel, Redis and API restarts.

Every part is real and runs as its own process: redis-server, the API node, two or more
``recon-worker`` hosts with folders of their own; the backend is a recording HTTP server.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from recon_service.kit import CallbackRecorder, write_jpegs
from tests.distributed.cluster import INSTALL_HINT, REDIS, Cluster
from tests.helpers import SUCCESS, TOKEN, wait_statuses, wait_until

pytestmark = pytest.mark.skipif(REDIS is None, reason=INSTALL_HINT)

STALL = {"stage_seconds": 0.05, "stall": True, "stall_at": "features"}
REQUEUED = ["queued", "processing", "queued", "processing", "meshing", "texturing", "completed"]


def photos(cluster: Cluster) -> Path:
    return write_jpegs(cluster.api.photos_root / uuid.uuid4().hex[:8], 3)


def host_of(job: dict) -> str:
    return (job.get("worker") or "").split("@")[0]


def wait_stage(cluster: Cluster, job_id: str, stage: str = "features", timeout: float = 30) -> dict:
    return wait_until(
        lambda: (j := cluster.api.job(job_id))["stage"] == stage and j, timeout, f"job {job_id} at {stage}"
    )


def alive(pids: list[int]) -> list[int]:
    found = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_jobs_spread_over_two_workers_with_progress_callbacks_and_listing(
    cluster: Callable[..., Cluster], backend: CallbackRecorder
) -> None:
    c = cluster(workers=2)
    wait_until(lambda: len(c.api.http.get("/workers").json()["workers"]) == 2, 30, "two workers online")
    stalled = c.api.submit(photos(c), simulate=STALL)
    job = wait_stage(c, stalled)
    assert host_of(job) in {"w1", "w2"} and job["status"] == "processing"
    listed = c.api.http.get("/workers").json()
    assert {w["job_id"] for w in listed["workers"]} == {stalled, None}, listed

    jobs = [c.api.submit(photos(c), simulate={"stage_seconds": 0.1}) for _ in range(5)]
    finished = [c.api.wait_job(j, timeout=60) for j in jobs]
    assert [j["status"] for j in finished] == ["completed"] * 5
    other = {"w1": "w2", "w2": "w1"}[host_of(job)]
    assert {host_of(j) for j in finished} == {other}, "the stalled job's worker took no second job"
    for j in jobs:
        assert wait_statuses(backend, j, "completed") == SUCCESS
        assert (c.api.models_root / j / "model.glb").is_file()
    # Nothing a worker wrote is in the API node's folders but the shared output root.
    assert not list(c.api.root.glob("data/attempts*")) and not (c.api.data_dir / "scratch").exists()
    assert all(not list((w.root / "scratch" / "photos").glob("*")) for w in c.workers)

    # Progress flows back within about a second, as callbacks too.
    assert backend.calls_for(stalled, "progress"), "no progress callbacks from a worker's job"
    metrics = c.api.http.get("/metrics").text
    assert "recon_workers_online 2.0" in metrics and 'recon_queue_depth{queue="default"} 0.0' in metrics
    c.api.client.cancel(stalled)
    assert c.api.wait_job(stalled, timeout=10)["cancelled"] is True


def test_a_lost_worker_s_job_completes_on_another_and_leaves_no_process(
    cluster: Callable[..., Cluster], backend: CallbackRecorder
) -> None:
    c = cluster(workers=1)
    job_id = c.api.submit(photos(c), simulate={"stage_seconds": 0.6})
    job = wait_stage(c, job_id, "dense")
    assert host_of(job) == "w1"
    c.add_worker("w2")
    pids = c.workers[0].lose()  # SIGKILL of the worker's main and pool processes; its attempt must die with them
    assert len(pids) >= 3, pids  # main, pool process, attempt
    wait_until(lambda: not alive(pids), 10, "every process of the lost worker to exit")

    done = c.api.wait_job(job_id, timeout=90)
    assert (done["status"], done["attempts"], host_of(done)) == ("completed", 2, "w2"), done
    assert wait_statuses(backend, job_id, "completed") == REQUEUED
    requeued = [b for b in (cb.body for cb in backend.calls_for(job_id, "status")) if b["status"] == "queued"][1]
    assert "worker was lost" in requeued["message"] and "attempt 2 of 3" in requeued["message"], requeued


def test_cancel_reaches_a_job_on_a_worker_within_5_s_and_the_worker_goes_on(
    cluster: Callable[..., Cluster], backend: CallbackRecorder
) -> None:
    c = cluster(workers=1)
    job_id = c.api.submit(photos(c), simulate=STALL)
    wait_stage(c, job_id)
    attempt = [
        p
        for p in psutil.Process(c.workers[0].pid).children(recursive=True)
        if "attempt_process" in " ".join(p.cmdline())
    ]
    assert len(attempt) == 1
    started = time.monotonic()
    assert c.api.http.post(f"/jobs/{job_id}/cancel").status_code == 202
    job = c.api.wait_job(job_id, timeout=10)
    assert time.monotonic() - started < 5.0
    assert (job["status"], job["message"], job["cancelled"]) == ("failed", "cancelled", True)
    wait_until(lambda: not alive([attempt[0].pid]), 5, "the attempt process to exit")
    assert wait_statuses(backend, job_id, "failed") == ["queued", "processing", "failed"]
    assert (
        c.api.wait_job(c.api.submit(photos(c), simulate={"stage_seconds": 0.05}), timeout=30)["status"] == "completed"
    )


def test_redis_restarted_with_jobs_queued_and_running_loses_nothing(
    cluster: Callable[..., Cluster], backend: CallbackRecorder
) -> None:
    c = cluster(workers=1)
    running = c.api.submit(photos(c), simulate={"stage_seconds": 0.4})
    queued = [c.api.submit(photos(c), simulate={"stage_seconds": 0.05}) for _ in range(3)]
    wait_stage(c, running, "features")
    c.redis.restart()
    for job_id in [running, *queued]:
        job = c.api.wait_job(job_id, timeout=90)
        assert (job["status"], job["attempts"]) == ("completed", 1), job
        assert wait_statuses(backend, job_id, "completed") == SUCCESS


def test_readyz_says_when_redis_is_away_and_recovers_when_it_is_back(cluster: Callable[..., Cluster]) -> None:
    c = cluster(workers=1)
    assert c.api.http.get("/readyz").status_code == 200
    c.redis.stop()
    response = wait_until(lambda: (r := c.api.http.get("/readyz")).status_code == 503 and r, 30, "readyz to say not ready")
    assert "RECON_BROKER_URL" in response.json()["error"], response.json()
    c.redis.start()
    wait_until(lambda: c.api.http.get("/readyz").status_code == 200, 30, "readyz to be ready again")
    job = c.api.wait_job(c.api.submit(photos(c), simulate={"stage_seconds": 0.05}), timeout=60)
    assert job["status"] == "completed", job


def test_api_node_restarted_with_jobs_running_on_workers_loses_nothing(
    cluster: Callable[..., Cluster], backend: CallbackRecorder
) -> None:
    c = cluster(workers=2)
    jobs = [c.api.submit(photos(c), simulate={"stage_seconds": 0.4}) for _ in range(3)]
    wait_until(lambda: sum(c.api.job(j)["status"] == "processing" for j in jobs) == 2, 30, "two jobs running")
    c.api.stop()
    time.sleep(2.0)  # the workers go on: their events wait in the stream
    c.api.start()
    for job_id in jobs:
        job = c.api.wait_job(job_id, timeout=90)
        assert (job["status"], job["attempts"]) == ("completed", 1), job  # never run twice
        assert wait_statuses(backend, job_id, "completed") == SUCCESS


def test_a_preview_job_does_not_wait_behind_long_ones(
    cluster: Callable[..., Cluster], backend: CallbackRecorder
) -> None:
    c = cluster(workers=0)
    c.add_worker("long", queues="default")
    c.add_worker("quick", queues="preview")
    wait_until(lambda: len(c.api.http.get("/workers").json()["workers"]) == 2, 30, "two workers online")
    long = [c.api.submit(photos(c), simulate=STALL) for _ in range(2)]
    wait_stage(c, long[0])
    preview = c.api.submit(photos(c), options={"preset": "preview"}, simulate={"stage_seconds": 0.05})
    job = c.api.wait_job(preview, timeout=30)
    assert (job["status"], host_of(job)) == ("completed", "quick")
    assert c.api.job(long[1])["status"] == "queued"
    assert 'recon_queue_depth{queue="default"} 1.0' in c.api.http.get("/metrics").text
    for job_id in long:
        c.api.client.cancel(job_id)
    assert [c.api.wait_job(j, timeout=15)["cancelled"] for j in long] == [True, True]


def test_workers_listing_needs_the_token(cluster: Callable[..., Cluster]) -> None:
    c = cluster(workers=1)
    import httpx

    response = httpx.get(c.api.url + "/workers", timeout=10)
    assert response.status_code == 401 and "error" in response.json()
    response = httpx.get(c.api.url + "/workers", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200


@pytest.mark.slow
def test_a_real_reconstruction_on_a_worker(cluster: Callable[..., Cluster], backend: CallbackRecorder) -> None:
    from fixtures.scenes import scene_dir

    c = cluster(workers=1, env={"RECON_PIPELINE": "real"})
    images = c.api.photos_root / "real"
    images.mkdir(parents=True)
    for photo in sorted((scene_dir("tabletop_small") / "images").glob("*.jpg")):
        os.link(photo, images / photo.name) if photo.stat().st_dev == images.stat().st_dev else (
            images / photo.name
        ).write_bytes(photo.read_bytes())
    job_id = c.api.submit(images, options={"preset": "preview"})
    job = c.api.wait_job(job_id, timeout=300)
    assert job["status"] == "completed" and host_of(job) == "w1", job
    assert (c.api.models_root / job_id / "model.glb").stat().st_size > 10_000
    assert wait_statuses(backend, job_id, "completed") == SUCCESS
