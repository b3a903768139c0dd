"""The embedded executor: each job in a process of its own on this machine.

The service talks to an :class:`~recon_service.jobs.executor.Executor` only. :class:`LocalProcessExecutor` runs each job in
its own spawned process, at most ``RECON_MAX_WORKERS`` at once, oldest queued job first (the
queue itself is the durable store). It watches its processes: a worker that dies without a
result (exception, segfault, SIGKILL by the OOM killer) fails only its own job; a cancelled or
timed-out worker that does not stop by itself within the grace time is terminated.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from recon_service.jobs import messages, runner
from recon_service.jobs.records import JobState
from recon_service.jobs.store import Store
from recon_service.logs import about
from recon_service.settings import Settings

logger = logging.getLogger(__name__)

TICK_S = 0.2
"""Scheduler period: reaping, cancel/timeout enforcement and claiming (seconds)."""
KILL_AFTER_TERM_S = 1.0
"""After SIGTERM, seconds before a worker that is still alive gets SIGKILL."""


@dataclass
class _Worker:
    job_id: str
    attempt: int
    process: Any  # multiprocessing.Process (spawn context)
    started: float = field(default_factory=time.monotonic)
    stop_deadline: float | None = None  # when to SIGTERM it after a cancel/timeout request
    terminated_at: float | None = None


class LocalProcessExecutor:
    """One spawned process per job on this machine, supervised by one scheduler thread."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._ctx = multiprocessing.get_context("spawn")  # no forked copies of server threads or sockets
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-scheduler", daemon=True)

    # -- Executor ------------------------------------------------------------------------------
    def start(self) -> None:
        # No worker runs yet: attempt folders left by the last run (killed workers) belong to nobody.
        for leftover in self._settings.attempts_root.glob("*") if self._settings.attempts_root.is_dir() else ():
            runner.remove_output(leftover)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        self._wake.set()

    def running(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def problem(self) -> str | None:
        return None if self._thread.is_alive() and not self._stopping.is_set() else "the job scheduler is not running"

    def workers(self) -> list[dict[str, Any]]:
        """One entry per worker slot: this host's processes, and the job each runs (``None`` when idle)."""
        with self._lock:
            busy = [{"worker": f"{socket.gethostname()}:{w.process.pid}", "queues": ["local"], "job_id": w.job_id, "attempt": w.attempt,
                     "running_s": round(time.monotonic() - w.started, 1)} for w in self._workers.values()]  # fmt: skip
        idle = [{"worker": f"{socket.gethostname()}:slot-{i + 1}", "queues": ["local"], "job_id": None, "attempt": None, "running_s": None}
                for i in range(len(busy), self._settings.max_workers)]  # fmt: skip
        return busy + idle

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting for a worker, per queue (one local queue: the store's)."""
        return {"local": len(self._store.dispatchable())}

    def shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            if w.process.is_alive():
                _signal_group(w.process, signal.SIGTERM)
        deadline = time.monotonic() + KILL_AFTER_TERM_S + 1.0
        for w in workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            _signal_group(w.process, signal.SIGKILL)  # the worker, if still there, and anything it left
            w.process.join(timeout=2)
            runner.remove_output(self._settings.attempt_dir(w.job_id, w.attempt))
            message = f"re-queued: the service was stopped while it ran; attempt {w.attempt + 1} of {messages.MAX_ATTEMPTS} starts at the next start"
            if self._store.requeue(w.job_id, w.attempt, message=message):
                logger.info("job=%s interrupted by shutdown; re-queued", w.job_id, extra=about(w.job_id))
        with self._lock:
            self._workers.clear()

    # -- the scheduler -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reap()
                self._enforce_stops()
                self._start_queued()
            except Exception:  # never let one bad tick stop the scheduler; the store is the truth
                logger.exception("scheduler tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _reap(self) -> None:
        with self._lock:
            finished = [w for w in self._workers.values() if not w.process.is_alive()]
        for w in finished:
            w.process.join()
            exitcode = w.process.exitcode
            _signal_group(w.process, signal.SIGKILL)  # nothing the worker started outlives it
            runner.remove_output(self._settings.attempt_dir(w.job_id, w.attempt))
            job = self._store.get(w.job_id)
            if job is not None and job.state is JobState.RUNNING and job.attempts == w.attempt:
                # The worker died without recording a result: fail its job (its attempt folder is gone already).
                reason = job.cancel_reason if job.cancel_requested else None
                message = messages.stopped_message(reason, self._settings) if reason is not None else messages.message_for_exit(exitcode)
                # Logged before the job fails, so the job's log tail explains the failure as soon as anyone sees it.
                logger.warning("job=%s worker pid=%s ended with exit code %s: %s", w.job_id, w.process.pid, exitcode, message, extra=about(w.job_id))
                self._store.fail(w.job_id, w.attempt, message=message, cancelled=reason is not None and reason != "timeout")
            else:
                logger.info("job=%s worker pid=%s finished (exit code %s)", w.job_id, w.process.pid, exitcode, extra=about(w.job_id))
            w.process.close()
            with self._lock:
                self._workers.pop(w.job_id, None)
            self._wake.set()  # a slot is free

    def _enforce_stops(self) -> None:
        now = time.monotonic()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            if w.stop_deadline is None:
                if now - w.started > self._settings.job_timeout_s:
                    self._store.request_timeout(w.job_id, w.attempt)
                    logger.warning("job=%s exceeded RECON_JOB_TIMEOUT_S=%g s; stopping", w.job_id, self._settings.job_timeout_s, extra=about(w.job_id))
                if self._store.cancel_reason(w.job_id) is not None:
                    w.stop_deadline = now + self._settings.cancel_grace_s
            elif w.terminated_at is None and now >= w.stop_deadline:
                logger.warning("job=%s worker pid=%s did not stop within %g s; terminating", w.job_id, w.process.pid, self._settings.cancel_grace_s, extra=about(w.job_id))
                _signal_group(w.process, signal.SIGTERM)
                w.terminated_at = now
            elif w.terminated_at is not None and now - w.terminated_at >= KILL_AFTER_TERM_S:
                _signal_group(w.process, signal.SIGKILL)

    def _start_queued(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if len(self._workers) >= self._settings.max_workers:
                    return
            job = self._store.claim_next()
            if job is None:
                return
            process = self._ctx.Process(
                target=runner.worker_main,
                args=(job.job_id, job.attempts, self._settings, os.getpid()),
                name=f"job-{job.job_id[:8]}",
            )
            try:
                process.start()
            except Exception as exc:  # out of processes or memory: fail this job, keep serving
                logger.exception("job=%s cannot start a worker", job.job_id, extra=about(job.job_id))
                self._store.fail(job.job_id, job.attempts, message=f"could not start a worker process ({exc}); try again later")
                continue
            with self._lock:
                self._workers[job.job_id] = _Worker(job.job_id, job.attempts, process)
            self._store.set_worker(job.job_id, job.attempts, f"{socket.gethostname()}:{process.pid}")
            logger.info("job=%s attempt=%d started in worker pid=%s", job.job_id, job.attempts, process.pid, extra=about(job.job_id))


def _signal_group(process: Any, sig: int) -> None:
    """Send ``sig`` to the worker's process group (it leads one: ``worker_main``), so its children get it too.

    A live worker that has not made its group yet (just started) gets the signal directly; a reaped
    one never does (its pid may belong to someone else by now), only what is left of its group.
    """
    pid = process.pid
    if pid is None:
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # no such group (not made yet, or everything in it has exited)
        if process.exitcode is None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
