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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.errors import Cancelled, InvalidInput, ReconError
from pipelines.progress import CancelToken, ProgressEvent
from recon_service import logs
from recon_service.jobs.messages import disk_full, mark, message_for_error, newest_file, stopped_message
from recon_service.jobs.records import JobState
from recon_service.jobs.store import Store, open_store
from recon_service.settings import Settings

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
    """Remove a job's partial output (the whole ``MODEL_OUTPUT_ROOT/<job_id>/``)."""
    shutil.rmtree(out_dir, ignore_errors=True)


def run_job(job_id: str, settings: Settings, *, attempt: int | None = None, parent_pid: int | None = None) -> None:
    """Run the claimed (``running``) job ``job_id`` to its end and record the result in the store.

    ``attempt`` fences the run: if the job was re-queued or finished meanwhile, nothing is
    written. ``parent_pid``: stop at once if that process (the server) dies, since a restarted
    server re-runs the job.
    """
    store = open_store(settings)
    job = store.get(job_id)
    if job is None or job.state is not JobState.RUNNING or (attempt is not None and job.attempts != attempt):
        logger.warning("job=%s not running as attempt %s; nothing to do", job_id, attempt)
        return
    attempt = job.attempts
    out_dir = settings.job_output_dir(job_id)
    remove_output(out_dir)  # a previous, interrupted attempt's leftovers
    cancel = CancelToken()
    watcher = _CancelWatcher(store, job_id, cancel, parent_pid)
    writer = _ProgressWriter(store, job_id, attempt, cancel)
    started = time.monotonic()
    logger.info("job=%s attempt=%d started pipeline=%s photos=%d", job_id, attempt, settings.pipeline, job.photo_count)
    watcher.start()
    try:
        from pipelines.options import build_options

        _check_photos_inside_root(Path(job.photos_dir), settings)
        pipeline = load_pipeline(settings.pipeline)
        flat = dict(job.options)
        options = build_options(flat.pop("preset"), flat)
        extra: dict[str, Any] = {}
        if settings.simulated:
            from pipelines.simulate import SimulateScenario

            extra["scenario"] = SimulateScenario.from_dict(job.simulate)
        result = pipeline(Path(job.photos_dir), out_dir, options, writer, cancel, **extra)
    except BaseException as exc:
        watcher.stop()
        writing = newest_file(out_dir) if disk_full(exc) is not None else None  # before the output is removed
        remove_output(out_dir)
        if isinstance(exc, Exception):  # logged before the job fails: its log tail then explains the failure
            logger.info("job=%s attempt=%d failed after %.1f s: %s", job_id, attempt, time.monotonic() - started, exc)
        if isinstance(exc, Cancelled):
            reason = store.cancel_reason(job_id)
            store.fail(job_id, attempt, message=stopped_message(reason, settings), cancelled=reason != "timeout")
        elif isinstance(exc, (ReconError, MemoryError)):
            store.fail(job_id, attempt, message=mark(message_for_error(exc, writing=writing), settings))
        elif isinstance(exc, Exception):
            logger.exception("job=%s crashed", job_id)
            store.fail(job_id, attempt, message=mark(message_for_error(exc, writing=writing), settings))
        else:  # KeyboardInterrupt, SystemExit: the process is going away; the server decides
            raise
        return
    watcher.stop()
    artifacts = {name: Path(path).resolve().as_uri() for name, path in result.artifacts.items()}
    store.complete(job_id, attempt, model_uri=Path(result.model_path).resolve().as_uri(), artifacts=artifacts,
                   message=mark("completed", settings))  # fmt: skip
    logger.info("job=%s attempt=%d completed in %.1f s", job_id, attempt, time.monotonic() - started)


def worker_main(job_id: str, attempt: int, settings: Settings, parent_pid: int) -> None:
    """Entry point of a worker process started by :class:`~recon_service.jobs.local.LocalProcessExecutor`."""
    stderr = logs.capture_native_stderr()
    logs.configure_logging(settings.log_level, settings.log_format, job_log_dir=settings.data_dir / logs.JOB_LOG_DIR, stream=stderr)
    logs.bind_job(job_id)
    _lower_priority(settings.worker_priority)
    run_job(job_id, settings, attempt=attempt, parent_pid=parent_pid)


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


def _check_photos_inside_root(photos_dir: Path, settings: Settings) -> None:
    """The folder must still resolve inside RECON_PHOTOS_ROOT (photos themselves are opened without following links)."""
    if not photos_dir.resolve().is_relative_to(settings.photos_root):
        raise InvalidInput(f"photos_dir {photos_dir} now resolves outside the allowed photos root (RECON_PHOTOS_ROOT); upload the photos again")


class _ProgressWriter:
    """The pipeline's progress callback: writes to the store, throttled, fenced by attempt."""

    def __init__(self, store: Store, job_id: str, attempt: int, cancel: CancelToken) -> None:
        self._store, self._job_id, self._attempt, self._cancel = store, job_id, attempt, cancel
        self._last_write = 0.0
        self._last_stage: str | None = None

    def __call__(self, event: ProgressEvent) -> None:
        logs.set_stage(event.stage)
        now = time.monotonic()
        if event.stage == self._last_stage and now - self._last_write < PROGRESS_WRITE_S:
            return
        self._last_write, self._last_stage = now, event.stage
        owned = self._store.record_progress(
            self._job_id, self._attempt, stage=event.stage, phase=event.phase, progress=event.fraction,
            eta_seconds=event.eta_seconds, message=event.message,
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
