"""``recon_service.kit.client`` against the contract double: results, error translation, retries, callbacks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from recon_service.kit import ReconDouble, free_port
from recon_service.kit.client import (
    AsyncReconClient,
    CallbackBody,
    CallbackReceiver,
    CallbackRejected,
    Conflict,
    ContractStatus,
    InvalidRequest,
    JobNotFound,
    PayloadTooLarge,
    ProgressCallbackBody,
    ReconClient,
    RetryPolicy,
    ServerError,
    ServiceUnreachable,
    Unauthorized,
    WaitTimeout,
)

QUICK = RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05, jitter_s=0.01)
FAST = {"stage_seconds": 0.01}


class FlakyProxy:
    """A loopback HTTP proxy in front of the double that can answer 502 instead of forwarding.

    ``fail_next(n)``: the next ``n`` requests get a proxy's HTML 502; with ``after_forwarding``
    the request reaches the service first and only its answer is lost (a timeout after sending).
    """

    def __init__(self, upstream: str, port: int = 0) -> None:
        self.requests: list[str] = []
        self._failures: list[bool] = []
        self._lock = threading.Lock()
        self._upstream = httpx.Client(base_url=upstream, timeout=10)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests.append(f"{self.command} {self.path}")
                    failure = proxy._failures.pop(0) if proxy._failures else None
                if failure is None or failure:  # forward (also when only the answer is to be lost)
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                    answer = proxy._upstream.request(self.command, self.path, content=body, headers=headers)
                    status, payload, kind = answer.status_code, answer.content, answer.headers.get("content-type", "")
                if failure is not None:
                    status, payload, kind = 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _handle  # noqa: N815 (http.server's naming)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, count: int, *, after_forwarding: bool = False) -> None:
        with self._lock:
            self._failures.extend([after_forwarding] * count)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()


@pytest.fixture
def proxy(recon_double: ReconDouble) -> Iterator[FlakyProxy]:
    server = FlakyProxy(recon_double.url)
    yield server
    server.close()


def submit_args(double: ReconDouble, count: int = 3) -> tuple[str, str, int, Path]:
    job_id = str(uuid.uuid4())
    return job_id, "chair", count, double.make_photos(count, job_id)


# -- results -------------------------------------------------------------------------------------
def test_submit_then_wait_returns_the_completed_job_with_a_model_uri(recon_double: ReconDouble) -> None:
    job_id, name, count, photos = submit_args(recon_double, 4)
    with ReconClient(recon_double.url, recon_double.token) as client:
        accepted = client.submit(job_id, name, count, photos, notes="daylight", options={"preset": "preview"})
        assert (accepted.accepted, accepted.external_job_id, accepted.message) == (True, job_id, "queued")
        job = client.wait(job_id, timeout=30, poll_interval=0.05)
        assert (job.status, job.progress, job.cancelled, job.simulated) == (ContractStatus.COMPLETED, 1.0, False, True)
        assert job.options["preset"] == "preview" and job.photo_count == 4
        model = Path(urlparse(job.model_uri or "").path)
        assert job.model_uri == model.as_uri() and model.read_bytes()[:4] == b"glTF"
        settled = {"callbacks"}  # the completed callback may be delivered between the two reads
        assert client.status(job_id).model_dump(exclude=settled) == job.model_dump(exclude=settled)
        assert job_id in [j.job_id for j in client.jobs(limit=100).jobs]
        assert client.jobs(status="completed", limit=100).jobs[0].status is ContractStatus.COMPLETED
        assert client.health().simulated and client.ready().ready
        catalog = client.options()
        assert catalog.default_preset in catalog.presets and {o.name for o in catalog.options} <= set(catalog.presets["high"])


def test_resubmitting_is_idempotent_and_another_payload_under_the_same_id_is_a_conflict(recon_double: ReconDouble) -> None:
    job_id, name, count, photos = submit_args(recon_double)
    client = recon_double.client
    first = client.submit(job_id, name, count, photos, simulate=FAST)
    assert client.submit(job_id, name, count, photos, simulate=FAST) == first
    with pytest.raises(Conflict) as conflict:
        client.submit(job_id, "another name", count, photos, simulate=FAST)
    assert conflict.value.status_code == 409 and "dataset_name" in conflict.value.error
    assert client.wait(job_id, timeout=30, poll_interval=0.05).attempts == 1


def test_errors_carry_the_status_code_and_the_service_error_text(recon_double: ReconDouble) -> None:
    client = recon_double.client
    with pytest.raises(Unauthorized, match="invalid bearer token"), ReconClient(recon_double.url, "wrong") as stranger:
        stranger.status(str(uuid.uuid4()))
    with pytest.raises(JobNotFound) as missing:
        client.status("no-such-job")
    assert missing.value.status_code == 404 and "no job with id 'no-such-job'" in missing.value.error
    with pytest.raises(JobNotFound):
        client.cancel("../../options")  # quoted as one path segment: it cannot reach another endpoint
    job_id, name, _, photos = submit_args(recon_double, 3)
    with pytest.raises(InvalidRequest) as invalid:
        client.submit(job_id, name, 5, photos)
    assert invalid.value.status_code == 400 and invalid.value.error.startswith("photo_count:")
    with pytest.raises(InvalidRequest, match="simulate.fail_at"):
        client.submit(job_id, name, 3, photos, simulate={"fail_at": "nowhere"})
    with pytest.raises(PayloadTooLarge, match="RECON_MAX_BODY_BYTES"):
        client.submit(job_id, name, 3, photos, notes="x" * (2 << 20))


def test_wait_times_out_with_the_last_status_and_cancel_stops_the_job(recon_double: ReconDouble) -> None:
    client = recon_double.client
    job_id, name, count, photos = submit_args(recon_double)
    client.submit(job_id, name, count, photos, simulate={"stall": True, "stall_at": "features"})
    with pytest.raises(WaitTimeout) as timeout:
        client.wait(job_id, timeout=0.3, poll_interval=0.05)
    assert timeout.value.job is not None and timeout.value.job.status in (ContractStatus.QUEUED, ContractStatus.PROCESSING)
    assert isinstance(timeout.value, TimeoutError)
    stopping = client.cancel(job_id)
    assert stopping.cancel_requested or stopping.cancelled
    job = client.wait(job_id, timeout=10, poll_interval=0.05)
    assert (job.status, job.cancelled, job.message) == (ContractStatus.FAILED, True, "cancelled")
    assert client.cancel(job_id).cancelled  # cancelling again is harmless (so a retried cancel is too)

    done = recon_double.submit(3, simulate={**FAST, "fail_at": "mesh", "message": "no surface"})
    failed = client.wait(done, timeout=30, poll_interval=0.05)
    assert failed.status is ContractStatus.FAILED and failed.message.startswith("mesh: no surface") and failed.model_uri is None
    with pytest.raises(Conflict, match="already failed"):
        client.cancel(done)


# -- retries -------------------------------------------------------------------------------------
def test_5xx_answers_are_retried_and_4xx_answers_are_not(recon_double: ReconDouble, proxy: FlakyProxy) -> None:
    job_id = recon_double.submit(3, simulate=FAST)
    with ReconClient(proxy.url, recon_double.token, retries=QUICK) as client:
        proxy.fail_next(2)
        assert client.status(job_id).job_id == job_id
        assert len(proxy.requests) == 3

        proxy.requests.clear()
        proxy.fail_next(4)
        with pytest.raises(ServerError) as gave_up:
            client.status(job_id)
        assert gave_up.value.status_code == 502 and "502 Bad Gateway" in gave_up.value.error
        assert len(proxy.requests) == QUICK.attempts

        proxy.requests.clear()
        with pytest.raises(JobNotFound):
            client.status(str(uuid.uuid4()))
        assert len(proxy.requests) == 1


def test_a_submission_whose_answer_was_lost_is_retried_safely(recon_double: ReconDouble, proxy: FlakyProxy) -> None:
    job_id, name, count, photos = submit_args(recon_double)
    with ReconClient(proxy.url, recon_double.token, retries=QUICK) as client:
        proxy.fail_next(1, after_forwarding=True)  # the service queues the job, the answer is lost
        assert client.submit(job_id, name, count, photos, simulate=FAST).external_job_id == job_id
        assert proxy.requests == ["POST /jobs", "POST /jobs"]
        assert client.wait(job_id, timeout=30, poll_interval=0.05).attempts == 1


def test_a_service_that_is_not_up_yet_is_retried_until_it_answers(recon_double: ReconDouble) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(ServiceUnreachable, match="cannot reach recon-service"), ReconClient(url, "t", retries=0) as impatient:
        impatient.health()
    started: list[FlakyProxy] = []
    starter = threading.Timer(0.3, lambda: started.append(FlakyProxy(recon_double.url, port)))  # the service comes up later
    patient = RetryPolicy(attempts=30, initial_s=0.05, max_s=0.1, jitter_s=0.01)
    try:
        with ReconClient(url, recon_double.token, retries=patient) as client:
            begun = time.monotonic()
            starter.start()
            assert client.health().simulated
            assert time.monotonic() - begun >= 0.3
    finally:
        starter.join()
        for server in started:
            server.close()


def test_the_async_client_submits_waits_retries_and_translates_errors(recon_double: ReconDouble, proxy: FlakyProxy) -> None:
    job_id, name, count, photos = submit_args(recon_double)

    async def scenario() -> None:
        async with AsyncReconClient(proxy.url, recon_double.token, retries=QUICK) as client:
            proxy.fail_next(1)
            assert (await client.submit(job_id, name, count, photos, simulate=FAST)).accepted
            job = await client.wait(job_id, timeout=30, poll_interval=0.05)
            assert job.status is ContractStatus.COMPLETED and job.model_uri
            assert (await client.health()).simulated and (await client.ready()).ready
            assert (await client.options()).default_preset
            assert job_id in [j.job_id for j in (await client.jobs(limit=100)).jobs]
            with pytest.raises(JobNotFound):
                await client.status(str(uuid.uuid4()))
            with pytest.raises(Conflict):
                await client.cancel(job_id)

    asyncio.run(scenario())
    assert proxy.requests[:2] == ["POST /jobs", "POST /jobs"]


# -- callback receiver -----------------------------------------------------------------------------
JOB = "3f2c1a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f"
DONE = {"job_id": JOB, "status": "completed", "progress": 1.0, "message": "completed", "model_uri": "file:///m/model.glb"}


def body(**changes: Any) -> bytes:
    return json.dumps({**DONE, **changes}).encode()


def test_the_receiver_accepts_a_contract_callback_with_the_right_token() -> None:
    receiver = CallbackReceiver("secret")
    parsed = receiver.receive("status", {"authorization": "Bearer secret"}, body())
    assert isinstance(parsed, CallbackBody) and parsed.status is ContractStatus.COMPLETED and parsed.model_uri == DONE["model_uri"]
    progress = receiver.receive("progress", {"Authorization": "bearer secret"}, json.dumps({"job_id": JOB, "progress": 0.4}))
    assert isinstance(progress, ProgressCallbackBody) and (progress.status, progress.progress) == (None, 0.4)
    assert "secret" not in repr(receiver)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic secret"}, {"Authorization": "Bearer "}],
    ids=["missing", "wrong", "other-scheme", "empty"],
)
def test_the_receiver_refuses_a_missing_or_wrong_token_before_reading_the_body(headers: dict[str, str]) -> None:
    with pytest.raises(CallbackRejected) as rejected:
        CallbackReceiver("secret").receive("status", headers, b"not even json")
    assert rejected.value.status_code == 401 and rejected.value.body() == {"error": rejected.value.error}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "JSON object"),
        (json.dumps({k: v for k, v in DONE.items() if k != "message"}).encode(), "message: is required"),
        (body(status="cancelled"), "status"),
        (body(progress=1.5), "progress"),
        (body(job_id="42"), "job_id: must be a UUID"),
        (body(model_uri=None), "model_uri: must be set"),
    ],
    ids=["json", "array", "missing-field", "unknown-status", "progress-range", "job-id", "completed-without-model"],
)
def test_the_receiver_refuses_a_body_that_breaks_the_contract_with_400(raw: bytes, fragment: str) -> None:
    with pytest.raises(CallbackRejected) as rejected:
        CallbackReceiver("secret").receive("status", {"Authorization": "Bearer secret"}, raw)
    assert rejected.value.status_code == 400 and fragment in rejected.value.error


def test_a_receiver_without_a_token_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="RECON_CALLBACK_TOKEN"):
        CallbackReceiver("")
