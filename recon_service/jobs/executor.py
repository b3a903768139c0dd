"""The one interface between the service and whatever runs its jobs.

The store is the source of truth (what is queued, running, finished); an executor only makes the
queued jobs run somewhere, each attempt through :func:`recon_service.jobs.runner.run_job`, and
stops them on cancel, timeout and shutdown.
"""

from __future__ import annotations

from typing import Any, Protocol


class Executor(Protocol):
    """Runs queued jobs: the calls the service makes; a distributed engine implements the same ones (see README)."""

    def start(self) -> None:
        """Begin running queued jobs (called once the store has recovered after a restart)."""

    def submit(self, job_id: str) -> None:
        """A job was queued in the store: run it when a worker is free (FIFO)."""

    def cancel(self, job_id: str) -> None:
        """The job's cancel flag is set in the store: make sure its worker stops within 5 s."""

    def running(self) -> list[str]:
        """Ids of the jobs whose workers are running now."""

    def problem(self) -> str | None:
        """Why the executor cannot start or supervise jobs now, or ``None`` (for ``/readyz``)."""

    def workers(self) -> list[dict[str, Any]]:
        """Worker slots online: ``{worker, queues, job_id, attempt, running_s}`` each (for ``GET /workers``)."""

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting for a worker, per queue (for ``/metrics``)."""

    def shutdown(self) -> None:
        """Stop every worker; their jobs are queued again and re-run at the next start."""
