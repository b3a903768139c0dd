"""``GET /metrics``: the service's metrics in Prometheus text format (see :mod:`recon_service.jobs.metrics`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from recon_service.jobs.metrics import ServiceMetrics

router = APIRouter()

TEXT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


@router.get("/metrics", response_class=Response, responses=TEXT_RESPONSE)
def get_metrics(request: Request) -> Response:
    """Service metrics in Prometheus text format (needs the bearer token like every other endpoint)."""
    metrics: ServiceMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
