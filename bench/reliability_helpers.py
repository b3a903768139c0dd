"""What the reliability parts share: report rows, waiting and process helpers, services to test."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from recon_service.kit import CallbackRecorder, ReconDouble
from tests.helpers import double, wait_until

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "fixtures" / "scenes" / "tabletop_small" / "images"
STAGES = ("ingest", "features", "matching", "sparse", "dense", "mesh", "texture", "export")
PHASE_RANK = {"queued": 0, "processing": 1, "meshing": 2, "texturing": 3, "completed": 4, "failed": 4}


@dataclass
class Row:
    """One case of the report."""

    part: str
    case: str
    tried: str
    observed: str
    result: str  # PASS, FAIL, XFAIL (known bug, reported), SKIP
    seconds: float


# -- helpers ---------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def collapse(statuses: list[str]) -> list[str]:
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


def callbacks_in_order(statuses: list[str], final: str) -> bool:
    """Status callbacks start with queued, never go back a phase, and end with the job's final status."""
    ranks = [PHASE_RANK[s] for s in statuses]
    return bool(statuses) and statuses[0] == "queued" and statuses[-1] == final and ranks == sorted(ranks)


def worker_pid(service: ReconDouble, job_id: str) -> int:
    def find() -> int | None:
        for line in reversed(service.log().splitlines()):
            if job_id in line and "started in worker pid=" in line:
                return int(json.loads(line)["msg"].rsplit("pid=", 1)[1])
        return None

    return wait_until(find, 60, f"the worker of {job_id}")


def children_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def half_written(models: Path) -> list[str]:
    """``*.tmp`` files and ``model.glb`` files that do not load."""
    import trimesh

    bad = [str(p) for p in models.rglob("*.tmp")]
    for glb in models.rglob("model.glb"):
        try:
            trimesh.load(glb, force="scene")
        except Exception as exc:  # any failure to load is what we look for
            bad.append(f"{glb}: {exc}")
    return bad


def copy_scene(service: ReconDouble) -> Path:
    folder = service.photos_root / uuid.uuid4().hex[:8]
    shutil.copytree(SCENE, folder)
    return folder


def simulate_photos(service: ReconDouble, count: int = 3) -> Path:
    from recon_service.kit import write_jpegs

    return write_jpegs(service.photos_root / uuid.uuid4().hex[:8], count)


def start(root: Path, backend: CallbackRecorder, **env: str) -> ReconDouble:
    return double(root, root / "uploads", env, backend).start()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
