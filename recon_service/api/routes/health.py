"""``GET /healthz`` (the process is up) and ``GET /readyz`` (it can take jobs); neither needs a token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from recon_service import __version__
from recon_service.api.deps import ServiceDep
from recon_service.contract import ErrorBody, Health, Ready

router = APIRouter()


@router.get("/healthz", response_model=Health)
def healthz(service: ServiceDep) -> Health:
    """The process is up. No authentication."""
    s = service.settings
    return Health(version=__version__, pipeline=s.pipeline, simulated=s.simulated)


@router.get("/readyz", response_model=Ready, responses={503: {"model": ErrorBody, "description": "Not ready; `error` says why"}})
def readyz(service: ServiceDep) -> Any:
    """Ready to take jobs: the store answers, the scheduler and callback sender run, output is writable."""
    s = service.settings
    checks: dict[str, str] = {}
    counts: dict[str, int] = {}
    pending = 0
    try:
        service.store.ping()
        counts = service.store.count_by_state()
        pending = service.store.pending_callback_count()
        checks["store"] = "ok"
    except Exception as exc:  # reported, not raised: this endpoint's job is to say what is wrong
        checks["store"] = f"unavailable: {exc}"
    checks["workers"] = service.executor.problem() or "ok"
    checks["pipeline"] = service.unavailable or "ok"
    if service.callbacks is not None:
        checks["callbacks"] = "ok" if service.callbacks.alive() else "the callback sender is not running"
    checks["model_output_root"] = (service.storage.problem() if service.storage is not None else None) or "ok"
    ready = all(v == "ok" for v in checks.values())
    body = Ready(
        ready=ready, pipeline=s.pipeline, simulated=s.simulated, checks=checks, queued=counts.get("queued", 0),
        running=counts.get("running", 0), max_workers=s.max_workers, pending_callbacks=pending,
    ).model_dump()  # fmt: skip
    if ready:
        return body
    problems = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    return JSONResponse({"error": f"not ready: {problems}", **body}, status_code=503)
