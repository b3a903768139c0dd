"""Dense stage, CUDA backend: COLMAP's PatchMatch stereo and fusion through pycolmap.

Used by :func:`pipelines.dense.run` only where ``pycolmap.has_cuda``; it replaces the CPU plane
sweep, the geometric filter and the fusion, and hands back the fused points for the same voxel
merge and outlier removal. COLMAP works in its own workspace (``undistort_images`` output:
``images/``, ``sparse/``, ``stereo/depth_maps`` ...), kept under the stage's work folder.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.dense.fusion import ViewPoints
from pipelines.errors import Cancelled, ReconstructionFailed
from pipelines.options import DenseOptions
from pipelines.progress import CancelToken, StageProgress

logger = logging.getLogger(__name__)

POLL_S = 0.5
_UNDISTORT, _DEPTH = 0.05, 0.80


@dataclass(frozen=True)
class ColmapDense:
    points: ViewPoints
    """COLMAP's fused points (world frame of the sparse model), colours and normals."""
    num_depth_maps: int
    image_size: tuple[int, int]
    """Largest undistorted working image (width, height), pixels."""
    voxel_size: float
    """Median spacing of the fused points (model units), for the voxel merge."""
    depth_seconds: float
    fusion_seconds: float


def patch_match(
    sparse_dir: Path,
    images_dir: Path,
    mvs_dir: Path,
    options: DenseOptions,
    num_images: int,
    progress: StageProgress,
    cancel: CancelToken,
) -> ColmapDense:
    """Undistort into ``mvs_dir``, run PatchMatch (photometric then geometric pass) and fuse."""
    import open3d as o3d
    import pycolmap

    mvs_dir.mkdir(parents=True, exist_ok=True)
    undistort = pycolmap.UndistortCameraOptions()
    undistort.max_image_size = options.max_image_size
    progress(0.0, "undistorting images")
    _call(
        cancel,
        pycolmap.undistort_images,
        output_path=mvs_dir,
        input_path=sparse_dir,
        image_path=images_dir,
        num_patch_match_src_images=options.num_source_views,
        undistort_options=undistort,
        cancellation_token=cancel.colmap(),
    )
    patch = pycolmap.PatchMatchOptions()
    patch.max_image_size = options.max_image_size
    patch.window_radius = options.window_radius
    patch.geom_consistency = True
    patch.filter = True
    patch.filter_min_ncc = options.min_ncc
    patch.filter_min_num_consistent = options.min_consistent_views
    depth_dir = mvs_dir / "stereo" / "depth_maps"

    def maps_done() -> float:  # a photometric and a geometric depth map per view
        return min(1.0, len(list(depth_dir.glob("*.bin"))) / (2.0 * num_images)) if depth_dir.is_dir() else 0.0

    started = time.monotonic()
    _call(
        cancel,
        pycolmap.patch_match_stereo,
        poll=lambda: progress(_UNDISTORT + _DEPTH * maps_done(), "depth maps (COLMAP PatchMatch)"),
        workspace_path=mvs_dir,
        options=patch,
        cancellation_token=cancel.colmap(),
    )
    depth_seconds = time.monotonic() - started

    started = time.monotonic()
    fusion = pycolmap.StereoFusionOptions()
    fusion.max_image_size = options.max_image_size
    fusion.min_num_pixels = options.min_consistent_views + 1  # the reference pixel plus its confirmations
    fused_path = mvs_dir / "fused.ply"
    progress(_UNDISTORT + _DEPTH, "fusing depth maps (COLMAP)")
    _call(
        cancel,
        pycolmap.stereo_fusion,
        output_path=fused_path,
        workspace_path=mvs_dir,
        input_type="geometric",
        options=fusion,
        output_type="PLY",
        cancellation_token=cancel.colmap(),
    )
    cloud = o3d.io.read_point_cloud(str(fused_path))
    if len(cloud.points) == 0:
        raise ReconstructionFailed("dense", "COLMAP fusion produced no points; take sharper photos with more overlap")
    sample = cloud.random_down_sample(min(1.0, 50_000 / len(cloud.points)))
    spacing = float(np.median(np.asarray(sample.compute_nearest_neighbor_distance()))) if len(sample.points) > 1 else 0.0
    points = ViewPoints(
        np.asarray(cloud.points, np.float32),
        (np.asarray(cloud.colors) * 255).round().astype(np.uint8),
        np.asarray(cloud.normals, np.float32),
        len(cloud.points),
    )
    undistorted = pycolmap.Reconstruction(str(mvs_dir / "sparse"))
    size = max((c.width, c.height) for c in undistorted.cameras.values())
    return ColmapDense(points, num_images, size, spacing if spacing > 0 else 1e-3, depth_seconds, time.monotonic() - started)


def _call(cancel: CancelToken, fn: Callable[..., Any], poll: Callable[[], None] | None = None, **kwargs: Any) -> Any:
    """Run a long pycolmap call in a thread, polling ``poll`` for progress; its token stops it on cancel."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn(**kwargs)
        except BaseException as exc:  # handed to the calling thread below
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"dense-{fn.__name__}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_S)
        if poll is not None:
            poll()
    if cancel.cancelled:
        raise Cancelled()
    if "error" in result:
        raise ReconstructionFailed("dense", f"COLMAP {fn.__name__} failed: {result['error']}") from result["error"]
    return result.get("value")
