"""``GET /options``: presets and every pipeline option, generated from ``pipelines.options``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from recon_service.api.deps import AUTH_ERRORS

router = APIRouter()


@router.get("/options", responses=AUTH_ERRORS)
def get_options() -> dict[str, Any]:
    """Presets and every option (type, default, range, help), to build a settings screen."""
    from pipelines.options import options_schema

    return options_schema()
