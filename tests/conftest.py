"""Fixtures shared by every test area: photos, a recording backend, services as real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recon_service.kit import CallbackRecorder, ReconDouble, write_jpegs
from tests.helpers import CALLBACK_TOKEN, double


@pytest.fixture
def make_photos(tmp_path: Path) -> Callable[..., Path]:
    """``make_photos(count, name=...)`` → a folder of ``count`` valid JPEGs under ``tmp_path/uploads``."""

    def make(count: int, name: str = "job", **kwargs: object) -> Path:
        return write_jpegs(tmp_path / "uploads" / name, count, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def backend() -> Iterator[CallbackRecorder]:
    """The backend's callback endpoints on loopback, recording what the service sends."""
    with CallbackRecorder(CALLBACK_TOKEN) as recorder:
        yield recorder


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ReconDouble]]:
    """``start_service(env={...}, backend=..., wait=True)`` → a running simulate-mode service; stopped at teardown.

    Every service of a test shares ``tmp_path/uploads`` as its photos root.
    """
    started: list[ReconDouble] = []

    def start(env: dict[str, str] | None = None, backend: CallbackRecorder | None = None, wait: bool = True) -> ReconDouble:
        svc = double(tmp_path / f"service{len(started)}", tmp_path / "uploads", env, backend)
        started.append(svc)
        return svc.start(wait=wait)

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReconDouble]:
    """One service for the tests that only submit and read (validation, auth, listing)."""
    root = tmp_path_factory.mktemp("shared")
    with double(root / "service", root / "uploads") as svc:
        yield svc
