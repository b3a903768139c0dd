"""The API calls as data (path, method, expected statuses, response model), shared by both clients.

The sync and the async client differ only in how they send a request; everything else about a
call -- building it, reading its answer, naming its failure -- is written once here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from recon_service import __version__
from recon_service.contract import Health, JobAccepted, JobList, JobPublic, OptionsCatalog, Ready, UploadUrl
from recon_service.kit.errors import (
    ReconClientError,
    ReconServiceError,
    ServerError,
    ServiceUnreachable,
    error_from_response,
)
from recon_service.kit.retry import RetryPolicy


@dataclass(frozen=True)
class Call:
    """One API call: the request, the statuses that count as an answer, and the model to parse."""

    method: str
    path: str
    model: type[BaseModel]
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    ok: tuple[int, ...] = (200,)


def submit_call(
    job_id: str | uuid.UUID,
    dataset_name: str,
    photo_count: int,
    photos_dir: str | os.PathLike[str] | None,
    notes: str | None,
    options: Mapping[str, Any] | None,
    simulate: Mapping[str, Any] | None,
    real_size_m: float | None = None,
) -> Call:
    """``POST /jobs``; ``photos_dir=None`` asks for a pre-signed upload (``upload: true``)."""
    body: dict[str, Any] = {"job_id": str(job_id), "dataset_name": dataset_name, "photo_count": photo_count}
    if photos_dir is None:
        body["upload"] = True
    else:
        body["photos_dir"] = photos_dir if isinstance(photos_dir, str) else os.fspath(photos_dir)
    if notes is not None:
        body["notes"] = notes
    if options is not None:
        body["options"] = dict(options)
    if simulate is not None:
        body["simulate"] = dict(simulate)
    if real_size_m is not None:
        body["real_size_m"] = real_size_m
    return Call("POST", "/jobs", JobAccepted, json=body, ok=(202,))


def _quote(segment: str) -> str:
    """A job id as one path segment (an id with ``/`` or ``?`` then gets a clean 404)."""
    return quote(segment, safe="")


def status_call(job_id: str | uuid.UUID) -> Call:
    return Call("GET", "/jobs/" + _quote(str(job_id)), JobPublic)


def cancel_call(job_id: str | uuid.UUID) -> Call:
    return Call("POST", "/jobs/" + _quote(str(job_id)) + "/cancel", JobPublic, ok=(200, 202))


def commit_call(job_id: str | uuid.UUID) -> Call:
    return Call("POST", "/jobs/" + _quote(str(job_id)) + "/commit", JobPublic)


def upload_plan(accepted: JobAccepted, files: Sequence[str | os.PathLike[str] | bytes]) -> list[tuple[UploadUrl, bytes]]:
    """Each file's bytes with the pre-signed URL it goes to (files in order: photo_1.jpg, photo_2.jpg, ...)."""
    if accepted.upload is None:
        raise ReconClientError(f"job {accepted.external_job_id} has no pending upload (it was committed or submitted with photos_dir)")
    if len(accepted.upload.urls) != len(files):
        raise ReconClientError(f"the service expects {len(accepted.upload.urls)} photos, {len(files)} were given")
    return [(url, f if isinstance(f, bytes) else Path(f).read_bytes()) for url, f in zip(accepted.upload.urls, files, strict=True)]


def put_failed(url: UploadUrl, response: httpx.Response) -> ReconServiceError:
    """A refused PUT to the object store (its answer is XML, not the service's ``{"error"}``)."""
    status = response.status_code
    cls = ServerError if status >= 500 else ReconServiceError
    return cls(status, f"uploading {url.name} to the object store failed: {response.text.strip()[:300] or response.reason_phrase}")


def list_call(limit: int, offset: int, status: str | None) -> Call:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status is not None:
        params["status"] = str(status)
    return Call("GET", "/jobs", JobList, params=params)


OPTIONS = Call("GET", "/options", OptionsCatalog)
HEALTH = Call("GET", "/healthz", Health)
READY = Call("GET", "/readyz", Ready, ok=(200, 503))  # 503 carries the same body plus "error"


def parse(call: Call, response: httpx.Response) -> Any:
    if response.status_code not in call.ok:
        raise error_from_response(response)
    try:
        return call.model.model_validate_json(response.content)
    except ValidationError as exc:
        if response.status_code >= 500:
            raise error_from_response(response) from None
        raise ReconClientError(f"{call.method} {call.path}: unexpected response body ({exc.error_count()} problems): {exc}") from None


def unreachable(base_url: str, call: Call, exc: httpx.HTTPError) -> ReconClientError:
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return ServiceUnreachable(f"cannot reach recon-service at {base_url} ({call.method} {call.path}): {type(exc).__name__}: {exc}")
    return ReconClientError(f"{call.method} {call.path} to {base_url} failed: {type(exc).__name__}: {exc}")


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": f"recon-service-client/{__version__}"}


def policy(retries: RetryPolicy | int) -> RetryPolicy:
    return retries if isinstance(retries, RetryPolicy) else RetryPolicy(attempts=1 + retries)


def timeout_message(job_id: str | uuid.UUID, timeout: float, job: JobPublic | None) -> str:
    seen = f"last seen {job.status.value} at {job.progress:.0%}: {job.message}" if job else "no status read"
    return f"job {job_id} did not finish within {timeout:g} s ({seen})"
