"""The backend's callback endpoints on loopback, recording what the service sends (for tests).

:class:`CallbackRecorder` plays a strict backend: it checks the bearer token and the contract of
every body (with :class:`~recon_service.kit.receiver.CallbackReceiver`), answers like a backend
would, and can be told to fail or be slow for the next calls. Standard library only at import
time; usable with or without pytest.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recon_service.kit.receiver import CallbackReceiver

CALLBACK_PATHS = {"/internal/reconstruction/status": "status", "/internal/reconstruction/progress": "progress"}
"""The backend's callback endpoints (contract) → callback kind."""


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
        from recon_service.kit.receiver import CallbackReceiver

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

    def heal(self) -> None:
        """Answer every callback normally again: drop pending ``fail_next``/``delay_next`` rules (calls stay recorded)."""
        with self._changed:
            self._rules.clear()

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
        job_id = canonical_job_id(job_id)
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
        job_id = canonical_job_id(job_id)

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
        from recon_service.kit.receiver import CallbackRejected

        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        kind = CALLBACK_PATHS.get(path.split("?", 1)[0])
        job_id = canonical_job_id(body["job_id"]) if isinstance(body, dict) and isinstance(body.get("job_id"), str) else None
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


def canonical_job_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        return job_id
