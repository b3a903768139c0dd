"""How the client retries: one policy object (tenacity) for the sync and the async client."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from recon_service.kit.errors import ServerError, ServiceUnreachable

logger = logging.getLogger("recon_service.kit.client")


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
