"""Real things the service tests run against: the service as a process, and a fake backend.

``ServiceProcess`` starts ``python -m recon_service`` on a free loopback port with its own SQLite
file and output folder; it can be stopped, SIGKILLed and restarted on the same data.
``FakeBackend`` is a loopback HTTP server that records the callbacks it receives and can be told
to answer errors for the next N calls.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-service-token"
CALLBACK_TOKEN = "test-callback-token"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fake backend ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    kind: str  # "status" or "progress"
    body: dict[str, Any]
    authorization: str | None
    answered: int


class FakeBackend:
    """The backend's two callback endpoints on 127.0.0.1, recording every call."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._failures: list[int] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                kind = self.path.rsplit("/", 1)[-1]
                with backend._lock:
                    status = backend._failures.pop(0) if backend._failures else 200
                    if self.path not in ("/internal/reconstruction/status", "/internal/reconstruction/progress"):
                        status = 404
                    backend.calls.append(Call(kind, body, self.headers.get("Authorization"), status))
                payload = b'{"ok": true}' if status == 200 else b'{"error": "injected failure"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer ``status`` to the next ``count`` calls, whatever they are."""
        with self._lock:
            self._failures.extend([status] * count)

    def heal(self) -> None:
        """Answer 200 again from now on."""
        with self._lock:
            self._failures.clear()

    def delivered(self, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Bodies answered 200 for ``job_id``, in arrival order."""
        with self._lock:
            return [c.body for c in self.calls if c.body.get("job_id") == job_id and c.answered == 200 and kind in (None, c.kind)]

    def calls_for(self, job_id: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.body.get("job_id") == job_id]

    def statuses(self, job_id: str) -> list[str]:
        """Statuses of the delivered status callbacks of ``job_id``, in order."""
        return [b["status"] for b in self.delivered(job_id, "status")]

    def wait_for_status(self, job_id: str, status: str, timeout: float = 30) -> list[str]:
        return wait_until(lambda: status in self.statuses(job_id) and self.statuses(job_id), timeout, f"{status} callback of {job_id}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the service as a process ----------------------------------------------------------------------
class ServiceProcess:
    """``python -m recon_service`` with its own data, restartable on the same data."""

    def __init__(self, root: Path, photos_root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.photos_root = photos_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = root / "models"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RECON_") and k != "MODEL_OUTPUT_ROOT"},
            "RECON_SERVICE_TOKEN": TOKEN,
            "RECON_DATA_DIR": str(root / "data"),
            "MODEL_OUTPUT_ROOT": str(self.models),
            "RECON_PHOTOS_ROOT": str(photos_root),
            "RECON_PIPELINE": "simulate",
            "RECON_HOST": "127.0.0.1",
            "RECON_PORT": str(self.port),
            "RECON_CALLBACK_RETRY_INITIAL_S": "0.05",
            "RECON_CALLBACK_RETRY_MAX_S": "0.4",
            "RECON_PROGRESS_CALLBACK_INTERVAL_S": "0.3",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log_path = root / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def start(self, *, wait: bool = True) -> ServiceProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recon_service"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if wait:
            wait_until(self._healthy, 30, f"the service on {self.url} to answer /healthz\n{self.log()}", interval=0.1)
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the service exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then make sure nothing of its process group is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_group()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server process only (its workers notice and stop by themselves)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftover workers of this test's service only
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self.stop()
        self.client.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- API helpers -------------------------------------------------------------------------------
    def payload(self, photos_dir: Path, **fields: Any) -> dict[str, Any]:
        count = len([p for p in photos_dir.iterdir() if p.suffix == ".jpg"]) if photos_dir.is_dir() else 3
        return {"job_id": str(uuid.uuid4()), "dataset_name": "test scan", "photo_count": count, "photos_dir": str(photos_dir), **fields}

    def submit(self, photos_dir: Path, **fields: Any) -> str:
        body = self.payload(photos_dir, **fields)
        response = self.client.post("/jobs", json=body)
        assert response.status_code == 202, response.text
        return body["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_job(self, job_id: str, statuses: tuple[str, ...] = ("completed", "failed"), timeout: float = 30) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        return wait_until(done, timeout, f"job {job_id} to reach {statuses}")

    def worker_pids(self) -> list[int]:
        """Pids of this service's job worker processes (spawned children, not the resource tracker)."""
        import psutil

        assert self.proc is not None
        pids = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:  # exited meanwhile: not running any more
                pass
        return pids
