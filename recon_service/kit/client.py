"""Python client of recon-service for the backend (sync and async).

``ReconClient`` / ``AsyncReconClient`` speak the contract of
``shared/contract/reconstruction-service-interface.md`` over httpx and return the contract's
response models (``recon_service.contract``). A non-2xx answer raises a
:class:`~recon_service.kit.errors.ReconServiceError` (a subclass per status) carrying the service's
``{"error": "..."}`` text. Every call is idempotent (``POST /jobs`` by ``job_id``), so connection
errors and 5xx answers are retried by one :class:`~recon_service.kit.retry.RetryPolicy`.

:class:`CallbackReceiver` (``recon_service.kit.receiver``) is the backend's side of the callbacks:
it checks the bearer token and validates a status or progress callback body.

Import-light on purpose (httpx, tenacity, pydantic): nothing of the pipeline or the server.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from recon_service.contract import (
    CallbackBody,
    ContractStatus,
    Health,
    JobAccepted,
    JobList,
    JobPublic,
    OptionsCatalog,
    Ready,
    UploadUrl,
)
from recon_service.kit import calls
from recon_service.kit.errors import (
    Conflict,
    InvalidRequest,
    JobNotFound,
    PayloadTooLarge,
    ReconClientError,
    ReconServiceError,
    ServerError,
    ServiceUnreachable,
    Unauthorized,
    WaitTimeout,
)
from recon_service.kit.receiver import CallbackReceiver, CallbackRejected, ProgressCallbackBody
from recon_service.kit.retry import RetryPolicy

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


class ReconClient:
    """Blocking client: ``with ReconClient(url, token) as c: c.submit(...); c.wait(job_id, 600)``.

    ``retries``: a :class:`RetryPolicy`, or the number of retries after the first try (0: none).
    ``timeout``: seconds per HTTP request.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S, retries: RetryPolicy | int = RetryPolicy()) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_policy = calls.policy(retries)
        self._http = httpx.Client(base_url=self.base_url, headers=calls.headers(token), timeout=timeout)

    def submit(
        self,
        job_id: str | uuid.UUID,
        dataset_name: str,
        photo_count: int,
        photos_dir: str | os.PathLike[str],
        notes: str | None = None,
        options: Mapping[str, Any] | None = None,
        simulate: Mapping[str, Any] | None = None,
        real_size_m: float | None = None,
    ) -> JobAccepted:
        """``POST /jobs``: queue a reconstruction of the ``photo_count`` photos in ``photos_dir`` (absolute path).

        ``options``: ``{"preset": ..., "<stage>.<field>": value}`` (see :meth:`options`);
        ``simulate``: a scenario, honoured only by a service in simulate mode; ``real_size_m``: the
        object's longest side in metres, when the app knows it (the model is scaled to it).
        """
        return self._run(calls.submit_call(job_id, dataset_name, photo_count, photos_dir, notes, options, simulate, real_size_m))

    def submit_with_upload(
        self,
        job_id: str | uuid.UUID,
        dataset_name: str,
        files: Sequence[str | os.PathLike[str] | bytes],
        notes: str | None = None,
        options: Mapping[str, Any] | None = None,
        simulate: Mapping[str, Any] | None = None,
        real_size_m: float | None = None,
    ) -> JobPublic:
        """Submit with ``upload: true``, PUT each file (a path or bytes) to its pre-signed URL, commit; the queued job.

        Safe to call again with the same ``job_id`` after a failure: the submission is idempotent,
        the URLs are fresh, the PUTs overwrite and the commit is idempotent.
        """
        accepted = self._run(calls.submit_call(job_id, dataset_name, len(files), None, notes, options, simulate, real_size_m))
        if accepted.upload is not None:
            with httpx.Client(timeout=self._http.timeout) as plain:  # no bearer token: the URL carries its own signature
                for url, data in calls.upload_plan(accepted, files):
                    self._put(plain, url, data)
        return self._run(calls.commit_call(job_id))

    def _put(self, plain: httpx.Client, url: UploadUrl, data: bytes) -> None:
        for attempt in self.retry_policy.retrying():
            with attempt:
                try:
                    response = plain.request(url.method, url.url, content=data, headers=url.headers)
                except httpx.HTTPError as exc:
                    raise ServiceUnreachable(f"cannot reach the object store to upload {url.name}: {type(exc).__name__}: {exc}") from exc
                if response.status_code >= 300:
                    raise calls.put_failed(url, response)

    def commit(self, job_id: str | uuid.UUID) -> JobPublic:
        """``POST /jobs/{job_id}/commit``: the uploaded photos are checked and the job queued (idempotent)."""
        return self._run(calls.commit_call(job_id))

    def status(self, job_id: str | uuid.UUID) -> JobPublic:
        """``GET /jobs/{job_id}``."""
        return self._run(calls.status_call(job_id))

    def cancel(self, job_id: str | uuid.UUID) -> JobPublic:
        """``POST /jobs/{job_id}/cancel``; the job ends ``failed`` with ``cancelled: true`` (within 5 s if running).

        Raises :class:`Conflict` if it had already finished.
        """
        return self._run(calls.cancel_call(job_id))

    def wait(self, job_id: str | uuid.UUID, timeout: float, poll_interval: float = 0.5) -> JobPublic:
        """Poll until the job is ``completed`` or ``failed`` and return that status; :class:`WaitTimeout` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if job.status in TERMINAL_STATUSES:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(calls.timeout_message(job_id, timeout, job), job)
            time.sleep(min(poll_interval, left))

    def jobs(self, limit: int = 20, offset: int = 0, status: ContractStatus | str | None = None) -> JobList:
        """``GET /jobs``: recent jobs, newest first."""
        return self._run(calls.list_call(limit, offset, status))

    def options(self) -> OptionsCatalog:
        """``GET /options``: presets and every option with its type, default and range."""
        return self._run(calls.OPTIONS)

    def health(self) -> Health:
        """``GET /healthz`` (no token needed): the process is up; says whether the pipeline is simulated."""
        return self._run(calls.HEALTH)

    def ready(self) -> Ready:
        """``GET /readyz``: returns the readiness report whether ready (200) or not (503)."""
        return self._run(calls.READY)

    def _run(self, call: calls.Call) -> Any:
        for attempt in self.retry_policy.retrying():
            with attempt:
                try:
                    response = self._http.request(call.method, call.path, json=call.json, params=call.params)
                except httpx.HTTPError as exc:
                    raise calls.unreachable(self.base_url, call, exc) from exc
                return calls.parse(call, response)
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
        self.retry_policy = calls.policy(retries)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=calls.headers(token), timeout=timeout)

    async def submit(
        self,
        job_id: str | uuid.UUID,
        dataset_name: str,
        photo_count: int,
        photos_dir: str | os.PathLike[str],
        notes: str | None = None,
        options: Mapping[str, Any] | None = None,
        simulate: Mapping[str, Any] | None = None,
        real_size_m: float | None = None,
    ) -> JobAccepted:
        """``POST /jobs``; see :meth:`ReconClient.submit`."""
        return await self._run(calls.submit_call(job_id, dataset_name, photo_count, photos_dir, notes, options, simulate, real_size_m))

    async def submit_with_upload(
        self,
        job_id: str | uuid.UUID,
        dataset_name: str,
        files: Sequence[str | os.PathLike[str] | bytes],
        notes: str | None = None,
        options: Mapping[str, Any] | None = None,
        simulate: Mapping[str, Any] | None = None,
        real_size_m: float | None = None,
    ) -> JobPublic:
        """See :meth:`ReconClient.submit_with_upload`."""
        accepted = await self._run(calls.submit_call(job_id, dataset_name, len(files), None, notes, options, simulate, real_size_m))
        if accepted.upload is not None:
            async with httpx.AsyncClient(timeout=self._http.timeout) as plain:
                for url, data in calls.upload_plan(accepted, files):
                    await self._put(plain, url, data)
        return await self._run(calls.commit_call(job_id))

    async def _put(self, plain: httpx.AsyncClient, url: UploadUrl, data: bytes) -> None:
        async for attempt in self.retry_policy.async_retrying():
            with attempt:
                try:
                    response = await plain.request(url.method, url.url, content=data, headers=url.headers)
                except httpx.HTTPError as exc:
                    raise ServiceUnreachable(f"cannot reach the object store to upload {url.name}: {type(exc).__name__}: {exc}") from exc
                if response.status_code >= 300:
                    raise calls.put_failed(url, response)

    async def commit(self, job_id: str | uuid.UUID) -> JobPublic:
        return await self._run(calls.commit_call(job_id))

    async def status(self, job_id: str | uuid.UUID) -> JobPublic:
        return await self._run(calls.status_call(job_id))

    async def cancel(self, job_id: str | uuid.UUID) -> JobPublic:
        return await self._run(calls.cancel_call(job_id))

    async def wait(self, job_id: str | uuid.UUID, timeout: float, poll_interval: float = 0.5) -> JobPublic:
        """Poll until ``completed`` or ``failed``; :class:`WaitTimeout` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.status(job_id)
            if job.status in TERMINAL_STATUSES:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(calls.timeout_message(job_id, timeout, job), job)
            await asyncio.sleep(min(poll_interval, left))

    async def jobs(self, limit: int = 20, offset: int = 0, status: ContractStatus | str | None = None) -> JobList:
        return await self._run(calls.list_call(limit, offset, status))

    async def options(self) -> OptionsCatalog:
        return await self._run(calls.OPTIONS)

    async def health(self) -> Health:
        return await self._run(calls.HEALTH)

    async def ready(self) -> Ready:
        return await self._run(calls.READY)

    async def _run(self, call: calls.Call) -> Any:
        async for attempt in self.retry_policy.async_retrying():
            with attempt:
                try:
                    response = await self._http.request(call.method, call.path, json=call.json, params=call.params)
                except httpx.HTTPError as exc:
                    raise calls.unreachable(self.base_url, call, exc) from exc
                return calls.parse(call, response)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncReconClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
