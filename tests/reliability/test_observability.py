"""Observability: GET /metrics from the store and the server's own counters, JSON logs, a failed job's last log lines."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx

from pipelines.run import STAGE_NAMES
from recon_service.kit import CallbackRecorder, ReconDouble
from recon_service.logs import TAIL_LINES
from tests.helpers import wait_until
from tests.reliability import hostile
from tests.reliability.conftest import Observe, log_entries, metric

Stack = tuple[ReconDouble, CallbackRecorder]
FAST = {"stage_seconds": 0.02}


def photos(service: ReconDouble) -> Path:
    return hostile.valid_photos(service.photos_root / uuid.uuid4().hex[:8], 3)


def test_metrics_report_jobs_queue_workers_stage_durations_and_callbacks(busy_stack: Stack, observe: Observe) -> None:
    """A completed job, one failed at sparse (after two 503 answers to its callbacks), four stalled and one queued; then a scrape."""
    service, fake = busy_stack
    fake.fail_next(2, 503)
    done = service.submit(photos(service), simulate=FAST)
    failed = service.submit(photos(service), simulate={**FAST, "fail_at": "sparse"})
    service.wait_job(done), service.wait_job(failed)
    stalled = [service.submit(photos(service), simulate={**FAST, "stall": True, "stall_at": "features"}) for _ in range(5)]
    wait_until(lambda: sum(service.job(j)["stage"] == "features" for j in stalled) == 4, 30, "four jobs to stall in features")
    wait_until(lambda: service.http.get("/readyz").json()["pending_callbacks"] == 0, 20, "the outbox to drain")

    assert httpx.get(service.url + "/metrics").status_code == 401, "metrics must need the bearer token"
    for status in ("queued", "processing", "meshing", "texturing", "completed", "failed"):
        stored = service.http.get("/jobs", params={"status": status, "limit": 1}).json()["total"]
        assert metric(service, "recon_jobs", status=status) == stored, status
    assert metric(service, "recon_queue_depth") == 1
    assert metric(service, "recon_running_workers") == 4 == metric(service, "recon_max_workers")
    assert metric(service, "recon_callbacks_pending") == 0
    for stage in STAGE_NAMES:
        assert metric(service, "recon_stage_duration_seconds_count", stage=stage, outcome="done") >= 1, stage
    assert metric(service, "recon_stage_duration_seconds_count", stage="sparse", outcome="failed") >= 1
    assert metric(service, "recon_stage_duration_seconds_sum", stage="dense", outcome="done") > 0
    answered = [c.answered for c in fake.calls]
    assert metric(service, "recon_callback_deliveries_total") == answered.count(200)
    assert metric(service, "recon_callback_retries_total") == len(answered) - answered.count(200)
    assert metric(service, "recon_callback_give_ups_total") == 0

    cancelled_before = metric(service, "recon_stage_duration_seconds_count", stage="features", outcome="cancelled")
    for job_id in stalled:
        service.http.post(f"/jobs/{job_id}/cancel")
    for job_id in stalled:
        assert service.wait_job(job_id)["cancelled"] is True
    assert metric(service, "recon_stage_duration_seconds_count", stage="features", outcome="cancelled") == cancelled_before + 4
    assert metric(service, "recon_queue_depth") == 0
    wait_until(lambda: metric(service, "recon_running_workers") == 0, 5, "the stopped workers to be reaped")
    observe("callbacks", {"delivered": answered.count(200), "retried": len(answered) - answered.count(200)})
    observe("scrape", "jobs per status equal to the store's; queue 1, workers 4/4; a histogram per stage and outcome")


def test_every_log_line_is_one_json_object_with_job_id_and_stage_on_job_lines(busy_stack: Stack, observe: Observe) -> None:
    """The service's whole stderr so far (server and worker processes), and one completed job's own log file."""
    service, _ = busy_stack
    job_id = service.submit(photos(service), simulate=FAST)
    service.wait_job(job_id)
    lines = [line for line in service.log().splitlines() if line.strip()]
    banners = [line for line in lines if not line.startswith("{")]
    assert all(line.startswith("recon-service: ") for line in banners), banners[:5]
    entries = log_entries(service)
    assert len(entries) == len(lines) - len(banners)
    for entry in entries:
        assert {"ts", "level", "logger", "process", "pid", "msg"} <= set(entry), entry
        if entry["process"].startswith("job-"):  # a worker: every line is about its job
            assert entry.get("job_id") and "stage" in entry, entry
        if "job=" in entry["msg"]:
            assert entry.get("job_id") and "stage" in entry, entry
    mine = [e for e in entries if e.get("job_id") == job_id]
    assert any(e["process"] == "MainProcess" for e in mine) and any(e["process"].startswith("job-") for e in mine)
    assert any(e["stage"] == "export" and "completed in" in e["msg"] for e in mine), mine

    own = [json.loads(line) for line in (service.root / "data" / "logs" / f"{job_id}.log").read_text().splitlines()]
    assert {e["job_id"] for e in own} == {job_id} and {e["process"] == "MainProcess" for e in own} == {True, False}
    observe("stderr", f"{len(entries)} JSON lines ({sum('job_id' in e for e in entries)} about a job), {len(banners)} start-up banner(s)")


def test_a_failed_job_shows_its_last_log_lines_and_others_do_not(busy_stack: Stack, observe: Observe) -> None:
    """A job failing at mesh; a completed job; the job list."""
    service, _ = busy_stack
    failed = service.submit(photos(service), simulate={**FAST, "fail_at": "mesh", "message": "no surface could be built"})
    completed = service.submit(photos(service), simulate=FAST)
    job = service.wait_job(failed)
    tail = job["log_tail"]
    assert tail and len(tail) <= TAIL_LINES
    assert any(" mesh " in line and "failed after" in line for line in tail), tail
    assert any("started pipeline=simulate" in line for line in tail)
    assert service.wait_job(completed)["log_tail"] is None
    listed = service.http.get("/jobs", params={"limit": 5}).json()["jobs"]
    assert all(j["log_tail"] is None and j["disk_bytes"] is None for j in listed)
    observe("log_tail", tail)
