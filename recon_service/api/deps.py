"""What the routes work with, as typed FastAPI dependencies (``ServiceDep``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from recon_service.contract import ErrorBody
from recon_service.jobs.executor import Executor
from recon_service.jobs.outbox import CallbackDispatcher
from recon_service.jobs.retention import DiskUsage
from recon_service.jobs.store import Store
from recon_service.settings import Settings
from recon_service.storage.clients import Storage


@dataclass
class Service:
    """What the routes work with; built by ``create_app`` and kept in ``app.state.service``."""

    settings: Settings
    store: Store
    executor: Executor
    callbacks: CallbackDispatcher | None
    disk: DiskUsage | None = None
    unavailable: str | None = None
    """Why this service cannot run jobs at all (the real pipeline without its packages), else ``None``."""
    storage: Storage | None = None
    """Outputs and the object store (made on first use)."""


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


_E: dict[str, Any] = {"model": ErrorBody}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {**_E, "description": "Missing or wrong bearer token"}}
"""The 401 every authenticated route can answer (for ``responses=``)."""
ERROR: dict[str, Any] = _E
"""``{"model": ErrorBody}``: a route's error response body."""
