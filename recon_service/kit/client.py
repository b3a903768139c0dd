"""Python client of recon-service for the backend (sync and async), and a callback receiver.

``ReconClient`` / ``AsyncReconClient`` speak the contract of
``shared/contract/reconstruction-service-interface.md`` over httpx and return the service's own
response models (``recon_service.schemas``). A non-2xx answer raises :class:`ReconServiceError`
(a subclass per status) carrying the service's ``{"error": "..."}`` text. Every call is
idempotent (``POST /jobs`` by ``job_id``), so connection errors and 5xx answers are retried by
one :class:`RetryPolicy`.

:class:`CallbackReceiver` (from ``recon_service.callback_receiver``) is the backend's side of the
callbacks: it checks the bearer token and validates a status or progress callback body.

Import-light on purpose (httpx, tenacity, pydantic): nothing of the pipeline or the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from recon_service import __version__
from recon_service.callback_receiver import CallbackReceiver, CallbackRejected, ProgressCallbackBody
from recon_service.schemas import (
    CallbackBody,
    ContractStatus,
    Health,
    JobAccepted,
    JobList,
    JobPublic,
    OptionsCatalog,
    Ready,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
"""Per-request timeout (connect, read, write; seconds)."""
TERMINAL_STATUSES: frozenset[ContractStatus] = frozenset({ContractStatus.COMPLETED, ContractStatus.FAILED})
"""A job in one of these statuses never changes again (a cancelled job is ``failed``, ``cancelled: true``)."""

__all__ = [  # the models are re-exported so that a backend imports everything from here
    "AsyncReconClient",
    "CallbackBody",
    "CallbackReceiver",
    "CallbackRejected",
    "Conflict",
    "ContractStatus",
    "Health",
    "InvalidRequest",
    "JobAccepted",
    "JobList",
    "JobNotFound",
    "JobPublic",
    "OptionsCatalog",
    "PayloadTooLarge",
    "ProgressCallbackBody",
    "Ready",
    "ReconClient",
    "ReconClientError",
    "ReconServiceError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnreachable",
    "Unauthorized",
    "WaitTimeout",
]


# -- errors --------------------------------------------------------------------------------------
class ReconClientError(Exception):
    """Anything that kept a client call from getting the answer it asked for."""


class ServiceUnreachable(ReconClientError):
    """No HTTP answer (connection refused or reset, timeout), after the retries."""


class WaitTimeout(ReconClientError, TimeoutError):
    """``wait()`` gave up; ``job`` is the last status seen (``None`` if none was read)."""

    def __init__(self, message: str, job: JobPublic | None) -> None:
        super().__init__(message)
        self.job = job


class ReconServiceError(ReconClientError):
    """A non-2xx answer: ``status_code`` and the service's ``error`` text (what to change)."""

    def __init__(self, status_code: int, error: str) -> None:
        super().__init__(f"HTTP {status_code}: {error}")
        self.status_code = status_code
        self.error = error


class InvalidRequest(ReconServiceError):
    """400: a field is invalid (the message names it); fix the request, do not retry it."""


class Unauthorized(ReconServiceError):
    """401: missing or wrong token; the client's token must be the service's RECON_SERVICE_TOKEN."""


class JobNotFound(ReconServiceError):
    """404: no job with that id (or no such endpoint)."""


class Conflict(ReconServiceError):
    """409: ``job_id`` reused with a different payload, or a cancel of a finished job."""


class PayloadTooLarge(ReconServiceError):
    """413: the request body exceeds the service's RECON_MAX_BODY_BYTES."""


class ServerError(ReconServiceError):
    """5xx: the service (or a proxy in front of it) failed; retried by the :class:`RetryPolicy`."""


_ERRORS_BY_STATUS: dict[int, type[ReconServiceError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: JobNotFound,
    409: Conflict,
    413: PayloadTooLarge,
}


def error_from_response(response: httpx.Response) -> ReconServiceError:
    """The exception for a non-2xx answer, with the ``error`` text of its body (or the raw body)."""
    error: str | None = None
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            error = body["error"]
    except (ValueError, UnicodeDecodeError):
        pass
    if error is None:  # not the service's shape: e.g. a proxy's HTML error page
        error = response.text.strip()[:500] or response.reason_phrase or "no error text"
    status = response.status_code
    cls = ServerError if status >= 500 else _ERRORS_BY_STATUS.get(status, ReconServiceError)
    return cls(status, error)


# -- retries ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries a call: after connection errors and 5xx answers, with backoff.

    Safe because every call of the API is idempotent: ``POST /jobs`` by ``job_id`` (the same
    payload again answers 202 and changes nothing), ``GET`` trivially, and a repeated cancel
    answers 202 or 200 again (409 only if the job completed in between). Delays are exponential from ``initial_s`` up to ``max_s``
    seconds, plus up to ``jitter_s`` of random jitter.
    """

    attempts: int = 4
    """Tries in all, the first included (1: never retry)."""
    initial_s: float = 0.25
    max_s: float = 4.0
    jitter_s: float = 0.25

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, ServiceUnreachable | ServerError)

    def _kwargs(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.attempts),
            "wait": wait_exponential(multiplier=self.initial_s, max=self.max_s) + wait_random(0, self.jitter_s),
            "retry": retry_if_exception(self.retryable),
            "before_sleep": _log_retry,
            "reraise": True,
        }

    def retrying(self) -> Retrying:
        return Retrying(**self._kwargs())

    def async_retrying(self) -> AsyncRetrying:
        return AsyncRetrying(**self._kwargs())


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    logger.warning("recon-service call failed (try %d), retrying: %s", state.attempt_number, error)


# -- calls (shared by the sync and async clients) --------------------------------------------------
@dataclass(frozen=True)
class _Call:
    """One API call: the request, the statuses that count as an answer, and the model to parse."""

    method: str
    path: str
    model: type[BaseModel]
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    ok: tuple[int, ...] = (200,)


def _submit_call(
    job_id: str | uuid.UUID,
    dataset_name: str,
    photo_count: int,
    photos_dir: str | os.PathLike[str],
    notes: str | None,
    options: Mapping[str, Any] | None,
    simulate: Mapping[str, Any] | None,
) -> _Call:
    body: dict[str, Any] = {
        "job_id": str(job_id),
        "dataset_name": dataset_name,
        "photo_count": photo_count,
        "photos_dir": os.fspath(photos_dir),
    }
    if notes is not None:
        body["notes"] = notes
    if options is not None:
        body["options"] = dict(options)
    if simulate is not None:
        body["simulate"] = dict(simulate)
    return _Call("POST", "/jobs", JobAccepted, json=body, ok=(202,))


def _quote(segment: str) -> str:
    """A job id as one path segment (an id with ``/`` or ``?`` then gets a clean 404)."""
    return quote(segment, safe="")


def _status_call(job_id: str | uuid.UUID) -> _Call:
    return _Call("GET", "/jobs/" + _quote(str(job_id)), JobPublic)


def _cancel_call(job_id: str | uuid.UUID) -> _Call:
    return _Call("POST", "/jobs/" + _quote(str(job_id)) + "/cancel", JobPublic, ok=(200, 202))


def _list_call(limit: int, offset: int, status: str | None) -> _Call:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status is not None:
        params["status"] = str(status)
    return _Call("GET", "/jobs", JobList, params=params)


_OPTIONS = _Call("GET", "/options", OptionsCatalog)
_HEALTH = _Call("GET", "/healthz", Health)
_READY = _Call("GET", "/readyz", Ready, ok=(200, 503))  # 503 carries the same body plus "error"


def _parse(call: _Call, response: httpx.Response) -> Any:
    if response.status_code not in call.ok:
        raise error_from_response(response)
    try:
        return call.model.model_validate_json(response.content)
    except ValidationError as exc:
        if response.status_code >= 500:
            raise error_from_response(response) from None
        raise ReconClientError(f"{call.method} {call.path}: unexpected response body ({exc.error_count()} problems): {exc}") from None


def _unreachable(base_url: str, call: _Call, exc: httpx.HTTPError) -> ReconClientError:
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return ServiceUnreachable(f"cannot reach recon-service at {base_url} ({call.method} {call.path}): {type(exc).__name__}: {exc}")
    return ReconClientError(f"{call.method} {call.path} to {base_url} failed: {type(exc).__name__}: {exc}")


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": f"recon-service-client/{__version__}"}


def _policy(retries: RetryPolicy | int) -> RetryPolicy:
    return retries if isinstance(retries, RetryPolicy) else RetryPolicy(attempts=1 + retries)


def _timeout_message(job_id: str | uuid.UUID, timeout: float, job: JobPublic | None) -> str:
    seen = f"last seen {job.status.value} at {job.progress:.0%}: {job.message}" if job else "no status read"
    return f"job {job_id} did not finish within {timeout:g} s ({seen})"


# -- clients ---------------------------------------------------------------------------------------
class ReconClient:
    """Blocking client: ``with ReconClient(url, token) as c: c.submit(...); c.wait(job_id, 600)``.

    ``retries``: a :class:`RetryPolicy`, or the number of retries after the first try (0: none).
    ``timeout``: seconds per HTTP request.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S, retries: RetryPolicy | int = RetryPolicy()) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_policy = _policy(retries)
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(token), timeout=timeout)

    def submit(
        self,
        job_id: str | uuid.UUID,
        dataset_name: str,
        photo_count: int,
        photos_dir: str | os.PathLike[str],
        notes: str | None = None,
        options: Mapping[str, Any] | None = None,
        simulate: Mapping[str, Any] | None = None,
    ) -> JobAccepted:
        """``POST /jobs``: queue a reconstruction of the ``photo_count`` photos in ``photos_dir`` (absolute path).

        ``options``: ``{"preset": ..., "<stage>.<field>": value}`` (see :meth:`options`);
        ``simulate``: a scenario, honoured only by a service in simulate mode.
        """
        return self._run(_submit_call(job_id, dataset_name, photo_count, photos_dir, notes, options, simulate))

    def status(self, job_id: str | uuid.UUID) -> JobPublic:
        """``GET /jobs/{job_id}``."""
        return self._run(_status_call(job_id))

    def cancel(self, job_id: str | uuid.UUID) -> JobPublic:
        """``POST /jobs/{job_id}/cancel``; the job ends ``failed`` with ``cancelled: true`` (within 5 s if running).

        Raises :class:`Conflict` if it had already finished.
        """
        return self._run(_cancel_call(job_id))

    def wait(self, job_id: str | uuid.UUID, timeout: float, poll_interval: float = 0.5) -> JobPublic:
        """Poll until the job is ``completed`` or ``failed`` and return that status; :class:`WaitTimeout` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if job.status in TERMINAL_STATUSES:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(_timeout_message(job_id, timeout, job), job)
            time.sleep(min(poll_interval, left))

    def jobs(self, limit: int = 20, offset: int = 0, status: ContractStatus | str | None = None) -> JobList:
        """``GET /jobs``: recent jobs, newest first."""
        return self._run(_list_call(limit, offset, status))

    def options(self) -> OptionsCatalog:
        """``GET /options``: presets and every option with its type, default and range."""
        return self._run(_OPTIONS)

    def health(self) -> Health:
        """``GET /healthz`` (no token needed): the process is up; says whether the pipeline is simulated."""
        return self._run(_HEALTH)

    def ready(self) -> Ready:
        """``GET /readyz``: returns the readiness report whether ready (200) or not (503)."""
        return self._run(_READY)

    def _run(self, call: _Call) -> Any:
        for attempt in self.retry_policy.retrying():
            with attempt:
                try:
                    response = self._http.request(call.method, call.path, json=call.json, params=call.params)
                except httpx.HTTPError as exc:
                    raise _unreachable(self.base_url, call, exc) from exc
                return _parse(call, response)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ReconClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncReconClient:
    """The asyncio twin of :class:`ReconClient` (same methods, awaited)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S, retries: RetryPolicy | int = RetryPolicy()) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_policy = _policy(retries)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(token), timeout=timeout)

    async def submit(
        self,
        job_id: str | uuid.UUID,
        dataset_name: str,
        photo_count: int,
        photos_dir: str | os.PathLike[str],
        notes: str | None = None,
        options: Mapping[str, Any] | None = None,
        simulate: Mapping[str, Any] | None = None,
    ) -> JobAccepted:
        """``POST /jobs``; see :meth:`ReconClient.submit`."""
        return await self._run(_submit_call(job_id, dataset_name, photo_count, photos_dir, notes, options, simulate))

    async def status(self, job_id: str | uuid.UUID) -> JobPublic:
        return await self._run(_status_call(job_id))

    async def cancel(self, job_id: str | uuid.UUID) -> JobPublic:
        return await self._run(_cancel_call(job_id))

    async def wait(self, job_id: str | uuid.UUID, timeout: float, poll_interval: float = 0.5) -> JobPublic:
        """Poll until ``completed`` or ``failed``; :class:`WaitTimeout` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.status(job_id)
            if job.status in TERMINAL_STATUSES:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(_timeout_message(job_id, timeout, job), job)
            await asyncio.sleep(min(poll_interval, left))

    async def jobs(self, limit: int = 20, offset: int = 0, status: ContractStatus | str | None = None) -> JobList:
        return await self._run(_list_call(limit, offset, status))

    async def options(self) -> OptionsCatalog:
        return await self._run(_OPTIONS)

    async def health(self) -> Health:
        return await self._run(_HEALTH)

    async def ready(self) -> Ready:
        return await self._run(_READY)

    async def _run(self, call: _Call) -> Any:
        async for attempt in self.retry_policy.async_retrying():
            with attempt:
                try:
                    response = await self._http.request(call.method, call.path, json=call.json, params=call.params)
                except httpx.HTTPError as exc:
                    raise _unreachable(self.base_url, call, exc) from exc
                return _parse(call, response)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncReconClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
