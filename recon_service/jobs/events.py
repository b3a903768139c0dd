"""How distributed workers and the API node talk through Redis: keys, worker events, and their consumer.

The API node stays the single writer of the job store. A worker on another host never touches
the store: it sends what happens to a job as events on one Redis stream (``recon:events``), which
the API node reads in a consumer group, applies to the store (fenced by the dispatch token and the
attempt number, so a stale or duplicated task changes nothing) and acknowledges; events not yet
acknowledged when the API node stops are read again when it starts. The outbox then sends the
callbacks, in order per job, as with local workers.

Keys (``recon:`` prefix):

=============================  ==================================================================
``dispatch:<job_id>``          the token of the task that may run the job now (set by the API node;
                               ``lost`` or ``cancelled`` when no task may)
``sent:<token>``               written after the task reached the broker: it is there (checked at start)
``claim:<token>``              the worker that took that task (``SET NX``: one worker per token)
``lease:<job_id>``             ``{token, attempt, worker}``, renewed every few seconds while it runs
``cancel:<job_id>``            ``user`` or ``timeout``: the worker's cancel token polls it
``worker:<node>:<pid>``        a worker process online: its queues and current job (expires)
``events`` (a stream)          ``started``, ``progress``, ``completed``, ``failed``
=============================  ==================================================================
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from pipelines.progress import ProgressEvent
from recon_service.jobs.store import Store
from recon_service.logs import about

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

PREFIX = "recon:"
STREAM = PREFIX + "events"
GROUP = "api"
STREAM_MAX_LEN = 100_000
"""Events kept in the stream (approximately); acknowledged ones are only history."""
LEASE_RENEW_S = 2.0
WORKER_TTL_S = 10.0
SEND_RETRY_S = 60.0
"""How long a worker keeps trying to reach Redis for an event that must arrive (an outcome, a start)."""


def key(kind: str, name: str) -> str:
    return f"{PREFIX}{kind}:{name}"


def connect(url: str) -> redis.Redis:
    """A Redis client with timeouts (a Redis restart is an error to retry, never a hang)."""
    import redis

    return redis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10, decode_responses=True
    )


# -- the worker side -------------------------------------------------------------------------------
class RedisReporter:
    """An attempt's :class:`~recon_service.jobs.runner.Reporter` on a worker host: events out, cancel and ownership in.

    Redis may restart under a running attempt: an outcome (or a start) is sent again until Redis
    is back (up to SEND_RETRY_S), progress is dropped meanwhile, and ownership is assumed (the API
    node fences every event by its token anyway).
    """

    def __init__(self, client: redis.Redis, job_id: str, attempt: int, token: str) -> None:
        self._redis, self._job_id, self._attempt, self._token = client, job_id, attempt, token

    def send(self, kind: str, *, retry_s: float = SEND_RETRY_S, **fields: Any) -> bool:
        """Add one event to the stream; ``False`` when Redis could not be reached within ``retry_s``."""
        import redis

        body = {
            "kind": kind,
            "job_id": self._job_id,
            "attempt": self._attempt,
            "token": self._token,
            "at": time.time(),
            **fields,
        }
        deadline = time.monotonic() + retry_s
        while True:
            try:
                self._redis.xadd(STREAM, {"event": json.dumps(body)}, maxlen=STREAM_MAX_LEN, approximate=True)
                return True
            except redis.RedisError as exc:
                if time.monotonic() >= deadline:
                    logger.warning("job=%s cannot send its %s event: %s", self._job_id, kind, exc)
                    return False
                time.sleep(0.5)

    def owns(self) -> bool:
        """Whether this task may run the job; a strict answer (Redis is retried until it answers)."""
        return self.retry(lambda: self._redis.get(key("dispatch", self._job_id))) == self._token

    def progress(self, event: ProgressEvent, message: str) -> bool:
        self.send(
            "progress",
            retry_s=0,
            stage=event.stage,
            phase=event.phase,
            fraction=event.fraction,
            eta=event.eta_seconds,
            message=message,
        )
        import redis

        try:
            current = self._redis.get(key("dispatch", self._job_id))
        except redis.RedisError:
            return True
        return current is None or current == self._token  # None: Redis lost its data, the API node restores it

    def cancel_reason(self) -> str | None:
        return self._redis.get(key("cancel", self._job_id))

    def completed(self, model_uri: str, artifacts: dict[str, str], message: str, artifact_bytes: dict[str, int]) -> None:
        if self.send("completed", model_uri=model_uri, artifacts=artifacts, message=message, artifact_bytes=artifact_bytes):
            self._done()

    def failed(self, message: str, *, cancelled: bool = False, log_tail: list[str] | None = None) -> None:
        if self.send("failed", message=message, cancelled=cancelled, log_tail=log_tail or []):
            self._done()

    def _done(self) -> None:
        """The attempt reported its outcome (its supervisor then reports nothing more)."""
        self.retry(lambda: self._redis.set(key("done", self._token), "1", ex=7 * 24 * 3600))

    def retry(self, call: Any) -> Any:
        """``call()``, tried again while Redis is unreachable (up to SEND_RETRY_S)."""
        import redis

        deadline = time.monotonic() + SEND_RETRY_S
        while True:
            try:
                return call()
            except redis.RedisError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)


# -- the API side ----------------------------------------------------------------------------------
class EventConsumer:
    """Reads the worker events stream (consumer group ``api``) and applies each to the store, then acknowledges it."""

    def __init__(self, url: str, store: Store, on_change: Any = None, log_dir: Any = None) -> None:
        self._url, self._store, self._on_change, self._log_dir = url, store, on_change, log_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-events", daemon=True)
        self.applied = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        client, backlog = None, True
        while not self._stop.is_set():
            try:
                if client is None:
                    client = connect(self._url)
                    _ensure_group(client)
                    backlog = True  # after a (re)connect: first what was delivered but not acknowledged
                entries = client.xreadgroup(
                    GROUP, "api", {STREAM: "0" if backlog else ">"}, count=200, block=None if backlog else 500
                )
                items = entries[0][1] if entries else []
                if backlog and not items:
                    backlog = False
                    continue
                for entry_id, fields in items:
                    self._apply(json.loads(fields["event"]))
                    client.xack(STREAM, GROUP, entry_id)
            except Exception as exc:  # Redis restarting or gone: retry, the events wait in the stream
                if self._stop.is_set():
                    return
                logger.warning("worker events: %s: %s; retrying", type(exc).__name__, exc)
                client = None
                self._stop.wait(1.0)

    def _apply(self, event: dict[str, Any]) -> None:
        job_id, attempt, token, kind = event["job_id"], int(event["attempt"]), event["token"], event["kind"]
        store = self._store
        if kind == "started":
            applied = store.start_dispatched(job_id, token, attempt, event["worker"]) is not None
        elif kind == "progress":
            applied = store.record_progress(job_id, attempt, stage=event["stage"], phase=event["phase"], progress=float(event["fraction"]),
                                            eta_seconds=event.get("eta"), message=event["message"], token=token)  # fmt: skip
        elif kind == "completed":
            applied = store.complete(
                job_id,
                attempt,
                model_uri=event["model_uri"],
                artifacts=event["artifacts"],
                artifact_bytes={k: int(v) for k, v in (event.get("artifact_bytes") or {}).items()},
                message=event["message"],
                token=token,
            )
        elif kind == "failed":
            self._keep_log_tail(job_id, event.get("log_tail") or [])
            applied = store.fail(
                job_id, attempt, message=event["message"], cancelled=bool(event.get("cancelled")), token=token
            )
        else:
            logger.warning("worker events: unknown kind %r ignored", kind)
            return
        self.applied += 1
        if not applied and kind != "progress":
            logger.info(
                "job=%s ignored a %s event of a stale task (attempt %d)", job_id, kind, attempt, extra=about(job_id)
            )
        if self._on_change is not None:
            self._on_change(job_id)

    def _keep_log_tail(self, job_id: str, lines: list[str]) -> None:
        """A failed attempt's last log lines (the worker's host keeps its log) go into the job's log here."""
        if self._log_dir is None or not lines:
            return
        with open(self._log_dir / f"{job_id}.log", "a", encoding="utf-8") as f:
            for line in lines:
                f.write(line.rstrip("\n") + "\n")


def _ensure_group(client: redis.Redis) -> None:
    import redis

    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
