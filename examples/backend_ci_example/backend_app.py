"""A minimal stand-in for the iOS backend: submits uploads to recon-service and takes its callbacks.

Only what a real backend needs from this package: ``ReconClient`` to submit, ``CallbackReceiver``
(as a FastAPI dependency) to authenticate and validate callbacks. Handlers are idempotent:
delivery is at least once, so the same callback may arrive twice.

(No ``from __future__ import annotations`` here: FastAPI must see the dependencies defined inside
``create_app`` when it reads the route signatures.)
"""

import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from recon_service.kit.client import (
    CallbackBody,
    CallbackReceiver,
    CallbackRejected,
    ProgressCallbackBody,
    ReconClient,
    ReconServiceError,
)


class Upload(BaseModel):
    dataset_name: str
    photo_count: int
    photos_dir: str


def create_app(recon: ReconClient, callback_token: str) -> FastAPI:
    app = FastAPI()
    receiver = CallbackReceiver(callback_token)
    jobs: dict[str, dict[str, Any]] = {}

    async def status_callback(request: Request) -> CallbackBody:
        try:
            return receiver.receive("status", request.headers, await request.body())  # type: ignore[return-value]
        except CallbackRejected as exc:
            raise HTTPException(exc.status_code, exc.error) from None

    async def progress_callback(request: Request) -> ProgressCallbackBody:
        try:
            return receiver.receive("progress", request.headers, await request.body())  # type: ignore[return-value]
        except CallbackRejected as exc:
            raise HTTPException(exc.status_code, exc.error) from None

    @app.post("/uploads")
    def upload(body: Upload) -> dict[str, str]:
        job_id = str(uuid.uuid4())
        jobs[job_id] = {"status": "uploading", "progress": 0.0, "model_uri": None, "message": None}
        try:
            recon.submit(job_id, body.dataset_name, body.photo_count, body.photos_dir)
        except ReconServiceError as exc:  # the contract: a refused submission fails the upload at once
            jobs[job_id].update(status="failed", message=exc.error)
        return {"job_id": job_id}

    @app.post("/internal/reconstruction/status")
    def on_status(cb: Annotated[CallbackBody, Depends(status_callback)]) -> dict[str, bool]:
        job = jobs.setdefault(cb.job_id, {})
        job.update(status=cb.status.value, message=cb.message, model_uri=cb.model_uri)
        job["progress"] = max(job.get("progress", 0.0), cb.progress)
        return {"ok": True}

    @app.post("/internal/reconstruction/progress")
    def on_progress(cb: Annotated[ProgressCallbackBody, Depends(progress_callback)]) -> dict[str, bool]:
        job = jobs.setdefault(cb.job_id, {})
        if cb.progress is not None:
            job["progress"] = max(job.get("progress", 0.0), cb.progress)
        return {"ok": True}

    @app.get("/jobs/{job_id}/status")
    def job_status(job_id: str) -> dict[str, Any]:
        if job_id not in jobs:
            raise HTTPException(404, "no such job")
        return jobs[job_id]

    return app
