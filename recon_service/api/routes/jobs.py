"""`/jobs` endpoints: thin functions over the store, the executor and the submission checks."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from recon_service.api.deps import AUTH_ERRORS, ERROR, ServiceDep
from recon_service.api.errors import ApiError
from recon_service.api.public import job_public
from recon_service.contract import (
    CallbackCounts,
    ContractStatus,
    JobAccepted,
    JobCreate,
    JobList,
    JobPublic,
    Redelivery,
)
from recon_service.jobs.records import CancelOutcome, JobRecord, JobState
from recon_service.jobs.store import Store
from recon_service.jobs.submission import SubmissionRejected, canonical_request, validate_submission
from recon_service.logs import job_log_path, read_tail

_E = ERROR
router = APIRouter()
MAX_OFFSET = 2**62
"""Largest ``offset`` of ``GET /jobs`` (SQLite integers are 64-bit)."""


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={**AUTH_ERRORS, 400: {**_E, "description": "Invalid field (named in the message)"},
               409: {**_E, "description": "job_id already used with a different payload"},
               413: {**_E, "description": "Body too large"},
               503: {**_E, "description": "This service cannot run jobs (the message says what to install)"}},
)  # fmt: skip
def submit_job(body: JobCreate, service: ServiceDep) -> JobAccepted:
    """Queue a reconstruction. Idempotent on ``job_id``: the same payload again changes nothing."""
    existing = service.store.get(body.job_id)
    if existing is None:
        if service.unavailable is not None:
            raise ApiError(503, f"this service cannot run jobs: {service.unavailable}")
        try:
            new = validate_submission(body, service.settings)
        except SubmissionRejected as exc:
            raise ApiError(400, exc.message) from None
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
    return JobList(jobs=[job_public(r) for r in records], total=total, limit=limit, offset=offset, next_offset=next_offset)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses={**AUTH_ERRORS, 404: _E})
def get_job(job_id: str, service: ServiceDep) -> JobPublic:
    """Status, progress, message and model URI of a job (for polling), with its disk use and, if it failed, its last log lines."""
    record = _find(service.store, job_id)
    log_tail = read_tail(job_log_path(service.settings.data_dir, record.job_id)) if record.state is JobState.FAILED else None
    disk_bytes = service.disk.of(record.job_id, record.updated_at) if service.disk is not None else None
    callbacks = CallbackCounts(**service.store.callback_counts(record.job_id)) if service.callbacks is not None else None
    return job_public(record).model_copy(update={"disk_bytes": disk_bytes, "log_tail": log_tail, "callbacks": callbacks})


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
    return job_public(record)


@router.post(
    "/jobs/{job_id}/callbacks/redeliver",
    response_model=Redelivery,
    responses={**AUTH_ERRORS, 404: _E, 409: {**_E, "description": "Callbacks are off (RECON_CALLBACK_URL unset)"}},
)  # fmt: skip
def redeliver_callbacks(job_id: str, service: ServiceDep) -> Redelivery:
    """Admin: send the job's dead-letter callbacks again (in order, each with a fresh RECON_CALLBACK_MAX_AGE_S)."""
    record = _find(service.store, job_id)
    if service.callbacks is None:
        raise ApiError(409, "callbacks are off on this service (RECON_CALLBACK_URL is not set); there is nothing to redeliver")
    count = service.store.redeliver(record.job_id)
    service.callbacks.wake()
    return Redelivery(job_id=record.job_id, redelivered=count, callbacks=CallbackCounts(**service.store.callback_counts(record.job_id)))


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
