"""``create_app(settings)``: the FastAPI app with its store, executor and callback sender.

Every error answers ``{"error": "..."}``: validation problems and malformed JSON are 400 (never
FastAPI's 422 ``detail``), unknown paths 404, wrong methods 405, oversize bodies 413, bugs 500.
Nothing here is global: tests and the testing kit build as many independent apps as they like.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from recon_service import __version__, logs
from recon_service.api.auth import BearerAuthMiddleware
from recon_service.api.deps import Service
from recon_service.api.errors import BodyLimitMiddleware, install_error_handlers
from recon_service.api.openapi import contract_openapi
from recon_service.api.routes import health, jobs, metrics, options, workers
from recon_service.jobs.executor import Executor
from recon_service.jobs.local import LocalProcessExecutor
from recon_service.jobs.messages import GIVE_UP_MESSAGE, MAX_ATTEMPTS
from recon_service.jobs.metrics import ServiceMetrics
from recon_service.jobs.outbox import CallbackDispatcher
from recon_service.jobs.retention import DiskUsage, RetentionSweeper
from recon_service.jobs.store import Store, open_store
from recon_service.jobs.uploads import UploadExpiry
from recon_service.settings import Settings
from recon_service.storage.clients import Storage

logger = logging.getLogger(__name__)

DESCRIPTION = """Turns a folder of photos into a textured GLB model. See
`shared/contract/reconstruction-service-interface.md`; every error body is `{"error": "..."}`."""


def create_app(settings: Settings, *, executor: Executor | None = None) -> FastAPI:
    """The service's ASGI app. Background work (workers, callbacks) starts with the app's lifespan.

    ``settings.service_token`` must be set (``auth.ensure_token`` generates one). ``executor``
    replaces the local worker processes (e.g. with a distributed engine).
    """
    if settings.service_token is None:
        raise ValueError("create_app needs settings.service_token; call recon_service.auth.ensure_token(settings) first")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.local_output_root is not None:
        settings.local_output_root.mkdir(parents=True, exist_ok=True)
    if not settings.photos_root.is_dir():
        logger.warning("RECON_PHOTOS_ROOT=%s does not exist; every submission will be refused until it does", settings.photos_root)
    store = open_store(settings)
    storage = Storage(settings)
    executor = executor or _executor(settings, store)
    service_metrics = ServiceMetrics(settings, store, executor)
    disk = DiskUsage(settings)
    service = Service(
        settings=settings,
        store=store,
        executor=executor,
        callbacks=CallbackDispatcher(settings, store, service_metrics.callbacks, storage) if settings.callback_url else None,
        disk=disk,
        unavailable=_pipeline_problem(settings, executor),
        storage=storage,
    )
    sweeper = RetentionSweeper(settings, store, disk, storage) if settings.retention_s is not None else None
    uploads = UploadExpiry(settings, store, storage)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lock = _lock_data_dir(settings.data_dir)
        # Local workers died with the last server: their jobs run again. Celery workers run on: their leases decide.
        requeued = store.recover(max_attempts=MAX_ATTEMPTS, give_up_message=GIVE_UP_MESSAGE) if settings.executor == "local" else []
        if requeued:
            logger.info("re-queued %d job(s) interrupted by the last shutdown: %s", len(requeued), ", ".join(requeued))
        logs.set_job_lookup(store.job_info)
        service.executor.start()
        if service.callbacks is not None:
            service.callbacks.start()
        if sweeper is not None:
            sweeper.start()
        uploads.start()
        logger.info(
            "recon-service %s ready: pipeline=%s%s max_workers=%d data_dir=%s callbacks=%s",
            __version__, settings.pipeline, " (SIMULATED, not a real reconstruction)" if settings.simulated else "",
            settings.max_workers, settings.data_dir, settings.callback_url or "off",
        )  # fmt: skip
        try:
            yield
        finally:
            await asyncio.to_thread(service.executor.shutdown)
            if service.callbacks is not None:
                await asyncio.to_thread(service.callbacks.stop)
            if sweeper is not None:
                await asyncio.to_thread(sweeper.stop)
            await asyncio.to_thread(uploads.stop)
            logs.set_job_lookup(None)
            os.close(lock)
            logger.info("recon-service stopped")

    app = FastAPI(
        title="recon-service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.metrics = service_metrics
    for routes in (jobs, workers, options, health, metrics):
        app.include_router(routes.router)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, token=settings.service_token.get_secret_value())  # outermost: first
    app.openapi = lambda: contract_openapi(app)  # type: ignore[method-assign]
    return app


def _executor(settings: Settings, store: Store) -> Executor:
    """Local worker processes (the embedded default) or Celery workers anywhere (RECON_EXECUTOR=celery)."""
    if settings.executor == "celery":
        from recon_service.jobs.celery_executor import CeleryExecutor

        return CeleryExecutor(settings, store)
    return LocalProcessExecutor(settings, store)


def _pipeline_problem(settings: Settings, executor: Executor) -> str | None:
    """Jobs run here (the embedded executor) in real mode: the reconstruction stack must be installed."""
    if settings.simulated or not isinstance(executor, LocalProcessExecutor):
        return None
    from pipelines.stack import stack_problem

    return stack_problem()


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir: two services on one job store would run jobs twice."""
    fd = os.open(data_dir / "service.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another recon-service already uses RECON_DATA_DIR={data_dir}; stop it or use another directory") from None
    return fd
