"""No process outlives its job: a worker stopped or killed while COLMAP's global mapper runs in its child.

The global mapper runs in a child process of the worker (it takes no cancellation token). A worker
stopped by SIGTERM (a timeout's or a shutdown's terminate) or killed by SIGKILL (the OOM killer) must
take that child with it: each worker leads its own process group, which is stopped as a whole; it
turns SIGTERM into a clean exit that kills its children; and the children die with their parent
(``PR_SET_PDEATHSIG``) even when nothing else runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fixtures.scenes import scene_dir
from recon_service.kit import ReconDouble
from tests.helpers import double, wait_until, worker_pids
from tests.reliability.conftest import Observe, wait_gone

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReconDouble]:
    root = tmp_path_factory.mktemp("orphans")
    with double(root / "service", root / "uploads", {"RECON_PIPELINE": "real", "RECON_WORKER_PRIORITY": "normal"}) as svc:
        yield svc


def _mapper_running(worker: int) -> list[psutil.Process] | None:
    """The worker's descendants once one of them is the global mapper."""
    try:
        family = psutil.Process(worker).children(recursive=True)
        if any("pipelines.sfm.mapping" in " ".join(p.cmdline()) for p in family):
            return family
    except psutil.Error:
        return None
    return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_worker_stopped_during_global_mapping_leaves_no_process_behind(real: ReconDouble, sig: int, observe: Observe) -> None:
    photos = real.photos_root / f"scene-{sig}"
    shutil.copytree(scene_dir("tabletop_small") / "images", photos)
    job_id = real.submit(photos, options={"preset": "preview", "sfm.mapper": "global"})
    (worker,) = wait_until(lambda: worker_pids(real), 30, "the worker to start")
    family = wait_until(lambda: _mapper_running(worker), 120, "the global mapper to run in the worker's child")
    started = time.monotonic()
    os.kill(worker, sig)
    left = wait_gone([worker, *(p.pid for p in family)], 5)
    assert left == [], f"processes outlived the {signal.Signals(sig).name}ed worker: {left}"
    job = real.wait_job(job_id, timeout=30)
    expected = "worker was stopped (SIGTERM)" if sig == signal.SIGTERM else "worker was killed"
    assert job["status"] == "failed" and job["message"].startswith(expected), job["message"]
    assert not (real.models_root / job_id).exists() and not list((real.models_root / ".attempts").glob(f"{job_id}.*"))
    assert real.http.get("/readyz").status_code == 200
    observe(signal.Signals(sig).name, f"worker and {len(family)} descendant(s) gone {time.monotonic() - started:.2f} s after the signal; job: {job['message']}")


def test_a_child_started_by_the_pipeline_dies_with_its_parent_whatever_kills_it(tmp_path: Path) -> None:
    """The mechanism alone: a parent SIGKILLed (no handler, no finally) while its ChildProcess waits leaves no child."""
    import subprocess
    import sys

    script = (
        "import time; from pathlib import Path; from pipelines.child import ChildProcess\n"
        f"c = ChildProcess('pipelines.mesh.poisson', [], Path({str(tmp_path / 'log')!r}), stdin=True)\n"  # waits on stdin for ever
        "print(c.pid, flush=True); time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    child_pid = int(parent.stdout.readline())  # type: ignore[union-attr]
    time.sleep(1.0)  # the child is past die_with_parent (and importing Open3D or reading stdin)
    assert psutil.pid_exists(child_pid)
    parent.kill()
    parent.wait()
    assert wait_gone([child_pid], 5) == [], "the child outlived its SIGKILLed parent"
