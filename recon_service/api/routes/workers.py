"""``GET /workers`` (admin): the worker slots online now, the job each runs, and the queues' depth."""

from __future__ import annotations

from fastapi import APIRouter

from recon_service.api.deps import AUTH_ERRORS, ServiceDep
from recon_service.contract import WorkerInfo, WorkerList

router = APIRouter()


@router.get("/workers", response_model=WorkerList, responses=AUTH_ERRORS)
def list_workers(service: ServiceDep) -> WorkerList:
    """Worker slots online (local processes, or Celery worker processes on any host) and jobs waiting per queue."""
    return WorkerList(
        workers=[WorkerInfo(**w) for w in service.executor.workers()], queue_depths=service.executor.queue_depths()
    )
