"""Workers on any host: the Celery app, its one task, and ``recon-worker``.

The task (``recon.run_attempt``) takes a :class:`~recon_service.jobs.runner.JobSpec` and runs it in
a child process of its own -- a process group that can be stopped as a whole, that dies with its
parent (``PR_SET_PDEATHSIG``) -- while it renews the job's lease, watches the cancel flag and the
dispatch token, and reports a crash the attempt could not report itself. Nothing here needs the
API host's disk: photos come from the object store or a shared mount (``RECON_PHOTOS_ROOT``),
models go to ``MODEL_OUTPUT_ROOT`` (S3 or a shared mount), status goes out as events.

Celery settings that long jobs need, each for a reason:

* ``worker_prefetch_multiplier=1``: a worker process reserves one task at a time, so a second job
  never waits behind the first on a busy host while another host is idle;
* ``task_acks_late``: a task is acknowledged when it ends, not when it starts, so a worker host that
  dies mid-job leaves its task in the broker;
* ``task_reject_on_worker_lost``: a pool process killed mid-task (OOM) gives its task back at once;
* ``visibility_timeout`` longer than RECON_JOB_TIMEOUT_S: on Redis, a task not acknowledged within
  it is delivered again -- without this a long job would run twice (a duplicate is skipped anyway:
  its token is already claimed);
* ``worker_cancel_long_running_tasks_on_connection_loss=False``: a Redis restart does not stop
  running jobs (their outcome is sent once Redis is back).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from recon_service.jobs import events
from recon_service.jobs.messages import message_for_exit, stopped_message
from recon_service.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

TASK = "recon.run_attempt"
QUEUES = ("preview", "default")
KILL_AFTER_TERM_S = 1.0


def queue_for(options: dict[str, Any]) -> str:
    """Preview jobs have a queue of their own, so they never wait behind long ones."""
    return "preview" if options.get("preset") == "preview" else "default"


def make_celery(settings: Settings) -> Celery:
    """The Celery app of ``settings`` (broker RECON_BROKER_URL; no result backend: results go through events)."""
    from celery import Celery

    app = Celery("recon", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": int(settings.job_timeout_s + 3600)},
        task_default_queue="default",
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Redis restarting is no reason to stop a running job: its events wait, its task is fenced by token.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    app.task(name=TASK, bind=True, acks_late=True)(_run_attempt_task)
    return app


# -- the task --------------------------------------------------------------------------------------
def _run_attempt_task(task: Any, spec: dict[str, Any], token: str) -> None:
    settings = load_settings()
    client = events.connect(settings.broker_url or "")
    job_id, attempt = spec["job_id"], int(spec["attempt"])
    reporter = events.RedisReporter(client, job_id, attempt, token)
    node = (
        f"{task.request.hostname or socket.gethostname()}:{os.getpid()}"  # the pool process, as GET /workers lists it
    )
    claimed = reporter.owns() and reporter.retry(
        lambda: client.set(events.key("claim", token), node, nx=True, ex=int(settings.job_timeout_s + 7 * 24 * 3600))
    )
    if not claimed:
        logger.info("job=%s task %s is stale or already taken; skipped", job_id, token[:8])
        return
    _Registry.set_job({"job_id": job_id, "attempt": attempt, "since": time.time()})
    try:
        reporter.send("started", worker=node)
        _supervise(settings, client, reporter, spec, token, node)
    finally:
        _Registry.set_job(None)


def _supervise(
    settings: Settings, client: Any, reporter: events.RedisReporter, spec: dict[str, Any], token: str, node: str
) -> None:
    """Run the attempt in a child process group; renew the lease; stop it on cancel, timeout or a new dispatch."""
    job_id, attempt = spec["job_id"], int(spec["attempt"])
    env = {**os.environ, "RECON_ATTEMPT_TOKEN": token, "RECON_ATTEMPT_PARENT": str(os.getpid())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recon_service.jobs.attempt_process"],
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    lease = json.dumps({"token": token, "attempt": attempt, "worker": node})
    started, stop_at, term_at, next_lease = time.monotonic(), None, None, 0.0
    while proc.poll() is None:
        now = time.monotonic()
        try:
            if now >= next_lease:
                client.set(events.key("lease", job_id), lease, ex=int(settings.worker_lease_s))
                next_lease = now + events.LEASE_RENEW_S
            current = client.get(events.key("dispatch", job_id))  # None: Redis lost its data (the API node restores it)
            stop = client.get(events.key("cancel", job_id)) is not None or (current is not None and current != token)
        except Exception as exc:  # Redis restarting: keep running; the lease has some slack
            logger.warning("job=%s cannot reach Redis (%s); the attempt goes on", job_id, exc)
            stop = False
        if now - started > settings.job_timeout_s and stop_at is None:
            client.set(events.key("cancel", job_id), "timeout", nx=True, ex=3600)
            stop = True
        if stop and stop_at is None:
            stop_at = now + settings.cancel_grace_s
        if stop_at is not None and term_at is None and now >= stop_at:
            _signal_group(proc.pid, signal.SIGTERM)
            term_at = now
        if term_at is not None and now - term_at >= KILL_AFTER_TERM_S:
            _signal_group(proc.pid, signal.SIGKILL)
        time.sleep(0.2)
    _signal_group(proc.pid, signal.SIGKILL)  # whatever the attempt left in its group
    if (
        reporter.retry(lambda: client.get(events.key("done", token))) is None and reporter.owns()
    ):  # it ended without reporting: say why
        reason = reporter.retry(lambda: client.get(events.key("cancel", job_id)))
        message = stopped_message(reason, settings) if reason else message_for_exit(proc.returncode)
        reporter.failed(message, cancelled=reason == "user")
    reporter.retry(lambda: client.delete(events.key("lease", job_id)))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# -- worker registry -------------------------------------------------------------------------------
class _Registry:
    """Each worker process announces itself (and its current job) in Redis, for ``GET /workers``.

    One per pool process (class state: Celery's prefork pool runs one task at a time per process).
    """

    _client: Any = None
    _info: dict[str, Any] = {}
    _lock = threading.Lock()

    @classmethod
    def start(cls, url: str, node: str, queues: list[str]) -> None:
        cls._client, cls._info = events.connect(url), {"worker": f"{node}:{os.getpid()}", "queues": queues, "job": None}

        def beat() -> None:
            while True:
                cls._announce()
                time.sleep(events.WORKER_TTL_S / 4)

        threading.Thread(target=beat, name="worker-registry", daemon=True).start()

    @classmethod
    def set_job(cls, job: dict[str, Any] | None) -> None:
        cls._info = {**cls._info, "job": job}
        cls._announce()

    @classmethod
    def _announce(cls) -> None:
        if cls._client is None:
            return
        with cls._lock:
            try:  # the client reconnects by itself once Redis is back
                cls._client.set(
                    events.key("worker", cls._info["worker"]), json.dumps(cls._info), ex=int(events.WORKER_TTL_S)
                )
            except Exception as exc:  # Redis away: announced again on the next beat
                logger.debug("worker registry: %s", exc)


# -- recon-worker ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``recon-worker``: run jobs from the broker on this host (RECON_BROKER_URL), RECON_MAX_WORKERS at a time."""
    parser = argparse.ArgumentParser(prog="recon-worker", description=main.__doc__)
    parser.add_argument(
        "--queues", help="comma-separated queues to take jobs from (default RECON_WORKER_QUEUES: preview,default)"
    )
    parser.add_argument("--concurrency", type=int, help="jobs at once on this host (default RECON_MAX_WORKERS)")
    parser.add_argument("--name", help="this worker's node name (default: recon@<hostname>)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"recon-worker: {exc}", file=sys.stderr)
        return 2
    if not settings.broker_url:
        print("recon-worker: RECON_BROKER_URL must be set (e.g. redis://redis:6379/0)", file=sys.stderr)
        return 2
    if not settings.simulated:
        from pipelines.stack import stack_problem

        problem = stack_problem()
        if problem is not None:
            print(f"recon-worker: {problem}", file=sys.stderr)
            return 2
    from recon_service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    queues = [q.strip() for q in (args.queues or settings.worker_queues).split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        print(f"recon-worker: unknown queue(s) {', '.join(unknown)}; choose from {', '.join(QUEUES)}", file=sys.stderr)
        return 2
    node = args.name or f"recon@{socket.gethostname()}"
    app = make_celery(settings)

    from celery.signals import worker_process_init

    @worker_process_init.connect  # each pool process: its own registry entry
    def _announce(**_: Any) -> None:
        _Registry.start(settings.broker_url or "", node, queues)

    app.worker_main(["worker", "--loglevel", settings.log_level, "-Q", ",".join(queues), "-n", node,
                     "--concurrency", str(args.concurrency or settings.max_workers), "--pool", "prefork", "-O", "fair",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
