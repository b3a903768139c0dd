"""Stage ``mesh``: a clean, decimated, vertex-coloured triangle mesh from the fused points.

``surface`` runs the stage (``run``); ``poisson`` is screened Poisson in a child process.
"""

from pipelines.mesh.surface import MeshResult, run

__all__ = ["MeshResult", "run"]
