"""The client's errors: one class per way a call can fail, each carrying the service's ``error`` text."""

from __future__ import annotations

import httpx

from recon_service.contract import JobPublic


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
