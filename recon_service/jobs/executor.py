"""The one interface between the service and whatever runs its jobs.

The store is the source of truth (what is queued, running, finished); an executor only makes the
queued jobs run somewhere, each attempt through :func:`recon_service.jobs.runner.run_job`, and
stops them on cancel, timeout and shutdown.
"""

from __future__ import annotations

from typing import Protocol


class Executor(Protocol):
    """Runs queued jobs: the six calls the service makes; a distributed engine implements the same ones (see README)."""

    def start(self) -> None:
        """Begin running queued jobs (called once the store has recovered after a restart)."""

    def submit(self, job_id: str) -> None:
        """A job was queued in the store: run it when a worker is free (FIFO)."""

    def cancel(self, job_id: str) -> None:
        """The job's cancel flag is set in the store: make sure its worker stops within 5 s."""

    def running(self) -> list[str]:
        """Ids of the jobs whose workers are running now."""

    def alive(self) -> bool:
        """Whether the executor can still start and supervise jobs (for ``/readyz``)."""

    def shutdown(self) -> None:
        """Stop every worker; their jobs are queued again and re-run at the next start."""
