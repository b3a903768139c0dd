"""Screened Poisson surface reconstruction in a child process (used by the mesh stage).

Open3D's ``create_from_point_cloud_poisson`` holds the GIL for its whole run (seconds to minutes),
so in-process it could be neither interrupted nor watched; in a child (:mod:`pipelines.child`) it
is killed on cancel, dies with its parent, and a crash in it becomes a named stage failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipelines.child import ChildProcess, die_with_parent
from pipelines.errors import ReconstructionFailed
from pipelines.files import atomic_path
from pipelines.progress import CancelToken


class PoissonProcess:
    """A child (``python -m pipelines.mesh.poisson``) started on creation, so it imports Open3D while
    the caller prepares the points; arrays go both ways through ``.npz`` files in ``work_dir``.
    Its output goes to ``poisson.log``; it is killed on cancel and on leaving the ``with`` block.
    """

    def __init__(self, work_dir: Path) -> None:
        self._work_dir = Path(work_dir)
        self._child = ChildProcess("pipelines.mesh.poisson", [], self._work_dir / "poisson.log", stdin=True)

    def __enter__(self) -> PoissonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self._child.close()

    def reconstruct(self, xyz: np.ndarray, normals: np.ndarray, depth: int, cancel: CancelToken, waiting: Callable[[float], None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vertices (V, 3), faces (F, 3) and per-vertex densities (V,) of the Poisson surface.

        ``waiting(seconds)`` is called about once a second while the child works.
        """
        job, out = self._work_dir / "poisson_in.npz", self._work_dir / "poisson_out.npz"
        np.savez(job, xyz=xyz, normals=normals, depth=depth)
        self._child.send(f"{job}\n{out}\n")
        code = self._child.wait(cancel, waiting)
        if code != 0 or not out.is_file():
            tail = self._child.log_tail()
            raise ReconstructionFailed("mesh", f"Poisson reconstruction failed (exit code {code}): {tail or 'no output'}; try a lower mesh.poisson_depth")
        with np.load(out) as data:
            result = data["vertices"], data["faces"], data["densities"]
        job.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        return result


def _poisson_child() -> None:
    """Child side of :class:`PoissonProcess`: read the job paths from stdin, write the result."""
    import sys

    die_with_parent()
    import open3d as o3d

    job, out = (Path(line.strip()) for line in sys.stdin.read().splitlines()[:2])
    with np.load(job) as data:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(data["xyz"]))
        pcd.normals = o3d.utility.Vector3dVector(data["normals"])
        depth = int(data["depth"])
    mesh, densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth, scale=1.1, linear_fit=False)
    with atomic_path(out) as tmp:
        np.savez(tmp, vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.triangles).astype(np.int32), densities=np.asarray(densities))


if __name__ == "__main__":
    _poisson_child()
