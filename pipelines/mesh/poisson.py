"""Screened Poisson surface reconstruction in a child process (used by the mesh stage).

Open3D's ``create_from_point_cloud_poisson`` holds the GIL for its whole run (seconds to minutes),
so in-process it could be neither interrupted nor watched; in a child it can be killed on cancel
and a crash in it becomes a named stage failure instead of taking the worker down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

import numpy as np

from pipelines.errors import ReconstructionFailed
from pipelines.progress import CancelToken


class PoissonProcess:
    """A child (``python -m pipelines.poisson``) started on creation, so it imports Open3D while
    the caller prepares the points; arrays go both ways through ``.npz`` files in ``work_dir``;
    it is killed on cancel and on leaving the ``with`` block. Its output goes to ``poisson.log``.
    """

    def __init__(self, work_dir: Path) -> None:
        self._work_dir = Path(work_dir)
        self._log = open(self._work_dir / "poisson.log", "wb")  # noqa: SIM115 (closed in __exit__)
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.poisson"], stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def __enter__(self) -> PoissonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._log.close()

    def reconstruct(self, xyz: np.ndarray, normals: np.ndarray, depth: int, cancel: CancelToken, waiting: Callable[[float], None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vertices (V, 3), faces (F, 3) and per-vertex densities (V,) of the Poisson surface.

        ``waiting(seconds)`` is called about once a second while the child works.
        """
        job, out = self._work_dir / "poisson_in.npz", self._work_dir / "poisson_out.npz"
        np.savez(job, xyz=xyz, normals=normals, depth=depth)
        stdin = cast(IO[bytes], self._proc.stdin)  # always set: started with stdin=PIPE
        try:
            stdin.write(f"{job}\n{out}\n".encode())
            stdin.close()
        except BrokenPipeError:
            pass  # the child died on start-up; reported below with its log
        start = last = time.monotonic()
        while self._proc.poll() is None:
            if cancel.wait(0.1):
                self._proc.kill()
                self._proc.wait()
                cancel.check()
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                waiting(last - start)
        if self._proc.returncode != 0 or not out.is_file():
            self._log.flush()
            tail = (self._work_dir / "poisson.log").read_bytes()[-800:].decode(errors="replace").strip()
            raise ReconstructionFailed("mesh", f"Poisson reconstruction failed (exit code {self._proc.returncode}): {tail or 'no output'}; try a lower mesh.poisson_depth")
        with np.load(out) as data:
            result = data["vertices"], data["faces"], data["densities"]
        job.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        return result


def _poisson_child() -> None:
    """Child side of :class:`PoissonProcess`: read the job paths from stdin, write the result."""
    _die_with_parent()
    import open3d as o3d

    job, out = (Path(line.strip()) for line in sys.stdin.read().splitlines()[:2])
    with np.load(job) as data:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(data["xyz"]))
        pcd.normals = o3d.utility.Vector3dVector(data["normals"])
        depth = int(data["depth"])
    mesh, densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth, scale=1.1, linear_fit=False)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.triangles).astype(np.int32), densities=np.asarray(densities))
    os.replace(tmp, out)


def _die_with_parent() -> None:
    """Linux: be killed when the parent dies (a killed worker must not leave Poisson running)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's kill on cancel still applies
        return
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(1)


if __name__ == "__main__":
    _poisson_child()
