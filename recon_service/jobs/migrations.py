"""Schema migrations of the job store: numbered steps, applied in order, recorded in ``user_version``.

A database is at version ``PRAGMA user_version``; opening it applies every step above that number,
each in its own transaction, so an interrupted upgrade resumes where it stopped. A database newer
than this code is refused (an older service must not write a schema it does not know).
Add a step at the end; never edit one that has shipped.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class SchemaTooNew(RuntimeError):
    """The database was written by a newer recon-service."""


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    apply: Callable[[sqlite3.Connection], None]


def _execute_script(conn: sqlite3.Connection, sql: str) -> None:
    """Run ``;``-separated statements inside the caller's transaction (``executescript`` would commit it)."""
    for statement in sql.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _v1(conn: sqlite3.Connection) -> None:
    _execute_script(conn, """
    CREATE TABLE IF NOT EXISTS jobs (
        seq                 INTEGER PRIMARY KEY AUTOINCREMENT,   -- FIFO order
        job_id              TEXT NOT NULL UNIQUE,
        request             TEXT NOT NULL,      -- canonical JSON of the submitted payload (idempotency)
        dataset_name        TEXT NOT NULL,
        photo_count         INTEGER NOT NULL,
        photos_dir          TEXT NOT NULL,      -- resolved, checked against RECON_PHOTOS_ROOT
        notes               TEXT,
        options             TEXT NOT NULL,      -- resolved flat options
        simulate            TEXT,               -- simulate scenario, only in simulate mode
        state               TEXT NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed')),
        status              TEXT NOT NULL,      -- the contract status (see JobState)
        stage               TEXT,
        progress            REAL NOT NULL DEFAULT 0,
        message             TEXT NOT NULL,
        eta_seconds         REAL,
        model_path          TEXT,
        artifacts           TEXT NOT NULL DEFAULT '{}',
        cancel_requested    INTEGER NOT NULL DEFAULT 0,
        cancel_reason       TEXT,               -- 'user' or 'timeout'
        cancelled           INTEGER NOT NULL DEFAULT 0,
        attempts            INTEGER NOT NULL DEFAULT 0,
        created_at          REAL NOT NULL,      -- Unix seconds
        updated_at          REAL NOT NULL,
        started_at          REAL,
        finished_at         REAL,
        last_progress_cb_at REAL
    );
    CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
    CREATE TABLE IF NOT EXISTS callbacks (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,        -- delivery order per job
        job_id      TEXT NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('status', 'progress')),
        body        TEXT NOT NULL,
        state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS callbacks_by_state ON callbacks (state, job_id, id);
    """)


def _v2(conn: sqlite3.Connection) -> None:
    _execute_script(conn, """
    CREATE TABLE IF NOT EXISTS stage_runs (                  -- one row per pipeline stage of each attempt
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id      TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        stage       TEXT NOT NULL,
        started_at  REAL NOT NULL,      -- Unix seconds (service clock), when the worker reported the stage
        ended_at    REAL,               -- when the next stage began or the attempt ended; NULL while it runs
        outcome     TEXT CHECK (outcome IN ('done', 'failed', 'cancelled', 'interrupted')),
        closed_seq  INTEGER             -- order in which rows were closed (readers consume them incrementally)
    );
    CREATE INDEX IF NOT EXISTS stage_runs_open ON stage_runs (job_id) WHERE ended_at IS NULL;
    CREATE INDEX IF NOT EXISTS stage_runs_closed ON stage_runs (closed_seq);
    """)


def _v3(conn: sqlite3.Connection) -> None:
    """Models and artifacts are stored as URIs (``file://`` today, ``s3://`` with object storage), not paths."""
    conn.execute("ALTER TABLE jobs RENAME COLUMN model_path TO model_uri")
    rows = conn.execute("SELECT seq, model_uri, artifacts FROM jobs WHERE model_uri IS NOT NULL OR artifacts != '{}'").fetchall()
    for seq, model, artifacts in rows:
        uris = {name: _as_uri(path) for name, path in json.loads(artifacts).items()}
        conn.execute(
            "UPDATE jobs SET model_uri=?, artifacts=? WHERE seq=?",
            (_as_uri(model) if model else None, json.dumps(uris, sort_keys=True, separators=(",", ":")), seq),
        )


def _as_uri(path: str) -> str:
    return path if "://" in path else Path(path).as_uri() if Path(path).is_absolute() else path


def _v4(conn: sqlite3.Connection) -> None:
    """Callbacks given up are kept as dead letters: state 'failed' becomes 'dead' (SQLite changes a CHECK by rebuilding)."""
    _execute_script(conn, """
    CREATE TABLE callbacks_v4 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,        -- delivery order per job
        job_id      TEXT NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('status', 'progress')),
        body        TEXT NOT NULL,                            -- the job's state to report (a snapshot, not an HTTP body)
        state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        created_at  REAL NOT NULL,                            -- queued (or queued again by a redelivery), Unix seconds
        updated_at  REAL NOT NULL
    );
    INSERT INTO callbacks_v4 (id, job_id, kind, body, state, attempts, last_error, created_at, updated_at)
        SELECT id, job_id, kind, body, CASE state WHEN 'failed' THEN 'dead' ELSE state END, attempts, last_error, created_at, updated_at
        FROM callbacks;
    DROP TABLE callbacks;
    ALTER TABLE callbacks_v4 RENAME TO callbacks;
    CREATE INDEX callbacks_by_state ON callbacks (state, job_id, id);
    CREATE INDEX callbacks_by_job ON callbacks (job_id, id);
    """)


def _v5(conn: sqlite3.Connection) -> None:
    """Jobs whose photos come through a pre-signed upload wait for a commit before they may run."""
    conn.execute("ALTER TABLE jobs ADD COLUMN upload_expires_at REAL")  # the job fails if not committed by then (NULL: no upload)
    conn.execute("ALTER TABLE jobs ADD COLUMN upload_committed_at REAL")


def _v6(conn: sqlite3.Connection) -> None:
    """Jobs run by distributed workers: the token of the current dispatch (a fence), and who runs the attempt."""
    conn.execute("ALTER TABLE jobs ADD COLUMN dispatch_token TEXT")  # Celery: the task that may run the job now
    conn.execute("ALTER TABLE jobs ADD COLUMN worker TEXT")  # host:pid (or node:pid) of the attempt that runs or ran it


def _v7(conn: sqlite3.Connection) -> None:
    """What a completed job delivered: bytes of each artifact (a folder: all its files), for the API and the completed callback."""
    conn.execute("ALTER TABLE jobs ADD COLUMN artifact_bytes TEXT NOT NULL DEFAULT '{}'")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs and the callback outbox", _v1),
    Migration(2, "stage_runs: one row per pipeline stage of each attempt", _v2),
    Migration(3, "model_uri and artifact URIs instead of paths", _v3),
    Migration(4, "callbacks given up are dead letters (state 'dead')", _v4),
    Migration(5, "pre-signed uploads: upload_expires_at, upload_committed_at", _v5),
    Migration(6, "distributed workers: dispatch_token, worker", _v6),
    Migration(7, "artifact_bytes: the size of each delivered file", _v7),
)
LATEST = MIGRATIONS[-1].version


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the database up to :data:`LATEST`; returns (version before, version after).

    ``conn`` must be in autocommit mode (``isolation_level=None``); each step commits on its own.
    """
    before = conn.execute("PRAGMA user_version").fetchone()[0]
    if before > LATEST:
        raise SchemaTooNew(
            f"the job store was written by a newer recon-service (schema version {before}, this one knows up to {LATEST}); "
            "run that version, or point RECON_DATA_DIR at another folder"
        )
    for step in MIGRATIONS:
        if step.version <= before:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated meanwhile: look again under the write lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] < step.version:
                step.apply(conn)
                conn.execute(f"PRAGMA user_version={step.version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return before, conn.execute("PRAGMA user_version").fetchone()[0]
