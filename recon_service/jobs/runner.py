"""The job function: runs one claimed job inside a worker process.

``run_job(job_id, settings)`` is what any executor runs (a local process today; a Celery or Ray
task would call the same function). It loads the job from the store, runs the selected pipeline
with progress written back to the store and a cancel flag polled from it, and records the
result; :mod:`~recon_service.jobs.messages` words every outcome.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.errors import Cancelled, InvalidInput, ReconError
from pipelines.progress import CancelToken, ProgressEvent, ProgressFn
from recon_service import logs
from recon_service.jobs.messages import MAX_ATTEMPTS, disk_full, mark, message_for_error, newest_file, stopped_message
from recon_service.jobs.records import JobRecord, JobState
from recon_service.jobs.store import Store, open_store
from recon_service.settings import Settings
from recon_service.storage.clients import Storage
from recon_service.storage.photos import download_photos
from recon_service.storage.s3 import StorageError
from recon_service.storage.uri import S3Location

logger = logging.getLogger(__name__)

PIPELINES: dict[str, str] = {
    "real": "pipelines.run:reconstruct",
    "simulate": "pipelines.simulate:reconstruct",
}
"""RECON_PIPELINE → the ``reconstruct`` function (imported in the worker only: it is heavy)."""

CANCEL_POLL_S = 0.25
"""How often a worker reads its job's cancel flag (seconds)."""
PROGRESS_WRITE_S = 0.5
"""A worker writes progress to the store at most this often, plus at every stage change (seconds)."""


def load_pipeline(name: str) -> Callable[..., Any]:
    """The ``reconstruct`` function of pipeline ``name`` (``real`` or ``simulate``)."""
    module, _, attr = PIPELINES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def remove_output(out_dir: Path) -> None:
    """Remove an attempt's (or a job's) output folder and everything in it."""
    shutil.rmtree(out_dir, ignore_errors=True)


def _still_owned(store: Store, job_id: str, attempt: int) -> bool:
    job = store.get(job_id)
    return job is not None and job.state is JobState.RUNNING and job.attempts == attempt


def run_job(
    job_id: str,
    settings: Settings,
    *,
    attempt: int | None = None,
    parent_pid: int | None = None,
    cancel: CancelToken | None = None,
    terminating: threading.Event | None = None,
) -> None:
    """Run the claimed (``running``) job ``job_id`` to its end and record the result in the store.

    ``attempt`` fences the run: if the job was re-queued or finished meanwhile, nothing is
    written. ``parent_pid``: stop at once if that process (the server) dies, since a restarted
    server re-runs the job. ``terminating`` set (the worker got SIGTERM): the attempt ends without
    recording anything -- whoever stopped the worker decides what becomes of the job.
    """
    terminating = terminating or threading.Event()
    store = open_store(settings)
    job = store.get(job_id)
    if job is None or job.state is not JobState.RUNNING or (attempt is not None and job.attempts != attempt):
        logger.warning("job=%s not running as attempt %s; nothing to do", job_id, attempt)
        return
    attempt = job.attempts
    out_dir = settings.attempt_dir(job_id, attempt)
    remove_output(out_dir)
    downloads = settings.scratch_root / "photos" / f"{job_id}.{attempt}"  # photos of a job whose photos_dir is on S3
    storage = Storage(settings)
    cancel = cancel or CancelToken()
    watcher = _CancelWatcher(store, job_id, cancel, parent_pid)
    writer = _ProgressWriter(store, job_id, attempt, cancel, held=job.progress)
    started = time.monotonic()
    logger.info("job=%s attempt=%d started pipeline=%s photos=%d", job_id, attempt, settings.pipeline, job.photo_count)
    watcher.start()
    try:
        from pipelines.options import build_options

        photos_dir = _local_photos(job, settings, storage, downloads, writer)
        pipeline = load_pipeline(settings.pipeline)
        flat = dict(job.options)
        options = build_options(flat.pop("preset"), flat)
        extra: dict[str, Any] = {}
        if settings.simulated:
            from pipelines.simulate import SimulateScenario

            extra["scenario"] = SimulateScenario.from_dict(job.simulate)
        result = pipeline(photos_dir, out_dir, options, writer, cancel, **extra)
    except BaseException as exc:
        watcher.stop()
        remove_output(downloads)
        writing = newest_file(out_dir) if disk_full(exc) is not None else None  # before the output is removed
        remove_output(out_dir)
        if terminating.is_set():
            raise SystemExit(128 + signal.SIGTERM) from None
        if isinstance(exc, Exception):  # logged before the job fails: its log tail then explains the failure
            logger.info("job=%s attempt=%d failed after %.1f s: %s", job_id, attempt, time.monotonic() - started, exc)
        if isinstance(exc, Cancelled):
            reason = store.cancel_reason(job_id)
            store.fail(job_id, attempt, message=stopped_message(reason, settings), cancelled=reason != "timeout")
        elif isinstance(exc, (ReconError, MemoryError, StorageError)):
            store.fail(job_id, attempt, message=mark(message_for_error(exc, writing=writing), settings))
        elif isinstance(exc, Exception):
            logger.exception("job=%s crashed", job_id)
            store.fail(job_id, attempt, message=mark(message_for_error(exc, writing=writing), settings))
        else:  # KeyboardInterrupt, SystemExit: the process is going away; the server decides
            raise
        return
    watcher.stop()
    remove_output(downloads)
    if terminating.is_set():  # the stop was swallowed on its way up: the run must not count
        remove_output(out_dir)
        raise SystemExit(128 + signal.SIGTERM)
    if not _still_owned(store, job_id, attempt):
        remove_output(out_dir)  # re-queued or finished elsewhere meanwhile: this attempt's output is moot
        logger.warning("job=%s attempt=%d finished but no longer owns the job; its output was discarded", job_id, attempt)
        return
    try:
        published = storage.outputs.publish(job_id, out_dir, result.model_path, result.artifacts)
    except StorageError as exc:
        remove_output(out_dir)
        logger.error("job=%s attempt=%d %s", job_id, attempt, exc.message)
        store.fail(job_id, attempt, message=mark(exc.message, settings))
        return
    message = "; ".join(result.warnings) if result.warnings else "completed"
    store.complete(job_id, attempt, model_uri=published.model_uri, artifacts=published.artifacts, message=mark(message, settings))
    logger.info("job=%s attempt=%d completed in %.1f s", job_id, attempt, time.monotonic() - started)


def worker_main(job_id: str, attempt: int, settings: Settings, parent_pid: int) -> None:
    """Entry point of a worker process started by :class:`~recon_service.jobs.local.LocalProcessExecutor`.

    The worker leads a process group of its own, so stopping it stops everything it started; and
    SIGTERM raises ``SystemExit`` (Python's default would exit without running ``finally`` blocks),
    so its child processes are killed and its attempt folder removed on the way out.
    """
    os.setpgid(0, 0)
    terminating = threading.Event()
    cancel = CancelToken()

    def on_sigterm(signum: int, frame: object) -> None:
        # Also cancel: libraries that guard imports with ``except BaseException`` (trimesh) may swallow the exit.
        terminating.set()
        cancel.cancel()
        raise SystemExit(128 + signum)

    if settings.pipeline == "real":
        from pipelines.stack import import_native_libraries

        import_native_libraries()  # pycolmap's import takes SIGTERM over: import it before handling SIGTERM ourselves
    signal.signal(signal.SIGTERM, on_sigterm)
    stderr = logs.capture_native_stderr()
    logs.configure_logging(settings.log_level, settings.log_format, job_log_dir=settings.data_dir / logs.JOB_LOG_DIR, stream=stderr)
    logs.bind_job(job_id)
    _lower_priority(settings.worker_priority)
    run_job(job_id, settings, attempt=attempt, parent_pid=parent_pid, cancel=cancel, terminating=terminating)


def _lower_priority(priority: str) -> None:
    """Keep the API and callbacks responsive while a pipeline saturates the CPU (threads started later inherit it).

    ``idle`` (SCHED_IDLE) gives the pipeline only CPU time nothing else wants: on 2 cores, p99 of
    ``GET /jobs/{id}`` during a real job was 34 ms, against 55-70 ms at nice 10 (bench/reliability.py).
    """
    if priority == "normal":
        return
    try:
        os.nice(10)
        if priority == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):  # not Linux, or not allowed: nice 10 (or nothing) is what we get
        logger.info("job=%s could not lower the worker's CPU priority to %s", logs.bound_job(), priority)


def _local_photos(job: JobRecord, settings: Settings, storage: Storage, downloads: Path, progress: ProgressFn) -> Path:
    """A local folder with the job's photos: its photos_dir (still inside RECON_PHOTOS_ROOT; the photos
    themselves are opened without following links), or a download of its S3 photos into ``downloads``."""
    if not job.photos_dir.startswith("s3://"):
        photos_dir = Path(job.photos_dir)
        if not photos_dir.resolve().is_relative_to(settings.photos_root):
            raise InvalidInput(f"photos_dir {photos_dir} now resolves outside the allowed photos root (RECON_PHOTOS_ROOT); upload the photos again")
        return photos_dir
    from pipelines.run import PHASE_OF_STAGE

    location = S3Location.parse(job.photos_dir)
    progress(ProgressEvent("ingest", PHASE_OF_STAGE["ingest"], 0.0, 0.0, f"downloading {job.photo_count} photos from {location.uri}/", None, 0.0))
    remove_output(downloads)
    return download_photos(storage.s3(), location, downloads, max_bytes=int(job.options["ingest.max_photo_bytes"]))


class _ProgressWriter:
    """The pipeline's progress callback: writes to the store, throttled, fenced by attempt."""

    def __init__(self, store: Store, job_id: str, attempt: int, cancel: CancelToken, held: float = 0.0) -> None:
        self._store, self._job_id, self._attempt, self._cancel = store, job_id, attempt, cancel
        self._held = held
        """Progress an earlier attempt reached: the job shows it until this attempt passes it."""
        self._last_write = 0.0
        self._last_stage: str | None = None

    def __call__(self, event: ProgressEvent) -> None:
        logs.set_stage(event.stage)
        now = time.monotonic()
        if event.stage == self._last_stage and now - self._last_write < PROGRESS_WRITE_S:
            return
        self._last_write, self._last_stage = now, event.stage
        message = event.message
        if self._attempt > 1 and event.fraction <= self._held:
            message = f"restarted after a service restart, attempt {self._attempt} of {MAX_ATTEMPTS}: {message}"
        owned = self._store.record_progress(
            self._job_id, self._attempt, stage=event.stage, phase=event.phase, progress=event.fraction,
            eta_seconds=event.eta_seconds, message=message,
        )  # fmt: skip
        if not owned:  # re-queued or finished elsewhere: this run is moot
            self._cancel.cancel()


class _CancelWatcher:
    """Polls the job's cancel flag and the server's liveness while the pipeline runs."""

    def __init__(self, store: Store, job_id: str, cancel: CancelToken, parent_pid: int | None) -> None:
        self._store, self._job_id, self._cancel, self._parent_pid = store, job_id, cancel, parent_pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cancel-watch-{job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(CANCEL_POLL_S):
            if self._parent_pid is not None and os.getppid() != self._parent_pid:
                logger.error("job=%s the service process died; stopping (a restarted service re-runs the job)", self._job_id)
                os._exit(75)
            try:
                reason = self._store.cancel_reason(self._job_id)
            except Exception:  # a busy or briefly unavailable database: try again next tick
                logger.exception("job=%s cannot read the cancel flag", self._job_id)
                continue
            if reason is not None and not self._cancel.cancelled:
                logger.info("job=%s stopping: %s", self._job_id, reason)
                self._cancel.cancel()
