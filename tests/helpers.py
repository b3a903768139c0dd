"""Small helpers of the project's own tests, on top of the public testing kit (``recon_service.kit``).

The service runs as a :class:`~recon_service.kit.double.ReconDouble` and the backend as a
:class:`~recon_service.kit.recorder.CallbackRecorder`, exactly as a backend's CI uses them; what
is here is what only this project's tests need (process inspection with psutil, waiting loops).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from recon_service.kit import CallbackRecorder, ReconDouble

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-service-token"
"""The bearer token of the tests' services (a fixed one, so tests can put it in parameters)."""
CALLBACK_TOKEN = "test-callback-token"
"""The token the tests' recorders expect from the service."""
SUCCESS = ["queued", "processing", "meshing", "texturing", "completed"]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def double(root: Path, photos_root: Path | None = None, env: dict[str, str] | None = None, recorder: CallbackRecorder | None = None) -> ReconDouble:
    """A (not yet started) double with the tests' token, calling back to ``recorder``, with RECON_PHOTOS_ROOT ``photos_root``."""
    # One worker, as the service's own default (the kit's double runs four, for a backend's parallel tests).
    svc = ReconDouble(root, token=TOKEN, env={"RECON_MAX_WORKERS": "1", **(env or {})}, uploads_root=photos_root)
    if recorder is not None:
        svc.callback_url, svc.callback_token = recorder.url, recorder.token
    return svc


def wait_statuses(recorder: CallbackRecorder, job_id: str, status: str, timeout: float = 30.0) -> list[str]:
    """Wait for the job's delivered ``status`` callback; the statuses delivered so far, in order."""
    return [c.status or "" for c in recorder.wait_for(job_id, status, timeout)]


def delivered(recorder: CallbackRecorder, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Bodies of the job's callbacks the recorder accepted, in arrival order."""
    return [c.body for c in recorder.calls_for(job_id, kind)]


def worker_pids(svc: ReconDouble) -> list[int]:
    """Pids of this service's job worker processes (spawned children, not the resource tracker)."""
    assert svc.pid is not None
    pids = []
    for child in psutil.Process(svc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:  # exited meanwhile: not running any more
            pass
    return pids


def log_entries(svc: ReconDouble) -> list[dict[str, Any]]:
    """The service's stderr lines that are JSON objects (the start-up banners are not)."""
    return [json.loads(line) for line in svc.log().splitlines() if line.startswith("{")]
