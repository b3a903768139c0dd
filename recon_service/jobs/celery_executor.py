"""The distributed executor (``RECON_EXECUTOR=celery``): jobs go to Celery workers on any host through Redis.

The API node keeps the store (the single writer), the contract and the callback outbox. This
executor hands each queued job to the broker as one task under a fresh **dispatch token**, applies
the workers' events (:class:`~recon_service.jobs.events.EventConsumer`), and watches the running
jobs' **leases**: a job whose worker stopped renewing its lease (the host died, or was cut off)
is queued again and dispatched under a new token -- the old task, if it ever comes back, no longer
owns the job and its reports change nothing. A cancel is a Redis flag the worker polls (never
``revoke(terminate=True)``, which can kill a process that already runs another task).

Nothing is lost when a part restarts: the API node re-dispatches every queued job at start
(duplicates are stale, skipped by the workers) and keeps running jobs running; a Redis restart
(detected by its run id) re-dispatches the queued jobs too, in case Redis lost its data; events
not yet applied stay in the stream until the API node has read them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from recon_service.jobs import events
from recon_service.jobs.celery_worker import QUEUES, TASK, make_celery, queue_for
from recon_service.jobs.messages import MAX_ATTEMPTS
from recon_service.jobs.records import JobRecord, JobState
from recon_service.jobs.runner import JobSpec
from recon_service.jobs.store import Store
from recon_service.logs import JOB_LOG_DIR, about
from recon_service.settings import Settings

logger = logging.getLogger(__name__)

TICK_S = 0.5
BROKER_DOWN_S = 5.0
"""``/readyz`` says not ready when Redis has not answered for this long (seconds)."""
LOST_MESSAGE = "its worker was lost (no lease renewed for {lease:g} s, RECON_WORKER_LEASE_S); attempt {next} of {max} runs on another worker"


class CeleryExecutor:
    """Dispatches jobs to Celery workers and supervises them through their leases."""

    def __init__(self, settings: Settings, store: Store) -> None:
        assert settings.broker_url is not None
        self._settings, self._store = settings, store
        self._app = make_celery(settings)
        self._redis = events.connect(settings.broker_url)
        self._consumer = events.EventConsumer(settings.broker_url, store, log_dir=settings.data_dir / JOB_LOG_DIR)
        self._sent: set[str] = set()  # jobs whose current dispatch reached the broker since this node started
        self._missing: dict[str, float] = {}  # running job -> when its lease was first seen missing
        self._redis_run_id: str | None = None
        self._last_ok = time.monotonic()  # the last tick that reached Redis
        self._broker_error: str | None = None  # why the ticks since did not
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="celery-dispatch", daemon=True)

    # -- Executor --------------------------------------------------------------------------------
    def start(self) -> None:
        self._consumer.start()
        self._thread.start()

    def submit(self, job_id: str) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """The job's cancel flag is set in the store: tell its worker (or make its queued task stale)."""
        try:
            self._redis.set(events.key("cancel", job_id), "user", ex=int(self._settings.job_timeout_s + 3600))
            job = self._store.get(job_id)
            if job is not None and job.state is not JobState.RUNNING:
                self._redis.delete(events.key("dispatch", job_id))  # a queued task of it is skipped
        except Exception:  # Redis away: the lease watcher fails the job if its worker cannot be told
            logger.exception("job=%s cannot send the cancel to its worker", job_id, extra=about(job_id))

    def running(self) -> list[str]:
        return [job.job_id for job in self._store.running()]

    def problem(self) -> str | None:
        if not (self._thread.is_alive() and self._consumer.alive()) or self._stopping.is_set():
            return "the job dispatcher is not running"
        if self._broker_error is not None and time.monotonic() - self._last_ok > BROKER_DOWN_S:
            return f"the broker (RECON_BROKER_URL) has not answered for {time.monotonic() - self._last_ok:.0f} s: {self._broker_error}"
        return None

    def workers(self) -> list[dict[str, Any]]:
        """Every worker process that announced itself in the last few seconds, with its job."""
        found = []
        try:
            for name in self._redis.scan_iter(match=events.key("worker", "*"), count=500):
                raw = self._redis.get(name)
                if raw is None:
                    continue
                info = json.loads(raw)
                job = info.get("job") or {}
                since = job.get("since")
                found.append({"worker": info["worker"], "queues": info["queues"], "job_id": job.get("job_id"), "attempt": job.get("attempt"),
                              "running_s": round(time.time() - since, 1) if since else None})  # fmt: skip
        except Exception as exc:  # Redis away: nobody can be seen
            logger.warning("cannot list workers: %s", exc)
        return sorted(found, key=lambda w: w["worker"])

    def queue_depths(self) -> dict[str, int]:
        try:
            return {queue: int(self._redis.llen(queue)) for queue in QUEUES}
        except Exception:
            return {}

    def shutdown(self) -> None:
        """Stop dispatching and applying events; the workers go on, and a restarted node picks up where this one stopped."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._consumer.stop()

    # -- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._notice_redis_restart()
                self._dispatch_queued()
                self._watch_leases()
                self._last_ok, self._broker_error = time.monotonic(), None
            except Exception as exc:  # Redis or the store briefly unavailable: the next tick tries again
                self._broker_error = f"{type(exc).__name__}: {exc}"
                logger.warning("dispatch tick failed: %s", self._broker_error)
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _notice_redis_restart(self) -> None:
        """At start and after a Redis restart, check what Redis still holds (its run id tells a restart)."""
        run_id = self._redis.info("server").get("run_id")
        if run_id == self._redis_run_id:
            return
        if self._redis_run_id is not None:
            logger.warning("Redis restarted; checking that it still holds every queued and running job")
        self._redis_run_id = run_id
        self._sent.clear()
        for job in (
            self._store.running()
        ):  # without persistence Redis may have lost them: the running tasks keep owning their jobs
            if job.dispatch_token and self._redis.set(events.key("dispatch", job.job_id), job.dispatch_token, nx=True):
                logger.warning("job=%s Redis had lost its dispatch; restored", job.job_id, extra=about(job.job_id))

    def _dispatch_queued(self) -> None:
        queued = self._store.dispatchable()
        self._sent.intersection_update(job.job_id for job in queued)  # started or finished: forgotten (a later window re-checks Redis)
        for job in queued:
            if job.job_id in self._sent:
                continue
            if job.dispatch_token and self._in_broker(job):
                self._sent.add(job.job_id)  # dispatched before a restart (of this node or of Redis), still there
            else:
                self._dispatch(job)

    def _in_broker(self, job: JobRecord) -> bool:
        """Whether the job's current task reached the broker and Redis still holds it (its marker is written after the task)."""
        token = job.dispatch_token or ""
        return self._redis.get(events.key("dispatch", job.job_id)) == token and bool(
            self._redis.exists(events.key("sent", token))
        )

    def _dispatch(self, job: JobRecord) -> None:
        """Hand the job to the broker under a fresh token; any earlier task of it becomes stale (and is skipped)."""
        token = uuid.uuid4().hex
        record = self._store.dispatch(job.job_id, token)
        if record is None:
            return
        restarted = "restarted after its worker was lost" if record.attempts > 0 else None
        spec = JobSpec.from_record(record, restarted)
        spec = JobSpec(**{**spec.to_dict(), "attempt": record.attempts + 1, "dispatch": token})
        queue = queue_for(record.options)
        ttl = int(self._settings.job_timeout_s + 7 * 24 * 3600)
        self._redis.set(events.key("dispatch", job.job_id), token)
        self._redis.delete(events.key("cancel", job.job_id))
        self._app.send_task(TASK, args=[spec.to_dict(), token], queue=queue)
        self._redis.set(events.key("sent", token), queue, ex=ttl)  # after the task: the marker proves the task is there
        self._sent.add(job.job_id)
        logger.info(
            "job=%s attempt %d dispatched to queue %s", job.job_id, spec.attempt, queue, extra=about(job.job_id)
        )

    def _watch_leases(self) -> None:
        now = time.monotonic()
        running = self._store.running()
        for job in running:
            raw = self._redis.get(events.key("lease", job.job_id))
            lease = json.loads(raw) if raw else None
            if lease is not None and lease.get("token") == job.dispatch_token:
                self._missing.pop(job.job_id, None)
                continue
            first = self._missing.setdefault(job.job_id, now)
            if now - first >= self._settings.worker_lease_s:
                self._missing.pop(job.job_id, None)
                self._lost(job)
        for job_id in set(self._missing) - {j.job_id for j in running}:
            self._missing.pop(job_id, None)

    def _lost(self, job: JobRecord) -> None:
        """The worker of ``job`` stopped renewing its lease: run the job again elsewhere (or fail it)."""
        lease = self._settings.worker_lease_s
        if job.cancel_requested and job.cancel_reason == "user":
            self._store.fail(job.job_id, job.attempts, message="cancelled", cancelled=True)
        elif job.attempts >= MAX_ATTEMPTS:
            self._store.fail(
                job.job_id,
                job.attempts,
                message=f"its worker was lost {job.attempts} times; submit it again with a new job_id",
            )
        else:
            logger.warning(
                "job=%s lost its worker %s; running it again", job.job_id, job.worker, extra=about(job.job_id)
            )
            self._redis.set(
                events.key("dispatch", job.job_id), "lost"
            )  # the lost attempt, if it comes back, owns nothing
            self._store.requeue(
                job.job_id,
                job.attempts,
                message=LOST_MESSAGE.format(lease=lease, next=job.attempts + 1, max=MAX_ATTEMPTS),
            )
            self._sent.discard(job.job_id)
            self._wake.set()
