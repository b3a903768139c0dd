"""The HTTP endpoints: thin functions over the store, the executor and the submission checks."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from recon_service import __version__
from recon_service.callbacks import CallbackDispatcher
from recon_service.errors import ApiError
from recon_service.logs import job_log_path, read_tail
from recon_service.retention import DiskUsage
from recon_service.schemas import ContractStatus, ErrorBody, Health, JobAccepted, JobCreate, JobList, JobPublic, Ready
from recon_service.settings import Settings
from recon_service.store import CancelOutcome, JobRecord, JobState, Store
from recon_service.submission import canonical_request, validate_submission
from recon_service.workers import Executor


@dataclass
class Service:
    """What the routes work with; built by ``create_app`` and kept in ``app.state.service``."""

    settings: Settings
    store: Store
    executor: Executor
    callbacks: CallbackDispatcher | None
    disk: DiskUsage | None = None


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

_E = {"model": ErrorBody}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {**_E, "description": "Missing or wrong bearer token"}}

router = APIRouter()
MAX_OFFSET = 2**62
"""Largest ``offset`` of ``GET /jobs`` (SQLite integers are 64-bit)."""


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={**AUTH_ERRORS, 400: {**_E, "description": "Invalid field (named in the message)"},
               409: {**_E, "description": "job_id already used with a different payload"},
               413: {**_E, "description": "Body too large"}},
)  # fmt: skip
def submit_job(body: JobCreate, service: ServiceDep) -> JobAccepted:
    """Queue a reconstruction. Idempotent on ``job_id``: the same payload again changes nothing."""
    existing = service.store.get(body.job_id)
    if existing is None:
        new = validate_submission(body, service.settings)
        existing, created = service.store.create_job(new)
        if created:
            service.executor.submit(existing.job_id)
            if service.callbacks is not None:
                service.callbacks.wake()
            return JobAccepted(external_job_id=existing.job_id)
    _check_same_payload(existing, canonical_request(body, service.settings))
    return JobAccepted(external_job_id=existing.job_id)


@router.get("/jobs", response_model=JobList, responses={**AUTH_ERRORS, 400: _E})
def list_jobs(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Jobs to skip (newest first).")] = 0,
    status: Annotated[ContractStatus | None, Query(description="Only jobs with this status.")] = None,
) -> JobList:
    """Recent jobs, newest first, for admin tooling."""
    records, total = service.store.list_jobs(limit=limit, offset=offset, status=status.value if status else None)
    next_offset = offset + len(records) if offset + len(records) < total else None
    return JobList(jobs=[JobPublic.from_record(r) for r in records], total=total, limit=limit, offset=offset, next_offset=next_offset)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses={**AUTH_ERRORS, 404: _E})
def get_job(job_id: str, service: ServiceDep) -> JobPublic:
    """Status, progress, message and model URI of a job (for polling), with its disk use and, if it failed, its last log lines."""
    record = _find(service.store, job_id)
    log_tail = read_tail(job_log_path(service.settings.data_dir, record.job_id)) if record.state is JobState.FAILED else None
    disk_bytes = service.disk.of(record.job_id, record.updated_at) if service.disk is not None else None
    return JobPublic.from_record(record).model_copy(update={"disk_bytes": disk_bytes, "log_tail": log_tail})


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobPublic,
    responses={**AUTH_ERRORS, 202: {"model": JobPublic, "description": "Running: the worker is stopping (within 5 s)"},
               404: _E, 409: {**_E, "description": "The job already finished"}},
)  # fmt: skip
def cancel_job(job_id: str, service: ServiceDep, response: Response) -> JobPublic:
    """Cancel a job: a queued one never starts; a running one stops within 5 s. Ends ``failed``, ``cancelled: true``."""
    outcome, record = service.store.request_cancel(_canonical_id(job_id))
    if outcome is CancelOutcome.NOT_FOUND or record is None:
        raise ApiError(404, f"no job with id {job_id!r}")
    if outcome is CancelOutcome.FINISHED:
        raise ApiError(409, f"job {record.job_id} already {record.status}; there is nothing to cancel")
    if outcome is CancelOutcome.STOPPING:
        service.executor.cancel(record.job_id)
        response.status_code = 202
    if service.callbacks is not None:
        service.callbacks.wake()
    return JobPublic.from_record(record)


@router.get("/options", responses=AUTH_ERRORS)
def get_options() -> dict[str, Any]:
    """Presets and every option (type, default, range, help), to build a settings screen."""
    from pipelines.options import options_schema

    return options_schema()


@router.get("/healthz", response_model=Health)
def healthz(service: ServiceDep) -> Health:
    """The process is up. No authentication."""
    s = service.settings
    return Health(version=__version__, pipeline=s.pipeline, simulated=s.simulated)


@router.get("/readyz", response_model=Ready, responses={503: {"model": ErrorBody, "description": "Not ready; `error` says why"}})
def readyz(service: ServiceDep) -> Any:
    """Ready to take jobs: the store answers, the scheduler and callback sender run, output is writable."""
    s = service.settings
    checks: dict[str, str] = {}
    counts: dict[str, int] = {}
    pending = 0
    try:
        service.store.ping()
        counts = service.store.count_by_state()
        pending = service.store.pending_callback_count()
        checks["store"] = "ok"
    except Exception as exc:  # reported, not raised: this endpoint's job is to say what is wrong
        checks["store"] = f"unavailable: {exc}"
    checks["workers"] = "ok" if service.executor.alive() else "the job scheduler is not running"
    if service.callbacks is not None:
        checks["callbacks"] = "ok" if service.callbacks.alive() else "the callback sender is not running"
    checks["model_output_root"] = "ok" if _writable(s.model_output_root) else f"{s.model_output_root} is not writable (MODEL_OUTPUT_ROOT)"
    ready = all(v == "ok" for v in checks.values())
    body = Ready(
        ready=ready, pipeline=s.pipeline, simulated=s.simulated, checks=checks, queued=counts.get("queued", 0),
        running=counts.get("running", 0), max_workers=s.max_workers, pending_callbacks=pending,
    ).model_dump()  # fmt: skip
    if ready:
        return body
    problems = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    return JSONResponse({"error": f"not ready: {problems}", **body}, status_code=503)


def _canonical_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        return job_id


def _find(store: Store, job_id: str) -> JobRecord:
    record = store.get(_canonical_id(job_id))
    if record is None:
        raise ApiError(404, f"no job with id {job_id!r}")
    return record


def _check_same_payload(existing: JobRecord, request: dict[str, Any]) -> None:
    if existing.request != request:
        differing = sorted(k for k in set(existing.request) | set(request) if existing.request.get(k) != request.get(k))
        raise ApiError(
            409,
            f"job_id {existing.job_id} was already submitted with a different payload (differs in: {', '.join(differing)}); "
            "use a new job_id for a new job",
        )


def _writable(path: Path) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)
