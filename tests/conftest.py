"""Fixtures shared by every test area: photos, a recording backend, services as real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recon_service.kit import CallbackRecorder, ReconDouble, write_jpegs
from tests.deliverables import check_model_files, gltf_validator_missing
from tests.helpers import CALLBACK_TOKEN, double


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every GLB and USDZ the tests left under the session's temp folder must pass the validators.

    Real runs, simulated jobs and stage tests all write model files; checking them all here, once,
    means no test can add a model file that the glTF Validator or OpenUSD's checks would reject.
    """
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or getattr(factory, "_basetemp", None) is None:
        return  # no test used a temp folder
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    missing = gltf_validator_missing()
    if missing and reporter is not None:
        reporter.write_line(f"model files: GLBs not validated: {missing}", yellow=True)
    problems = check_model_files(factory.getbasetemp())
    if problems:
        if reporter is not None:
            reporter.write_line(f"model files: {len(problems)} fail validation:", red=True)
            for line in problems[:50]:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
