"""The job record and its state machine: what the store keeps, independent of HTTP and SQL.

A job's ``state`` (queued, running, completed, failed) is the machine; its contract ``status``
(queued, processing, meshing, texturing, completed, failed) is derived from the state and the
phase its current attempt reached. Every transition goes through ``Store._save``, which checks it
against :data:`TRANSITIONS`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from recon_service.contract import ContractStatus


class JobState(StrEnum):
    """Where a job is in its life; the contract ``status`` is derived from it (and the phase)."""

    QUEUED = "queued"  # waiting for a worker slot: new, or interrupted by a service restart
    RUNNING = "running"  # a worker owns it; status is its phase (processing/meshing/texturing)
    COMPLETED = "completed"  # model.glb published; final
    FAILED = "failed"  # error, crash, timeout or cancel; final


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.COMPLETED, JobState.FAILED, JobState.QUEUED}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
}
FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED})
PHASE_RANK = {ContractStatus.QUEUED: 0, ContractStatus.PROCESSING: 1, ContractStatus.MESHING: 2, ContractStatus.TEXTURING: 3}
MAX_RUNNING_PROGRESS = 0.999
"""1.0 means completed, and only completed."""


class InvalidTransition(RuntimeError):
    """A programming error: the code tried a change the job state machine forbids."""


class CommitOutcome(StrEnum):
    NOT_FOUND = "not_found"
    COMMITTED = "committed"  # queued now
    ALREADY = "already"  # committed before: nothing to do
    NOT_AN_UPLOAD = "not_an_upload"  # the job has photos_dir: there is nothing to commit (409)
    FINISHED = "finished"  # failed (expired, cancelled) before its commit (409)


class CancelOutcome(StrEnum):
    NOT_FOUND = "not_found"
    CANCELLED = "cancelled"  # was queued: failed now, never starts
    STOPPING = "stopping"  # was running: the worker was asked to stop
    ALREADY = "already"  # cancelled before: nothing to do
    FINISHED = "finished"  # completed or failed: too late (409)


@dataclass(frozen=True)
class NewJob:
    """A validated submission, ready to be stored."""

    job_id: str
    request: dict[str, Any]
    dataset_name: str
    photo_count: int
    photos_dir: str
    notes: str | None
    options: dict[str, Any]
    simulate: dict[str, Any] | None
    upload_expires_at: float | None = None
    """For a pre-signed upload: the job waits for its commit until then (Unix seconds)."""


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs``, decoded. Times are Unix seconds; ``model_uri`` and ``artifacts`` values are URIs."""

    seq: int
    job_id: str
    request: dict[str, Any]
    dataset_name: str
    photo_count: int
    photos_dir: str
    notes: str | None
    options: dict[str, Any]
    simulate: dict[str, Any] | None
    state: JobState
    status: str
    stage: str | None
    progress: float
    message: str
    eta_seconds: float | None
    model_uri: str | None
    artifacts: dict[str, str]
    cancel_requested: bool
    cancel_reason: str | None
    cancelled: bool
    attempts: int
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    last_progress_cb_at: float | None
    upload_expires_at: float | None = None
    upload_committed_at: float | None = None
    dispatch_token: str | None = None
    worker: str | None = None
    artifact_bytes: dict[str, int] = field(default_factory=dict)
    """Artifact name → bytes (a folder: all its files), once completed."""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        for key in ("request", "options", "artifacts", "artifact_bytes"):
            d[key] = json.loads(d[key])
        d["simulate"] = json.loads(d["simulate"]) if d["simulate"] is not None else None
        d["state"] = JobState(d["state"])
        for key in ("cancel_requested", "cancelled"):
            d[key] = bool(d[key])
        return cls(**d)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def awaiting_upload(self) -> bool:
        """Created for a pre-signed upload and not committed yet: it may not run."""
        return self.upload_expires_at is not None and self.upload_committed_at is None and self.state is JobState.QUEUED

    def snapshot(self) -> dict[str, Any]:
        """What a status or progress callback reports of this job (the outbox renders the contract body from it)."""
        body = {"job_id": self.job_id, "status": self.status, "progress": self.progress, "message": self.message, "model_uri": self.model_uri}
        if self.state is JobState.COMPLETED:  # additive: what was delivered, each file with its size
            body |= {"artifacts": self.artifacts, "artifact_bytes": self.artifact_bytes}
        return body


@dataclass(frozen=True)
class Callback:
    """One outbox row: the job's state to report (``body``), and how delivering it went."""

    id: int
    job_id: str
    kind: str  # 'status' → /internal/reconstruction/status, 'progress' → .../progress
    body: dict[str, Any]
    state: str
    attempts: int
    last_error: str | None
    created_at: float


JOB_COLUMNS = (
    "state", "status", "stage", "progress", "message", "eta_seconds", "model_uri", "artifacts", "cancel_requested",
    "cancel_reason", "cancelled", "attempts", "updated_at", "started_at", "finished_at", "last_progress_cb_at", "upload_committed_at",
    "dispatch_token", "worker", "artifact_bytes",
)  # fmt: skip
"""The columns a job's changes may touch (the rest is fixed at submission)."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def encode(column: str, value: Any) -> Any:
    """A record field as SQLite stores it."""
    if column in ("artifacts", "artifact_bytes"):
        return canonical_json(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


def callback_from_row(row: sqlite3.Row) -> Callback:
    d = dict(row)
    d.pop("updated_at")
    d["body"] = json.loads(d["body"])
    return Callback(**d)
