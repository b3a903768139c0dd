"""`/jobs` endpoints: thin functions over the store, the executor and the submission checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
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
    UploadSpec,
    UploadUrl,
)
from recon_service.jobs.records import CancelOutcome, CommitOutcome, JobRecord, JobState
from recon_service.jobs.store import Store
from recon_service.jobs.submission import SubmissionRejected, canonical_request, validate_submission
from recon_service.jobs.uploads import (
    UPLOAD_CONTENT_TYPE,
    UploadIncomplete,
    check_upload,
    expected_names,
    remove_upload,
)
from recon_service.logs import job_log_path, read_tail
from recon_service.storage.clients import Storage
from recon_service.storage.s3 import StorageError
from recon_service.storage.uri import S3Location

_E = ERROR
router = APIRouter()
MAX_OFFSET = 2**62
"""Largest ``offset`` of ``GET /jobs`` (SQLite integers are 64-bit)."""


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    response_model_exclude_none=True,  # {"accepted", "external_job_id", "message"} as the contract says; "upload" only with upload: true
    responses={**AUTH_ERRORS, 400: {**_E, "description": "Invalid field (named in the message)"},
               409: {**_E, "description": "job_id already used with a different payload"},
               413: {**_E, "description": "Body too large"},
               503: {**_E, "description": "This service cannot run jobs (the message says what to install)"}},
)  # fmt: skip
def submit_job(body: JobCreate, service: ServiceDep) -> JobAccepted:
    """Queue a reconstruction. Idempotent on ``job_id``: the same payload again changes nothing.

    With ``upload: true`` the answer holds pre-signed URLs for the photos (fresh on each
    resubmission while the job waits), and the job runs once ``POST /jobs/{job_id}/commit`` says they are up.
    """
    existing = service.store.get(body.job_id)
    if existing is None:
        if service.unavailable is not None:
            raise ApiError(503, f"this service cannot run jobs: {service.unavailable}")
        try:
            new = validate_submission(body, service.settings, _storage(service).s3)
        except SubmissionRejected as exc:
            raise ApiError(400, exc.message) from None
        existing, created = service.store.create_job(new)
        if created:
            service.executor.submit(existing.job_id)
            if service.callbacks is not None:
                service.callbacks.wake()
    else:
        _check_same_payload(existing, canonical_request(body, service.settings))
    if existing.awaiting_upload:
        return JobAccepted(external_job_id=existing.job_id, message=existing.message, upload=_upload_spec(service, existing))
    return JobAccepted(external_job_id=existing.job_id)


def _upload_spec(service: ServiceDep, job: JobRecord) -> UploadSpec:
    """Pre-signed PUT URLs for the job's photos, valid RECON_PRESIGN_TTL_S from now."""
    settings, location = service.settings, S3Location.parse(job.photos_dir)
    now = datetime.now(UTC)
    try:
        urls = [
            UploadUrl(name=name, method="PUT", url=_storage(service).s3().presign_put(location.bucket, location.child(name).key,
                      settings.presign_ttl_s, UPLOAD_CONTENT_TYPE), headers={"Content-Type": UPLOAD_CONTENT_TYPE})
            for name in expected_names(job.photo_count)
        ]  # fmt: skip
    except StorageError as exc:
        raise ApiError(503, f"cannot make upload URLs: {exc.message}") from None
    commit_by = datetime.fromtimestamp(job.upload_expires_at or 0, tz=UTC)
    return UploadSpec(urls=urls, expires_at=now + timedelta(seconds=settings.presign_ttl_s), commit_by=commit_by, commit_url=f"/jobs/{job.job_id}/commit")


@router.post(
    "/jobs/{job_id}/commit",
    response_model=JobPublic,
    responses={**AUTH_ERRORS, 400: {**_E, "description": "Photos missing, too large or not images (named)"}, 404: _E,
               409: {**_E, "description": "Not an upload job, or it failed (expired, cancelled) before the commit"}},
)  # fmt: skip
def commit_upload(job_id: str, service: ServiceDep) -> JobPublic:
    """The photos of an ``upload: true`` job are up: check them and queue the job. Committing again changes nothing."""
    record = _find(service.store, job_id)
    if record.awaiting_upload:
        try:
            check_upload(_storage(service), record)
        except UploadIncomplete as exc:
            raise ApiError(400, str(exc)) from None
    outcome, record = service.store.commit_upload(record.job_id)
    if outcome is CommitOutcome.NOT_AN_UPLOAD:
        raise ApiError(409, f"job {record.job_id} was submitted with photos_dir, not upload: true; there is nothing to commit")  # type: ignore[union-attr]
    if outcome is CommitOutcome.FINISHED:
        raise ApiError(409, f"job {record.job_id} already {record.status} ({record.message}); submit the photos again with a new job_id")  # type: ignore[union-attr]
    assert record is not None
    if outcome is CommitOutcome.COMMITTED:
        service.executor.submit(record.job_id)
        if service.callbacks is not None:
            service.callbacks.wake()
    return job_public(record)


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
    update: dict[str, Any] = {"disk_bytes": disk_bytes, "log_tail": log_tail, "callbacks": callbacks}
    if record.model_uri is not None and record.model_uri.startswith("s3://"):
        outputs = _storage(service).outputs
        try:
            update["model_url"], update["artifact_urls"] = outputs.links(record.model_uri, record.artifacts)
        except StorageError as exc:  # the store is down: the job is still there, only its links are not
            update["message"] = f"{record.message} (download links unavailable: {exc.message})"
        update["stored_bytes"] = outputs.stored_bytes(record.job_id)
    return job_public(record).model_copy(update=update)


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
    if outcome is CancelOutcome.CANCELLED:
        service.executor.cancel(record.job_id)  # a task already handed to a broker must not start it
        remove_upload(_storage(service), record)  # photos uploaded for a job that will never run
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


def _storage(service: ServiceDep) -> Storage:
    assert service.storage is not None, "create_app always sets the storage"
    return service.storage


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
