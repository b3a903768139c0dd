"""Callback delivery: drains the store's outbox to the backend, in order, with retries.

One background thread runs an asyncio loop with one delivery task per job that has pending
callbacks, so a backend that rejects one job's callbacks never delays another job's. Within a
job, a callback is attempted only after the previous one was delivered or given up, so a later
status is never delivered before an earlier one. Delivery is at least once (the backend is
idempotent): a crash between sending and recording sends that callback again after a restart.

The retry policy is one tenacity object (:meth:`CallbackDispatcher.retry_policy`), by answer:

* network errors, timeouts, 408, 429 and 5xx: exponential backoff with jitter from
  ``RECON_CALLBACK_RETRY_INITIAL_S`` (1 s) doubling up to ``RECON_CALLBACK_RETRY_MAX_S`` (5 min);
* 401, 403, 404 and 409 to a *status* callback (a token being rotated, a route deployed late):
  retried too, more slowly (from :data:`SLOW_RETRY_INITIAL_S`, capped by the same maximum), with
  one error line per job saying what the backend answers and what to check;
* any other non-2xx answer, and any 4xx to a progress callback: not retried.

Either way a callback is given up ``RECON_CALLBACK_MAX_AGE_S`` (24 h) after it was queued. A
callback given up is not deleted: it stays in the store as a dead letter, counted in
``GET /jobs/{job_id}`` (``callbacks.dead``) and ``/metrics``, and
``POST /jobs/{job_id}/callbacks/redeliver`` queues the job's dead letters again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from recon_service.contract import CallbackBody
from recon_service.jobs.records import Callback
from recon_service.jobs.store import Store
from recon_service.logs import about
from recon_service.settings import Settings
from recon_service.storage.clients import Storage
from recon_service.storage.s3 import StorageError

if TYPE_CHECKING:
    from recon_service.jobs.metrics import CallbackCounters

logger = logging.getLogger(__name__)

POLL_S = 0.25
"""How often the outbox is checked for callbacks queued by worker processes (seconds)."""
MAX_PARALLEL_POSTS = 16


SLOW_RETRY_INITIAL_S = 30.0
"""First delay after a 401/403/404/409 to a status callback (seconds, at most RECON_CALLBACK_RETRY_MAX_S)."""
SLOW_RETRY_STATUSES = frozenset({401, 403, 404, 409})
"""Answers that usually mean the backend is being reconfigured, not that the callback is wrong."""


class CallbackError(Exception):
    """A failed delivery attempt: ``retry`` (network, 408, 429, 5xx), ``slow`` (401/403/404/409 to a
    status callback: retried slowly) or ``final`` (any other answer: given up at once)."""

    def __init__(self, message: str, *, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind != "final"


def answer_kind(status: int, callback_kind: str) -> str:
    """How to treat a non-2xx ``status`` answered to a ``status`` or ``progress`` callback."""
    if status in (408, 429) or status >= 500:
        return "retry"
    if status in SLOW_RETRY_STATUSES and callback_kind == "status":
        return "slow"
    return "final"


class CallbackDispatcher:
    """Delivers the outbox of ``store`` to ``settings.callback_url`` until stopped."""

    def __init__(self, settings: Settings, store: Store, counters: CallbackCounters | None = None, storage: Storage | None = None) -> None:
        if settings.callback_url is None or settings.callback_token is None:
            raise ValueError("CallbackDispatcher needs RECON_CALLBACK_URL and RECON_CALLBACK_TOKEN")
        self._settings = settings
        self._store = store
        self._counters = counters
        self._storage = storage
        self._base_url = settings.callback_url
        self._token = settings.callback_token.get_secret_value()
        self._thread = threading.Thread(target=self._run, name="callback-sender", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._wake_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._stopping = False

    def start(self) -> None:
        self._thread.start()
        self._started.wait(timeout=10)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        if self._loop is not None and self._wake_event is not None:
            self._loop.call_soon_threadsafe(self._wake_event.set)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop delivering; callbacks not yet delivered stay in the outbox for the next start."""
        self._stopping = True
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout=timeout)

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event, self._wake_event = asyncio.Event(), asyncio.Event()
        self._started.set()
        tasks: dict[str, asyncio.Task[None]] = {}
        limits = asyncio.Semaphore(MAX_PARALLEL_POSTS)
        headers = {"Authorization": f"Bearer {self._token}"}
        async with httpx.AsyncClient(timeout=self._settings.callback_timeout_s, headers=headers) as client:
            while not self._stop_event.is_set():
                try:
                    pending = await asyncio.to_thread(self._store.jobs_with_pending_callbacks)
                except Exception:
                    logger.exception("cannot read the callback outbox")
                    pending = []
                for job_id in pending:
                    if job_id not in tasks:
                        tasks[job_id] = asyncio.create_task(self._drain(client, limits, job_id), name=f"callbacks-{job_id[:8]}")
                for job_id in [j for j, t in tasks.items() if t.done()]:
                    task = tasks.pop(job_id)
                    if not task.cancelled() and task.exception() is not None:
                        logger.error("job=%s callback delivery crashed: %r", job_id, task.exception(), extra=about(job_id))
                self._wake_event.clear()
                wake = asyncio.create_task(self._wake_event.wait())
                stop = asyncio.create_task(self._stop_event.wait())
                await asyncio.wait({wake, stop}, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                stop.cancel()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _drain(self, client: httpx.AsyncClient, limits: asyncio.Semaphore, job_id: str) -> None:
        """Deliver this job's pending callbacks one after the other, oldest first."""
        job = await asyncio.to_thread(self._store.get, job_id)
        scenario: dict[str, Any] = (job.simulate if job is not None and self._settings.simulated else None) or {}
        copies = 2 if scenario.get("duplicate_callbacks") else 1
        delay = float(scenario.get("callback_delay_s") or 0.0)
        while not self._stopping:
            cb = await asyncio.to_thread(self._store.next_callback, job_id)
            if cb is None:
                return
            await self._deliver(client, limits, cb, copies=copies, delay=delay)

    async def _deliver(self, client: httpx.AsyncClient, limits: asyncio.Semaphore, cb: Callback, *, copies: int, delay: float) -> None:
        url = f"{self._base_url}/internal/reconstruction/{cb.kind}"
        body = await asyncio.to_thread(self._with_links, callback_body(cb))
        try:
            for _ in range(copies):
                if delay:
                    await self._sleep(delay)
                async for attempt in self.retry_policy(cb):
                    with attempt:
                        async with limits:
                            await self._post(client, url, body, cb.kind)
        except CallbackError as exc:
            if self._stopping:
                return  # still pending: delivered after the next start
            age = time.time() - cb.created_at
            if exc.retryable:
                logger.error("job=%s callback %s #%d given up after %.0f s (RECON_CALLBACK_MAX_AGE_S), kept as a dead letter "
                             "(POST /jobs/%s/callbacks/redeliver sends it again): %s", cb.job_id, cb.kind, cb.id, age, cb.job_id, exc,
                             extra=about(cb.job_id))  # fmt: skip
            else:
                logger.error("job=%s callback %s #%d rejected by the backend, not retried; kept as a dead letter: %s",
                             cb.job_id, cb.kind, cb.id, exc, extra=about(cb.job_id))  # fmt: skip
            await asyncio.to_thread(self._store.callback_finished, cb.id, delivered=False, error=str(exc))
            if self._counters is not None:
                self._counters.gave_up(cb.kind, rejected=not exc.retryable)
            return
        await asyncio.to_thread(self._store.callback_finished, cb.id, delivered=True)
        if self._counters is not None:
            self._counters.delivered(cb.kind)
        logger.debug("job=%s callback %s #%d delivered: %s", cb.job_id, cb.kind, cb.id, cb.body.get("status"), extra=about(cb.job_id))

    def _with_links(self, body: dict[str, Any]) -> dict[str, Any]:
        """A completed job's model on S3: add fresh pre-signed download links (additive fields)."""
        uri = body.get("model_uri")
        if self._storage is None or not (isinstance(uri, str) and uri.startswith("s3://")):
            return body
        job = self._store.get(body["job_id"])
        try:
            model_url, artifact_urls = self._storage.outputs.links(uri, job.artifacts if job is not None else {})
        except StorageError as exc:  # the body stays valid without them; the backend can GET the job later
            logger.warning("job=%s callback sent without download links: %s", body["job_id"], exc.message, extra=about(body["job_id"]))
            return body
        return {**body, "model_url": model_url, "artifact_urls": artifact_urls}

    def retry_policy(self, cb: Callback) -> AsyncRetrying:
        """Backoff by answer (see the module docstring); stop at the callback's maximum age or shutdown."""
        s = self._settings
        fast = wait_exponential_jitter(initial=s.callback_retry_initial_s, max=s.callback_retry_max_s, jitter=s.callback_retry_initial_s)
        slow_initial = min(SLOW_RETRY_INITIAL_S, s.callback_retry_max_s)
        slow = wait_exponential_jitter(initial=slow_initial, max=s.callback_retry_max_s, jitter=slow_initial / 10)
        warned: dict[str, bool] = {"slow": False}

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return (slow if isinstance(error, CallbackError) and error.kind == "slow" else fast)(state)

        def stop(state: RetryCallState) -> bool:
            return self._stopping or time.time() - cb.created_at >= s.callback_max_age_s

        async def record(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, CallbackError) and error.kind == "slow" and not warned["slow"]:
                warned["slow"] = True
                logger.error(
                    "job=%s the backend answers HTTP %s to the %s callback; retrying every %g to %g s for up to %g s "
                    "(RECON_CALLBACK_MAX_AGE_S); check that RECON_CALLBACK_URL points at the backend and RECON_CALLBACK_TOKEN is its token",
                    cb.job_id, error.status, cb.body.get("status"), slow_initial, s.callback_retry_max_s, s.callback_max_age_s,
                    extra=about(cb.job_id),
                )  # fmt: skip
            else:
                logger.warning("job=%s callback %s #%d failed (try %d), retrying: %s", cb.job_id, cb.kind, cb.id, state.attempt_number, error,
                               extra=about(cb.job_id))  # fmt: skip
            await asyncio.to_thread(self._store.callback_tried, cb.id, str(error))
            if self._counters is not None:
                self._counters.retried(cb.kind)

        return AsyncRetrying(
            wait=wait,
            stop=stop,
            retry=retry_if_exception(lambda e: isinstance(e, CallbackError) and e.retryable),
            before_sleep=record,
            sleep=self._sleep,
            reraise=True,
        )

    async def _post(self, client: httpx.AsyncClient, url: str, body: dict[str, Any], kind: str) -> None:
        try:
            response = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise CallbackError(f"{type(exc).__name__}: {exc} ({url})", kind="retry") from None
        if 200 <= response.status_code < 300:
            return
        raise CallbackError(
            f"HTTP {response.status_code} from {url}: {response.text[:200]}", kind=answer_kind(response.status_code, kind), status=response.status_code
        )

    async def _sleep(self, seconds: float) -> None:
        """A sleep that ends early when the dispatcher stops."""
        assert self._stop_event is not None
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)
        except TimeoutError:
            pass


def callback_body(cb: Callback) -> dict[str, Any]:
    """The contract's body (its five fields; a completed job's also lists its files and sizes) for the job state an outbox row recorded."""
    body = CallbackBody.model_validate(cb.body).model_dump(mode="json", exclude={"model_url", "artifact_urls"})
    return {k: v for k, v in body.items() if v is not None or k not in ("artifacts", "artifact_bytes")}
