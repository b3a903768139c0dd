"""Fixtures of the reliability tests: services as real processes (the testing kit: ReconDouble), a recording backend (CallbackRecorder).

Each test states what it tried in its docstring and what it saw through ``observe(...)``
(pytest's ``record_property``); ``python -m bench.reliability`` turns both into bench/reliability.md.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from recon_service.kit import CallbackRecorder, ReconDouble
from tests.helpers import CALLBACK_TOKEN, double, wait_until

SUCCESS = ["queued", "processing", "meshing", "texturing", "completed"]
RANK = {s: i for i, s in enumerate(["queued", "processing", "meshing", "texturing"])} | {"completed": 4, "failed": 4}

Observe = Callable[[str, Any], None]


@pytest.fixture
def observe(record_property: Callable[[str, Any], None]) -> Observe:
    """``observe("what", value)``: one line of the test's 'observed' column in bench/reliability.md."""

    def note(what: str, value: Any) -> None:
        record_property(what, value if isinstance(value, str) else json.dumps(value, default=str))

    return note


@pytest.fixture(scope="session")
def hostile_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReconDouble, CallbackRecorder]]:
    """One simulate-mode service (one worker, small limits) for the hostile path and request tests."""
    root = tmp_path_factory.mktemp("hostile")
    fake = CallbackRecorder(CALLBACK_TOKEN)
    env = {
        "RECON_CALLBACK_URL": fake.url, "RECON_CALLBACK_TOKEN": CALLBACK_TOKEN, "RECON_MAX_WORKERS": "1",
        "RECON_MAX_PHOTOS": "5", "RECON_MAX_PIXELS": "2000000",
    }  # fmt: skip
    service = double(root / "service", root / "uploads", env)
    service.photos_root.mkdir(parents=True)
    service.start()
    yield service, fake
    service.stop()
    fake.close()


@pytest.fixture(scope="session")
def busy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReconDouble, CallbackRecorder]]:
    """One simulate-mode service with four workers and a fake backend, for the fault and observability tests."""
    root = tmp_path_factory.mktemp("busy")
    fake = CallbackRecorder(CALLBACK_TOKEN)
    env = {"RECON_CALLBACK_URL": fake.url, "RECON_CALLBACK_TOKEN": CALLBACK_TOKEN, "RECON_MAX_WORKERS": "4"}
    service = double(root / "service", root / "uploads", env)
    service.photos_root.mkdir(parents=True)
    service.start()
    yield service, fake
    service.stop()
    fake.close()


def metric(service: ReconDouble, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` (with these label values) that ``GET /metrics`` reports now."""
    from prometheus_client.parser import text_string_to_metric_families

    response = service.http.get("/metrics")
    assert response.status_code == 200, response.text
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def collapse(statuses: list[str]) -> list[str]:
    """Statuses without immediate repeats (delivery is at least once: a retry may resend one)."""
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


def log_entries(service: ReconDouble) -> list[dict[str, Any]]:
    """The service's stderr lines that are JSON objects (the start-up banners of server.py are not)."""
    entries = []
    for line in service.log().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def worker_pid_of(service: ReconDouble, job_id: str) -> int:
    """The pid of the worker running ``job_id``, from the service's own 'started in worker pid=' log line."""

    def find() -> int | None:
        for entry in reversed(log_entries(service)):
            if entry.get("job_id") == job_id and "started in worker pid=" in entry["msg"]:
                return int(entry["msg"].rsplit("pid=", 1)[1])
        return None

    return wait_until(find, 20, f"the worker of job {job_id} to start")


def service_processes(data_dir: Path) -> list[psutil.Process]:
    """Every live process (server or worker) whose environment names ``data_dir`` as RECON_DATA_DIR."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("RECON_DATA_DIR") == str(data_dir):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until the processes ``pids`` have exited; return those still alive after ``timeout`` s."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def new_job_id() -> str:
    return str(uuid.uuid4())


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 2)


def is_root() -> bool:
    return os.geteuid() == 0
