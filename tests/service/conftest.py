"""Service fixtures: a fake backend, and services started as real processes on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.service.harness import CALLBACK_TOKEN, FakeBackend, ServiceProcess


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    server = FakeBackend()
    yield server
    server.close()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """``start_service(env={...}, backend=...)`` → a running simulate-mode service; stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(env: dict[str, str] | None = None, backend: FakeBackend | None = None, wait: bool = True) -> ServiceProcess:
        extra = dict(env or {})
        if backend is not None:
            extra |= {"RECON_CALLBACK_URL": backend.url, "RECON_CALLBACK_TOKEN": CALLBACK_TOKEN}
        service = ServiceProcess(tmp_path / f"service{len(started)}", tmp_path / "uploads", extra)
        started.append(service)
        return service.start(wait=wait)

    yield start
    for service in started:
        service.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One service for the tests that only submit and read (validation, auth, listing)."""
    root = tmp_path_factory.mktemp("shared")
    service = ServiceProcess(root / "service", root / "uploads").start()
    yield service
    service.close()
