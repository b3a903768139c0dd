"""Stage ``dense``: multi-view stereo from the sparse model to a fused, coloured point cloud.

``mvs`` runs the stage (``run``); ``views`` prepares undistorted pinhole working views and picks
source views; ``stereo`` computes a depth map per view; ``fusion`` filters and fuses them;
``colmap`` is the CUDA backend (COLMAP PatchMatch).
"""

from pipelines.dense.mvs import DenseResult, ViewStats, run

__all__ = ["DenseResult", "ViewStats", "run"]
