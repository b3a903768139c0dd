"""Testing kit for the backend's CI: the service as a contract double, and a callback recorder.

Installed as a pytest plugin (entry point ``pytest11: recon_service``), so a project that
``pip install``-s recon-service gets two fixtures without any import:

``recon_double`` (session)
    ``python -m recon_service`` with ``RECON_PIPELINE=simulate`` on a free loopback port, a
    temporary data dir and a generated token; callbacks go to the session's callback recorder.
    A :class:`ReconDouble`: ``url``, ``token``, ``client`` (a :class:`~recon_service.client.ReconClient`),
    ``photos_root``, ``make_photos(n)``, ``submit(...)``.
``callback_recorder`` (per test)
    A :class:`CallbackRecorder`: the backend's callback endpoints on loopback, recording every
    call; ``fail_next`` / ``delay_next`` play a failing or slow backend; ``wait_for(job_id, status)``.

Both classes work without pytest too (context managers). This module is imported by every
pytest run of a project that has the package installed, so it imports only the standard
library at module level; httpx, PIL and the client are imported when a fixture is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from recon_service.callback_receiver import CallbackReceiver
    from recon_service.client import ReconClient

CALLBACK_PATHS = {"/internal/reconstruction/status": "status", "/internal/reconstruction/progress": "progress"}
"""The backend's callback endpoints (contract) → callback kind."""
START_TIMEOUT_S = 60.0
"""How long the double may take to answer /readyz after its process starts (seconds)."""
STOP_TIMEOUT_S = 20.0
"""How long a clean shutdown (SIGTERM) may take before the process group is killed (seconds)."""

FAST_CALLBACK_ENV = {
    "RECON_CALLBACK_RETRY_INITIAL_S": "0.05",
    "RECON_CALLBACK_RETRY_MAX_S": "0.5",
    "RECON_PROGRESS_CALLBACK_INTERVAL_S": "0.2",
}
"""The double retries failed callbacks within about a second (not minutes), to keep CI fast."""


# -- callback recorder ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedCallback:
    """One request the recorder received, and what it answered."""

    kind: str
    """``status``, ``progress``, or the path for anything else."""
    headers: dict[str, str]
    """Request headers, names lower-cased."""
    raw: bytes
    body: Any
    """The parsed JSON body (``None`` if it was not JSON)."""
    answered: int
    """HTTP status the recorder answered (2xx: delivered)."""
    problem: str | None
    """Why the recorder refused it (token, contract), or ``None``."""
    received_at: float
    """``time.time()`` when the request arrived (before any injected delay)."""

    @property
    def delivered(self) -> bool:
        return 200 <= self.answered < 300

    @property
    def job_id(self) -> str | None:
        return self.body.get("job_id") if isinstance(self.body, dict) else None

    @property
    def status(self) -> str | None:
        return self.body.get("status") if isinstance(self.body, dict) else None

    @property
    def progress(self) -> float | None:
        return self.body.get("progress") if isinstance(self.body, dict) else None


@dataclass
class _Rule:
    remaining: int
    status: int
    delay_s: float
    job_id: str | None


class CallbackRecorder:
    """The backend's two callback endpoints on ``127.0.0.1``, recording every request.

    Like a real backend, it answers 401 to a wrong token and 400 to a body that breaks the
    contract (checked with :class:`~recon_service.client.CallbackReceiver`), and ``problem`` says
    why: a double that sends bad callbacks fails the test instead of passing silently.
    """

    def __init__(self, token: str | None = None) -> None:
        from recon_service.callback_receiver import CallbackReceiver

        self.token = token or secrets.token_urlsafe(24)
        self._receiver: CallbackReceiver = CallbackReceiver(self.token)
        self._calls: list[RecordedCallback] = []
        self._rules: list[_Rule] = []
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="callback-recorder", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL to give the service as RECON_CALLBACK_URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what to answer -------------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 500, *, job_id: str | None = None) -> None:
        """Answer ``status`` to the next ``count`` callbacks (of ``job_id`` only, if given)."""
        with self._changed:
            self._rules.append(_Rule(count, status, 0.0, job_id))

    def delay_next(self, count: int, seconds: float, *, job_id: str | None = None) -> None:
        """Answer the next ``count`` callbacks (of ``job_id`` only, if given) ``seconds`` late, with 200."""
        with self._changed:
            self._rules.append(_Rule(count, 200, seconds, job_id))

    def reset(self) -> None:
        """Forget recorded calls and pending ``fail_next``/``delay_next`` rules."""
        with self._changed:
            self._calls.clear()
            self._rules.clear()

    # -- what was received ----------------------------------------------------------------------
    @property
    def calls(self) -> list[RecordedCallback]:
        """Every request received so far, in arrival order."""
        with self._changed:
            return list(self._calls)

    def calls_for(self, job_id: str, kind: str | None = None, *, delivered_only: bool = True) -> list[RecordedCallback]:
        """The job's callbacks in arrival order (only those answered 2xx, unless ``delivered_only=False``)."""
        job_id = _canonical(job_id)
        return [
            c for c in self.calls if c.job_id == job_id and kind in (None, c.kind) and (c.delivered or not delivered_only)
        ]

    def statuses(self, job_id: str) -> list[str]:
        """Statuses of the job's delivered status callbacks, in order (duplicates kept)."""
        return [c.status or "" for c in self.calls_for(job_id, "status")]

    def wait_until(self, predicate: Callable[[list[RecordedCallback]], Any], timeout: float, what: str) -> Any:
        """Wait until ``predicate(calls)`` is truthy and return its value; ``AssertionError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate(list(self._calls))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(f"  {c.answered} {c.kind} {c.raw[:300]!r}" for c in self._calls[-20:]) or "  (nothing)"
                    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last calls received:\n{seen}")
                self._changed.wait(left)

    def wait_for(self, job_id: str, status: str, timeout: float = 30.0) -> list[RecordedCallback]:
        """Wait for a delivered ``status`` callback of ``job_id``; return the job's delivered status callbacks so far."""
        job_id = _canonical(job_id)

        def arrived(calls: list[RecordedCallback]) -> list[RecordedCallback] | None:
            mine = [c for c in calls if c.job_id == job_id and c.kind == "status" and c.delivered]
            return mine if any(c.status == status for c in mine) else None

        return self.wait_until(arrived, timeout, f"a {status!r} status callback of job {job_id}")

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CallbackRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the server -----------------------------------------------------------------------------
    def _rule_for(self, job_id: str | None) -> _Rule | None:
        with self._changed:
            for rule in self._rules:
                if rule.remaining > 0 and rule.job_id in (None, job_id):
                    rule.remaining -= 1
                    return rule
        return None

    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, str | None, Any]:
        from recon_service.callback_receiver import CallbackRejected

        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        kind = CALLBACK_PATHS.get(path.split("?", 1)[0])
        job_id = _canonical(body["job_id"]) if isinstance(body, dict) and isinstance(body.get("job_id"), str) else None
        rule = self._rule_for(job_id)
        if rule is not None and rule.delay_s:
            self._closing.wait(rule.delay_s)
        if kind is None:
            return 404, f"no callback endpoint {path}", body
        try:
            self._receiver.receive(kind, headers, raw)  # type: ignore[arg-type]
        except CallbackRejected as exc:
            return exc.status_code, exc.error, body
        if rule is not None and rule.status != 200:
            return rule.status, f"injected failure ({rule.status})", body
        return 200, None, body

    def _record(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, str | None]:
        received_at = time.time()
        status, problem, body = self._answer(path, headers, raw)
        call = RecordedCallback(CALLBACK_PATHS.get(path.split("?", 1)[0], path), headers, raw, body, status, problem, received_at)
        with self._changed:
            self._calls.append(call)
            self._changed.notify_all()
        return status, problem

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, problem = recorder._record(self.path, headers, raw)
                payload = json.dumps({"ok": True} if problem is None else {"error": problem}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# -- the service as a contract double ------------------------------------------------------------
@dataclass
class ReconDouble:
    """The real service (``python -m recon_service``) in simulate mode, as a child process.

    Everything lives under ``root``: ``data/`` (job store), ``models/`` (MODEL_OUTPUT_ROOT),
    ``uploads/`` (RECON_PHOTOS_ROOT: jobs' ``photos_dir`` must be inside) and ``service.log``.
    ``env`` adds or overrides RECON_* variables (e.g. ``RECON_MAX_WORKERS``).
    """

    root: Path
    callback_url: str | None = None
    callback_token: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _client: ReconClient | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def photos_root(self) -> Path:
        return self.root / "uploads"

    @property
    def models_root(self) -> Path:
        return self.root / "models"

    @property
    def log_path(self) -> Path:
        return self.root / "service.log"

    @property
    def client(self) -> ReconClient:
        """A :class:`~recon_service.client.ReconClient` for this double (quick retries)."""
        if self._client is None:
            from recon_service.client import ReconClient, RetryPolicy

            self._client = ReconClient(self.url, self.token, retries=RetryPolicy(attempts=3, initial_s=0.1, max_s=0.5, jitter_s=0.1))
        return self._client

    def start(self) -> ReconDouble:
        """Start the process and wait until ``/readyz`` answers 200 (tries another port if taken)."""
        for _ in range(3):
            self.port = free_port()
            self._spawn()
            if self._wait_ready():
                return self
        raise RuntimeError(f"recon-service double did not start; its log ({self.log_path}):\n{self.log()[-4000:]}")

    def _spawn(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.photos_root.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECON_") and k != "MODEL_OUTPUT_ROOT"}
        env |= {
            "RECON_PIPELINE": "simulate",
            "RECON_SERVICE_TOKEN": self.token,
            "RECON_HOST": "127.0.0.1",
            "RECON_PORT": str(self.port),
            "RECON_DATA_DIR": str(self.root / "data"),
            "MODEL_OUTPUT_ROOT": str(self.models_root),
            "RECON_PHOTOS_ROOT": str(self.photos_root),
            "RECON_MAX_WORKERS": "4",
            "PYTHONUNBUFFERED": "1",
            **FAST_CALLBACK_ENV,
        }
        if self.callback_url:
            env |= {"RECON_CALLBACK_URL": self.callback_url, "RECON_CALLBACK_TOKEN": self.callback_token or ""}
        env |= self.env
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "recon_service"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def _wait_ready(self) -> bool:
        """True once ready; False if the process died because its port was taken meanwhile."""
        import httpx

        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        interval = 0.02
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                taken = "address already in use" in self.log().lower()
                self._proc = None
                if taken:
                    return False
                raise RuntimeError(f"recon-service double exited during start-up; its log:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(interval)  # the process gives no other signal than answering
            interval = min(interval * 2, 0.2)
        self.stop()
        raise RuntimeError(f"recon-service double not ready after {START_TIMEOUT_S:g} s; its log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM (clean shutdown), then kill whatever is left of its process group (workers)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # this double's leftover workers only (its own session)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ReconDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests ------------------------------------------------------------------------
    def make_photos(self, count: int, name: str | None = None, *, size: tuple[int, int] = (320, 240)) -> Path:
        """A new folder ``photos_root/<name>`` of ``count`` valid JPEGs (``photo_1.jpg`` ...), like the backend's uploads."""
        return write_jpegs(self.photos_root / (name or uuid.uuid4().hex), count, size=size)

    def submit(self, photo_count: int = 3, *, job_id: str | None = None, **fields: Any) -> str:
        """Make ``photo_count`` photos, submit them as a new job (``fields``: notes, options, simulate) and return its id."""
        job_id = job_id or str(uuid.uuid4())
        photos = self.make_photos(photo_count, job_id)
        self.client.submit(job_id, fields.pop("dataset_name", "test scan"), photo_count, photos, **fields)
        return job_id


def write_jpegs(folder: Path, count: int, *, size: tuple[int, int] = (320, 240)) -> Path:
    """``count`` different, decodable JPEGs (seeded noise over a gradient) in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    for i in range(count):
        rng = random.Random(f"{folder.name}/{i}")
        noise = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
        Image.blend(gradient, noise, 0.5).save(folder / f"photo_{i + 1}.jpg", quality=85)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _canonical(job_id: str) -> str:
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        return job_id


# -- pytest fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def recon_callback_server() -> Iterator[CallbackRecorder]:
    """The session's callback recorder server (``callback_recorder`` hands it to each test, reset)."""
    with CallbackRecorder() as recorder:
        yield recorder


@pytest.fixture(scope="session")
def recon_double(recon_callback_server: CallbackRecorder) -> Iterator[ReconDouble]:
    """One simulate-mode service for the test session, calling back to the callback recorder."""
    root = Path(tempfile.mkdtemp(prefix="recon-double-"))
    double = ReconDouble(root, callback_url=recon_callback_server.url, callback_token=recon_callback_server.token)
    try:
        with double:
            yield double
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def callback_recorder(recon_callback_server: CallbackRecorder) -> CallbackRecorder:
    """The callbacks of ``recon_double``, recorded; emptied, and failure rules cleared, for each test."""
    recon_callback_server.reset()
    return recon_callback_server
