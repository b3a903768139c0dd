"""The job function: runs one claimed job inside a worker process, and the job messages.

``run_job(job_id, settings)`` is what any executor runs (a local process today; a Celery or Ray
task would call the same function). It loads the job from the store, runs the selected pipeline
with progress written back to the store and a cancel flag polled from it, and records the
result. This is the only place that turns pipeline errors and worker exits into job messages.
"""

from __future__ import annotations

import errno
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

from pipelines.errors import Cancelled, InvalidInput, InvalidOptions, ReconError, ReconstructionFailed
from pipelines.progress import CancelToken, ProgressEvent
from recon_service import logs
from recon_service.settings import Settings
from recon_service.store import JobState, Store

logger = logging.getLogger(__name__)

PIPELINES: dict[str, str] = {
    "real": "pipelines.run:reconstruct",
    "simulate": "pipelines.simulate:reconstruct",
}
"""RECON_PIPELINE → the ``reconstruct`` function (imported in the worker only: it is heavy)."""

MAX_ATTEMPTS = 3
"""A job interrupted by this many service restarts is failed instead of re-run again."""
CANCEL_POLL_S = 0.25
"""How often a worker reads its job's cancel flag (seconds)."""
PROGRESS_WRITE_S = 0.5
"""A worker writes progress to the store at most this often, plus at every stage change (seconds)."""
SIMULATED = " [simulated: RECON_PIPELINE=simulate, no real reconstruction]"


# -- messages ------------------------------------------------------------------------------------
def message_for_error(exc: BaseException, *, writing: Path | None = None) -> str:
    """The job message for an exception that ended a pipeline run (``writing``: the file being written, if known)."""
    full = _disk_full(exc)
    if full is not None:
        target = full.filename or writing
        where = f"writing {target}" if target else "writing the job's files"
        return (
            f"no space left on device while {where}; free space under MODEL_OUTPUT_ROOT "
            "(or set RECON_RETENTION_S to remove old jobs' files) and submit the job again"
        )
    if isinstance(exc, Cancelled):
        return "cancelled"
    if isinstance(exc, InvalidOptions):
        return f"invalid options: {exc}"
    if isinstance(exc, ReconstructionFailed):
        return f"{exc.stage}: {exc.message}"
    if isinstance(exc, (InvalidInput, ReconError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "ran out of memory; try the preview preset, fewer photos or a machine with more memory"
    return f"internal error ({type(exc).__name__}: {exc}); see the service log and report it"


def _disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``exc`` (stages wrap library errors), or ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return current
        current = current.__cause__ or current.__context__
    return None


def _newest_file(folder: Path) -> Path | None:
    """The most recently modified file under ``folder``: the one a failed write was writing."""
    newest: tuple[float, Path] | None = None
    for path in folder.rglob("*") if folder.is_dir() else ():
        try:
            if path.is_file() and (newest is None or path.stat().st_mtime >= newest[0]):
                newest = (path.stat().st_mtime, path)
        except OSError:
            continue
    return newest[1] if newest else None


def message_for_exit(exitcode: int | None) -> str:
    """The job message for a worker process that ended without recording a result."""
    if exitcode == -signal.SIGKILL:
        return "worker was killed, probably out of memory; try the preview preset or fewer photos"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker crashed ({name}); see the service log and report it"
    return f"worker exited with code {exitcode} without a result; see the service log"


def timeout_message(settings: Settings) -> str:
    return f"timed out after {settings.job_timeout_s:g} s (RECON_JOB_TIMEOUT_S); try the preview preset or fewer photos"


def stopped_message(reason: str | None, settings: Settings) -> str:
    """The message of a job stopped on request: by its user, or by the time limit."""
    return timeout_message(settings) if reason == "timeout" else "cancelled"


GIVE_UP_MESSAGE = (
    f"interrupted by {MAX_ATTEMPTS} service restarts while running; submit it again with a new job_id"
)


# -- the job function ----------------------------------------------------------------------------
def load_pipeline(name: str) -> Callable[..., Any]:
    """The ``reconstruct`` function of pipeline ``name`` (``real`` or ``simulate``)."""
    module, _, attr = PIPELINES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def open_store(settings: Settings) -> Store:
    return Store(
        settings.db_path,
        callbacks=settings.callback_url is not None,
        progress_callback_interval_s=settings.progress_callback_interval_s,
    )


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

        _check_photos_unchanged(Path(job.photos_dir), settings)
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
        writing = _newest_file(out_dir) if _disk_full(exc) is not None else None  # before the output is removed
        remove_output(out_dir)
        if isinstance(exc, Exception):  # logged before the job fails: its log tail then explains the failure
            logger.info("job=%s attempt=%d failed after %.1f s: %s", job_id, attempt, time.monotonic() - started, exc)
        if isinstance(exc, Cancelled):
            reason = store.cancel_reason(job_id)
            store.fail(job_id, attempt, message=stopped_message(reason, settings), cancelled=reason != "timeout")
        elif isinstance(exc, (ReconError, MemoryError)):
            store.fail(job_id, attempt, message=_mark(message_for_error(exc, writing=writing), settings))
        elif isinstance(exc, Exception):
            logger.exception("job=%s crashed", job_id)
            store.fail(job_id, attempt, message=_mark(message_for_error(exc, writing=writing), settings))
        else:  # KeyboardInterrupt, SystemExit: the process is going away; the server decides
            raise
        return
    watcher.stop()
    artifacts = {name: str(Path(path).resolve()) for name, path in result.artifacts.items()}
    store.complete(job_id, attempt, model_path=str(Path(result.model_path).resolve()), artifacts=artifacts,
                   message=_mark("completed", settings))  # fmt: skip
    logger.info("job=%s attempt=%d completed in %.1f s", job_id, attempt, time.monotonic() - started)


def worker_main(job_id: str, attempt: int, settings: Settings, parent_pid: int) -> None:
    """Entry point of a worker process started by ``workers.LocalProcessExecutor``."""
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


def _check_photos_unchanged(photos_dir: Path, settings: Settings) -> None:
    """Refuse to run on a photos folder that vanished or was tampered with after submission."""
    from recon_service.submission import photo_problem

    if not photos_dir.is_dir():
        raise InvalidInput(f"photos_dir {photos_dir} no longer exists (removed after submission); upload the photos again and submit a new job")
    problem = photo_problem(photos_dir, settings.photos_root)
    if problem is not None:
        raise InvalidInput(f"photos_dir changed after submission: {problem}")


def _mark(message: str, settings: Settings) -> str:
    return message + SIMULATED if settings.simulated else message


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
