"""The job function: runs one attempt of a job inside a worker process.

:func:`run_attempt` is what every executor runs: it gets the attempt as a :class:`JobSpec` (what
to reconstruct) and a :class:`Reporter` (where progress and the outcome go, where a cancel comes
from), runs the selected pipeline, publishes the model and reports the result;
:mod:`~recon_service.jobs.messages` words every outcome. The local executor's :func:`run_job`
reads the spec from the store and reports into it (:class:`StoreReporter`); a Celery worker
reports through Redis (:mod:`recon_service.jobs.celery_worker`).
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

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


@dataclass(frozen=True)
class JobSpec:
    """One attempt of a job, as a worker needs it: no store row, so it can travel to another host."""

    job_id: str
    attempt: int
    photo_count: int
    photos_dir: str
    """A local folder (inside RECON_PHOTOS_ROOT) or ``s3://bucket/prefix``."""
    options: dict[str, Any]
    """The resolved flat options (preset plus every key)."""
    simulate: dict[str, Any] | None = None
    held_progress: float = 0.0
    """Progress an earlier attempt reached: the job shows it until this attempt passes it."""
    restarted: str | None = None
    """Why this attempt runs again (``"restarted after a service restart"``), or ``None`` for a first run."""
    dispatch: str | None = None
    """The dispatch token of a Celery task (two tasks may carry one attempt number; never one token)."""

    @property
    def run_name(self) -> str:
        """Names this run's folders: the attempt, and the dispatch when there is one."""
        return f"{self.attempt}" if self.dispatch is None else f"{self.attempt}-{self.dispatch[:12]}"

    @classmethod
    def from_record(cls, job: JobRecord, restarted: str | None = None) -> JobSpec:
        return cls(job.job_id, job.attempts, job.photo_count, job.photos_dir, dict(job.options), job.simulate, job.progress, restarted)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reporter(Protocol):
    """Where an attempt reports to, fenced by its attempt number: a stale attempt's reports change nothing."""

    def progress(self, event: ProgressEvent, message: str) -> bool:
        """Record progress; ``False`` when this attempt no longer owns the job (it should stop)."""

    def cancel_reason(self) -> str | None:
        """``"user"`` or ``"timeout"`` when the attempt should stop, else ``None`` (polled)."""

    def owns(self) -> bool:
        """Whether this attempt still owns the job (checked before its model is published)."""

    def completed(self, model_uri: str, artifacts: dict[str, str], message: str, artifact_bytes: dict[str, int]) -> None: ...

    def failed(self, message: str, *, cancelled: bool = False) -> None: ...


class StoreReporter:
    """Reports into the job store (the local executor: the worker shares the API node's database)."""

    def __init__(self, store: Store, job_id: str, attempt: int) -> None:
        self._store, self._job_id, self._attempt = store, job_id, attempt

    def progress(self, event: ProgressEvent, message: str) -> bool:
        return self._store.record_progress(
            self._job_id, self._attempt, stage=event.stage, phase=event.phase, progress=event.fraction,
            eta_seconds=event.eta_seconds, message=message,
        )  # fmt: skip

    def cancel_reason(self) -> str | None:
        return self._store.cancel_reason(self._job_id)

    def owns(self) -> bool:
        job = self._store.get(self._job_id)
        return job is not None and job.state is JobState.RUNNING and job.attempts == self._attempt

    def completed(self, model_uri: str, artifacts: dict[str, str], message: str, artifact_bytes: dict[str, int]) -> None:
        self._store.complete(self._job_id, self._attempt, model_uri=model_uri, artifacts=artifacts, message=message, artifact_bytes=artifact_bytes)

    def failed(self, message: str, *, cancelled: bool = False) -> None:
        self._store.fail(self._job_id, self._attempt, message=message, cancelled=cancelled)


def run_job(
    job_id: str,
    settings: Settings,
    *,
    attempt: int | None = None,
    parent_pid: int | None = None,
    cancel: CancelToken | None = None,
    terminating: threading.Event | None = None,
) -> None:
    """Run the claimed (``running``) job ``job_id`` from the store, reporting into it (the local executor's job function).

    ``attempt`` fences the run: if the job was re-queued or finished meanwhile, nothing is written.
    """
    store = open_store(settings)
    job = store.get(job_id)
    if job is None or job.state is not JobState.RUNNING or (attempt is not None and job.attempts != attempt):
        logger.warning("job=%s not running as attempt %s; nothing to do", job_id, attempt)
        return
    spec = JobSpec.from_record(job, "restarted after a service restart" if job.attempts > 1 else None)
    run_attempt(spec, settings, StoreReporter(store, job_id, job.attempts), parent_pid=parent_pid, cancel=cancel, terminating=terminating)


def run_attempt(
    spec: JobSpec,
    settings: Settings,
    reporter: Reporter,
    *,
    parent_pid: int | None = None,
    cancel: CancelToken | None = None,
    terminating: threading.Event | None = None,
) -> None:
    """Run one attempt to its end and report the result.

    ``parent_pid``: stop at once if that process (the server, or a Celery task's supervisor) dies,
    since the job is then run again elsewhere. ``terminating`` set (the worker got SIGTERM): the
    attempt ends without reporting anything -- whoever stopped the worker decides what becomes of the job.
    """
    terminating = terminating or threading.Event()
    job_id, attempt = spec.job_id, spec.attempt
    out_dir = settings.attempt_dir(job_id, spec.run_name)
    remove_output(out_dir)
    downloads = settings.scratch_root / "photos" / f"{job_id}.{spec.run_name}"  # photos of a job whose photos_dir is on S3
    storage = Storage(settings)
    cancel = cancel or CancelToken()
    watcher = _CancelWatcher(reporter, job_id, cancel, parent_pid)
    writer = _ProgressWriter(reporter, spec, cancel)
    started = time.monotonic()
    logger.info("job=%s attempt=%d started pipeline=%s photos=%d", job_id, attempt, settings.pipeline, spec.photo_count)
    watcher.start()
    try:
        from pipelines.options import build_options

        photos_dir = _local_photos(spec, settings, storage, downloads, writer)
        pipeline = load_pipeline(settings.pipeline)
        flat = dict(spec.options)
        options = build_options(flat.pop("preset"), flat)
        extra: dict[str, Any] = {}
        if settings.simulated:
            from pipelines.simulate import SimulateScenario

            extra["scenario"] = SimulateScenario.from_dict(spec.simulate)
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
            reason = reporter.cancel_reason()
            reporter.failed(stopped_message(reason, settings), cancelled=reason != "timeout")
        elif isinstance(exc, (ReconError, MemoryError, StorageError)):
            reporter.failed(mark(message_for_error(exc, writing=writing), settings))
        elif isinstance(exc, Exception):
            logger.exception("job=%s crashed", job_id)
            reporter.failed(mark(message_for_error(exc, writing=writing), settings))
        else:  # KeyboardInterrupt, SystemExit: the process is going away; the server decides
            raise
        return
    watcher.stop()
    remove_output(downloads)
    if terminating.is_set():  # the stop was swallowed on its way up: the run must not count
        remove_output(out_dir)
        raise SystemExit(128 + signal.SIGTERM)
    if not reporter.owns():
        remove_output(out_dir)  # re-queued or finished elsewhere meanwhile: this attempt's output is moot
        logger.warning("job=%s attempt=%d finished but no longer owns the job; its output was discarded", job_id, attempt)
        return
    try:
        published = storage.outputs.publish(job_id, out_dir, result.model_path, result.artifacts)
    except StorageError as exc:
        remove_output(out_dir)
        logger.error("job=%s attempt=%d %s", job_id, attempt, exc.message)
        reporter.failed(mark(exc.message, settings))
        return
    message = "; ".join(result.warnings) if result.warnings else "completed"
    reporter.completed(published.model_uri, published.artifacts, mark(message, settings), published.sizes)
    logger.info("job=%s attempt=%d completed in %.1f s", job_id, attempt, time.monotonic() - started)


def worker_main(job_id: str, attempt: int, settings: Settings, parent_pid: int) -> None:
    """Entry point of a worker process started by :class:`~recon_service.jobs.local.LocalProcessExecutor`.

    The worker leads a process group of its own, so stopping it stops everything it started; on
    SIGTERM its child processes are killed and its attempt folder removed on the way out.
    """
    os.setpgid(0, 0)
    terminating, cancel = prepare_worker_process(settings, job_id, settings.data_dir / logs.JOB_LOG_DIR)
    run_job(job_id, settings, attempt=attempt, parent_pid=parent_pid, cancel=cancel, terminating=terminating)


def prepare_worker_process(settings: Settings, job_id: str, log_dir: Path) -> tuple[threading.Event, CancelToken]:
    """Set up a process that runs one attempt: SIGTERM, logs into ``log_dir/<job_id>.log``, CPU priority.

    SIGTERM raises ``SystemExit`` (Python's default would exit without running ``finally`` blocks)
    and cancels the returned token; the returned event tells the attempt that it is being stopped.
    """
    terminating, cancel = threading.Event(), CancelToken()

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
    logs.configure_logging(settings.log_level, settings.log_format, job_log_dir=log_dir, stream=stderr)
    logs.bind_job(job_id)
    _lower_priority(settings.worker_priority)
    return terminating, cancel


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


def _local_photos(job: JobSpec, settings: Settings, storage: Storage, downloads: Path, progress: ProgressFn) -> Path:
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
    """The pipeline's progress callback: reports throttled progress; a stale attempt is told to stop."""

    def __init__(self, reporter: Reporter, spec: JobSpec, cancel: CancelToken) -> None:
        self._reporter, self._spec, self._cancel = reporter, spec, cancel
        self._last_write = 0.0
        self._last_stage: str | None = None

    def __call__(self, event: ProgressEvent) -> None:
        logs.set_stage(event.stage)
        now = time.monotonic()
        if event.stage == self._last_stage and now - self._last_write < PROGRESS_WRITE_S:
            return
        self._last_write, self._last_stage = now, event.stage
        message = event.message
        if self._spec.restarted and event.fraction <= self._spec.held_progress:
            message = f"{self._spec.restarted}, attempt {self._spec.attempt} of {MAX_ATTEMPTS}: {message}"
        if not self._reporter.progress(event, message):  # re-queued or finished elsewhere: this run is moot
            self._cancel.cancel()


class _CancelWatcher:
    """Polls the job's cancel flag and the parent's liveness while the pipeline runs."""

    def __init__(self, reporter: Reporter, job_id: str, cancel: CancelToken, parent_pid: int | None) -> None:
        self._reporter, self._job_id, self._cancel, self._parent_pid = reporter, job_id, cancel, parent_pid
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
                logger.error("job=%s the process that started this worker died; stopping (the job is run again)", self._job_id)
                os._exit(75)
            try:
                reason = self._reporter.cancel_reason()
            except Exception:  # a busy or briefly unavailable store: try again next tick
                logger.exception("job=%s cannot read the cancel flag", self._job_id)
                continue
            if reason is not None and not self._cancel.cancelled:
                logger.info("job=%s stopping: %s", self._job_id, reason)
                self._cancel.cancel()
