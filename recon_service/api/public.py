"""Store records → the contract's response bodies (the only place where a record becomes JSON for the API)."""

from __future__ import annotations

from datetime import UTC, datetime

from recon_service.contract import ContractStatus, JobPublic
from recon_service.jobs.records import JobRecord


def job_public(rec: JobRecord) -> JobPublic:
    """``GET /jobs/{job_id}``'s body for ``rec`` (without the fields only that endpoint computes: disk use, log tail)."""
    return JobPublic(
        job_id=rec.job_id,
        status=ContractStatus(rec.status),
        progress=rec.progress,
        message=rec.message,
        model_uri=rec.model_uri,
        stage=rec.stage,
        eta_seconds=rec.eta_seconds,
        created_at=_utc(rec.created_at),
        updated_at=_utc(rec.updated_at),
        artifacts=dict(rec.artifacts),
        artifact_bytes=dict(rec.artifact_bytes),
        cancelled=rec.cancelled,
        cancel_requested=rec.cancel_requested,
        dataset_name=rec.dataset_name,
        photo_count=rec.photo_count,
        attempts=rec.attempts,
        worker=rec.worker,
        options=rec.options,
        simulated=rec.simulate is not None,
    )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
