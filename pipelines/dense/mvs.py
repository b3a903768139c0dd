"""Stage 4, dense: multi-view stereo from a sparse COLMAP model to a coloured point cloud with normals.

Two backends produce the same artifact (``points.ply``: binary PLY, world frame of the sparse
model, per-point RGB and unit normals facing the cameras):

* ``cpu`` (:func:`_run_cpu`): undistort and downscale the images, pick source views by shared
  sparse points and triangulation angle, compute a depth map per view by a coarse-to-fine plane
  sweep with windowed ZNCC (:mod:`pipelines.dense.stereo`), regress it onto local slanted planes
  where they fit and trim it next to empty pixels (:mod:`pipelines.dense.planes`), keep depth that other views' maps
  confirm, fuse, voxel-downsample and remove outliers (:mod:`pipelines.dense.fusion`).
* ``cuda`` (:func:`_run_colmap`): COLMAP's own ``undistort_images`` + ``patch_match_stereo`` +
  ``stereo_fusion``, where pycolmap was built with CUDA.

Intermediate files live in ``work_dir`` (``images/`` undistorted working images, ``depth/`` one
``.npy`` per view, ``views.json`` cameras, source views and depth ranges) so the stage can be
inspected or rerun alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts import SparseModel
from pipelines.dense.fusion import ConsistencySettings, VoxelCloud, fuse_view, save_depth, write_point_cloud
from pipelines.dense.planes import fit_local_planes, trim_edges
from pipelines.dense.stereo import OUTSIDE, StereoImage, SweepSettings, estimate_depth
from pipelines.dense.views import PinholeView, ViewPlan, pixel_footprint, plan_views, prepare_views, write_views_json
from pipelines.errors import InvalidOptions, ReconstructionFailed
from pipelines.files import write_text_atomic
from pipelines.options import DenseOptions
from pipelines.progress import CancelToken, StageProgress

logger = logging.getLogger(__name__)

VOXEL_PIXELS = 2.0
"""Fused points are merged on a grid of this many working-image pixel footprints (at the median
depth): denser adds no detail at the working resolution, only points for the mesher to chew."""
MAX_WORKERS = 2
"""Reference views computed at once (numpy and OpenCV release the GIL in the per-plane array
work, so two views keep the two target cores busy); each view in flight holds some tens of MB."""
CLAIM_FUSED_PIXELS = True
"""Skip pixels already fused into another view's points (see ``fuse_view``). On the tabletop
fixture: 2.3x fewer raw points to merge, same precision and recall."""
PROGRESS_INTERVAL_S = 0.5
# Share of the stage's time per step (CPU seconds on the tabletop fixture, balanced preset:
# undistort 0.6, depth maps 14.4, fusion 4.9, writing the cloud 0.7).
_UNDISTORT, _DEPTH, _FUSE = 0.03, 0.70, 0.23


@dataclass(frozen=True)
class ViewStats:
    """How one reference view fared."""

    name: str
    sources: tuple[str, ...]
    depth_range: tuple[float, float]
    """Searched depth range (model units, camera z)."""
    depth_pixels: int
    """Pixels given a depth by the plane sweep (photometric)."""
    fused_pixels: int
    """Pixels that other views confirmed and that became points (before voxel merging)."""
    seconds: float
    """Wall time of the depth map (s)."""


@dataclass(frozen=True)
class DenseResult:
    """What the dense stage produced (``summary()`` goes into report.json)."""

    points_path: Path
    """Fused cloud: binary PLY with colours and normals, world frame of the sparse model."""
    num_points: int
    num_depth_maps: int
    backend: str
    """``cpu_plane_sweep`` or ``colmap_patch_match``."""
    image_size: tuple[int, int]
    """Largest working image (width, height) in pixels."""
    voxel_size: float
    """Point spacing of the fused cloud (model units); 0 when not known."""
    used_sparse_points: bool
    """False when source views and depth ranges came from camera geometry alone."""
    depth_seconds: float
    fusion_seconds: float
    views: tuple[ViewStats, ...] = ()

    def summary(self) -> dict[str, Any]:
        """JSON-able numbers for report.json."""
        depth = sum(v.depth_pixels for v in self.views)
        fused = sum(v.fused_pixels for v in self.views)
        return {
            "backend": self.backend,
            "num_points": self.num_points,
            "num_depth_maps": self.num_depth_maps,
            "working_image_size": list(self.image_size),
            "voxel_size": round(self.voxel_size, 6),
            "used_sparse_points": self.used_sparse_points,
            "depth_seconds": round(self.depth_seconds, 2),
            "seconds_per_view": round(self.depth_seconds / max(1, self.num_depth_maps), 3),
            "fusion_seconds": round(self.fusion_seconds, 2),
            "fused_fraction": round(fused / depth, 4) if depth else None,
            "views_without_sources": [v.name for v in self.views if not v.sources],
        }


def run(
    sparse: SparseModel,
    work_dir: Path,
    points_path: Path,
    options: DenseOptions,
    progress: StageProgress,
    cancel: CancelToken,
) -> DenseResult:
    """Compute depth maps for every registered view of ``sparse`` and fuse them into ``points_path``.

    Raises ``InvalidOptions`` when CUDA is requested but missing, ``ReconstructionFailed`` when
    no two views overlap or no depth survives the consistency check, ``Cancelled`` on cancel.
    """
    import pycolmap

    if options.backend == "cuda" and not pycolmap.has_cuda:
        raise InvalidOptions(
            "dense.backend",
            "'cuda' needs a pycolmap built with CUDA and an NVIDIA GPU, and this machine has neither; use 'auto' or 'cpu'",
        )
    if options.min_consistent_views > options.num_source_views:
        raise InvalidOptions(
            "dense.min_consistent_views",
            f"is {options.min_consistent_views} but only {options.num_source_views} source views are compared "
            "(dense.num_source_views), so no depth could ever be confirmed; lower it or raise dense.num_source_views",
        )
    work_dir = Path(work_dir).resolve()
    points_path = Path(points_path).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    if pycolmap.has_cuda and options.backend in ("auto", "cuda"):
        return _run_colmap(sparse, work_dir, points_path, options, progress, cancel)
    return _run_cpu(sparse, work_dir, points_path, options, progress, cancel)


def _load_model(sparse: SparseModel) -> Any:
    import pycolmap

    reconstruction = pycolmap.Reconstruction(str(sparse.sparse_dir))
    if reconstruction.num_reg_images() < 2:
        raise ReconstructionFailed(
            "dense", f"the sparse model has {reconstruction.num_reg_images()} placed photo(s); depth needs at least 2 overlapping photos"
        )
    return reconstruction


def _stereo_image(view: PinholeView) -> StereoImage:
    import cv2

    rgb, valid = view.load()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) * np.float32(1.0 / 255.0)
    gray[~valid] = OUTSIDE
    return StereoImage(gray, view.K, view.R, view.t)


class _Progress:
    """Thread-safe per-view fractions; the calling thread turns them into throttled stage progress."""

    def __init__(self, progress: StageProgress, start: float, span: float, total: int, label: str) -> None:
        self._progress, self._start, self._span, self._total, self._label = progress, start, span, total, label
        self._lock = threading.Lock()
        self._fractions: dict[int, float] = {}
        self._done = 0
        self._last_time = 0.0
        self._last_value = start

    def view(self, index: int, fraction: float) -> None:
        with self._lock:
            self._fractions[index] = fraction

    def finish(self, index: int) -> None:
        with self._lock:
            self._fractions.pop(index, None)
            self._done += 1

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_time < PROGRESS_INTERVAL_S:
            return
        with self._lock:
            done = self._done + sum(self._fractions.values())
            finished = self._done
        value = max(self._last_value, self._start + self._span * done / max(1, self._total))
        self._last_time, self._last_value = now, value
        self._progress(value, f"{self._label} {finished}/{self._total}")


def _run_cpu(
    sparse: SparseModel,
    work_dir: Path,
    points_path: Path,
    options: DenseOptions,
    progress: StageProgress,
    cancel: CancelToken,
) -> DenseResult:
    reconstruction = _load_model(sparse)
    views = prepare_views(
        reconstruction, Path(sparse.images_dir), work_dir / "images", options.max_image_size,
        lambda f, m: progress(_UNDISTORT * f, m), cancel,
    )
    plans, used_points = plan_views(reconstruction, views, options.num_source_views, cancel.check)
    write_views_json(work_dir / "views.json", views, plans)
    todo = [v for v, p in zip(views, plans, strict=True) if p.sources]
    if not todo:
        raise ReconstructionFailed(
            "dense",
            "no two photos see the same part of the scene from usefully different positions, so no depth can be "
            "measured; take photos that overlap by more than half, stepping 10-20 degrees around the object",
        )
    for view, plan in zip(views, plans, strict=True):
        if not plan.sources:
            logger.warning("dense: %s has no source views and gets no depth map", view.name)

    depth_dir = work_dir / "depth"
    depth_dir.mkdir(exist_ok=True)
    sweep = SweepSettings(options.num_planes, options.window_radius, options.min_ncc, options.plane_fit_radius, options.plane_fit_max_residual, options.edge_trim_px)
    started = time.monotonic()
    depth_stats = _depth_maps(views, plans, todo, depth_dir, sweep, progress, cancel)
    depth_seconds = time.monotonic() - started

    started = time.monotonic()
    consistency = ConsistencySettings(options.min_consistent_views)
    voxel = VOXEL_PIXELS * pixel_footprint(views, plans)
    cloud = VoxelCloud(voxel)
    fused_pixels = _fuse(views, plans, todo, depth_dir, consistency, cloud, progress, cancel)
    if sum(fused_pixels.values()) == 0:
        raise ReconstructionFailed(
            "dense",
            "no depth was confirmed by enough views; the photos may be blurry, too far apart or of a surface "
            "without texture: take sharper photos with more overlap, or lower dense.min_consistent_views",
        )
    cancel.check()
    progress(_UNDISTORT + _DEPTH + _FUSE, "writing the point cloud")
    num_points = write_point_cloud(points_path, cloud.points())
    fusion_seconds = time.monotonic() - started
    logger.info(
        "dense: %d depth maps in %.1f s (%.2f s/view), %d points, fusion %.1f s",
        len(todo), depth_seconds, depth_seconds / len(todo), num_points, fusion_seconds,
    )
    stats = tuple(
        ViewStats(
            v.name, tuple(views[j].name for j in p.sources), (p.depth_min, p.depth_max),
            depth_stats.get(v.index, (0, 0.0))[0], fused_pixels.get(v.index, 0), depth_stats.get(v.index, (0, 0.0))[1],
        )
        for v, p in zip(views, plans, strict=True)
    )
    _write_stats(work_dir / "stats.json", stats)
    progress(1.0, f"{num_points} points")
    return DenseResult(
        points_path, num_points, len(todo), "cpu_plane_sweep", max((v.width, v.height) for v in views),
        voxel, used_points, depth_seconds, fusion_seconds, stats,
    )


def _depth_maps(
    views: list[PinholeView],
    plans: list[ViewPlan],
    todo: list[PinholeView],
    depth_dir: Path,
    sweep: SweepSettings,
    progress: StageProgress,
    cancel: CancelToken,
) -> dict[int, tuple[int, float]]:
    """Depth map per view in ``todo`` into ``depth_dir/<index>.npy``; returns {index: (pixels, seconds)}.

    Views run on a small thread pool (OpenCV and numpy release the GIL), one reference view per
    worker at a time so memory stays bounded; progress is reported from the calling thread.
    """
    tracker = _Progress(progress, _UNDISTORT, _DEPTH, len(todo), "depth maps")

    def one(view: PinholeView) -> tuple[int, int, float]:
        t0 = time.monotonic()
        plan = plans[view.index]
        ref = _stereo_image(view)
        sources = [_stereo_image(views[j]) for j in plan.sources]
        depth, _ = estimate_depth(
            ref, sources, plan.depth_min, plan.depth_max, sweep, cancel, lambda f: tracker.view(view.index, f)
        )
        depth, _ = fit_local_planes(depth, sweep.plane_fit_radius, sweep.plane_fit_max_residual)
        depth = trim_edges(depth, sweep.edge_trim_px)
        save_depth(depth_dir / f"{view.index:05d}.npy", depth)
        tracker.finish(view.index)
        return view.index, int((depth > 0).sum()), time.monotonic() - t0

    results: dict[int, tuple[int, float]] = {}
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dense") as pool:
        pending: set[Future[tuple[int, int, float]]] = {pool.submit(one, v) for v in todo}
        try:
            while pending:
                finished, pending = wait(pending, timeout=PROGRESS_INTERVAL_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    index, pixels, seconds = future.result()
                    results[index] = (pixels, seconds)
                tracker.report()
                cancel.check()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    tracker.report(force=True)
    return results


def _fuse(
    views: list[PinholeView],
    plans: list[ViewPlan],
    todo: list[PinholeView],
    depth_dir: Path,
    consistency: ConsistencySettings,
    cloud: VoxelCloud,
    progress: StageProgress,
    cancel: CancelToken,
) -> dict[int, int]:
    """Geometric filtering of every view's depth map into ``cloud``; returns {index: fused pixels}.

    A few depth maps are cached at a time (the neighbours of consecutive views overlap).
    """
    have_depth = {v.index for v in todo}
    cache: dict[int, np.ndarray] = {}

    def depth_of(index: int) -> np.ndarray:
        if index not in cache:
            if len(cache) >= 2 * max(len(p.sources) for p in plans) + 1:
                cache.pop(next(iter(cache)))
            cache[index] = np.load(depth_dir / f"{index:05d}.npy")
        return cache[index]

    tracker = _Progress(progress, _UNDISTORT + _DEPTH, _FUSE, len(todo), "fused views")
    fused: dict[int, int] = {}
    claimed = {v.index: np.zeros((v.height, v.width), bool) for v in todo} if CLAIM_FUSED_PIXELS else None
    for view in todo:
        cancel.check()
        neighbours = [(views[j], depth_of(j)) for j in plans[view.index].sources if j in have_depth]
        part = fuse_view(view, depth_of(view.index), neighbours, consistency, cancel.check, claimed)
        if claimed is not None:
            del claimed[view.index]  # never looked at again
        cloud.add(part)
        fused[view.index] = len(part.xyz)
        tracker.finish(view.index)
        tracker.report()
    if cloud.dropped:
        logger.warning("dense: dropped %d points absurdly far from the scene", cloud.dropped)
    return fused


def _write_stats(path: Path, stats: tuple[ViewStats, ...]) -> None:
    write_text_atomic(path, json.dumps([dataclasses.asdict(s) for s in stats], indent=1))


def _run_colmap(
    sparse: SparseModel,
    work_dir: Path,
    points_path: Path,
    options: DenseOptions,
    progress: StageProgress,
    cancel: CancelToken,
) -> DenseResult:
    """COLMAP PatchMatch stereo (CUDA) and COLMAP fusion, then the same cleaning as the CPU path."""
    from pipelines.dense import colmap as dense_colmap

    reconstruction = _load_model(sparse)
    fused = dense_colmap.patch_match(
        Path(sparse.sparse_dir), Path(sparse.images_dir), work_dir / "colmap_mvs", options,
        reconstruction.num_reg_images(), lambda f, m: progress(0.97 * f, m), cancel,
    )
    started = time.monotonic()
    cloud = VoxelCloud(fused.voxel_size)
    cloud.add(fused.points)
    num_points = write_point_cloud(points_path, cloud.points())
    progress(1.0, f"{num_points} points")
    return DenseResult(
        points_path, num_points, fused.num_depth_maps, "colmap_patch_match", fused.image_size, fused.voxel_size,
        reconstruction.num_points3D() > 0, fused.depth_seconds, fused.fusion_seconds + time.monotonic() - started,
    )
