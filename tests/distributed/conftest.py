"""A distributed deployment per test (:class:`~tests.distributed.cluster.Cluster`), stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recon_service.kit import CallbackRecorder
from tests.distributed.cluster import INSTALL_HINT, REDIS, Cluster

pytestmark = pytest.mark.skipif(REDIS is None, reason=INSTALL_HINT)


@pytest.fixture
def cluster(tmp_path: Path, backend: CallbackRecorder) -> Iterator[Callable[..., Cluster]]:
    """``cluster(workers=2, env={...})`` → Redis, an API node calling back to ``backend``, and workers; all stopped at teardown."""
    made: list[Cluster] = []

    def make(workers: int = 2, env: dict[str, str] | None = None, worker_env: dict[str, str] | None = None) -> Cluster:
        made.append(c := Cluster.start(tmp_path / f"cluster{len(made)}", backend, workers, env, worker_env))
        return c

    yield make
    for c in made:
        c.stop()
