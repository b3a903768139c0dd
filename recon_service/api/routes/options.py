"""``GET /options``: presets and every pipeline option, generated from ``pipelines.options``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from recon_service.api.deps import AUTH_ERRORS, ServiceDep

router = APIRouter()


@router.get("/options", responses=AUTH_ERRORS)
def get_options(service: ServiceDep) -> dict[str, Any]:
    """Presets and every option (type, default, range, help) with the choices this service can run, to build a settings screen."""
    from pipelines.options import options_schema
    from pipelines.stack import cuda_available

    return options_schema(cuda=not service.settings.simulated and cuda_available())
