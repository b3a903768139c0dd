"""The durable job store: jobs and the callback outbox in one SQLite database (WAL).

All SQL of the service lives here (the schema itself in :mod:`~recon_service.jobs.migrations`). Every
change of a job goes through :meth:`Store._save`, which enforces the allowed transitions
(:mod:`~recon_service.jobs.records`), keeps ``progress`` monotonic (across attempts too), makes
``status`` say what the current attempt does (queued again after a restart, then forward),
and queues the matching callback -- a snapshot of the job's state, not an HTTP body (the outbox
renders that) -- in the same transaction, so a crash can never lose a callback for a change that
was committed (or deliver one for a change that was not).

This module is long because it is the one place for the service's SQL: every statement, and every
transaction that spans a job and its callbacks, is here (``jobs`` and the outbox must change together).

Several processes use the database at once: the server, its worker processes (progress and
results), and a restarted server after ``kill -9``. Writes of a worker are fenced by the job's
attempt number, so a stale worker can never overwrite the job after it was re-run.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recon_service.contract import ContractStatus
from recon_service.jobs.migrations import migrate
from recon_service.jobs.records import (
    JOB_COLUMNS,
    MAX_RUNNING_PROGRESS,
    PHASE_RANK,
    TRANSITIONS,
    Callback,
    CancelOutcome,
    CommitOutcome,
    InvalidTransition,
    JobRecord,
    JobState,
    NewJob,
    callback_from_row,
    canonical_json,
    encode,
)

if TYPE_CHECKING:
    from recon_service.settings import Settings


def open_store(settings: Settings) -> Store:
    """The job store of ``settings`` (RECON_DATA_DIR), queueing callbacks only when a callback URL is set."""
    return Store(
        settings.db_path,
        callbacks=settings.callback_url is not None,
        progress_callback_interval_s=settings.progress_callback_interval_s,
    )


class Store:
    """Jobs and callbacks in ``db_path``; safe to use from many threads and processes.

    ``callbacks`` says whether status/progress changes queue callbacks at all (a callback URL is
    configured); ``progress_callback_interval_s`` limits progress callbacks per job.
    """

    def __init__(self, db_path: Path, *, callbacks: bool, progress_callback_interval_s: float = 2.0) -> None:
        self.db_path = Path(db_path)
        self.callbacks = callbacks
        self.progress_callback_interval_s = progress_callback_interval_s
        self._local = threading.local()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        self.schema_versions = migrate(conn)
        """(version found, version now) of the schema when this store opened the database."""

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        self._conn().execute("SELECT 1 FROM jobs LIMIT 1").fetchall()

    # -- the one place where jobs change -----------------------------------------------------
    def _save(self, conn: sqlite3.Connection, job: JobRecord, *, phase: str | None = None, progress_callback: bool = False, **changes: Any) -> JobRecord:
        """Apply ``changes`` to ``job``: check the transition, derive ``status``, queue callbacks."""
        now = time.time()
        new = replace(job, **changes, updated_at=now)
        if new.state != job.state and new.state not in TRANSITIONS[job.state]:
            raise InvalidTransition(f"job {job.job_id}: {job.state} → {new.state} is not allowed")
        if new.state is JobState.COMPLETED:
            status, progress = ContractStatus.COMPLETED, 1.0
        elif new.state is JobState.FAILED:
            status, progress = ContractStatus.FAILED, job.progress
        elif new.state is JobState.QUEUED:
            # Waiting, new or re-queued after a restart: honestly queued again; progress is held.
            status, progress = ContractStatus.QUEUED, min(MAX_RUNNING_PROGRESS, job.progress)
        else:
            # Running: the phase this attempt has reached (a new attempt starts again at processing);
            # progress is held at the furthest any attempt reached, so it never decreases.
            status = ContractStatus(job.status) if job.state is JobState.RUNNING else ContractStatus.PROCESSING
            if phase is not None and PHASE_RANK[ContractStatus(phase)] > PHASE_RANK[status]:
                status = ContractStatus(phase)
            progress = min(MAX_RUNNING_PROGRESS, max(job.progress, new.progress))
        new = replace(new, status=status.value, progress=progress)
        if new.state in (JobState.COMPLETED, JobState.FAILED):
            new = replace(new, finished_at=now, eta_seconds=None)
        kind = None
        if status.value != job.status:
            kind = "status"
        elif (
            progress_callback
            and new.progress > job.progress
            and (job.last_progress_cb_at is None or now - job.last_progress_cb_at >= self.progress_callback_interval_s)
        ):
            kind = "progress"
        if kind and self.callbacks:
            new = replace(new, last_progress_cb_at=now)
            self._enqueue(conn, new, kind, now)
        self._track_stage(conn, job, new, now)
        cols = [c for c in JOB_COLUMNS if getattr(new, c) != getattr(job, c)]
        if cols:
            values = [encode(c, getattr(new, c)) for c in cols]
            conn.execute(f"UPDATE jobs SET {', '.join(f'{c}=?' for c in cols)} WHERE seq=?", (*values, job.seq))
        return new

    def _track_stage(self, conn: sqlite3.Connection, job: JobRecord, new: JobRecord, now: float) -> None:
        """Keep ``stage_runs`` in step: a stage ends when the next begins or the attempt ends."""
        if job.state is JobState.RUNNING and new.state is not JobState.RUNNING:
            outcome = {JobState.COMPLETED: "done", JobState.QUEUED: "interrupted"}.get(new.state, "cancelled" if new.cancelled else "failed")
            self._close_stage(conn, job.job_id, now, outcome)
        elif new.state is JobState.RUNNING and new.stage is not None and new.stage != job.stage:
            self._close_stage(conn, job.job_id, now, "done")
            conn.execute(
                "INSERT INTO stage_runs (job_id, attempt, stage, started_at) VALUES (?, ?, ?, ?)", (job.job_id, new.attempts, new.stage, now)
            )

    def _close_stage(self, conn: sqlite3.Connection, job_id: str, now: float, outcome: str) -> None:
        conn.execute(
            "UPDATE stage_runs SET ended_at=?, outcome=?, closed_seq=(SELECT COALESCE(MAX(closed_seq), 0) + 1 FROM stage_runs)"
            " WHERE job_id=? AND ended_at IS NULL",
            (now, outcome, job_id),
        )

    def _enqueue(self, conn: sqlite3.Connection, job: JobRecord, kind: str, now: float) -> None:
        if kind == "progress":  # an undelivered progress report is superseded by a newer one
            conn.execute("DELETE FROM callbacks WHERE job_id=? AND kind='progress' AND state='pending'", (job.job_id,))
        conn.execute(
            "INSERT INTO callbacks (job_id, kind, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (job.job_id, kind, canonical_json(job.snapshot()), now, now),
        )

    def _get(self, conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def _owned(self, conn: sqlite3.Connection, job_id: str, attempt: int, token: str | None = None) -> JobRecord | None:
        """The job if it is still running this attempt (of this dispatch, when ``token`` is given): the fence for worker writes."""
        job = self._get(conn, job_id)
        if job is None or job.state is not JobState.RUNNING or job.attempts != attempt:
            return None
        if token is not None and job.dispatch_token != token:
            return None
        return job

    # -- submission and queries ----------------------------------------------------------------
    def create_job(self, new: NewJob) -> tuple[JobRecord, bool]:
        """Store a queued job; if ``job_id`` exists already, return that one and ``False``."""
        now = time.time()
        with self._write() as conn:
            existing = self._get(conn, new.job_id)
            if existing is not None:
                return existing, False
            waiting = new.upload_expires_at is not None
            conn.execute(
                "INSERT INTO jobs (job_id, request, dataset_name, photo_count, photos_dir, notes, options, simulate,"
                " state, status, stage, message, created_at, updated_at, upload_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.job_id, canonical_json(new.request), new.dataset_name, new.photo_count, new.photos_dir, new.notes,
                    canonical_json(new.options), canonical_json(new.simulate) if new.simulate is not None else None,
                    JobState.QUEUED.value, ContractStatus.QUEUED.value, "upload" if waiting else None,
                    f"waiting for {new.photo_count} photos" if waiting else "queued", now, now, new.upload_expires_at,
                ),
            )  # fmt: skip
            job = self._get(conn, new.job_id)
            assert job is not None
            if self.callbacks:
                self._enqueue(conn, job, "status", now)
            return job, True

    def get(self, job_id: str) -> JobRecord | None:
        return self._get(self._conn(), job_id)

    def list_jobs(self, *, limit: int, offset: int, status: str | None = None) -> tuple[list[JobRecord], int]:
        """Newest first; returns one page and the total number of matching jobs."""
        where, args = ("WHERE status=?", [status]) if status else ("", [])
        conn = self._conn()
        total = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
        rows = conn.execute(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [JobRecord.from_row(r) for r in rows], total

    def count_by_state(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {s.value: 0 for s in JobState} | {r[0]: r[1] for r in rows}

    def count_by_status(self) -> dict[str, int]:
        """Jobs per contract status (every status present, zeros included)."""
        rows = self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s.value: 0 for s in ContractStatus} | {r[0]: r[1] for r in rows}

    def job_info(self, job_id: str) -> tuple[bool, str | None]:
        """(the store holds this job, its stage now): cheap, for tagging log lines."""
        row = self._conn().execute("SELECT stage FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return (row is not None, row[0] if row else None)

    def closed_stage_runs(self, after_seq: int, limit: int = 10_000) -> list[tuple[int, str, str, float]]:
        """Stage runs closed after ``after_seq``: ``(closed_seq, stage, outcome, seconds)``, in closing order."""
        rows = self._conn().execute(
            "SELECT closed_seq, stage, outcome, ended_at - started_at FROM stage_runs WHERE closed_seq > ? ORDER BY closed_seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [(r[0], r[1], r[2], max(0.0, r[3])) for r in rows]

    def stage_runs_of(self, job_id: str) -> list[dict[str, Any]]:
        """The job's stage runs, oldest first (for reports and tests)."""
        rows = self._conn().execute("SELECT * FROM stage_runs WHERE job_id=? ORDER BY id", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    # -- execution -----------------------------------------------------------------------------
    def claim_next(self) -> JobRecord | None:
        """Oldest queued job → running, attempt counted; ``None`` when nothing waits."""
        if self._conn().execute(f"SELECT 1 FROM jobs WHERE {_RUNNABLE} LIMIT 1").fetchone() is None:
            return None  # the common case, answered without taking the write lock
        with self._write() as conn:
            row = conn.execute(f"SELECT * FROM jobs WHERE {_RUNNABLE} ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            job = JobRecord.from_row(row)
            return self._save(  # stage: none yet in this attempt (its first progress report sets it)
                conn, job, state=JobState.RUNNING, attempts=job.attempts + 1, started_at=time.time(), eta_seconds=None, stage=None
            )

    # -- distributed execution (the Celery executor): dispatch, start, lease loss --------------------------
    def dispatchable(self, limit: int = 1000) -> list[JobRecord]:
        """Queued jobs a worker may take (not waiting for an upload's commit), oldest first."""
        rows = self._conn().execute(f"SELECT * FROM jobs WHERE {_RUNNABLE} ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def dispatch(self, job_id: str, token: str) -> JobRecord | None:
        """The queued job is handed to the broker under ``token``: only a task with this token may start it."""
        with self._write() as conn:
            job = self._get(conn, job_id)
            if job is None or job.state is not JobState.QUEUED or job.awaiting_upload:
                return None
            return self._save(conn, job, dispatch_token=token)

    def start_dispatched(self, job_id: str, token: str, attempt: int, worker: str) -> JobRecord | None:
        """A worker starts the task ``token`` as attempt ``attempt``: queued → running, or ``None`` when that task is stale."""
        with self._write() as conn:
            job = self._get(conn, job_id)
            if job is None or job.state is not JobState.QUEUED or job.dispatch_token != token or job.attempts + 1 != attempt:
                return None
            return self._save(conn, job, state=JobState.RUNNING, attempts=attempt, started_at=time.time(), eta_seconds=None, stage=None, worker=worker)

    def running(self) -> list[JobRecord]:
        """Jobs a worker runs now (for watching their leases)."""
        return [JobRecord.from_row(r) for r in self._conn().execute("SELECT * FROM jobs WHERE state='running' ORDER BY seq").fetchall()]

    def set_worker(self, job_id: str, attempt: int, worker: str) -> None:
        """Which process runs the attempt (the local executor knows it when it starts the process)."""
        with self._write() as conn:
            job = self._owned(conn, job_id, attempt)
            if job is not None:
                self._save(conn, job, worker=worker)

    def commit_upload(self, job_id: str) -> tuple[CommitOutcome, JobRecord | None]:
        """The photos of a pre-signed upload are up (checked by the caller): the job may run now."""
        with self._write() as conn:
            job = self._get(conn, job_id)
            if job is None:
                return CommitOutcome.NOT_FOUND, None
            if job.upload_expires_at is None:
                return CommitOutcome.NOT_AN_UPLOAD, job
            if job.upload_committed_at is not None:
                return CommitOutcome.ALREADY, job
            if job.state is not JobState.QUEUED:
                return CommitOutcome.FINISHED, job
            return CommitOutcome.COMMITTED, self._save(conn, job, upload_committed_at=time.time(), stage=None, message="queued")

    def expire_uploads(self, now: float, message: str) -> list[str]:
        """Fail the jobs whose upload was not committed in time; returns their ids."""
        expired = []
        with self._write() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE state='queued' AND upload_committed_at IS NULL AND upload_expires_at < ?", (now,)
            ).fetchall()
            for row in rows:
                job = JobRecord.from_row(row)
                self._save(conn, job, state=JobState.FAILED, message=message)
                expired.append(job.job_id)
        return expired

    def record_progress(
        self, job_id: str, attempt: int, *, stage: str, phase: str, progress: float, eta_seconds: float | None, message: str,
        token: str | None = None,
    ) -> bool:
        """Store a worker's progress; ``False`` if this attempt no longer owns the job."""
        with self._write() as conn:
            job = self._owned(conn, job_id, attempt, token)
            if job is None:
                return False
            self._save(
                conn, job, phase=phase, progress_callback=True, stage=stage, progress=progress, eta_seconds=eta_seconds, message=message
            )
            return True

    def complete(
        self, job_id: str, attempt: int, *, model_uri: str, artifacts: dict[str, str], message: str, token: str | None = None,
        artifact_bytes: dict[str, int] | None = None,
    ) -> bool:
        """The attempt published its model: ``model_uri``, ``artifacts`` (name → URI) and their sizes (name → bytes)."""
        with self._write() as conn:
            job = self._owned(conn, job_id, attempt, token)
            if job is None:
                return False
            self._save(conn, job, state=JobState.COMPLETED, model_uri=model_uri, artifacts=artifacts, artifact_bytes=dict(artifact_bytes or {}),
                       message=message)  # fmt: skip
            return True

    def fail(self, job_id: str, attempt: int, *, message: str, cancelled: bool = False, token: str | None = None) -> bool:
        with self._write() as conn:
            job = self._owned(conn, job_id, attempt, token)
            if job is None:
                return False
            self._save(conn, job, state=JobState.FAILED, message=message, cancelled=cancelled)
            return True

    def requeue(self, job_id: str, attempt: int, *, message: str) -> bool:
        """A running attempt was interrupted by the service stopping: run the job again later."""
        with self._write() as conn:
            job = self._owned(conn, job_id, attempt)
            if job is None:
                return False
            self._save(conn, job, state=JobState.QUEUED, message=message, stage=None, eta_seconds=None)
            return True

    def recover(self, *, max_attempts: int, give_up_message: str) -> list[str]:
        """At start-up: jobs left running by a dead server are queued again (or failed after ``max_attempts``)."""
        requeued = []
        with self._write() as conn:
            for row in conn.execute("SELECT * FROM jobs WHERE state='running' ORDER BY seq").fetchall():
                job = JobRecord.from_row(row)
                if job.cancel_requested and job.cancel_reason == "user":
                    self._save(conn, job, state=JobState.FAILED, message="cancelled", cancelled=True)
                elif job.attempts >= max_attempts:
                    self._save(conn, job, state=JobState.FAILED, message=give_up_message)
                else:
                    message = f"re-queued after a service restart; attempt {job.attempts + 1} of {max_attempts} starts when a worker is free"
                    self._save(conn, job, state=JobState.QUEUED, message=message, stage=None, eta_seconds=None,
                               cancel_requested=False, cancel_reason=None)  # fmt: skip
                    requeued.append(job.job_id)
        return requeued

    def request_cancel(self, job_id: str) -> tuple[CancelOutcome, JobRecord | None]:
        """A user's cancel: queued jobs fail at once, running ones are flagged for their worker."""
        with self._write() as conn:
            job = self._get(conn, job_id)
            if job is None:
                return CancelOutcome.NOT_FOUND, None
            if job.state is JobState.QUEUED:
                return CancelOutcome.CANCELLED, self._save(conn, job, state=JobState.FAILED, message="cancelled", cancelled=True)
            if job.state is JobState.RUNNING:
                if job.cancel_reason == "user":
                    return CancelOutcome.STOPPING, job
                return CancelOutcome.STOPPING, self._save(conn, job, cancel_requested=True, cancel_reason="user")
            if job.cancelled:
                return CancelOutcome.ALREADY, job
            return CancelOutcome.FINISHED, job

    def request_timeout(self, job_id: str, attempt: int) -> bool:
        """Ask the running attempt to stop because it ran out of time (a user cancel takes precedence)."""
        with self._write() as conn:
            job = self._owned(conn, job_id, attempt)
            if job is None or job.cancel_requested:
                return False
            self._save(conn, job, cancel_requested=True, cancel_reason="timeout")
            return True

    def cancel_reason(self, job_id: str) -> str | None:
        """``'user'`` / ``'timeout'`` when the job should stop, else ``None`` (polled by workers)."""
        row = self._conn().execute("SELECT cancel_requested, cancel_reason FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return row["cancel_reason"] if row and row["cancel_requested"] else None

    # -- callback outbox -----------------------------------------------------------------------
    def jobs_with_pending_callbacks(self) -> list[str]:
        rows = self._conn().execute("SELECT DISTINCT job_id FROM callbacks WHERE state='pending'").fetchall()
        return [r[0] for r in rows]

    def next_callback(self, job_id: str) -> Callback | None:
        """The job's oldest undelivered callback: later ones wait for it (strict order per job)."""
        row = self._conn().execute(
            "SELECT * FROM callbacks WHERE job_id=? AND state='pending' ORDER BY id LIMIT 1", (job_id,)
        ).fetchone()
        return callback_from_row(row) if row else None

    def callback_tried(self, callback_id: int, error: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE callbacks SET attempts=attempts+1, last_error=?, updated_at=? WHERE id=?", (error, time.time(), callback_id)
            )

    def callback_finished(self, callback_id: int, *, delivered: bool, error: str | None = None) -> None:
        """The callback was delivered, or given up: then it stays as a dead letter (``redeliver`` sends it again)."""
        state = "delivered" if delivered else "dead"
        with self._write() as conn:
            conn.execute(
                "UPDATE callbacks SET state=?, attempts=attempts+1, last_error=?, updated_at=? WHERE id=?",
                (state, error, time.time(), callback_id),
            )

    def callbacks_of(self, job_id: str) -> list[Callback]:
        rows = self._conn().execute("SELECT * FROM callbacks WHERE job_id=? ORDER BY id", (job_id,)).fetchall()
        return [callback_from_row(r) for r in rows]

    def prune_callbacks(self, finished_before: float) -> int:
        """Delete the settled callbacks (delivered or dead) of jobs that ended before ``finished_before``.

        Pending callbacks are never deleted, and neither is anything of a job still running: the
        outbox keeps what may still have to be sent. Returns how many rows went.
        """
        with self._write() as conn:
            cur = conn.execute(
                f"DELETE FROM callbacks WHERE state IN ('delivered', 'dead') AND job_id IN ({_FINISHED_BEFORE})",
                (JobState.COMPLETED.value, JobState.FAILED.value, finished_before),
            )
            return cur.rowcount

    def finished_jobs(self, finished_before: float, limit: int = 500) -> list[JobRecord]:
        """Final jobs that ended before ``finished_before``, oldest first (for retention)."""
        rows = self._conn().execute(
            "SELECT * FROM jobs WHERE state IN (?, ?) AND finished_at < ? ORDER BY finished_at LIMIT ?",
            (JobState.COMPLETED.value, JobState.FAILED.value, finished_before, limit),
        ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def prune_history(self, finished_before: float, *, jobs: bool, keep: frozenset[str] = frozenset()) -> dict[str, int]:
        """What retention removes from the store for jobs that ended before ``finished_before``.

        Always their settled callbacks and their ``stage_runs``; with ``jobs`` also the job rows
        themselves (then ``GET /jobs/{id}`` answers 404), except a job that still has a callback
        pending and the jobs in ``keep``. Returns the rows removed per table.
        """
        args = (JobState.COMPLETED.value, JobState.FAILED.value, finished_before)
        removed = {"callbacks": self.prune_callbacks(finished_before)}
        with self._write() as conn:
            removed["stage_runs"] = conn.execute(f"DELETE FROM stage_runs WHERE job_id IN ({_FINISHED_BEFORE})", args).rowcount
            removed["jobs"] = 0
            if jobs:
                kept = ",".join("?" * len(keep))
                removed["jobs"] = conn.execute(
                    f"DELETE FROM jobs WHERE job_id IN ({_FINISHED_BEFORE}) AND job_id NOT IN "
                    f"(SELECT job_id FROM callbacks WHERE state='pending') AND job_id NOT IN ({kept})",
                    (*args, *sorted(keep)),
                ).rowcount
        return removed

    def finished_before(self, cutoff: float, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` the store holds as finished before ``cutoff``, or not at all (pruned)."""
        if not job_ids:
            return set()
        known = {r[0]: r[1] for r in self._conn().execute(
            f"SELECT job_id, finished_at FROM jobs WHERE job_id IN ({','.join('?' * len(job_ids))})", job_ids
        ).fetchall()}  # fmt: skip
        return {j for j in job_ids if j not in known or (known[j] is not None and known[j] < cutoff)}

    def callback_counts(self, job_id: str) -> dict[str, int]:
        """The job's callbacks by state: ``{"pending": n, "delivered": n, "dead": n}``."""
        rows = self._conn().execute("SELECT state, COUNT(*) FROM callbacks WHERE job_id=? GROUP BY state", (job_id,)).fetchall()
        return {"pending": 0, "delivered": 0, "dead": 0} | {r[0]: r[1] for r in rows}

    def dead_callback_count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM callbacks WHERE state='dead'").fetchone()[0]

    def redeliver(self, job_id: str) -> int:
        """Queue the job's dead letters again, in their original order, with a fresh age; returns how many."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE callbacks SET state='pending', created_at=?, updated_at=? WHERE job_id=? AND state='dead'",
                (time.time(), time.time(), job_id),
            )
            return cur.rowcount

    def pending_callback_count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM callbacks WHERE state='pending'").fetchone()[0]


_RUNNABLE = "state='queued' AND (upload_expires_at IS NULL OR upload_committed_at IS NOT NULL)"
"""Queued jobs a worker may take: not waiting for the commit of a pre-signed upload."""
_FINISHED_BEFORE = "SELECT job_id FROM jobs WHERE state IN (?, ?) AND finished_at < ?"
"""Jobs that are final and ended before a cutoff (parameters: completed, failed, cutoff)."""
