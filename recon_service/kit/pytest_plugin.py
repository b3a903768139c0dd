"""The pytest plugin (entry point ``pytest11: recon_service``): two fixtures for a backend's tests.

``recon_double`` (session)
    A :class:`~recon_service.kit.double.ReconDouble`: the service in simulate mode on a free
    loopback port, a temporary data dir and a generated token, calling back to the recorder.
``recon_s3`` and ``recon_double_s3`` (session, need ``recon-service[s3-double]``)
    A real S3 API server on loopback (:class:`~recon_service.kit.s3.S3Server`, buckets ``models``
    and ``uploads``) and a second double that stores models in ``s3://models/out`` and takes
    pre-signed uploads in ``s3://uploads/in``: the backend's S3 path, end to end.
``callback_recorder`` (per test)
    The session's :class:`~recon_service.kit.recorder.CallbackRecorder`, emptied and with its
    failure rules cleared: ``fail_next`` / ``delay_next`` play a failing or slow backend,
    ``wait_for(job_id, status)`` waits for a callback.

Every pytest run of a project that has recon-service installed imports this module, so it
imports only the standard library and pytest at module level: nothing starts unless a test asks
for a fixture.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recon_service.kit.double import ReconDouble
from recon_service.kit.recorder import CallbackRecorder
from recon_service.kit.s3 import S3Server


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


@pytest.fixture(scope="session")
def recon_s3() -> Iterator[S3Server]:
    """A real S3 API server (moto) on loopback with buckets ``models`` and ``uploads``."""
    with S3Server(("models", "uploads")) as server:
        yield server


@pytest.fixture(scope="session")
def recon_double_s3(recon_s3: S3Server, recon_callback_server: CallbackRecorder) -> Iterator[ReconDouble]:
    """The double with object storage: MODEL_OUTPUT_ROOT=s3://models/out, RECON_UPLOAD_ROOT=s3://uploads/in."""
    root = Path(tempfile.mkdtemp(prefix="recon-double-s3-"))
    env = recon_s3.env | {"MODEL_OUTPUT_ROOT": "s3://models/out", "RECON_UPLOAD_ROOT": "s3://uploads/in"}
    double = ReconDouble(root, callback_url=recon_callback_server.url, callback_token=recon_callback_server.token, env=env)
    try:
        with double:
            yield double
    finally:
        shutil.rmtree(root, ignore_errors=True)
